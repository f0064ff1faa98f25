// The LPAR controlling section: MVSTOR, following the patent's steps 201-211 (GB 2256513 A,
// Fig. 2) with the arena/window mapping of DESIGN.md, as stop-and-copy (the patent) or live
// (pre-copy with dirty logging, then short stops; DESIGN.md "MVSTOR, live").
//
// Nothing lost (docs/ARCHITECTURE.md): a move either completes, or leaves the storage map, the
// window and the guest's data as they were (a failed copy or re-map is undone inside the stop;
// the chunks a failed live move had moved are moved back), or, where even that fails, fences the
// LPAR, which then holds both its old and its new range until it is deactivated.
#include <algorithm>
#include <cmath>
#include <functional>
#include <optional>
#include <thread>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "lpar/hypervisor.hpp"
#include "lpar/quiesce.hpp"
#include "storage/page_mover.hpp"
#include "util/error.hpp"
#include "util/fault.hpp"
#include "util/time.hpp"

namespace lparvisor {

struct Hypervisor::Move {
    const control::MvstorRequest& request;
    std::shared_ptr<Lpar> lpar;
    ArenaRange from;
    ArenaRange to;
    control::MvstorResult result;
    EventHub& events;

    std::size_t phases_published = 0;
    bool in_stop = false;  // phases are recorded, and published after the resume

    void phase(const char* name, Clock::time_point since) {
        record(name, microseconds_since(since));
    }
    void record(const char* name, std::uint64_t us) {
        result.phases.push_back({name, us});  // reserved: no allocation inside a stop
        if (!in_stop) publish_phases();
    }
    void publish_phases() {
        for (; phases_published < result.phases.size(); ++phases_published) {
            const auto& done = result.phases[phases_published];
            events.publish("mvstor.phase", request.lpar,
                           control::PhaseDone{done.phase, done.microseconds});
        }
    }
    std::string busy_message(const std::string& names) const {
        return fmt::format("{}: MVSTOR abandoned: device(s) still busy after {} ms: {}",
                           request.lpar, request.drain_timeout.count(), names);
    }
    std::string target() const { return format_range_mib(to.start.value, to.size); }
};

namespace {

// One stop's phases, for the debug log.
std::string describe(const control::StopTiming& t) {
    return fmt::format(
        "pause {} us = stop vCPUs {} + drain {} + harvest {} + copy {} ({}) + keys {} + re-map {} "
        "+ resume {}",
        t.pause_us, t.stop_vcpus_us, t.drain_us, t.harvest_us, t.copy_us, format_mib(t.bytes),
        t.keys_us, t.remap_us, t.resume_us);
}

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

// Populating costs 1.2 ms/MiB on 4 KiB shmem, and a pre-copy round copies at memory speed: both
// in slices, so that a cancel is seen quickly.
constexpr std::uint64_t kCancelSlice = 16 * kMiB;

ErrorKind kind_of(const std::exception& e) {
    if (const auto* error = dynamic_cast<const Error*>(&e)) return error->kind();
    return ErrorKind::System;
}

}  // namespace

bool Hypervisor::move_cancelled() {
    std::lock_guard lock(map_mutex_);
    return cancel_requested_ || shutting_down_.load();
}

namespace {

Error cancelled_error(const std::string& lpar, bool shutting_down) {
    return Error(ErrorKind::Busy, fmt::format("{}: MVSTOR cancelled {} before its final stop", lpar,
                                              shutting_down ? "because the daemon is shutting down"
                                                            : "by the operator"));
}

}  // namespace

void Hypervisor::throw_if_cancelled(Move& move) {
    if (move_cancelled()) throw cancelled_error(move.request.lpar, shutting_down_.load());
}

control::MvstorResult Hypervisor::run_mvstor(const control::MvstorRequest& request) {
    const auto accepted = Clock::now();
    auto operation = begin_storage_operation(request.lpar, "MVSTOR");
    Move move{request, operable_lpar(request.lpar, "MVSTOR"), {}, {}, {}, events_};
    move.result.phases.reserve(16);  // more than any move records
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

    RelocatingMark mark(map_mutex_, relocating_, cancel_requested_, final_stop_begun_,
                        request.lpar);
    spdlog::info("MVSTOR {} ({}): {} -> {}", request.lpar, move.result.mode,
                 format_range_mib(move.from.start.value, move.from.size), move.target());
    events_.publish("mvstor.started", request.lpar,
                    control::MvstorStarted{move.result.old_origin_mib, move.result.new_origin_mib,
                                           move.from.size / kMiB, move.result.mode});

    try {
        if (request.mode == control::MvstorMode::Live)
            live_move(move);
        else
            stop_and_copy(move);
    } catch (const std::exception& e) {
        throw failed_move(move, e);
    }

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
        format_mib(result.bytes_recopied), result.stops_us.size(), as_milliseconds(result.pause_us),
        as_milliseconds(result.total_us));
    events_.publish("mvstor.done", request.lpar, result);
    return result;
}

control::StopTiming Hypervisor::empty_stop(const std::string& lpar,
                                           std::chrono::milliseconds drain_timeout) {
    auto operation = begin_storage_operation(lpar, "an empty stop");
    auto target = operable_lpar(lpar, "an empty stop");
    ArenaRange range;
    {
        std::lock_guard lock(map_mutex_);
        range = map_.find(lpar).range;
    }
    control::StopTiming timing;
    timing.chunks = 0;
    const auto paused_at = Clock::now();
    Quiesce stop(*target, drain_timeout);
    if (!stop.drained())
        throw Error(ErrorKind::Busy,
                    fmt::format("{}: empty stop: still busy: {}", lpar, stop.busy_names()));
    const auto remap_from = Clock::now();
    // The same place: if this failed, the window would be where it was, or the guard fences.
    stop.at_risk(fmt::format("{}: re-mapping its window in place failed", lpar));
    target->window().remap_part(GuestPhysAddr{0}, range.size, range.start);
    stop.safe();
    timing.remap_us = microseconds_since(remap_from);
    stop.release();
    timing.pause_us = microseconds_since(paused_at);
    timing.stop_vcpus_us = stop.stop_vcpus_us();
    timing.drain_us = stop.drain_us();
    timing.resume_us = stop.resume_us();
    return timing;
}

// Every way a move can fail ends here, with the LPAR either whole at its old origin (the
// procedures undo what they did) or fenced. The message says which.
Error Hypervisor::failed_move(Move& move, const std::exception& cause) {
    const std::string& name = move.request.lpar;
    move.in_stop = false;
    move.publish_phases();  // what a stop recorded before it failed
    std::string outcome;
    if (move.lpar->state() == LparState::Failed) {
        // Its storage may be at either place: it keeps both until it is deactivated.
        try {
            std::lock_guard lock(map_mutex_);
            map_.hold(name, move.to);
        } catch (const std::exception& e) {
            spdlog::error("{}: fenced, but cannot hold {}: {}", name, move.target(), e.what());
        }
        outcome = fmt::format(
            "{} is fenced (state failed) and holds {} and {} until it is deactivated", name,
            format_range_mib(move.from.start.value, move.from.size), move.target());
    } else {
        // Whatever a pre-copy or an undone copy left in the free target range goes.
        scrub(arena_, keys_, newly_occupied_range(move.from, move.to.start));
        outcome = fmt::format("the LPAR runs on at its old origin {}, as before",
                              format_mib(move.from.start.value));
    }
    const std::string message = fmt::format("{}; {}", cause.what(), outcome);
    spdlog::warn("{}", message);
    events_.publish("mvstor.failed", name, control::OperationFailed{message});
    return Error(kind_of(cause), message);
}

void Hypervisor::begin_final_stop(Move& move) {
    std::lock_guard lock(map_mutex_);
    if (cancel_requested_ || shutting_down_.load())
        throw cancelled_error(move.request.lpar, shutting_down_.load());
    final_stop_begun_ = true;
}

void Hypervisor::populate_target(Move& move) {
    // Populate the part of the target the LPAR does not occupy yet, so the copy inside the stop
    // does not fault pages in (docs/kvm-notes.md, KVM API). The operator may cancel until the
    // stop.
    auto t = Clock::now();
    const ArenaRange grown = newly_occupied_range(move.from, move.to.start);
    for (std::uint64_t done = 0; done < grown.size; done += kCancelSlice) {
        fault::point("mvstor.populate");
        throw_if_cancelled(move);
        arena_.populate({{grown.start.value + done}, std::min(kCancelSlice, grown.size - done)});
    }
    move.phase("populate_target", t);
}

void Hypervisor::stop_and_copy(Move& move) {
    auto& result = move.result;
    result.policy_branch = "stop-and-copy";
    populate_target(move);
    begin_final_stop(move);
    // What the stop needs is made before it: nothing is allocated or published inside.
    std::string risk =
        fmt::format("MVSTOR to {} failed during its stop and could not be undone", move.target());
    result.stops_us.reserve(1);
    result.stops.reserve(1);
    control::StopTiming timing;

    // Steps 201-202.
    const auto paused_at = Clock::now();
    Quiesce stop(*move.lpar, move.request.drain_timeout);
    if (!stop.drained()) throw Error(ErrorKind::Busy, move.busy_message(stop.busy_names()));
    move.in_stop = true;
    timing.stop_vcpus_us = stop.stop_vcpus_us();
    timing.drain_us = stop.drain_us();
    move.record("stop_vcpus", timing.stop_vcpus_us);
    move.record("drain_io", timing.drain_us);
    stop.at_risk(std::move(risk));

    // Steps 204-209: transfer page by page with the storage keys, in the overlap-safe order;
    // then SALE / SIE with the new MSO: the window, which the memslot and every device use,
    // points at the new place.
    auto t = Clock::now();
    std::uint64_t copied = 0;
    try {
        result.bytes_copied = move_pages(arena_, keys_, move.from, move.to.start,
                                         [&](std::uint64_t done, std::uint64_t /*total*/) {
                                             copied = done;
                                             fault::point("mvstor.copy");
                                         });
        timing.copy_us = microseconds_since(t);
        move.record("copy", timing.copy_us);
        t = Clock::now();
        fault::point("mvstor.remap");
        move.lpar->window().remap_part(GuestPhysAddr{0}, move.from.size, move.to.start);
    } catch (const std::exception& e) {
        // Undo inside the same stop: the pages copied so far go back (what the copy had not
        // reached is intact at the old origin), and the window points at the old origin again
        // (a failed re-map may have left part of it anywhere). If that fails too, the guard
        // fences the LPAR. A failure may allocate: the stop is no longer the fast path.
        move.in_stop = false;
        const std::string failure =
            fmt::format("{}: MVSTOR failed during its stop ({})", move.request.lpar, e.what());
        try {
            fault::point("mvstor.rollback");
            move_pages_back(arena_, keys_, move.from, move.to.start, copied);
            move.lpar->window().remap_part(GuestPhysAddr{0}, move.from.size, move.from.start);
        } catch (const std::exception& undo) {
            stop.at_risk(fmt::format("{}; undoing it failed too ({})", failure, undo.what()));
            throw Error(kind_of(e),
                        fmt::format("{}; undoing it failed too ({})", failure, undo.what()));
        }
        stop.safe();
        throw Error(kind_of(e), failure + "; the copy was undone");
    }
    stop.safe();
    timing.remap_us = microseconds_since(t);
    move.record("remap", timing.remap_us);

    // Step 210: restart the logical processors.
    stop.release();
    timing.resume_us = stop.resume_us();
    timing.pause_us = microseconds_since(paused_at);
    timing.bytes = result.bytes_copied;
    move.record("resume", timing.resume_us);
    result.pause_us = timing.pause_us;
    result.stops_us.push_back(timing.pause_us);
    result.stops.push_back(timing);
    // After the resume: what the stop recorded, and where the copy got to.
    move.in_stop = false;
    move.publish_phases();
    events_.publish("mvstor.progress", move.request.lpar,
                    control::CopyAdvanced{move.from.size, move.from.size});
}

// One chunk of a live move (guest offsets, and where it is in the arena before and after).
struct Hypervisor::Chunk {
    std::uint64_t offset = 0;
    std::uint64_t length = 0;
    ArenaOffset src, dst;
};

// The stop of a live move's chunk: a drained Quiesce in `stop`. The first chunk's stop gives up
// at once when devices stay busy (nothing has moved: the move is abandoned); a later chunk's
// retries for one more drain timeout after its first attempt failed, then throws, and the move
// is undone.
void Hypervisor::stop_for_chunk(Move& move, std::optional<Quiesce>& stop, std::size_t index,
                                std::size_t count) {
    // Set when the first attempt has failed: that attempt already waited one drain timeout for
    // the devices (a deadline taken before it would have passed by then, and never retried).
    std::optional<Clock::time_point> deadline;
    for (;;) {
        stop.emplace(*move.lpar, move.request.drain_timeout);
        if (stop->drained()) return;
        const std::string names = stop->busy_names();
        stop.reset();
        if (index == 0) throw Error(ErrorKind::Busy, move.busy_message(names));
        if (!deadline) deadline = Clock::now() + move.request.drain_timeout;
        if (Clock::now() >= *deadline)
            throw Error(ErrorKind::Busy,
                        fmt::format("{}: MVSTOR: device(s) still busy at the stop for chunk {} "
                                    "of {}, after two drain timeouts of {} ms: {}",
                                    move.request.lpar, index + 1, count,
                                    move.request.drain_timeout.count(), names));
        spdlog::warn("MVSTOR {}: device(s) busy at chunk {} of {} ({}); retrying",
                     move.request.lpar, index + 1, count, names);
    }
}

struct Hypervisor::LiveMove {
    LiveMove(Move& move_, std::vector<Chunk> chunks_)
        : move(move_), chunks(std::move(chunks_)), dirty(move_.lpar->window().size()) {
        // Everything a stop appends to is reserved here: nothing is allocated inside a stop.
        moved.reserve(chunks.size());
        move.result.stops_us.reserve(chunks.size());
        move.result.stops.reserve(chunks.size());
    }
    Move& move;
    const std::vector<Chunk> chunks;
    const Clock::time_point started = Clock::now();
    DirtyBitmap dirty;             // the whole slot's, reused by every harvest
    double bytes_per_us = 5000.0;  // first guess (5 GB/s); measured on the first chunk
    std::string fallback;          // the first time the policy gave up, and why
    std::uint64_t copied_total = 0;
    std::vector<Chunk> moved;  // chunks whose part of the window points at their new place
    std::optional<Quiesce> stop;
    std::optional<Chunk> in_stop;  // the chunk being moved inside `stop`

    void note_fallback(const std::function<std::string()>& why) {
        if (fallback.empty()) fallback = why();
    }
};

// Chunks of at most the distance moved (the whole LPAR at once when the target is disjoint),
// in the overlap-safe order: each chunk's destination is free storage or storage an earlier
// chunk already vacated.
std::vector<Hypervisor::Chunk> Hypervisor::plan_chunks(const Move& move) {
    const std::uint64_t size = move.from.size;
    const bool up = move.to.start.value > move.from.start.value;
    const std::uint64_t delta = up ? move.to.start.value - move.from.start.value
                                   : move.from.start.value - move.to.start.value;
    const std::uint64_t chunk_size = std::min(size, delta);  // both 2 MiB multiples
    std::vector<Chunk> chunks;
    for (std::uint64_t offset = 0; offset < size; offset += chunk_size) {
        const std::uint64_t length = std::min(chunk_size, size - offset);
        chunks.push_back({offset, length, ArenaOffset{move.from.start.value + offset},
                          ArenaOffset{move.to.start.value + offset}});
    }
    if (up) std::reverse(chunks.begin(), chunks.end());  // top down when moving up
    return chunks;
}

// Pre-copies chunk `index` while the guest runs: round 1 copies everything that has backing
// (holes cost nothing), each further round re-copies what the guest dirtied, until what is dirty
// fits half the target pause (the other half is the re-map and the resume) or the policy gives
// up and the stop copies what is left. Before the first stop a cancel abandons the move; after
// it, a shutdown ends the rounds (the stop copies what the last harvest missed).
unsigned Hypervisor::precopy_chunk(LiveMove& live, std::size_t index) {
    Move& move = live.move;
    auto& result = move.result;
    const auto& policy = move.request.policy;
    const Chunk& c = live.chunks[index];
    const std::uint64_t first_page = c.offset / kPageSize, pages = c.length / kPageSize;
    auto check_cancel = [&] {
        if (index == 0) throw_if_cancelled(move);
    };

    auto t = Clock::now();
    fault::point("mvstor.precopy");
    check_cancel();
    fault::point("mvstor.harvest");
    // From now on every write to the chunk is seen.
    move.lpar->harvest_dirty(live.dirty, first_page, pages);
    std::uint64_t copied = 0;
    for (std::uint64_t done = 0; done < c.length; done += kCancelSlice) {
        check_cancel();
        const std::uint64_t slice = std::min(kCancelSlice, c.length - done);
        copied += copy_populated(arena_, ArenaOffset{c.src.value + done},
                                 ArenaOffset{c.dst.value + done}, slice);
    }
    auto elapsed = std::max<std::uint64_t>(1, microseconds_since(t));
    if (copied >= kMiB)
        live.bytes_per_us = static_cast<double>(copied) / static_cast<double>(elapsed);
    result.bytes_copied += copied;

    unsigned rounds = 1;
    const double budget_bytes =
        live.bytes_per_us * static_cast<double>(policy.target_pause.count()) / 2.0;
    for (;;) {
        fault::point("mvstor.precopy");
        check_cancel();
        if (index > 0 && move_cancelled()) break;
        fault::point("mvstor.harvest");
        move.lpar->harvest_dirty(live.dirty, first_page, pages);
        const std::uint64_t dirty_bytes = live.dirty.count(first_page, pages) * kPageSize;
        // Copied now, still running: the stop then only sees what is written later.
        result.bytes_recopied +=
            copy_dirty_pages(arena_, live.dirty, first_page, c.src, c.dst, c.length);
        if (static_cast<double>(dirty_bytes) <= budget_bytes) break;
        if (rounds >= policy.max_rounds || Clock::now() - live.started >= policy.max_total) {
            live.note_fallback([&] {
                return fmt::format(
                    "fallback: chunk {} of {} still had {} dirty after {} rounds; "
                    "copied in the stop",
                    index + 1, live.chunks.size(), format_mib(dirty_bytes), rounds);
            });
            break;
        }
        ++rounds;
    }
    return rounds;
}

// The stop for chunks [index, +count): copies what the pre-copy left of chunk `index` (or,
// without one, all of it), then its storage keys, with whatever the guest set during the
// pre-copy, and re-maps just that chunk of the guest window; then each further chunk of the
// batch whole (its destination is the source the chunk before it just left). On a throw,
// live.in_stop names the chunk the stop held. What the stop needs is made before it (the bitmap
// and the vectors are LiveMove's, reserved), and its timings are recorded after the resume.
void Hypervisor::move_chunk_in_stop(LiveMove& live, std::size_t index, std::size_t count,
                                    bool precopied) {
    Move& move = live.move;
    auto& result = move.result;
    const Chunk& first = live.chunks[index];
    if (index == 0) begin_final_stop(move);
    std::string risk = fmt::format("MVSTOR to {} failed at chunk {} of {} and could not be undone",
                                   move.target(), index + 1, live.chunks.size());
    control::StopTiming timing;
    const auto paused_at = Clock::now();
    stop_for_chunk(move, live.stop, index, live.chunks.size());
    live.in_stop = first;
    live.stop->at_risk(std::move(risk));
    const auto harvest_from = Clock::now();
    fault::point("mvstor.harvest");
    // The last read of the chunk's log: it moves next, so nothing needs re-protecting.
    if (precopied)
        move.lpar->harvest_dirty(live.dirty, first.offset / kPageSize, first.length / kPageSize,
                                 false);
    const auto copy_from = Clock::now();
    Clock::time_point keys_from, remap_from;
    std::uint64_t keys_us = 0, remap_us = 0, whole_bytes = 0;
    for (std::size_t i = index; i < index + count; ++i) {
        const Chunk& c = live.chunks[i];
        const bool dirty_only = precopied && i == index;
        live.in_stop = c;
        fault::point("mvstor.copy");
        const std::uint64_t bytes = copy_chunk_with_keys(arena_, keys_, c.src, c.dst, c.length,
                                                         dirty_only ? &live.dirty : nullptr,
                                                         c.offset / kPageSize, &keys_from);
        (dirty_only ? timing.bytes : whole_bytes) += bytes;
        remap_from = Clock::now();
        keys_us += microseconds_between(keys_from, remap_from);
        fault::point("mvstor.remap");
        move.lpar->window().remap_part(GuestPhysAddr{c.offset}, c.length, c.dst);
        remap_us += microseconds_since(remap_from);
        live.moved.push_back(c);
        live.in_stop.reset();
    }
    const auto resume_from = Clock::now();
    live.stop->safe();
    live.stop->release();
    timing.resume_us = live.stop->resume_us();
    timing.stop_vcpus_us = live.stop->stop_vcpus_us();
    timing.drain_us = live.stop->drain_us();
    live.stop.reset();
    timing.pause_us = microseconds_since(paused_at);
    timing.harvest_us = precopied ? microseconds_between(harvest_from, copy_from) : 0;
    timing.keys_us = keys_us;
    timing.chunks = count;
    timing.remap_us = remap_us;
    const std::uint64_t in_stop_us = microseconds_between(copy_from, resume_from);
    timing.copy_us = in_stop_us > keys_us + remap_us ? in_stop_us - keys_us - remap_us : 0;
    (precopied ? result.bytes_recopied : result.bytes_copied) += timing.bytes;
    result.bytes_copied += whole_bytes;
    timing.bytes += whole_bytes;
    result.stops_us.push_back(timing.pause_us);
    result.stops.push_back(timing);
    result.pause_us += timing.pause_us;
    if (whole_bytes >= kMiB && timing.copy_us > 0)  // the bandwidth the next batch is sized by
        live.bytes_per_us = static_cast<double>(timing.bytes) / static_cast<double>(timing.copy_us);
    spdlog::debug("MVSTOR {}: stop for chunk(s) {}-{} of {}: {}", move.request.lpar, index + 1,
                  index + count, live.chunks.size(), describe(timing));
}

// How many chunks the stop after chunk `index`'s pre-copy moves: that chunk, and as many whole
// chunks after it as half the target pause copies at the measured bandwidth (the other half is
// for the first chunk's dirty pages, the re-maps and the resume). A small slide of a large
// LPAR so takes tens of stops, not hundreds; a chunk larger than that budget goes alone.
std::size_t Hypervisor::chunks_per_stop(const LiveMove& live, std::size_t index) {
    const auto& policy = live.move.request.policy;
    const double budget =
        live.bytes_per_us * static_cast<double>(policy.target_pause.count()) / 2.0;
    const std::size_t left = live.chunks.size() - index;
    const std::uint64_t chunk = live.chunks[index].length;
    const double whole = std::floor(budget / static_cast<double>(chunk));
    const auto extra = static_cast<std::size_t>(std::min(whole, static_cast<double>(left - 1)));
    return 1 + extra;
}

// Live: the LPAR is moved chunk by chunk (plan_chunks). Each chunk is pre-copied while the guest
// runs, re-copying what it dirties (KVM's log plus the devices' log) until the rest fits the
// target pause (precopy_chunk); then a short stop copies the last dirty pages and the chunk's
// storage keys and re-maps just that chunk of the guest window (move_chunk_in_stop). Once
// policy.max_total has passed (or the daemon is shutting down), the remaining chunks are not
// pre-copied: each stop copies its whole chunk. A failure after the first chunk moved undoes
// the move (roll_back).
void Hypervisor::live_move(Move& move) {
    LiveMove live{move, plan_chunks(move)};
    const auto& policy = move.request.policy;

    auto t = Clock::now();
    move.lpar->set_dirty_tracking(true);
    // Off on every way out; on success before the whole re-map, so that KVM maps the moved
    // window with large pages again rather than logging it 4 KiB at a time.
    struct TrackingOff {
        Lpar& lpar;
        bool on = true;
        void off() noexcept {
            if (!std::exchange(on, false)) return;
            try {
                lpar.set_dirty_tracking(false);
            } catch (const Error& e) {
                spdlog::error("{}: turning dirty logging off: {}", lpar.name(), e.what());
            }
        }
        ~TrackingOff() { off(); }
    } tracking_off{*move.lpar};
    move.result.dirty_log = move.lpar->dirty_log_method();
    move.phase("dirty_log_on", t);

    try {
        for (std::size_t index = 0; index < live.chunks.size();) {
            const bool precopy =
                Clock::now() - live.started < policy.max_total && !move_cancelled();
            unsigned rounds = 0;
            if (precopy) {
                rounds = precopy_chunk(live, index);
            } else {
                live.note_fallback([&] {
                    return fmt::format(
                        "fallback: {} before chunk {} of {}; the rest was copied in its stops",
                        move_cancelled()
                            ? "the daemon is shutting down"
                            : fmt::format("max_total ({} ms) reached", policy.max_total.count()),
                        index + 1, live.chunks.size());
                });
            }
            move.result.rounds += rounds;
            const std::size_t count = precopy ? chunks_per_stop(live, index) : 1;
            for (std::size_t i = index; i < index + count; ++i)
                live.copied_total += live.chunks[i].length;
            events_.publish("mvstor.progress", move.request.lpar,
                            control::CopyAdvanced{live.copied_total, move.from.size});
            move_chunk_in_stop(live, index, count, precopy);
            index += count;
        }
    } catch (const std::exception& e) {
        // Nothing has changed but the free target range: the caller scrubs it.
        if (live.moved.empty() && !live.in_stop) throw;
        roll_back(move, live.moved, live.in_stop, live.stop, e);
    }
    move.phase("live_copy", live.started);
    t = Clock::now();
    tracking_off.off();
    move.phase("dirty_log_off", t);

    // Hugetlb mappings never merge: one whole re-map gives the window back a single mapping. It
    // is the same content, so it needs no stop.
    if (arena_.hugetlb()) {
        t = Clock::now();
        move.lpar->window().remap(move.to.start);
        move.phase("remap_whole", t);
    }
    move.result.policy_branch = live.fallback.empty() ? "converged" : live.fallback;
}

// A live move failed after it had begun to move chunks: move them back, newest first (each
// chunk's source is free again once the chunk moved after it is back), inside one stop. If the
// LPAR cannot be stopped with its devices drained, or moving back fails, it is fenced.
void Hypervisor::roll_back(Move& move, const std::vector<Chunk>& moved,
                           const std::optional<Chunk>& in_stop, std::optional<Quiesce>& stop,
                           const std::exception& cause) {
    const std::string& name = move.request.lpar;
    const std::string failure =
        moved.empty() ? fmt::format("{}: MVSTOR failed in its first stop ({})", name, cause.what())
                      : fmt::format("{}: MVSTOR failed after moving {} of its chunks ({})", name,
                                    moved.size(), cause.what());
    spdlog::warn("{}; undoing it", failure);
    if (!stop) {
        stop.emplace(*move.lpar, move.request.drain_timeout);
        if (!stop->drained()) {
            const std::string reason = fmt::format(
                "{}; its devices stayed busy ({}), so it could not be stopped to move them back",
                failure, stop->busy_names());
            stop.reset();
            move.lpar->fence(reason);
            throw Error(kind_of(cause), reason);
        }
    }
    stop->at_risk(failure + "; moving them back failed");
    try {
        fault::point("mvstor.rollback");
        // The chunk in the stop had not moved: its source is intact; point the window at it
        // again in case a failed re-map left that part anywhere.
        if (in_stop)
            move.lpar->window().remap_part(GuestPhysAddr{in_stop->offset}, in_stop->length,
                                           in_stop->src);
        for (auto c = moved.rbegin(); c != moved.rend(); ++c) {
            copy_chunk_with_keys(arena_, keys_, c->dst, c->src, c->length);
            move.lpar->window().remap_part(GuestPhysAddr{c->offset}, c->length, c->src);
        }
    } catch (const std::exception& undo) {
        const std::string reason =
            fmt::format("{}; moving them back failed too ({})", failure, undo.what());
        stop->at_risk(reason);
        stop.reset();  // fences
        throw Error(kind_of(cause), reason);
    }
    stop->safe();
    stop.reset();  // resumes at the old origin
    throw Error(kind_of(cause), failure + (moved.empty() ? "; undone" : "; they were moved back"));
}

}  // namespace lparvisor
