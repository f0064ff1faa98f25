#pragma once

#include <chrono>
#include <cstdint>

namespace lparvisor {

using Clock = std::chrono::steady_clock;

// From `start` to `end` (0 if end is earlier).
inline std::uint64_t microseconds_between(Clock::time_point start, Clock::time_point end) {
    if (end <= start) return 0;
    return static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::microseconds>(end - start).count());
}

inline std::uint64_t microseconds_since(Clock::time_point start) {
    return microseconds_between(start, Clock::now());
}

// Microseconds as milliseconds, for messages ("pause 1.234 ms").
inline double as_milliseconds(std::uint64_t microseconds) {
    return static_cast<double>(microseconds) / 1000.0;
}

}  // namespace lparvisor
