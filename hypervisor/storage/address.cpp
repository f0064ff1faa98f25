#include "storage/address.hpp"

#include <fmt/format.h>

namespace lparvisor {

std::string format_mib(std::uint64_t bytes) {
    if (bytes % kMiB == 0) return fmt::format("{} MiB", bytes / kMiB);
    return fmt::format("{:.3f} MiB", static_cast<double>(bytes) / static_cast<double>(kMiB));
}

std::string format_range_mib(std::uint64_t start, std::uint64_t size) {
    auto number = [](std::uint64_t b) {
        return b % kMiB == 0 ? fmt::format("{}", b / kMiB)
                             : fmt::format("{:.3f}", static_cast<double>(b) / kMiB);
    };
    return fmt::format("{}-{} MiB", number(start), number(start + size));
}

}  // namespace lparvisor
