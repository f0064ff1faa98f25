// What the control socket can ask of the hypervisor. The JSON-RPC layer (json_rpc.cpp) turns
// requests into these calls and results back into JSON; the daemon's Hypervisor implements it.
// Methods throw lparvisor::Error on refusal; the error kind picks the JSON-RPC error code.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace lparvisor::control {

struct LparStatus {
    std::string name;
    std::uint64_t origin_mib = 0;
    std::uint64_t size_mib = 0;
    std::uint64_t gap_mib = 0;  // free storage up to the next LPAR or the end of main storage
    std::string state;          // "defined", "running", "stopped", "relocating"
    bool has_storage = true;    // false for "defined": origin/size/gap are then the definition's
    std::string reason;         // why it stopped ("guest exit 0", "triple fault ...")
    unsigned vcpus = 0;
    std::string guest = "firmware";  // or "linux"
    // EXPAND: how far the LPAR may grow (its virtio-mem region ends there; == size_mib when it
    // has none), and how much of the region the guest has plugged.
    std::uint64_t max_size_mib = 0;
    std::uint64_t plugged_mib = 0;
};

struct SystemStatus {
    std::uint64_t main_storage_mib = 0;
    std::uint64_t free_mib = 0;
    std::vector<LparStatus> lpars;  // sorted by origin
};

enum class MvstorMode { StopAndCopy, Live };

// Bounds for a live MVSTOR: pre-copy while the guest runs, then short stops.
struct LivePolicy {
    std::chrono::microseconds target_pause{1000};  // aim for stops no longer than this
    unsigned max_rounds = 30;                      // pre-copy rounds per chunk before falling back
    std::chrono::milliseconds max_total{30000};    // then stop-and-copy the remainder
};

struct MvstorRequest {
    std::string lpar;
    std::uint64_t origin_mib = 0;
    std::chrono::milliseconds drain_timeout{10000};  // step 202
    MvstorMode mode = MvstorMode::StopAndCopy;
    LivePolicy policy;
};

struct PhaseTiming {
    std::string
        phase;  // "stop_vcpus", "drain_io", "check_target", "copy", "remap", "resume", "scrub"
    std::uint64_t microseconds = 0;
};

// One stop of a move, phase by phase, in microseconds on the monotonic clock. Nothing is
// allocated and no event published between stop_vcpus and resume. pause_us runs from the request
// to stop the vCPUs until every vCPU thread has left its park again, about to re-enter KVM_RUN
// (what resume_us ends at). harvest_us is a live stop's last dirty-log read (0 for a chunk
// without pre-copy); stop-and-copy moves each page with its key, so its keys are in copy_us.
struct StopTiming {
    std::uint64_t stop_vcpus_us = 0;
    std::uint64_t drain_us = 0;
    std::uint64_t harvest_us = 0;
    std::uint64_t copy_us = 0;
    std::uint64_t keys_us = 0;
    std::uint64_t remap_us = 0;
    std::uint64_t resume_us = 0;
    std::uint64_t pause_us = 0;
    std::uint64_t bytes = 0;   // copied inside this stop
    std::uint64_t chunks = 1;  // live: the chunks this stop moved (a batch of small ones)
};

struct MvstorResult {
    std::string lpar;
    std::uint64_t old_origin_mib = 0;
    std::uint64_t new_origin_mib = 0;
    std::uint64_t bytes_copied = 0;
    std::vector<PhaseTiming> phases;  // in the order they ran
    std::uint64_t pause_us = 0;       // vCPUs stopped -> vCPUs running again (sum of stops)
    std::uint64_t total_us = 0;       // request accepted -> vacated storage scrubbed
    // Live mode: each stop's pause-to-resume, the pre-copy rounds, what was copied again because
    // the guest (or a device) dirtied it, and which branch of the policy finished the move.
    std::string mode = "stop-and-copy";  // or "live"
    std::vector<std::uint64_t> stops_us;
    unsigned rounds = 0;
    std::uint64_t bytes_recopied = 0;
    std::string policy_branch;      // "stop-and-copy", "converged", "fallback: ..."
    std::vector<StopTiming> stops;  // each stop's phases, in order (stops_us are their pauses)
    // Live: the dirty log used (Lpar::dirty_log_method); empty for stop-and-copy.
    std::string dirty_log;
};

// EXCHANGE (claim 7): two LPARs trade their storage areas, equal sizes in place, or two
// neighbours of any sizes swap positions.
struct ExchangeRequest {
    std::string a;
    std::string b;
    std::chrono::milliseconds drain_timeout{10000};
};

struct ExchangeResult {
    std::string a, b;
    std::uint64_t a_old_origin_mib = 0, a_new_origin_mib = 0;
    std::uint64_t b_old_origin_mib = 0, b_new_origin_mib = 0;
    std::uint64_t bytes_moved = 0;
    std::uint64_t pause_us = 0;
    std::uint64_t total_us = 0;
    std::vector<PhaseTiming> phases;
};

// The MVSTORs of other LPARs that open `extra_mib` of free storage directly above `lpar`
// (storage.grow's plan), cheapest first by bytes copied.
struct GrowPlanStep {
    std::string lpar;
    std::uint64_t from_mib = 0, to_mib = 0, size_mib = 0;
};
struct GrowPlanResult {
    std::string lpar;
    std::uint64_t extra_mib = 0;
    bool possible = false;
    std::vector<GrowPlanStep> steps;
    std::uint64_t bytes_copied = 0;
    std::string reason;
    bool carried_out = false;         // make_room: the moves were made
    std::vector<MvstorResult> moves;  // their results, in order
};

// A virtio-blk disk of an LPAR: a raw image file. latency_ms is added to every request
// (emulates slow storage; it is also how tests hold a device busy through an MVSTOR drain).
struct DiskDefinition {
    std::string path;
    bool read_only = false;
    std::uint32_t latency_ms = 0;
    bool operator==(const DiskDefinition&) const = default;
};

// What the daemon does when an LPAR's guest reboots, powers off or crashes (QEMU's -action,
// Cloud Hypervisor's reboot handling): re-IPL it in place with its storage scrubbed, stop it
// (the registers and the guest's words in the reason), or deactivate it (its storage scrubbed
// and freed). The order is protocol_schema.hpp's kGuestActions.
enum class GuestAction { Restart, Stop, Deactivate };

// An LPAR definition (lpar.define). Without an origin, activation places it first-fit. It runs
// the test firmware (`firmware`, or the daemon's default) unless `kernel` names a Linux kernel.
struct LparDefinition {
    std::string name;
    std::optional<std::uint64_t> origin_mib;
    std::uint64_t size_mib = 0;
    unsigned vcpus = 1;
    std::string firmware;  // empty: the daemon's default test firmware
    std::uint64_t rewrite_pages_per_sec = 0;
    std::uint64_t working_set_mib = 0;
    std::uint64_t round_limit = 0;
    std::string kernel;  // bzImage or vmlinux: boots Linux instead of the firmware
    std::string initrd;
    std::string cmdline;
    std::vector<DiskDefinition> disks;
    bool rng = true;  // a virtio-rng device
    // Above size_mib up to here the LPAR gets a virtio-mem region that storage.expand fills
    // (0: no region, the LPAR cannot grow).
    std::uint64_t max_size_mib = 0;
    // A guest reboot (ACPI or i8042 reset, a Linux guest's triple fault), a power-off (ACPI S5,
    // the firmware's exit) and a crash (a firmware's triple fault, an exit nothing can serve).
    GuestAction on_reboot = GuestAction::Restart;
    GuestAction on_poweroff = GuestAction::Stop;
    GuestAction on_crash = GuestAction::Stop;
    bool operator==(const LparDefinition&) const = default;
};

// EXPAND and shrink (claim 6): the LPAR's storage grows into the free storage directly above it
// (or gives its top back); the guest learns of it through its virtio-mem device and plugs (or
// unplugs) the blocks. `timeout` bounds the wait for the guest.
struct ResizeRequest {
    std::string lpar;
    std::uint64_t mib = 0;
    std::chrono::milliseconds timeout{10000};
};

struct ResizeResult {
    std::string lpar;
    std::uint64_t old_size_mib = 0;
    std::uint64_t new_size_mib = 0;
    std::uint64_t plugged_mib = 0;  // of the virtio-mem region, when the guest was done
    std::uint64_t total_us = 0;     // request accepted -> guest done (and the top scrubbed)
};

// storage.grow: the room-making moves (as storage.make_room), then the EXPAND.
struct GrowResult {
    GrowPlanResult plan;
    ResizeResult expansion;
};

// system.stats and the HTTP listener's /metrics: the daemon's counters. Operation counters count
// since the daemon started; an LPAR's vCPU and disk counters since its IPL (they start again at 0
// when it is re-IPLed: `ipl` says which IPL they belong to).
struct ExitCount {
    std::string reason;  // io, mmio, hlt, shutdown, internal_error, fail_entry, interrupted, ...
    std::uint64_t count = 0;
};
struct LparStats {
    std::string name;
    std::string state;  // as in lpar.list
    std::string guest;  // "firmware" or "linux"
    bool has_storage = false;
    std::uint64_t origin_mib = 0;
    std::uint64_t size_mib = 0;
    std::uint64_t plugged_mib = 0;      // of its virtio-mem region
    std::uint64_t ipl = 0;              // which IPL the counters below count (0: never IPLed)
    std::vector<ExitCount> vcpu_exits;  // every reason, zeros included, in a fixed order
    std::uint64_t vcpu_run_us = 0;      // time its vCPUs spent in KVM_RUN, summed
    std::uint64_t disk_requests = 0;    // virtio-blk requests, all disks (failed ones included)
    std::uint64_t disk_errors = 0;
    std::uint64_t disk_read_bytes = 0;
    std::uint64_t disk_written_bytes = 0;
};
struct OutcomeCount {
    std::string outcome;  // "ok", or the error's kind: not_found, invalid_argument, refused, ...
    std::uint64_t count = 0;
};
struct OperationStats {
    std::string kind;                    // mvstor, exchange, expand, shrink
    std::vector<OutcomeCount> outcomes;  // every outcome, zeros included, in a fixed order
    std::uint64_t bytes_copied = 0;      // by the successful ones (exchange: bytes moved)
    std::uint64_t bytes_recopied = 0;    // live MVSTOR: copied again because the guest wrote them
};
// The pauses of MVSTOR (each stop of a live move) and EXCHANGE, as a Prometheus histogram.
struct PauseHistogram {
    std::vector<std::uint64_t> upper_us;    // bucket bounds, ascending; +Inf is implied
    std::vector<std::uint64_t> cumulative;  // pauses <= each bound
    std::uint64_t count = 0;
    std::uint64_t sum_us = 0;
};
struct SystemStats {
    std::uint64_t main_storage_mib = 0;
    std::uint64_t free_mib = 0;
    std::uint64_t largest_free_gap_mib = 0;
    std::uint64_t uptime_us = 0;
    std::vector<LparStats> lpars;  // as lpar.list orders them: by origin, then the defined ones
    std::vector<OperationStats> operations;  // mvstor, exchange, expand, shrink
    PauseHistogram pauses;
};

// A piece of an LPAR's serial output (lpar.console). Offsets count the bytes the guest wrote
// since its IPL; `ipl` names that IPL (activation, reset and restart each start a new one, and
// the offsets start again at 0).
struct ConsoleText {
    std::string text;
    std::uint64_t start = 0;  // the offset of text's first byte
    std::uint64_t ipl = 0;
};

// Something that happened, pushed to subscribed clients as a JSON-RPC notification
// {"jsonrpc":"2.0","method":"event","params":{"event": type, "lpar": ..., ...data}}.
//   "lpar.state"       data: {"state", "reason"}          any state change (incl. guest exit/fault)
//   "mvstor.phase"     data: {"phase", "us"}              each finished MVSTOR phase
//   "mvstor.progress"  data: {"copied", "total"} (bytes)  live: before each chunk's stop;
//                                                        stop-and-copy: after its stop
//   "mvstor.done"      data: the MvstorResult as in storage.mvstor's result
//   "mvstor.failed"    data: {"message"}                  refused late, timed out or cancelled
// Microseconds on the wall clock (since the Unix epoch) and on the monotonic clock
// (CLOCK_MONOTONIC: for intervals between events of one run of the daemon).
inline std::int64_t now_wall_us() {
    return std::chrono::duration_cast<std::chrono::microseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}
inline std::int64_t now_monotonic_us() {
    return std::chrono::duration_cast<std::chrono::microseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

// --- Events: what lpar/ publishes, each under its name (protocol_schema.hpp's kEventSchemas).
// control/event_json.cpp alone turns them into JSON, with the result serializers where an event
// reports a result (mvstor.done, exchange.done, storage.expanded, storage.shrunk), so that an
// event and the result it reports can never disagree.
struct StateChange {  // lpar.state
    std::string state;
    std::string reason;
};
struct GuestEventReport {  // lpar.guest_event
    std::string guest_event;
    std::string action;
    std::string reason;
};
struct Restarted {  // lpar.restart
    std::string cause;
    std::uint64_t origin_mib = 0;
};
struct MvstorStarted {  // mvstor.started
    std::uint64_t old_origin_mib = 0;
    std::uint64_t new_origin_mib = 0;
    std::uint64_t size_mib = 0;
    std::string mode;
};
struct PhaseDone {  // mvstor.phase, exchange.phase, expand.phase, shrink.phase
    std::string phase;
    std::uint64_t us = 0;
};
struct CopyAdvanced {  // mvstor.progress, exchange.progress
    std::uint64_t copied = 0;
    std::uint64_t total = 0;
};
struct PlugAdvanced {  // expand.progress
    std::uint64_t plugged_mib = 0;
    std::uint64_t total_mib = 0;
};
struct UnplugAdvanced {  // shrink.progress
    std::uint64_t released_mib = 0;
    std::uint64_t total_mib = 0;
};
struct OperationFailed {  // mvstor.failed, exchange.failed, expand.failed, shrink.failed
    std::string message;
};
using EventData = std::variant<StateChange, GuestEventReport, Restarted, MvstorStarted, PhaseDone,
                               CopyAdvanced, PlugAdvanced, UnplugAdvanced, OperationFailed,
                               MvstorResult, ExchangeResult, ResizeResult>;

// One event as it goes out, stamped when it is made (where it happened, not when a client reads
// it); its data serialized by control/event_json.hpp.
struct Event {
    std::string type;
    std::string lpar;
    std::string data_json = "{}";  // a JSON object, serialized (keeps nlohmann out of this header)
    std::int64_t wall_us = now_wall_us();
    std::int64_t monotonic_us = now_monotonic_us();
};
using EventSink = std::function<void(const Event&)>;

// Keeps a subscription alive; destroying it unsubscribes (no call to the sink after that).
class Subscription {
  public:
    virtual ~Subscription() = default;
};

class Api {
  public:
    virtual ~Api() = default;
    virtual SystemStatus list() = 0;
    // The counters (system.stats, /metrics); quick, like list().
    virtual SystemStats stats() = 0;
    // Blocks for the whole relocation; the server runs it off its I/O thread.
    virtual MvstorResult mvstor(const MvstorRequest& request) = 0;
    // The LPAR's serial output: at most `max_bytes` from offset `since` on (start > since when
    // bytes are gone from the ring; a since beyond the end reads nothing), or without `since`
    // the most recent `max_bytes`.
    virtual ConsoleText console(const std::string& lpar, std::optional<std::uint64_t> since,
                                std::size_t max_bytes) = 0;
    // Types `bytes` at the LPAR's serial port: how many were taken (the UART buffers a few KiB;
    // the caller sends the rest later). Refused for an LPAR that is not active.
    virtual std::size_t console_write(const std::string& lpar, std::string_view bytes) = 0;

    // --- Lifecycle. States: "defined" (no storage) -> activate -> "running";
    // stop -> "stopped" (reason "operator stop") -> start -> "running"; reset re-IPLs a running
    // or stopped LPAR in place (storage cleared); deactivate -> "defined" (storage scrubbed and
    // returned to the free map); remove deletes a "defined" LPAR. All throw Error on refusal
    // (NotFound, InvalidArgument, Refused, Busy).
    virtual LparStatus define(const LparDefinition& definition) = 0;
    virtual LparStatus activate(const std::string& lpar) = 0;  // IPL; blocks until vCPUs run
    virtual LparStatus stop(const std::string& lpar) = 0;
    virtual LparStatus start(const std::string& lpar) = 0;
    virtual LparStatus reset(const std::string& lpar) = 0;
    virtual LparStatus deactivate(const std::string& lpar) = 0;
    virtual void remove(const std::string& lpar) = 0;
    // The configuration that recreates this system (same format as lparvisor --config), as JSON.
    virtual std::string system_config() = 0;
    // Cancels the MVSTOR of `lpar` if its final stop has not begun; the mvstor call then fails
    // with Busy "cancelled" and nothing changes. Throws Refused when it is too late, NotFound
    // when no MVSTOR of that LPAR runs.
    virtual void cancel_mvstor(const std::string& lpar) = 0;
    // --- EXCHANGE (claim 7) and making room for storage.grow.
    virtual ExchangeResult exchange(const ExchangeRequest& request) = 0;
    // The plan only; nothing changes.
    virtual GrowPlanResult plan_grow(const std::string& lpar, std::uint64_t extra_mib) = 0;
    // Carries the plan out (stop-and-copy or live MVSTORs), so the gap above `lpar` is free.
    virtual GrowPlanResult make_room(const std::string& lpar, std::uint64_t extra_mib,
                                     MvstorMode mode) = 0;

    // Events from now on, on any thread; the sink must not block or call back into the Api.
    [[nodiscard]] virtual std::unique_ptr<Subscription> subscribe(EventSink sink) = 0;

    // storage.expand / storage.shrink / storage.grow (claim 6).
    virtual ResizeResult expand(const ResizeRequest& request) = 0;
    virtual ResizeResult shrink(const ResizeRequest& request) = 0;
    virtual GrowResult grow(const ResizeRequest& request, MvstorMode mode) = 0;
};

}  // namespace lparvisor::control
