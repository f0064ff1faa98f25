// The JSON-RPC 2.0 core of the control socket: pure, synchronous and transport-free, so that the
// socket server, the tests and the fuzzer all drive the same code.
//
// A request line goes through three steps, which the server runs on different threads:
//   parse_request()   text -> a typed Call (method + validated params), or a ready error response
//   execute()         Call -> Api -> response text (or nothing, for a notification)
// handle_line() chains them for callers that do not care where each step runs.
//
// Adding a method: describe it in protocol_schema.hpp (parameters, where it runs), add its params
// struct to Call, a parser and an executor in json_rpc.cpp, and its row in the parser table
// there. docs/control-protocol.md is the wire contract; a test holds it to the schema.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

#include <nlohmann/json.hpp>

#include "control/api.hpp"
#include "control/protocol_schema.hpp"
#include "util/error.hpp"

namespace lparvisor::control {

// JSON-RPC error codes: the standard ones, then one per lparvisor::ErrorKind.
enum class RpcErrorCode : int {
    ParseError = -32700,
    InvalidRequest = -32600,
    MethodNotFound = -32601,
    InvalidParams = -32602,
    InternalError = -32603,
    NotFound = -32001,
    InvalidArgument = -32002,
    Refused = -32003,
    Busy = -32004,
    System = -32005,
};
// A Query call that did not return within ServerLimits::query_timeout. It shares -32005 with
// System (the code the issue asked for); data.kind "Timeout" tells them apart.
inline constexpr RpcErrorCode kTimeoutCode = RpcErrorCode::System;

[[nodiscard]] RpcErrorCode rpc_code_for(ErrorKind kind) noexcept;
[[nodiscard]] std::string_view rpc_code_name(RpcErrorCode code) noexcept;  // "NotFound", ...

// Typed params of each method, after validation.
struct ListCall {};
struct PingCall {};
struct MvstorCall {
    MvstorRequest request;
};
struct ConsoleCall {
    std::string lpar;
    std::size_t max_bytes = kDefaultConsoleBytes;
    std::optional<std::uint64_t> since;  // absent: the most recent max_bytes
};
struct ConsoleWriteCall {
    std::string lpar;
    std::string data;
};
// lpar.console_attach / lpar.console_detach: the connection takes or gives back the LPAR's
// console input. Like events.subscribe, the server does the work (Execution::Session) and
// answers with console_input_result().
struct ConsoleInputCall {
    std::string lpar;
    bool attach = true;
};
struct DefineCall {
    LparDefinition definition;
};
enum class Lifecycle { Activate, Stop, Start, Reset, Deactivate };
struct LifecycleCall {
    Lifecycle operation = Lifecycle::Activate;
    std::string lpar;
};
struct RemoveCall {
    std::string lpar;
};
struct ConfigCall {};
struct StatsCall {};
struct CancelCall {
    std::string lpar;
};
// events.subscribe's filter. An empty list lets everything through; `events` holds names or
// prefixes ("mvstor.*"), each checked against the schema when the request is parsed.
struct EventFilter {
    std::vector<std::string> events;
    std::vector<std::string> lpars;
    [[nodiscard]] bool matches(const Event& event) const;
};
// events.subscribe / events.unsubscribe change the connection, not the hypervisor: the server does
// the work (Execution::Session); execute() only builds the result. Subscribing again replaces the
// filter.
struct SubscribeCall {
    bool subscribe = true;
    EventFilter filter;
};
struct DescribeCall {};
struct ExchangeCall {
    ExchangeRequest request;
};
struct GrowCall {
    std::string lpar;
    std::uint64_t extra_mib = 0;
    bool carry_out = false;  // storage.make_room; storage.plan_grow only plans
    MvstorMode mode = MvstorMode::StopAndCopy;
};
// storage.expand / storage.shrink / storage.grow: `request.mib` is how much to add (or give
// back), a multiple of 2; storage.grow first makes room as storage.make_room would, in `mode`.
enum class Resize { Expand, Shrink, Grow };
struct ResizeCall {
    Resize operation = Resize::Expand;
    ResizeRequest request;
    MvstorMode mode = MvstorMode::StopAndCopy;  // storage.grow's room-making MVSTORs
};
using Call = std::variant<ListCall, PingCall, MvstorCall, ConsoleCall, DefineCall, LifecycleCall,
                          RemoveCall, ConfigCall, CancelCall, SubscribeCall, ExchangeCall, GrowCall,
                          ResizeCall, DescribeCall, ConsoleWriteCall, ConsoleInputCall, StatsCall>;

// A request that passed validation.
// The implicit default constructor is noexcept, like nlohmann::json's, and throws nothing:
// json's makes a null value. clang-tidy 14 follows it into json_value(value_t) and counts the
// throws of the branches for other types; nlohmann's own constructor carries the same NOLINT.
// NOLINTNEXTLINE(bugprone-exception-escape): a false positive, for the reason above
struct ParsedCall {
    nlohmann::json id;  // echoed verbatim; null when the request is a notification
    bool is_notification = false;
    std::string method;
    Call call;
    Execution execution = Execution::Inline;
};

// A request that failed before reaching the Api. `response` is the complete response line
// (without '\n'), or empty for a notification, which gets no answer even when it is wrong.
struct RejectedRequest {
    std::string response;
};

using ParseOutcome = std::variant<ParsedCall, RejectedRequest>;

// Validates one request line (without its '\n'). Does not throw: even an internal failure
// becomes an error response.
[[nodiscard]] ParseOutcome parse_request(std::string_view line);

// Runs the call against the Api and returns the response line (without '\n'), or an empty string
// for a notification. Errors thrown by the Api become JSON-RPC errors (lparvisor::Error by its
// kind, anything else -32603); does not throw.
[[nodiscard]] std::string execute(Api& api, const ParsedCall& parsed);

// parse_request + execute. Returns the response line, or empty when none is due.
[[nodiscard]] std::string handle_line(Api& api, std::string_view line);

// A complete error response line for a failure that has no request to answer (line too long,
// too many clients, peer not allowed): id null.
[[nodiscard]] std::string error_response(RpcErrorCode code, std::string_view message,
                                         const nlohmann::json& data = nlohmann::json::object());

// The error response to `parsed` for an Error thrown outside execute() (the server's own Api
// calls, such as subscribe); empty for a notification.
[[nodiscard]] std::string error_response_for(const ParsedCall& parsed, const Error& error);

// The response to lpar.console_attach / _detach: {"lpar", "input": whether this connection
// holds the LPAR's console input now, "holder": who does, when another connection}.
[[nodiscard]] std::string console_input_response(const ParsedCall& parsed, bool input,
                                                 std::string_view holder);

// The -32005 response for a call that did not return within `timeout` ("timed out after 30 s",
// data {"kind":"Timeout","timeout_ms":...,"method":...}); empty for a notification.
[[nodiscard]] std::string timeout_response(const ParsedCall& parsed,
                                           std::chrono::milliseconds timeout);

// Serializers of the Api's results, public so that other front ends reuse the exact shape.
[[nodiscard]] nlohmann::json to_json(const SystemStatus& status);
[[nodiscard]] nlohmann::json to_json(const MvstorResult& result);
[[nodiscard]] nlohmann::json to_json(const ExchangeResult& result);
[[nodiscard]] nlohmann::json to_json(const GrowPlanResult& result);
[[nodiscard]] nlohmann::json to_json(const ResizeResult& result);
[[nodiscard]] nlohmann::json to_json(const GrowResult& result);   // {"plan": ..., "expansion": ...}
[[nodiscard]] nlohmann::json to_json(const LparStatus& lpar);     // one row of lpar.list
[[nodiscard]] nlohmann::json to_json(const SystemStats& stats);   // system.stats
[[nodiscard]] nlohmann::json to_json(const EventFilter& filter);  // {"events": [], "lpars": []}

// system.describe's result: protocol_schema.hpp's methods and events as JSON.
[[nodiscard]] nlohmann::json describe_protocol();

// The notification line (without '\n') that carries `event` to a subscribed client:
// {"jsonrpc":"2.0","method":"event","params":{"event":TYPE,"lpar":NAME,"time":RFC 3339 UTC,
// "monotonic_us":N,...data}}. Members of data_json never replace those four; data that is not a
// JSON object is sent as "data".
[[nodiscard]] std::string event_notification(const Event& event);
// The params object of that notification alone (the HTTP listener's event stream sends it).
[[nodiscard]] nlohmann::json event_json(const Event& event);
[[nodiscard]] nlohmann::json events_dropped_json(std::uint64_t count);
// {"jsonrpc":"2.0","method":"event","params":{"event":"events.dropped","time":...,
// "monotonic_us":...,"count":N}}, stamped now
[[nodiscard]] std::string events_dropped_notification(std::uint64_t count);

// Microseconds since the Unix epoch as RFC 3339 UTC: "2026-12-07T10:01:02.123456Z".
[[nodiscard]] std::string rfc3339_utc(std::int64_t wall_us);

// Replaces every byte sequence that is not valid UTF-8 (including overlong forms, surrogates and
// code points above U+10FFFF) with U+FFFD, so that guest console output can always be sent.
[[nodiscard]] std::string sanitize_utf8(std::string_view bytes);

// Whether the text nests arrays/objects deeper than `max_depth` (strings are skipped correctly).
// Checked before parsing, so that hostile input never reaches the parser's recursion.
[[nodiscard]] bool nests_deeper_than(std::string_view text, std::size_t max_depth) noexcept;

// The daemon's version string, reported by system.ping.
[[nodiscard]] std::string_view daemon_version() noexcept;

}  // namespace lparvisor::control
