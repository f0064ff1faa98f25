// The dirty bitmap of a live relocation: one bit per 4 KiB page of an LPAR's storage, set for a
// page written since the previous harvest, by the guest (KVM's log) or by a device (the window's
// DeviceDirtyLog). Bit i % 64 of word i / 64 is page i, the layout KVM_GET_DIRTY_LOG writes.
// Header-only: the virtio devices' library uses it without the rest of storage/.
#pragma once

#include <bit>
#include <cstdint>
#include <span>
#include <vector>

#include <fmt/format.h>

#include "storage/address.hpp"
#include "util/error.hpp"

namespace lparvisor {

class DirtyBitmap {
  public:
    // A clean bitmap for `bytes` of storage (rounded up to whole pages).
    explicit DirtyBitmap(std::uint64_t bytes)
        : pages_((bytes + kPageSize - 1) / kPageSize), words_((pages_ + 63) / 64, 0) {}

    std::uint64_t pages() const noexcept { return pages_; }
    bool test(std::uint64_t page) const noexcept { return (words_[page / 64] >> (page % 64)) & 1; }
    void set(std::uint64_t page) noexcept { words_[page / 64] |= std::uint64_t{1} << (page % 64); }

    // Dirty pages among [first_page, first_page + count); throws InvalidArgument past the end.
    std::uint64_t count(std::uint64_t first_page, std::uint64_t count) const {
        std::uint64_t dirty = 0;
        for_each_run(first_page, count, [&](std::uint64_t, std::uint64_t run) { dirty += run; });
        return dirty;
    }
    std::uint64_t count() const { return count(0, pages_); }

    // Calls fn(first, length) for each maximal run of dirty pages inside [first_page, +count), in
    // ascending order, so that a run is copied with one memcpy rather than page by page.
    template <typename Fn>
    void for_each_run(std::uint64_t first_page, std::uint64_t count, Fn&& fn) const {
        check_range(first_page, count);
        const std::uint64_t end = first_page + count;
        std::uint64_t page = first_page;
        while (page < end) {
            page = next(page, end, true);
            if (page == end) break;
            const std::uint64_t run_end = next(page, end, false);
            fn(page, run_end - page);
            page = run_end;
        }
    }

    // The raw words, for the producers of dirty bits (KVM_GET_DIRTY_LOG, DeviceDirtyLog).
    std::span<std::uint64_t> words() noexcept { return words_; }

  private:
    void check_range(std::uint64_t first_page, std::uint64_t count) const {
        if (first_page > pages_ || count > pages_ - first_page)
            throw Error(ErrorKind::InvalidArgument,
                        fmt::format("dirty bitmap: pages {}-{} lie outside its {} pages",
                                    first_page, first_page + count, pages_));
    }
    // The first page in [page, end) whose bit equals `dirty`, or end.
    std::uint64_t next(std::uint64_t page, std::uint64_t end, bool dirty) const noexcept {
        while (page < end) {
            // This word's bits from `page` on, inverted when looking for a clean page.
            const std::uint64_t word = dirty ? words_[page / 64] : ~words_[page / 64];
            const std::uint64_t from_page = word >> (page % 64);
            if (from_page != 0) {
                const std::uint64_t found =
                    page + static_cast<std::uint64_t>(std::countr_zero(from_page));
                return found < end ? found : end;
            }
            page = (page / 64 + 1) * 64;  // nothing left in this word
        }
        return end;
    }

    std::uint64_t pages_;
    std::vector<std::uint64_t> words_;
};

}  // namespace lparvisor
