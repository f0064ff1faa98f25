// The LPAR controlling section: MVSTOR by stop-and-copy, following the patent's steps 201-211
// (GB 2256513 A, Fig. 2), with the arena/window mapping of DESIGN.md.
#include <algorithm>
#include <thread>

#include <nlohmann/json.hpp>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "lpar/hypervisor.hpp"
#include "storage/page_mover.hpp"
#include "util/error.hpp"
#include "util/time.hpp"

namespace lparvisor {

std::vector<std::string> drain_devices(const std::vector<std::shared_ptr<PortDevice>>& devices,
                                       std::chrono::milliseconds timeout) {
    for (const auto& d : devices) d->stop_accepting();
    auto deadline = Clock::now() + timeout;
    for (;;) {
        std::vector<std::string> busy;
        for (const auto& d : devices)
            if (!d->idle()) busy.push_back(d->name());
        if (busy.empty() || Clock::now() >= deadline) return busy;
        std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
}

void resume_devices(const std::vector<std::shared_ptr<PortDevice>>& devices) {
    for (const auto& d : devices) d->resume_accepting();
}

namespace {

// Marks an LPAR as "relocating" in lpar.list for the lifetime of the operation, and resets the
// cancel bookkeeping that cancel_mvstor() reads.
class RelocatingMark {
public:
    RelocatingMark(std::mutex& mutex, std::string& slot, bool& cancel, bool& final_stop,
                   const std::string& name)
        : mutex_(mutex), slot_(slot), cancel_(cancel), final_stop_(final_stop) {
        std::lock_guard lock(mutex_);
        slot_ = name;
        cancel_ = final_stop_ = false;
    }
    ~RelocatingMark() {
        std::lock_guard lock(mutex_);
        slot_.clear();
        cancel_ = final_stop_ = false;
    }
    RelocatingMark(const RelocatingMark&) = delete;
    RelocatingMark& operator=(const RelocatingMark&) = delete;

private:
    std::mutex& mutex_;
    std::string& slot_;
    bool& cancel_;
    bool& final_stop_;
};

// Populating 1.2 ms/MiB on 4 KiB shmem: in slices, so that a cancel is seen quickly.
constexpr std::uint64_t kPopulateSlice = 16 * kMiB;

}  // namespace

control::MvstorResult Hypervisor::mvstor(const control::MvstorRequest& request) {
    const auto accepted = Clock::now();
    auto operation = begin_storage_operation(request.lpar, "MVSTOR");
    std::shared_ptr<Lpar> target_lpar = active_lpar(request.lpar);

    control::MvstorResult result;
    result.lpar = request.lpar;
    auto phase = [&](const char* name, Clock::time_point since) {
        result.phases.push_back({name, microseconds_since(since)});
        events_.publish("mvstor.phase", request.lpar,
                        {{"phase", name}, {"us", result.phases.back().microseconds}});
    };
    auto fail = [&](ErrorKind kind, const std::string& message) -> Error {
        events_.publish("mvstor.failed", request.lpar, {{"message", message}});
        return Error(kind, message);
    };

    // Step 203 first, while the guest still runs: a refused request must not even pause it.
    // Nothing else can change the map meanwhile (storage_operation_mutex_).
    auto t = Clock::now();
    ArenaRange from;
    ArenaRange to;
    {
        std::lock_guard lock(map_mutex_);
        from = map_.find(request.lpar).range;
        to = map_.check_move(request.lpar, ArenaOffset{request.origin_mib * kMiB});
    }
    phase("check_target", t);
    result.old_origin_mib = from.start.value / kMiB;
    result.new_origin_mib = to.start.value / kMiB;

    RelocatingMark mark(map_mutex_, relocating_, cancel_requested_, final_stop_begun_,
                        request.lpar);
    spdlog::info("MVSTOR {}: {} -> {}", request.lpar, format_range_mib(from.start.value, from.size),
                 format_range_mib(to.start.value, to.size));

    // Populate the part of the target the LPAR does not occupy yet, so the copy inside the stop
    // does not fault pages in (about 1.2 ms/MiB on 4 KiB shmem, KVM-NOTES.md). Until the final
    // stop begins, the operator may cancel: nothing has changed but this free range's backing.
    t = Clock::now();
    const ArenaRange grown = newly_occupied_range(from, to.start);
    auto cancelled = [&] {
        std::lock_guard lock(map_mutex_);
        return cancel_requested_;
    };
    auto abandon = [&] {
        scrub(arena_, keys_, grown);  // give the free range back as it was: unbacked, no keys
        spdlog::info("MVSTOR {}: cancelled before the stop; nothing moved", request.lpar);
        return fail(ErrorKind::Busy, request.lpar + ": MVSTOR cancelled by the operator before "
                                                    "its final stop; nothing was moved");
    };
    for (std::uint64_t done = 0; done < grown.size; done += kPopulateSlice) {
        if (cancelled()) throw abandon();
        arena_.populate({{grown.start.value + done}, std::min(kPopulateSlice, grown.size - done)});
    }
    phase("populate_target", t);
    {
        std::lock_guard lock(map_mutex_);
        if (!cancel_requested_) final_stop_begun_ = true;
    }
    if (cancelled()) throw abandon();

    // Step 201: stop the LPAR's logical processors.
    const auto paused_at = Clock::now();
    target_lpar->pause();
    phase("stop_vcpus", paused_at);

    // Step 202: wait until no I/O processor (device) of the LPAR is busy.
    t = Clock::now();
    auto devices = target_lpar->devices();
    auto busy = drain_devices(devices, request.drain_timeout);
    if (!busy.empty()) {
        resume_devices(devices);
        target_lpar->resume();
        scrub(arena_, keys_, grown);
        std::string names;
        for (const auto& b : busy) names += (names.empty() ? "" : ", ") + b;
        spdlog::warn("MVSTOR {}: devices still busy after {} ms: {}; resumed at the old origin",
                     request.lpar, request.drain_timeout.count(), names);
        throw fail(ErrorKind::Busy,
                   fmt::format("{}: MVSTOR abandoned: device(s) still busy after {} ms: {}; the "
                               "LPAR runs on at its old origin {} MiB, nothing was moved",
                               request.lpar, request.drain_timeout.count(), names,
                               from.start.value / kMiB));
    }
    phase("drain_io", t);

    // Steps 204-209: transfer page by page with the storage keys, in the overlap-safe order.
    t = Clock::now();
    result.bytes_copied = move_pages(arena_, keys_, from, to.start, [&](std::uint64_t copied, std::uint64_t total) {
        if (copied % kOriginAlignment == 0 || copied == total)
            events_.publish("mvstor.progress", request.lpar, {{"copied", copied}, {"total", total}});
    });
    phase("copy", t);

    // SALE and SIE with the new MSO: the guest window (which the memslot and every device use)
    // now maps the new origin; the map records the new owner.
    t = Clock::now();
    try {
        target_lpar->window().remap(to.start);
    } catch (const Error& e) {
        // The old range may already be partly overwritten: the guest cannot go on safely.
        target_lpar->stop(std::string("MVSTOR failed after the copy: ") + e.what());
        resume_devices(devices);
        target_lpar->resume();
        throw fail(e.kind(), e.what());
    }
    {
        std::lock_guard lock(map_mutex_);
        map_.move(request.lpar, to.start);
    }
    resume_devices(devices);
    phase("remap", t);

    // Step 210: restart the logical processors.
    t = Clock::now();
    target_lpar->resume();
    phase("resume", t);
    result.pause_us = microseconds_since(paused_at);

    // Scrub what was vacated, after the resume and before anyone else can own it.
    t = Clock::now();
    scrub(arena_, keys_, vacated_range(from, to.start));
    phase("scrub", t);
    result.total_us = microseconds_since(accepted);

    // Step 211: report.
    spdlog::info("MVSTOR {}: done, {} copied, pause {:.3f} ms, total {:.3f} ms", request.lpar,
                 format_mib(result.bytes_copied), result.pause_us / 1000.0,
                 result.total_us / 1000.0);
    nlohmann::json phases = nlohmann::json::array();
    for (const auto& p : result.phases) phases.push_back({{"phase", p.phase}, {"us", p.microseconds}});
    events_.publish("mvstor.done", request.lpar,
                    {{"old_origin_mib", result.old_origin_mib},
                     {"new_origin_mib", result.new_origin_mib},
                     {"bytes_copied", result.bytes_copied},
                     {"pause_us", result.pause_us},
                     {"total_us", result.total_us},
                     {"phases", phases}});
    return result;
}

}  // namespace lparvisor
