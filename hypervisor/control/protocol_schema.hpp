// The control protocol described as data: every method with its parameters (type, range,
// default) and every event with its fields. The JSON-RPC layer validates each request against
// these tables (json_rpc.cpp reads a parameter's range and default from here, never from a
// literal of its own), system.describe sends them, and the event hub checks each event it
// publishes against them, so that the description cannot drift from what the daemon does.
// docs/control-protocol.md is the prose; tests/control/test_describe.cpp holds the two together.
//
// Header-only constant tables, so that lpar/ (which publishes events) uses them without linking
// the control library.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

namespace lparvisor::control {

// Limits that are part of the protocol (see docs/control-protocol.md).
// One request line, without '\n'.
inline constexpr std::size_t kMaxRequestBytes = std::size_t{64} * 1024;
inline constexpr std::size_t kMaxNestingDepth = 32;  // arrays/objects inside a request
inline constexpr std::size_t kDefaultConsoleBytes = 4096;
inline constexpr std::size_t kMaxConsoleBytes = std::size_t{1024} * 1024;
inline constexpr std::size_t kMaxConsoleWriteBytes = 4096;  // one lpar.console_write
inline constexpr std::uint64_t kMaxConsoleOffset = (std::uint64_t{1} << 63) - 1;
inline constexpr std::uint64_t kDefaultDrainTimeoutMs = 10000;
inline constexpr std::uint64_t kMaxDrainTimeoutMs = 600000;
// origin_mib is turned into a byte offset by the hypervisor: it must fit in 64 bits as bytes.
inline constexpr std::uint64_t kMaxOriginMib = (std::uint64_t{1} << 44) - 1;
inline constexpr std::uint64_t kMaxSizeMib = kMaxOriginMib;
// An LPAR definition's limits, the same on every path (configuration file, lpar.define, svp
// define, a definition made in code): an LPAR's storage must end below the PCI window
// (LPV_MAX_STORAGE, checked against this in lpar/), and the vCPUs its ACPI tables describe.
inline constexpr std::uint64_t kMaxLparStorageMib = 3584;
inline constexpr std::uint64_t kMinLparStorageMib = 4;  // the test firmware's least
inline constexpr std::uint64_t kMaxVcpus = 8;
inline constexpr std::size_t kMaxLparNameBytes = 31;
inline constexpr std::uint64_t kMaxRewritePagesPerSec = 100'000'000;
inline constexpr std::uint64_t kMaxRoundLimit = 1'000'000'000;
inline constexpr std::size_t kMaxFirmwarePathBytes = 4096;
inline constexpr std::size_t kMaxDisksPerLpar = 8;
inline constexpr std::size_t kMaxPathBytes = 4096;
inline constexpr std::size_t kMaxCmdlineBytes = 2048;
// events.subscribe: names in one filter list, and the length of each.
inline constexpr std::size_t kMaxFilterEntries = 64;
inline constexpr std::size_t kMaxFilterEntryBytes = 128;

enum class ParamType {
    Name,        // a non-empty string (an LPAR's name)
    String,      // a string of at most `max` bytes; absent means empty
    Integer,     // a JSON integer from `min` to `max` (and a multiple of `multiple_of`)
    Boolean,     // true or false
    Choice,      // one of `choices`
    Disks,       // an array of image paths or {path, read_only, latency_ms} objects
    StringList,  // an array of at most `max` strings of 1 .. kMaxFilterEntryBytes bytes
};

struct ParamSchema {
    std::string_view name;
    ParamType type = ParamType::String;
    bool required = false;
    std::uint64_t min = 0;
    std::uint64_t max = 0;  // Integer: largest value; String: most bytes; lists: most entries
    std::uint64_t multiple_of = 1;
    std::string_view multiple_why = {};  // said in the error: "(2 MiB blocks)"
    // The value an absent parameter takes (Integer, Boolean as 0/1, Choice as an index), where
    // has_default; an absent parameter without one is "not given" to the method.
    bool has_default = false;
    std::uint64_t fallback = 0;
    std::span<const std::string_view> choices = {};
    std::string_view description;
};

// Where the server runs a call. Anything that enters the Api leaves the I/O thread, so that a
// hypervisor lock held during a relocation can never stall the socket.
enum class Execution {
    Inline,       // cheap and Api-free (system.ping): answer on the I/O thread
    Query,        // short Api call (lpar.list, lpar.console): the query worker pool
    LongRunning,  // blocks for seconds (storage.mvstor, lpar.activate ...): the long pool
    Session       // about the connection itself (events.subscribe): the server handles it
};

struct MethodSchema {
    std::string_view name;
    Execution execution;
    std::span<const ParamSchema> params;
    std::string_view summary;
};

enum class FieldType { String, Integer, Boolean, Array, Object };

struct FieldSchema {
    std::string_view name;
    FieldType type;
    std::string_view description;
};

struct EventSchema {
    std::string_view name;
    bool has_lpar;  // the event names an LPAR ("lpar"); events.dropped does not
    std::span<const FieldSchema> fields;  // beyond event, lpar, time and monotonic_us
    std::string_view summary;
};

// GuestAction's names (api.hpp), in its order.
inline constexpr std::string_view kGuestActions[] = {"restart", "stop", "deactivate"};

namespace schema_detail {

inline constexpr std::string_view kModes[] = {"stop-and-copy", "live"};
inline constexpr ParamSchema action_param(std::string_view name, std::uint64_t fallback,
                                          std::string_view description) {
    return {.name = name,
            .type = ParamType::Choice,
            .has_default = true,
            .fallback = fallback,
            .choices = kGuestActions,
            .description = description};
}

inline constexpr ParamSchema lpar_param(std::string_view description = "the LPAR's name") {
    return {.name = "lpar", .type = ParamType::Name, .required = true, .description = description};
}
inline constexpr ParamSchema timeout_param(std::string_view description) {
    return {.name = "timeout_ms",
            .type = ParamType::Integer,
            .min = 1,
            .max = kMaxDrainTimeoutMs,
            .has_default = true,
            .fallback = kDefaultDrainTimeoutMs,
            .description = description};
}
inline constexpr ParamSchema mode_param(std::string_view description) {
    return {.name = "mode",
            .type = ParamType::Choice,
            .has_default = true,
            .fallback = 0,
            .choices = kModes,
            .description = description};
}
inline constexpr ParamSchema mib_param(std::uint64_t multiple_of, std::string_view description) {
    return {.name = "mib",
            .type = ParamType::Integer,
            .required = true,
            .min = 2,
            .max = kMaxSizeMib,
            .multiple_of = multiple_of,
            .multiple_why = multiple_of == 2 ? "2 MiB blocks" : "",
            .description = description};
}

inline constexpr ParamSchema kLparOnly[] = {lpar_param()};

inline constexpr ParamSchema kMvstor[] = {
    lpar_param(),
    {.name = "origin_mib",
     .type = ParamType::Integer,
     .required = true,
     .max = kMaxOriginMib,
     .description = "the new origin in main storage, MiB"},
    timeout_param("how long to wait for the LPAR's devices to go idle (step 202)"),
    mode_param("stop-and-copy stops the LPAR for the whole copy; live pre-copies while it runs"),
    {.name = "target_pause_us",
     .type = ParamType::Integer,
     .min = 1,
     .max = 10'000'000,
     .has_default = true,
     .fallback = 1000,
     .description = "live: the pause each stop aims for"},
    {.name = "max_rounds",
     .type = ParamType::Integer,
     .min = 1,
     .max = 10'000,
     .has_default = true,
     .fallback = 30,
     .description = "live: pre-copy rounds per chunk before the rest is copied in the stop"},
    {.name = "max_total_ms",
     .type = ParamType::Integer,
     .max = 3'600'000,
     .has_default = true,
     .fallback = 30'000,
     .description = "live: after this, each remaining chunk is copied whole in its stop"},
};

inline constexpr ParamSchema kConsole[] = {
    lpar_param(),
    {.name = "bytes",
     .type = ParamType::Integer,
     .max = kMaxConsoleBytes,
     .has_default = true,
     .fallback = kDefaultConsoleBytes,
     .description = "at most this many bytes: the most recent, or from `since` on"},
    {.name = "since",
     .type = ParamType::Integer,
     .max = kMaxConsoleOffset,
     .description = "the offset to read from (a previous answer's `next`); absent: the most "
                    "recent bytes"},
};

inline constexpr ParamSchema kConsoleWrite[] = {
    lpar_param(),
    {.name = "data",
     .type = ParamType::String,
     .required = true,
     .max = kMaxConsoleWriteBytes,
     .description = "the bytes to type, as UTF-8 text (control characters as \\u escapes)"},
};

// lpar.define, and each LPAR of the configuration file (which adds "active"): one table.
inline constexpr ParamSchema kDefine[] = {
    {.name = "name",
     .type = ParamType::Name,
     .required = true,
     .max = kMaxLparNameBytes,
     .description = "the new LPAR's name: 1-31 letters, digits, '_', '.' or '-'"},
    {.name = "size_mib",
     .type = ParamType::Integer,
     .required = true,
     .min = kMinLparStorageMib,
     .max = kMaxLparStorageMib,
     .multiple_of = 2,
     .multiple_why = "2 MiB units",
     .description = "its main storage, MiB"},
    {.name = "origin_mib",
     .type = ParamType::Integer,
     .max = kMaxOriginMib,
     .multiple_of = 2,
     .multiple_why = "2 MiB units",
     .description = "where its storage goes at activation; absent: first fit"},
    {.name = "vcpus",
     .type = ParamType::Integer,
     .min = 1,
     .max = kMaxVcpus,
     .has_default = true,
     .fallback = 1,
     .description = "virtual CPUs"},
    {.name = "firmware",
     .type = ParamType::String,
     .max = kMaxFirmwarePathBytes,
     .description = "the guest ELF; absent: the daemon's test firmware"},
    {.name = "rewrite_pages_per_sec",
     .type = ParamType::Integer,
     .max = kMaxRewritePagesPerSec,
     .has_default = true,
     .description = "firmware pacing: pages rewritten per second (0: as fast as it can)"},
    {.name = "working_set_mib",
     .type = ParamType::Integer,
     .max = kMaxLparStorageMib,
     .has_default = true,
     .description = "firmware pacing: the storage it rewrites, at most size_mib (0: all of it)"},
    {.name = "round_limit",
     .type = ParamType::Integer,
     .max = kMaxRoundLimit,
     .has_default = true,
     .description = "firmware: verification rounds before it exits (0: no end)"},
    {.name = "kernel",
     .type = ParamType::String,
     .max = kMaxPathBytes,
     .description = "a Linux bzImage or vmlinux to boot instead of the firmware"},
    {.name = "initrd",
     .type = ParamType::String,
     .max = kMaxPathBytes,
     .description = "the initrd (only with a kernel)"},
    {.name = "cmdline",
     .type = ParamType::String,
     .max = kMaxCmdlineBytes,
     .description = "the kernel command line (only with a kernel)"},
    {.name = "disks",
     .type = ParamType::Disks,
     .max = kMaxDisksPerLpar,
     .description = "virtio-blk disks: image paths or {path, read_only, latency_ms} objects"},
    {.name = "rng",
     .type = ParamType::Boolean,
     .has_default = true,
     .fallback = 1,
     .description = "a virtio-rng device"},
    {.name = "max_size_mib",
     .type = ParamType::Integer,
     .max = kMaxLparStorageMib,
     .multiple_of = 2,
     .multiple_why = "2 MiB units",
     .has_default = true,
     .description = "how far storage.expand may grow it: 0 (not at all) or size_mib and up"},
    action_param("on_reboot", 0,
                 "when the guest reboots (ACPI or i8042 reset, a Linux guest's triple fault): "
                 "restart re-IPLs it in place, storage scrubbed"),
    action_param("on_poweroff", 1, "when the guest powers off (ACPI S5, the firmware's exit)"),
    action_param("on_crash", 1,
                 "when the guest crashes (a firmware's triple fault, an exit nothing can "
                 "serve); stop keeps the registers in the reason"),
};

inline constexpr ParamSchema kExchange[] = {
    {.name = "a", .type = ParamType::Name, .required = true, .description = "one LPAR"},
    {.name = "b", .type = ParamType::Name, .required = true, .description = "the other LPAR"},
    timeout_param("device drain timeout"),
};

inline constexpr ParamSchema kPlanGrow[] = {
    lpar_param(),
    mib_param(1, "how much the LPAR should grow, MiB"),
};
inline constexpr ParamSchema kMakeRoom[] = {
    lpar_param(),
    mib_param(1, "how much room to make behind the LPAR, MiB"),
    mode_param("how the room-making MVSTORs run"),
};
inline constexpr ParamSchema kResize[] = {
    lpar_param("the LPAR's name; it must have been defined with max_size_mib above size_mib"),
    mib_param(2, "how much to add or give back, MiB (virtio-mem's 2 MiB blocks)"),
    timeout_param("how long to wait for the guest to plug or unplug the blocks"),
};
inline constexpr ParamSchema kGrow[] = {
    lpar_param("the LPAR's name; it must have been defined with max_size_mib above size_mib"),
    mib_param(2, "how much to add, MiB (virtio-mem's 2 MiB blocks)"),
    timeout_param("how long to wait for the guest to plug the blocks"),
    mode_param("how the room-making MVSTORs run"),
};

inline constexpr ParamSchema kSubscribe[] = {
    {.name = "events",
     .type = ParamType::StringList,
     .max = kMaxFilterEntries,
     .description = "only these events (names, or a prefix such as \"mvstor.*\"); absent: all"},
    {.name = "lpars",
     .type = ParamType::StringList,
     .max = kMaxFilterEntries,
     .description = "only events about these LPARs (events.dropped always comes); absent: all"},
};

inline constexpr std::span<const ParamSchema> none() {
    return {};
}

// Fields of events.
inline constexpr FieldSchema kStateFields[] = {
    {"state", FieldType::String, "the new state: defined, running, stopped, failed, removed, ..."},
    {"reason", FieldType::String, "why (guest exits and faults included)"},
};
inline constexpr FieldSchema kGuestEventFields[] = {
    {"guest_event", FieldType::String, "what the guest did: reboot, poweroff or crash"},
    {"action", FieldType::String,
     "the LPAR's on_reboot, on_poweroff or on_crash: restart, stop or deactivate"},
    {"reason", FieldType::String, "the guest's words, or the registers of a crash"},
};
inline constexpr FieldSchema kRestartFields[] = {
    {"cause", FieldType::String, "operator reset, guest reboot, guest poweroff or guest crash"},
    {"origin_mib", FieldType::Integer, "where it was re-IPLed (its origin before and after)"},
};
inline constexpr FieldSchema kPhaseFields[] = {
    {"phase", FieldType::String, "the MVSTOR phase that finished"},
    {"us", FieldType::Integer, "how long it took, microseconds"},
};
inline constexpr FieldSchema kProgressFields[] = {
    {"copied", FieldType::Integer, "bytes copied so far"},
    {"total", FieldType::Integer, "bytes to copy"},
};
inline constexpr FieldSchema kMvstorStartedFields[] = {
    {"old_origin_mib", FieldType::Integer, "where the LPAR is"},
    {"new_origin_mib", FieldType::Integer, "where it is going"},
    {"size_mib", FieldType::Integer, "how much storage moves"},
    {"mode", FieldType::String, "stop-and-copy or live"},
};
inline constexpr FieldSchema kMvstorDoneFields[] = {
    {"old_origin_mib", FieldType::Integer, "where the LPAR was"},
    {"new_origin_mib", FieldType::Integer, "where it is now"},
    {"mode", FieldType::String, "stop-and-copy or live"},
    {"bytes_copied", FieldType::Integer, "bytes copied"},
    {"bytes_recopied", FieldType::Integer, "live: bytes copied again because the guest wrote them"},
    {"stops_us", FieldType::Array, "each stop's pause, microseconds"},
    {"rounds", FieldType::Integer, "live: pre-copy rounds"},
    {"policy_branch", FieldType::String, "which branch of the live policy ended the move"},
    {"pause_us", FieldType::Integer, "the longest stop, microseconds"},
    {"total_us", FieldType::Integer, "the whole operation, microseconds"},
    {"phases", FieldType::Array, "[{phase, us}] in order"},
    {"stops", FieldType::Array,
     "each stop's phases: {stop_vcpus_us, drain_us, harvest_us, copy_us, keys_us, remap_us, "
     "resume_us, pause_us, bytes, chunks}"},
    {"dirty_log", FieldType::String,
     "live: manual-protect-initially-set, manual-protect or legacy; empty for stop-and-copy"},
};
inline constexpr FieldSchema kFailedFields[] = {
    {"message", FieldType::String, "why, and where the LPAR is now"},
};
inline constexpr FieldSchema kExchangeDoneFields[] = {
    {"a", FieldType::String, "one LPAR"},
    {"b", FieldType::String, "the other LPAR"},
    {"a_old_origin_mib", FieldType::Integer, "a's origin before"},
    {"a_new_origin_mib", FieldType::Integer, "a's new origin"},
    {"b_old_origin_mib", FieldType::Integer, "b's origin before"},
    {"b_new_origin_mib", FieldType::Integer, "b's new origin"},
    {"bytes_moved", FieldType::Integer, "bytes of both LPARs moved"},
    {"pause_us", FieldType::Integer, "how long both were stopped, microseconds"},
    {"total_us", FieldType::Integer, "the whole operation, microseconds"},
    {"phases", FieldType::Array, "[{phase, us}] in order"},
};
inline constexpr FieldSchema kResizeProgressFields[] = {
    {"plugged_mib", FieldType::Integer, "of the MiB asked for, how many the guest has plugged"},
    {"total_mib", FieldType::Integer, "the MiB asked for"},
};
inline constexpr FieldSchema kShrinkProgressFields[] = {
    {"released_mib", FieldType::Integer, "of the MiB asked for, how many the guest has unplugged"},
    {"total_mib", FieldType::Integer, "the MiB asked for"},
};
inline constexpr FieldSchema kResizeFields[] = {
    {"old_size_mib", FieldType::Integer, "the size before"},
    {"new_size_mib", FieldType::Integer, "the size after"},
    {"plugged_mib", FieldType::Integer, "of its virtio-mem region, when the guest was done"},
    {"total_us", FieldType::Integer, "the whole operation, microseconds"},
};
inline constexpr FieldSchema kDroppedFields[] = {
    {"count", FieldType::Integer, "events lost because the client did not read"},
};

}  // namespace schema_detail

// The method table: the one place that says which methods exist, what they take and where they
// run. activate (IPL: loads firmware, starts vCPUs), reset (clears storage) and deactivate
// (scrubs storage) take as long as the LPAR is large: the long pool, never timed out. stop and
// start only pause or resume vCPUs: the query pool, so that they are served while relocations
// fill the long pool, and the query timeout catches a hung one. storage.cancel must overtake the
// mvstor it cancels, which holds a long worker: the query pool too.
inline constexpr MethodSchema kMethodSchemas[] = {
    {"lpar.list", Execution::Query, schema_detail::none(),
     "the LPARs with origin, size, gap and state, and main storage's size and free storage"},
    {"storage.mvstor", Execution::LongRunning, schema_detail::kMvstor,
     "moves an LPAR's storage to a new origin while it keeps running (MVSTOR)"},
    {"lpar.console", Execution::Query, schema_detail::kConsole,
     "an LPAR's serial output: the most recent bytes, or from an offset on"},
    {"lpar.console_write", Execution::Query, schema_detail::kConsoleWrite,
     "types bytes at an LPAR's serial console; refused while another connection holds its input"},
    {"lpar.console_attach", Execution::Session, schema_detail::kLparOnly,
     "this connection takes the LPAR's console input until it detaches or closes; when another "
     "holds it, the answer says who"},
    {"lpar.console_detach", Execution::Session, schema_detail::kLparOnly,
     "gives the LPAR's console input back"},
    {"system.ping", Execution::Inline, schema_detail::none(), "the daemon's version"},
    {"lpar.define", Execution::Query, schema_detail::kDefine, "defines a new LPAR"},
    {"lpar.activate", Execution::LongRunning, schema_detail::kLparOnly,
     "places a defined LPAR's storage and IPLs it"},
    {"lpar.stop", Execution::Query, schema_detail::kLparOnly, "pauses a running LPAR's vCPUs"},
    {"lpar.start", Execution::Query, schema_detail::kLparOnly, "resumes a stopped LPAR"},
    {"lpar.reset", Execution::LongRunning, schema_detail::kLparOnly,
     "re-IPLs an LPAR in place, its storage cleared"},
    {"lpar.deactivate", Execution::LongRunning, schema_detail::kLparOnly,
     "stops an LPAR and scrubs and frees all it held"},
    {"lpar.remove", Execution::Query, schema_detail::kLparOnly, "forgets a defined LPAR"},
    {"system.config", Execution::Query, schema_detail::none(),
     "the configuration that recreates today's LPARs (--config format)"},
    {"system.stats", Execution::Query, schema_detail::none(),
     "the counters: per LPAR vCPU exits, run time and disk I/O; per operation outcomes, bytes "
     "and pauses (also /metrics on the HTTP listener)"},
    {"storage.cancel", Execution::Query, schema_detail::kLparOnly,
     "cancels the LPAR's running MVSTOR; it stays at its old origin"},
    {"storage.exchange", Execution::LongRunning, schema_detail::kExchange,
     "swaps the storage of two LPARs of the same size (EXCHANGE)"},
    {"storage.plan_grow", Execution::Query, schema_detail::kPlanGrow,
     "plans the MVSTORs that would make room for an LPAR to grow, moving nothing"},
    {"storage.make_room", Execution::LongRunning, schema_detail::kMakeRoom,
     "carries out storage.plan_grow's plan"},
    {"storage.expand", Execution::LongRunning, schema_detail::kResize,
     "plugs storage into an LPAR (virtio-mem) up to its max_size_mib"},
    {"storage.shrink", Execution::LongRunning, schema_detail::kResize,
     "unplugs storage from an LPAR and frees it"},
    {"storage.grow", Execution::LongRunning, schema_detail::kGrow,
     "makes room behind an LPAR as storage.make_room would, then expands it"},
    {"events.subscribe", Execution::Session, schema_detail::kSubscribe,
     "sends this connection the daemon's events, optionally filtered (again: a new filter)"},
    {"events.unsubscribe", Execution::Session, schema_detail::none(),
     "stops this connection's events"},
    {"system.describe", Execution::Inline, schema_detail::none(),
     "this table: every method with its parameters, every event with its fields"},
};

inline constexpr EventSchema kEventSchemas[] = {
    {"lpar.state", true, schema_detail::kStateFields, "an LPAR changed state"},
    {"lpar.guest_event", true, schema_detail::kGuestEventFields,
     "the guest rebooted, powered off or crashed; the action follows (restart: lpar.restart)"},
    {"lpar.restart", true, schema_detail::kRestartFields,
     "an LPAR was re-IPLed in place, its storage scrubbed (svp reset, or a guest action)"},
    {"mvstor.started", true, schema_detail::kMvstorStartedFields,
     "an MVSTOR passed its target check and begins to copy"},
    {"mvstor.phase", true, schema_detail::kPhaseFields, "an MVSTOR phase finished"},
    {"mvstor.progress", true, schema_detail::kProgressFields,
     "an MVSTOR's copy advanced (live: before each chunk's stop; stop-and-copy: after it)"},
    {"mvstor.done", true, schema_detail::kMvstorDoneFields, "an MVSTOR finished"},
    {"mvstor.failed", true, schema_detail::kFailedFields,
     "an MVSTOR was refused late, timed out or was cancelled"},
    {"exchange.phase", true, schema_detail::kPhaseFields, "an EXCHANGE phase finished (lpar is a)"},
    {"exchange.progress", true, schema_detail::kProgressFields,
     "an EXCHANGE's copy advanced, both LPARs' bytes counted (lpar is a)"},
    {"exchange.done", true, schema_detail::kExchangeDoneFields, "an EXCHANGE finished (lpar is a)"},
    {"exchange.failed", true, schema_detail::kFailedFields,
     "an EXCHANGE was refused or failed; both LPARs are where they were (lpar is a)"},
    {"expand.phase", true, schema_detail::kPhaseFields, "an EXPAND phase finished"},
    {"expand.progress", true, schema_detail::kResizeProgressFields,
     "the guest plugged more of an EXPAND"},
    {"storage.expanded", true, schema_detail::kResizeFields, "an EXPAND finished"},
    {"expand.failed", true, schema_detail::kFailedFields,
     "an EXPAND was refused, failed or timed out; the LPAR keeps its size"},
    {"shrink.phase", true, schema_detail::kPhaseFields, "a SHRINK phase finished"},
    {"shrink.progress", true, schema_detail::kShrinkProgressFields,
     "the guest unplugged more of a SHRINK"},
    {"storage.shrunk", true, schema_detail::kResizeFields, "a SHRINK finished"},
    {"shrink.failed", true, schema_detail::kFailedFields,
     "a SHRINK was refused, failed or timed out; the LPAR keeps its size"},
    {"events.dropped", false, schema_detail::kDroppedFields,
     "events were lost because this client did not read"},
};

// Whether a filter entry of events.subscribe (a name, or a prefix ending in ".*") names `type`.
inline constexpr bool event_name_matches(std::string_view entry, std::string_view type) {
    if (entry.size() > 2 && entry.ends_with(".*"))
        return type.starts_with(entry.substr(0, entry.size() - 1));
    return type == entry;
}

inline constexpr const MethodSchema* find_method_schema(std::string_view name) {
    for (const auto& method : kMethodSchemas)
        if (method.name == name) return &method;
    return nullptr;
}

inline constexpr const EventSchema* find_event_schema(std::string_view name) {
    for (const auto& event : kEventSchemas)
        if (event.name == name) return &event;
    return nullptr;
}

inline constexpr const ParamSchema* find_param(const MethodSchema& method, std::string_view name) {
    for (const auto& param : method.params)
        if (param.name == name) return &param;
    return nullptr;
}

}  // namespace lparvisor::control
