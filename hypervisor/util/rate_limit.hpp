// Rate limits for what a guest can make the daemon do at will; here: log lines. A guest that
// writes its console without end, or pokes a device register in a loop, must not fill the
// host's disk or drown the operator's log.
//
// TokenBucket: `burst` events at once, then `per_second` on average. LogRateLimiter: one bucket
// per LPAR for every log line the guest can cause (console lines, unserved ports, device
// errors); lines over the rate are dropped, and the next line that passes is preceded by one
// that says how many were. Both take their clock as a parameter, so tests need no real time.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include <spdlog/spdlog.h>

namespace lparvisor {

using SteadyClock = std::function<std::chrono::steady_clock::time_point()>;

// Not thread-safe: LogRateLimiter guards it.
class TokenBucket {
  public:
    TokenBucket(
        std::uint32_t burst, double per_second,
        SteadyClock clock = [] { return std::chrono::steady_clock::now(); })
        : burst_(std::max<std::uint32_t>(burst, 1)),
          per_second_(per_second),
          clock_(std::move(clock)),
          tokens_(burst_),
          last_(clock_()) {}

    // Takes a token if there is one.
    bool try_take() {
        refill();
        if (tokens_ < 1.0) return false;
        tokens_ -= 1.0;
        return true;
    }
    std::uint32_t burst() const noexcept { return burst_; }
    double per_second() const noexcept { return per_second_; }

  private:
    void refill() {
        const auto now = clock_();
        if (now <= last_) return;  // a clock that steps back gives nothing
        const double seconds = std::chrono::duration<double>(now - last_).count();
        tokens_ = std::min<double>(burst_, tokens_ + seconds * per_second_);
        last_ = now;
    }

    const std::uint32_t burst_;
    const double per_second_;
    const SteadyClock clock_;
    double tokens_;
    std::chrono::steady_clock::time_point last_;
};

class LogRateLimiter {
  public:
    static constexpr std::uint32_t kDefaultBurst = 200;
    static constexpr double kDefaultPerSecond = 20;

    // `owner` names the LPAR in the "suppressed" line.
    explicit LogRateLimiter(
        std::string owner, std::uint32_t burst = kDefaultBurst,
        double per_second = kDefaultPerSecond,
        SteadyClock clock = [] { return std::chrono::steady_clock::now(); })
        : owner_(std::move(owner)), bucket_(burst, per_second, std::move(clock)) {}

    struct Admission {
        bool pass = false;
        std::uint64_t suppressed = 0;  // when pass: lines dropped since the last that passed
    };
    // One line wants out. Dropped lines are counted; the count goes with the next that passes.
    Admission admit() {
        std::lock_guard lock(mutex_);
        if (!bucket_.try_take()) {
            ++suppressed_;
            return {false, 0};
        }
        return {true, std::exchange(suppressed_, 0)};
    }
    std::uint64_t suppressed_now() const {
        std::lock_guard lock(mutex_);
        return suppressed_;
    }
    const std::string& owner() const noexcept { return owner_; }

    // spdlog::log through the bucket. A line the log level hides costs no token.
    template <typename... Args>
    void log(spdlog::level::level_enum level, spdlog::format_string_t<Args...> format,
             Args&&... args) {
        if (!spdlog::should_log(level)) return;
        const Admission admission = admit();
        if (!admission.pass) return;
        if (admission.suppressed != 0)
            spdlog::warn(
                "{}: {} guest-triggered log line(s) suppressed (limit: {} at once, then {}/s)",
                owner_, admission.suppressed, bucket_.burst(), bucket_.per_second());
        spdlog::log(level, format, std::forward<Args>(args)...);
    }

  private:
    const std::string owner_;
    mutable std::mutex mutex_;
    TokenBucket bucket_;
    std::uint64_t suppressed_ = 0;
};

// For a device or log built without an LPAR's limiter (unit tests, fuzzers): one of its own.
inline std::shared_ptr<LogRateLimiter> own_log_limiter(std::shared_ptr<LogRateLimiter> given,
                                                       const std::string& owner) {
    return given ? std::move(given) : std::make_shared<LogRateLimiter>(owner);
}

}  // namespace lparvisor
