#include "storage/storage_keys.hpp"

#include <algorithm>
#include <utility>

#include "util/error.hpp"

namespace lparvisor {

StorageKeys::StorageKeys(std::uint64_t main_storage_bytes)
    : keys_((main_storage_bytes + kPageSize - 1) / kPageSize, 0) {
}

std::span<std::uint8_t> StorageKeys::frames(ArenaRange range) {
    auto frames = std::as_const(*this).frames(range);
    // SAFETY: same storage as the const view; this object is not const.
    return {const_cast<std::uint8_t*>(frames.data()), frames.size()};
}

std::span<const std::uint8_t> StorageKeys::frames(ArenaRange range) const {
    if (range.start.value % kPageSize != 0 || range.size % kPageSize != 0)
        throw Error(ErrorKind::InvalidArgument,
                    "storage keys: " + format_range_mib(range.start.value, range.size) +
                        " is not 4 KiB aligned");
    std::uint64_t first = range.start.value / kPageSize;
    std::uint64_t count = range.size / kPageSize;
    if (first > keys_.size() || count > keys_.size() - first)
        throw Error(ErrorKind::InvalidArgument,
                    "storage keys: " + format_range_mib(range.start.value, range.size) +
                        " is outside main storage");
    return {keys_.data() + first, count};
}

void StorageKeys::clear(ArenaRange range) {
    auto keys = frames(range);
    std::fill(keys.begin(), keys.end(), std::uint8_t{0});
}

}  // namespace lparvisor
