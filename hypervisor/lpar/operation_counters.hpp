// The storage operations' counters for system.stats and /metrics: how many MVSTORs, EXCHANGEs,
// EXPANDs and SHRINKs ended in each outcome, the bytes they copied, and a histogram of the pauses
// they cost the guests. The Hypervisor records each operation once, when its public call returns
// or throws (metered() in lpar/stats.cpp), so an MVSTOR that storage.make_room or storage.grow
// runs counts like one the operator asked for.
//
// Threads: succeeded(), failed() and the snapshots from any thread (one short lock).
#pragma once

#include <array>
#include <cstdint>
#include <mutex>
#include <span>
#include <string_view>

#include "control/api.hpp"
#include "util/error.hpp"

namespace lparvisor {

class OperationCounters {
  public:
    enum class Kind { Mvstor, Exchange, Expand, Shrink };
    static constexpr std::array<std::string_view, 4> kKindNames{"mvstor", "exchange", "expand",
                                                                "shrink"};
    // "ok", then one per ErrorKind in its order: a failed operation counts under its error's kind
    // (a cancelled MVSTOR is busy, a refused target refused ...).
    static constexpr std::array<std::string_view, 6> kOutcomeNames{
        "ok", "invalid_argument", "not_found", "refused", "busy", "system"};
    // Pause buckets (microseconds), from a hardware stop of a small LPAR to a nested-harness one
    // of a large LPAR.
    static constexpr std::array<std::uint64_t, 13> kPauseBucketsUs{
        100,    250,    500,     1'000,   2'500,     5'000,     10'000,
        25'000, 50'000, 100'000, 250'000, 1'000'000, 10'000'000};

    static std::size_t outcome_index(ErrorKind kind) noexcept {
        return 1 + static_cast<std::size_t>(kind);
    }

    // A successful operation: what it copied and each pause it took.
    void succeeded(Kind kind, std::uint64_t bytes_copied, std::uint64_t bytes_recopied,
                   std::span<const std::uint64_t> pauses_us) {
        std::lock_guard lock(mutex_);
        auto& counts = kinds_[static_cast<std::size_t>(kind)];
        ++counts.outcomes[0];
        counts.bytes_copied += bytes_copied;
        counts.bytes_recopied += bytes_recopied;
        for (auto us : pauses_us) {
            for (std::size_t i = 0; i < kPauseBucketsUs.size(); ++i)
                if (us <= kPauseBucketsUs[i]) ++pause_buckets_[i];
            ++pause_count_;
            pause_sum_us_ += us;
        }
    }
    void failed(Kind kind, std::size_t outcome) {
        std::lock_guard lock(mutex_);
        ++kinds_[static_cast<std::size_t>(kind)].outcomes[outcome];
    }

    std::vector<control::OperationStats> operations() const {
        std::lock_guard lock(mutex_);
        std::vector<control::OperationStats> out;
        for (std::size_t k = 0; k < kKindNames.size(); ++k) {
            control::OperationStats stats;
            stats.kind = kKindNames[k];
            for (std::size_t o = 0; o < kOutcomeNames.size(); ++o)
                stats.outcomes.push_back({std::string(kOutcomeNames[o]), kinds_[k].outcomes[o]});
            stats.bytes_copied = kinds_[k].bytes_copied;
            stats.bytes_recopied = kinds_[k].bytes_recopied;
            out.push_back(std::move(stats));
        }
        return out;
    }
    control::PauseHistogram pauses() const {
        std::lock_guard lock(mutex_);
        control::PauseHistogram histogram;
        histogram.upper_us.assign(kPauseBucketsUs.begin(), kPauseBucketsUs.end());
        histogram.cumulative.assign(pause_buckets_.begin(), pause_buckets_.end());
        histogram.count = pause_count_;
        histogram.sum_us = pause_sum_us_;
        return histogram;
    }

  private:
    struct PerKind {
        std::array<std::uint64_t, kOutcomeNames.size()> outcomes{};
        std::uint64_t bytes_copied = 0;
        std::uint64_t bytes_recopied = 0;
    };
    mutable std::mutex mutex_;
    std::array<PerKind, kKindNames.size()> kinds_{};
    std::array<std::uint64_t, kPauseBucketsUs.size()> pause_buckets_{};  // cumulative
    std::uint64_t pause_count_ = 0;
    std::uint64_t pause_sum_us_ = 0;
};

}  // namespace lparvisor
