// EXCHANGE (the patent's claim 7) and the room-making half of storage.grow (claim 6).
#include <optional>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "lpar/hypervisor.hpp"
#include "storage/page_mover.hpp"
#include "storage/page_swapper.hpp"
#include "storage/planner.hpp"
#include "util/error.hpp"
#include "util/fault.hpp"
#include "util/time.hpp"

namespace lparvisor {

namespace {

// Where each LPAR of an exchange goes. Equal sizes: each takes the other's origin. Neighbours:
// the upper one moves to the lower origin and the lower one follows it.
struct ExchangeShape {
    bool equal = false;
    ArenaRange lower, upper;
    ArenaOffset a_new, b_new;
};

// Refused unless the LPARs are of equal size or adjacent.
ExchangeShape exchange_shape(const control::ExchangeRequest& request, const ArenaRange& a,
                             const ArenaRange& b) {
    ExchangeShape shape;
    shape.equal = a.size == b.size;
    const bool a_below = a.start < b.start;
    shape.lower = a_below ? a : b;
    shape.upper = a_below ? b : a;
    if (!shape.equal && shape.lower.end() != shape.upper.start.value)
        throw Error(ErrorKind::Refused,
                    fmt::format("{} ({}) and {} ({}) differ in size and are not neighbours: an "
                                "exchange in place needs equal sizes or adjacent LPARs",
                                request.a, format_range_mib(a.start.value, a.size), request.b,
                                format_range_mib(b.start.value, b.size)));
    if (shape.equal) {
        shape.a_new = b.start;
        shape.b_new = a.start;
    } else {
        const ArenaOffset upper_new = shape.lower.start;
        const ArenaOffset lower_new{shape.lower.start.value + shape.upper.size};
        shape.a_new = a_below ? lower_new : upper_new;
        shape.b_new = a_below ? upper_new : lower_new;
    }
    return shape;
}

}  // namespace

control::ExchangeResult Hypervisor::run_exchange(const control::ExchangeRequest& request) {
    const auto accepted = Clock::now();
    if (request.a == request.b)
        throw Error(ErrorKind::InvalidArgument,
                    request.a + ": cannot exchange an LPAR with itself");
    auto operation = begin_storage_operation(request.a, "EXCHANGE");
    auto lpar_a = operable_lpar(request.a, "EXCHANGE");
    auto lpar_b = operable_lpar(request.b, "EXCHANGE");
    control::ExchangeResult result;
    result.a = request.a;
    result.b = request.b;
    auto phase = [&](const char* name, Clock::time_point since) {
        const std::uint64_t us = microseconds_since(since);
        result.phases.push_back({name, us});
        events_.publish("exchange.phase", request.a, control::PhaseDone{name, us});
    };
    const CopyProgress progress = [&](std::uint64_t done, std::uint64_t total) {
        events_.publish("exchange.progress", request.a, control::CopyAdvanced{done, total});
    };

    // Which shape, decided before anything stops: a refused exchange must not pause anyone.
    auto t = Clock::now();
    ArenaRange a, b;
    {
        std::lock_guard lock(map_mutex_);
        a = map_.find(request.a).range;
        b = map_.find(request.b).range;
    }
    const ExchangeShape shape = exchange_shape(request, a, b);
    const bool equal = shape.equal;
    const ArenaRange &lower = shape.lower, &upper = shape.upper;
    const ArenaOffset a_new = shape.a_new, b_new = shape.b_new;
    result.a_old_origin_mib = a.start.value / kMiB;
    result.b_old_origin_mib = b.start.value / kMiB;
    result.a_new_origin_mib = a_new.value / kMiB;
    result.b_new_origin_mib = b_new.value / kMiB;
    phase("check", t);
    spdlog::info("EXCHANGE {} {} ({}): {} -> {}, {} -> {}", request.a, request.b,
                 equal ? "equal sizes" : "neighbours", format_mib(a.start.value),
                 format_mib(a_new.value), format_mib(b.start.value), format_mib(b_new.value));

    // Stop both LPARs and quiesce their devices (steps 201-202 for each). The guards resume
    // both on every way out, or fence them if the exchange could be neither finished nor undone.
    const auto paused_at = Clock::now();
    std::optional<Quiesce> stop_a, stop_b;
    stop_a.emplace(*lpar_a, request.drain_timeout);
    if (stop_a->drained()) stop_b.emplace(*lpar_b, request.drain_timeout);
    phase("stop_vcpus", paused_at);
    if (!stop_a->drained() || !stop_b->drained()) {
        const std::string names = !stop_a->drained() ? stop_a->busy_names() : stop_b->busy_names();
        stop_b.reset();
        stop_a.reset();
        throw Error(ErrorKind::Busy,
                    fmt::format("EXCHANGE {} {} abandoned: device(s) still busy after {} ms: {}; "
                                "both run on where they were, nothing was moved",
                                request.a, request.b, request.drain_timeout.count(), names));
    }
    const std::string at_risk = fmt::format(
        "EXCHANGE {} {} failed and could not be undone; its storage may be either LPAR's",
        request.a, request.b);
    stop_a->at_risk(at_risk);
    stop_b->at_risk(at_risk);

    // Page by page with the keys, through one bounded buffer: no second copy of either LPAR.
    // Swapping is its own inverse; a rotation of neighbours is undone by rotating back.
    bool swapped = false;
    auto exchange_storage = [&] {
        return equal ? swap_equal_ranges(arena_, keys_, a, b, progress)
                     : rotate_adjacent_ranges(arena_, keys_, lower, upper, progress);
    };
    auto exchange_back = [&] {
        if (equal) {
            swap_equal_ranges(arena_, keys_, a, b);
        } else {
            const ArenaRange upper_now{lower.start, upper.size};
            const ArenaRange lower_now{ArenaOffset{lower.start.value + upper.size}, lower.size};
            rotate_adjacent_ranges(arena_, keys_, upper_now, lower_now);
        }
    };
    t = Clock::now();
    try {
        result.bytes_moved = exchange_storage();
        swapped = true;
        fault::point("exchange.copy");
        phase("exchange", t);
        t = Clock::now();
        fault::point("exchange.first_remap");
        lpar_a->window().remap(a_new);
        fault::point("exchange.second_remap");
        lpar_b->window().remap(b_new);
        std::lock_guard lock(map_mutex_);
        map_.reassign(request.a, a_new, request.b, b_new);
    } catch (const std::exception& e) {
        // Undo inside the same stops: the storage goes back, and both windows point at their
        // old origins again (either re-map may have happened or failed half-way).
        const std::string failure =
            fmt::format("EXCHANGE {} {} failed ({})", request.a, request.b, e.what());
        try {
            fault::point("exchange.rollback");
            if (swapped) exchange_back();
            lpar_a->window().remap(a.start);
            lpar_b->window().remap(b.start);
        } catch (const std::exception& undo) {
            const std::string reason =
                fmt::format("{}; undoing it failed too ({})", failure, undo.what());
            stop_a->at_risk(reason);
            stop_b->at_risk(reason);
            spdlog::error("{}", reason);
            throw Error(ErrorKind::System, reason + "; both are fenced");
        }
        stop_a->safe();
        stop_b->safe();
        spdlog::warn("{}; undone, both run on where they were", failure);
        throw Error(ErrorKind::System, failure + "; undone: both run on where they were");
    }
    stop_a->safe();
    stop_b->safe();
    phase("remap", t);
    t = Clock::now();
    stop_b.reset();
    stop_a.reset();
    phase("resume", t);
    result.pause_us = microseconds_since(paused_at);
    result.total_us = microseconds_since(accepted);
    spdlog::info("EXCHANGE {} {}: done, {} moved, pause {:.3f} ms", request.a, request.b,
                 format_mib(result.bytes_moved), as_milliseconds(result.pause_us));
    events_.publish("exchange.done", request.a, result);
    return result;
}

control::GrowPlanResult Hypervisor::plan_grow(const std::string& lpar, std::uint64_t extra_mib) {
    std::vector<StorageArea> areas;
    std::uint64_t main_storage;
    {
        std::lock_guard lock(map_mutex_);
        record(lpar);
        if (!map_.contains(lpar)) throw Error(ErrorKind::Refused, lpar + " is not active");
        areas = map_.areas();
        main_storage = map_.main_storage();
    }
    auto plan = lparvisor::plan_grow(main_storage, areas, lpar, extra_mib * kMiB);
    control::GrowPlanResult result;
    result.lpar = lpar;
    result.extra_mib = extra_mib;
    result.possible = plan.possible;
    result.bytes_copied = plan.bytes_copied;
    result.reason = plan.reason;
    for (const auto& step : plan.steps)
        result.steps.push_back(
            {step.lpar, step.from.value / kMiB, step.to.value / kMiB, step.bytes / kMiB});
    return result;
}

control::GrowPlanResult Hypervisor::make_room(const std::string& lpar, std::uint64_t extra_mib,
                                              control::MvstorMode mode) {
    auto result = plan_grow(lpar, extra_mib);
    if (!result.possible)
        throw Error(ErrorKind::Refused,
                    fmt::format("{}: no way to free {} MiB directly above it: {}", lpar, extra_mib,
                                result.reason));
    for (const auto& step : result.steps) {
        control::MvstorRequest request{step.lpar, step.to_mib};
        request.mode = mode;
        result.moves.push_back(mvstor(request));
    }
    result.carried_out = true;
    spdlog::info("{}: {} MiB free directly above it after {} move(s)", lpar, extra_mib,
                 result.moves.size());
    return result;
}

}  // namespace lparvisor
