#pragma once

#include <chrono>
#include <cstdint>

namespace lparvisor {

using Clock = std::chrono::steady_clock;

inline std::uint64_t microseconds_since(Clock::time_point start) {
    return static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start).count());
}

}  // namespace lparvisor
