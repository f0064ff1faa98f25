#pragma once

#include <chrono>
#include <cstdint>

namespace lparvisor {

using Clock = std::chrono::steady_clock;

inline std::uint64_t microseconds_since(Clock::time_point start) {
    return static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start).count());
}

// Microseconds as milliseconds, for messages ("pause 1.234 ms").
inline double as_milliseconds(std::uint64_t microseconds) {
    return static_cast<double>(microseconds) / 1000.0;
}

}  // namespace lparvisor
