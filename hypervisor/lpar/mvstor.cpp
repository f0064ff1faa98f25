// The LPAR controlling section: MVSTOR, following the patent's steps 201-211 (GB 2256513 A,
// Fig. 2) with the arena/window mapping of DESIGN.md, as stop-and-copy (the patent) or live
// (pre-copy with dirty logging, then short stops; DESIGN.md "MVSTOR, live").
#include <algorithm>
#include <bit>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "lpar/hypervisor.hpp"
#include "storage/page_mover.hpp"
#include "util/error.hpp"
#include "util/time.hpp"

namespace lparvisor {

std::vector<std::string> drain_devices(const std::vector<std::shared_ptr<Quiescable>>& devices,
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

void resume_devices(const std::vector<std::shared_ptr<Quiescable>>& devices) {
    for (const auto& d : devices) d->resume_accepting();
}

struct Hypervisor::Move {
    const control::MvstorRequest& request;
    std::shared_ptr<Lpar> lpar;
    ArenaRange from;
    ArenaRange to;
    control::MvstorResult result;
    std::vector<std::shared_ptr<Quiescable>> devices;
    EventHub& events;

    void phase(const char* name, Clock::time_point since) {
        result.phases.push_back({name, microseconds_since(since)});
        events.publish("mvstor.phase", request.lpar,
                       {{"phase", name}, {"us", result.phases.back().microseconds}});
    }
    Error fail(ErrorKind kind, const std::string& message) {
        events.publish("mvstor.failed", request.lpar, {{"message", message}});
        return Error(kind, message);
    }
    // SALE and SIE with the new MSO: points (part of) the guest window, which the memslot and
    // every device use, at its new place. The old range may already be partly overwritten, so
    // if that fails the guest cannot go on: it is stopped with the reason.
    void remap(std::uint64_t guest_offset, std::uint64_t length, ArenaOffset arena_offset) {
        try {
            lpar->window().remap_part(guest_offset, length, arena_offset);
        } catch (const Error& e) {
            lpar->stop(std::string("MVSTOR failed re-mapping the guest window: ") + e.what());
            resume_devices(devices);
            lpar->resume();
            throw fail(e.kind(), e.what());
        }
    }
    std::string busy_message(const std::vector<std::string>& busy) const {
        std::string names;
        for (const auto& b : busy) names += (names.empty() ? "" : ", ") + b;
        return fmt::format(
            "{}: MVSTOR abandoned: device(s) still busy after {} ms: {}; the LPAR "
            "runs on at its old origin {} MiB, nothing was moved",
            request.lpar, request.drain_timeout.count(), names, from.start.value / kMiB);
    }
};

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

// Populating costs 1.2 ms/MiB on 4 KiB shmem: in slices, so that a cancel is seen quickly.
constexpr std::uint64_t kPopulateSlice = 16 * kMiB;

std::uint64_t count_bits(const std::vector<std::uint64_t>& bitmap, std::uint64_t first_page,
                         std::uint64_t pages) {
    std::uint64_t n = 0;
    for (std::uint64_t p = first_page; p < first_page + pages; ++p)
        n += (bitmap[p / 64] >> (p % 64)) & 1;
    return n;
}

// Copies the dirty pages of guest range [offset, +length) from src to dst (both arena offsets of
// guest offset `offset`). Returns bytes copied.
std::uint64_t copy_dirty_pages(Arena& arena, const std::vector<std::uint64_t>& bitmap,
                               std::uint64_t offset, std::uint64_t length, ArenaOffset src,
                               ArenaOffset dst) {
    auto source = arena.bytes({src, length});
    auto target = arena.bytes({dst, length});
    std::uint64_t copied = 0;
    const std::uint64_t first = offset / kPageSize;
    for (std::uint64_t page = 0; page < length / kPageSize; ++page) {
        std::uint64_t p = first + page;
        if (((bitmap[p / 64] >> (p % 64)) & 1) == 0) continue;
        std::memcpy(target.data() + page * kPageSize, source.data() + page * kPageSize, kPageSize);
        copied += kPageSize;
    }
    return copied;
}

}  // namespace

control::MvstorResult Hypervisor::mvstor(const control::MvstorRequest& request) {
    const auto accepted = Clock::now();
    auto operation = begin_storage_operation(request.lpar, "MVSTOR");
    Move move{request, active_lpar(request.lpar), {}, {}, {}, {}, events_};
    move.result.lpar = request.lpar;
    move.result.mode = request.mode == control::MvstorMode::Live ? "live" : "stop-and-copy";

    // Step 203 first, while the guest still runs: a refused request must not even pause it.
    // Nothing else can change the map meanwhile (storage_operation_mutex_).
    auto t = Clock::now();
    {
        std::lock_guard lock(map_mutex_);
        move.from = map_.find(request.lpar).range;
        move.to = map_.check_move(request.lpar, ArenaOffset{request.origin_mib * kMiB});
    }
    move.phase("check_target", t);
    move.result.old_origin_mib = move.from.start.value / kMiB;
    move.result.new_origin_mib = move.to.start.value / kMiB;
    move.devices = move.lpar->devices();

    RelocatingMark mark(map_mutex_, relocating_, cancel_requested_, final_stop_begun_,
                        request.lpar);
    spdlog::info("MVSTOR {} ({}): {} -> {}", request.lpar, move.result.mode,
                 format_range_mib(move.from.start.value, move.from.size),
                 format_range_mib(move.to.start.value, move.to.size));

    if (request.mode == control::MvstorMode::Live)
        live_move(move);
    else
        stop_and_copy(move);

    // The LPAR owns its new range from here; scrub what it vacated, after the resume and
    // before anyone else can own it.
    {
        std::lock_guard lock(map_mutex_);
        map_.move(request.lpar, move.to.start);
    }
    t = Clock::now();
    scrub(arena_, keys_, vacated_range(move.from, move.to.start));
    move.phase("scrub", t);
    auto& result = move.result;
    result.total_us = microseconds_since(accepted);
    if (result.stops_us.empty()) result.stops_us.push_back(result.pause_us);

    // Step 211: report.
    spdlog::info(
        "MVSTOR {}: done ({}), {} copied, {} recopied, {} stop(s), pause {:.3f} ms, "
        "total {:.3f} ms",
        request.lpar, result.policy_branch, format_mib(result.bytes_copied),
        format_mib(result.bytes_recopied), result.stops_us.size(), result.pause_us / 1000.0,
        result.total_us / 1000.0);
    nlohmann::json phases = nlohmann::json::array();
    for (const auto& p : result.phases)
        phases.push_back({{"phase", p.phase}, {"us", p.microseconds}});
    events_.publish("mvstor.done", request.lpar,
                    {{"old_origin_mib", result.old_origin_mib},
                     {"new_origin_mib", result.new_origin_mib},
                     {"mode", result.mode},
                     {"bytes_copied", result.bytes_copied},
                     {"bytes_recopied", result.bytes_recopied},
                     {"stops_us", result.stops_us},
                     {"policy_branch", result.policy_branch},
                     {"pause_us", result.pause_us},
                     {"total_us", result.total_us},
                     {"phases", phases}});
    return result;
}

void Hypervisor::begin_final_stop(Move& move) {
    bool cancelled;
    {
        std::lock_guard lock(map_mutex_);
        cancelled = cancel_requested_;
        if (!cancelled) final_stop_begun_ = true;
    }
    if (!cancelled) return;
    // Nothing has changed but the backing of the free target range: give it back unbacked.
    scrub(arena_, keys_, newly_occupied_range(move.from, move.to.start));
    spdlog::info("MVSTOR {}: cancelled before the stop; nothing moved", move.request.lpar);
    throw move.fail(ErrorKind::Busy, move.request.lpar +
                                         ": MVSTOR cancelled by the operator "
                                         "before its final stop; nothing was moved");
}

bool Hypervisor::stop_and_drain(Move& move, std::vector<std::string>& busy, bool record_phases) {
    auto t = Clock::now();
    move.lpar->pause();  // step 201
    if (record_phases) move.phase("stop_vcpus", t);
    t = Clock::now();
    busy = drain_devices(move.devices, move.request.drain_timeout);  // step 202
    if (busy.empty()) {
        if (record_phases) move.phase("drain_io", t);
        return true;
    }
    resume_devices(move.devices);
    move.lpar->resume();
    return false;
}

void Hypervisor::stop_and_copy(Move& move) {
    auto& result = move.result;
    result.policy_branch = "stop-and-copy";

    // Populate the part of the target the LPAR does not occupy yet, so the copy inside the stop
    // does not fault pages in (KVM-NOTES.md). The operator may cancel until the stop.
    auto t = Clock::now();
    const ArenaRange grown = newly_occupied_range(move.from, move.to.start);
    for (std::uint64_t done = 0; done < grown.size; done += kPopulateSlice) {
        {
            std::lock_guard lock(map_mutex_);
            if (cancel_requested_) break;
        }
        arena_.populate({{grown.start.value + done}, std::min(kPopulateSlice, grown.size - done)});
    }
    move.phase("populate_target", t);
    begin_final_stop(move);

    // Steps 201-202.
    const auto paused_at = Clock::now();
    std::vector<std::string> busy;
    if (!stop_and_drain(move, busy, true)) {
        scrub(arena_, keys_, grown);
        spdlog::warn("MVSTOR {}: devices still busy; resumed at the old origin", move.request.lpar);
        throw move.fail(ErrorKind::Busy, move.busy_message(busy));
    }

    // Steps 204-209: transfer page by page with the storage keys, in the overlap-safe order.
    t = Clock::now();
    result.bytes_copied = move_pages(arena_, keys_, move.from, move.to.start,
                                     [&](std::uint64_t copied, std::uint64_t total) {
                                         events_.publish("mvstor.progress", move.request.lpar,
                                                         {{"copied", copied}, {"total", total}});
                                     });
    move.phase("copy", t);

    t = Clock::now();
    move.remap(0, move.from.size, move.to.start);
    resume_devices(move.devices);
    move.phase("remap", t);

    // Step 210: restart the logical processors.
    t = Clock::now();
    move.lpar->resume();
    move.phase("resume", t);
    result.pause_us = microseconds_since(paused_at);
}

// Live: the LPAR is moved in chunks of at most the distance moved (the whole LPAR at once when
// the target is disjoint), in the overlap-safe order, so each chunk's destination is free
// storage or storage an earlier chunk already vacated. Each chunk is pre-copied while the guest
// runs, re-copying what it dirties (KVM's log plus the devices' log) until the rest fits the
// target pause; then a short stop copies the last dirty pages and the chunk's storage keys and
// re-maps just that chunk of the guest window.
void Hypervisor::live_move(Move& move) {
    auto& result = move.result;
    const auto& policy = move.request.policy;
    const auto started = Clock::now();
    const std::uint64_t size = move.from.size;
    const bool up = move.to.start.value > move.from.start.value;
    const std::uint64_t delta = up ? move.to.start.value - move.from.start.value
                                   : move.from.start.value - move.to.start.value;
    const std::uint64_t chunk = std::min(size, delta);  // both 2 MiB multiples
    std::vector<std::uint64_t> offsets;
    for (std::uint64_t offset = 0; offset < size; offset += chunk) offsets.push_back(offset);
    if (up) std::reverse(offsets.begin(), offsets.end());  // top down when moving up

    auto t = Clock::now();
    move.lpar->set_dirty_tracking(true);
    struct TrackingOff {
        Lpar& lpar;
        ~TrackingOff() {
            try {
                lpar.set_dirty_tracking(false);
            } catch (const Error& e) {
                spdlog::error("{}: turning dirty logging off: {}", lpar.name(), e.what());
            }
        }
    } tracking_off{*move.lpar};
    move.phase("dirty_log_on", t);

    double bytes_per_us = 5000.0;  // first guess (5 GB/s); measured on the first chunk
    std::string fallback;
    std::uint64_t copied_total = 0;
    for (std::size_t index = 0; index < offsets.size(); ++index) {
        const std::uint64_t offset = offsets[index];
        const std::uint64_t length = std::min(chunk, size - offset);
        const ArenaOffset src{move.from.start.value + offset};
        const ArenaOffset dst{move.to.start.value + offset};
        const std::uint64_t first_page = offset / kPageSize, pages = length / kPageSize;

        // Pre-copy round 1: everything that has backing (holes cost nothing).
        t = Clock::now();
        (void)move.lpar->harvest_dirty();  // from now on, every write is seen
        std::uint64_t copied = copy_populated(arena_, src, dst, length);
        auto elapsed = std::max<std::uint64_t>(1, microseconds_since(t));
        if (copied >= 4 * kMiB) bytes_per_us = static_cast<double>(copied) / elapsed;
        result.bytes_copied += copied;
        copied_total += length;
        events_.publish("mvstor.progress", move.request.lpar,
                        {{"copied", copied_total}, {"total", size}});
        unsigned rounds = 1;

        // Further rounds until what is dirty fits half the target pause (the other half is the
        // remap and the resume), or the policy gives up and the stop copies what is left.
        const double budget_bytes = bytes_per_us * policy.target_pause.count() / 2.0;
        for (;;) {
            auto dirty = move.lpar->harvest_dirty();
            std::uint64_t dirty_bytes = count_bits(dirty, first_page, pages) * kPageSize;
            if (static_cast<double>(dirty_bytes) <= budget_bytes) {
                // Put the harvested bits back in effect: copy them now, still running; the stop
                // then only sees what is written after this point.
                result.bytes_recopied += copy_dirty_pages(arena_, dirty, offset, length, src, dst);
                break;
            }
            if (rounds >= policy.max_rounds || Clock::now() - started >= policy.max_total) {
                result.bytes_recopied += copy_dirty_pages(arena_, dirty, offset, length, src, dst);
                if (fallback.empty())
                    fallback = fmt::format(
                        "fallback: chunk {} of {} still had {} dirty after {} "
                        "rounds; copied in the stop",
                        index + 1, offsets.size(), format_mib(dirty_bytes), rounds);
                break;
            }
            result.bytes_recopied += copy_dirty_pages(arena_, dirty, offset, length, src, dst);
            ++rounds;
        }
        result.rounds += rounds;

        // The stop for this chunk.
        if (index == 0) begin_final_stop(move);
        const auto paused_at = Clock::now();
        std::vector<std::string> busy;
        while (!stop_and_drain(move, busy, false)) {
            if (index == 0) {
                scrub(arena_, keys_, newly_occupied_range(move.from, move.to.start));
                throw move.fail(ErrorKind::Busy, move.busy_message(busy));
            }
            // Part of the LPAR has moved already: it cannot go back, so wait for the devices.
            spdlog::warn("MVSTOR {}: devices busy at chunk {}; retrying", move.request.lpar,
                         index + 1);
        }
        auto dirty = move.lpar->harvest_dirty();
        result.bytes_recopied += copy_dirty_pages(arena_, dirty, offset, length, src, dst);
        // The chunk's storage keys, with whatever the guest set during the pre-copy.
        auto src_keys = keys_.frames({src, length});
        auto dst_keys = keys_.frames({dst, length});
        std::memmove(dst_keys.data(), src_keys.data(), src_keys.size());
        move.remap(offset, length, dst);
        resume_devices(move.devices);
        move.lpar->resume();
        auto stop_us = microseconds_since(paused_at);
        result.stops_us.push_back(stop_us);
        result.pause_us += stop_us;
    }
    move.phase("live_copy", started);

    // Hugetlb mappings never merge: one whole re-map gives the window back a single mapping. It
    // is the same content, so it needs no stop.
    if (arena_.hugetlb()) {
        t = Clock::now();
        move.lpar->window().remap(move.to.start);
        move.phase("remap_whole", t);
    }
    result.policy_branch = fallback.empty() ? "converged" : fallback;
}

}  // namespace lparvisor
