#include "control/json_rpc.hpp"

#include "control/definition_json.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <ctime>
#include <exception>
#include <initializer_list>
#include <limits>
#include <new>
#include <span>
#include <stdexcept>
#include <type_traits>

#include <fmt/format.h>

#include "util/error.hpp"

#ifndef LPARVISOR_VERSION
#define LPARVISOR_VERSION "unknown"
#endif

namespace lparvisor::control {

using nlohmann::json;

namespace {

// A request that must be answered with a JSON-RPC error. Thrown only inside this file, between the
// validators and parse_request(), which turns it into a response.
class RpcFailure : public std::runtime_error {
  public:
    RpcFailure(RpcErrorCode code, const std::string& message, json data = json::object())
        : std::runtime_error(message), code_(code), data_(std::move(data)) {}
    RpcErrorCode code() const noexcept { return code_; }
    const json& data() const noexcept { return data_; }

  private:
    RpcErrorCode code_;
    json data_;
};

[[noreturn]] void fail_param(std::string_view key, std::string_view expected) {
    throw RpcFailure(RpcErrorCode::InvalidParams, fmt::format("{}: {}", key, expected),
                     json{{"param", key}});
}

// Dumps one response line. `replace` keeps a stray invalid byte in an error message (the parser's
// "last read" excerpt, an Api message) from turning into an exception here.
std::string dump_line(const json& value) {
    return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string result_response(const json& id, json result) {
    return dump_line(json{{"jsonrpc", "2.0"}, {"id", id}, {"result", std::move(result)}});
}

std::string error_response_with_id(const json& id, RpcErrorCode code, std::string_view message,
                                   const json& data) {
    json error{{"code", static_cast<int>(code)}, {"message", message}};
    if (!data.is_null() && !(data.is_object() && data.empty())) error["data"] = data;
    return dump_line(json{{"jsonrpc", "2.0"}, {"id", id}, {"error", std::move(error)}});
}

// The params object of one request, checked against its method's schema (protocol_schema.hpp):
// every key must be one the method takes, so that a typo ("orgin_mib") is an error instead of a
// silently applied default, and each accessor takes its type, range and default from the schema.
class Params {
  public:
    Params(const json& params, const MethodSchema& method) : params_(params), method_(method) {
        for (const auto& [key, value] : params_.items()) {
            if (find_param(method_, key) == nullptr) {
                throw RpcFailure(RpcErrorCode::InvalidParams,
                                 fmt::format("{}: unknown parameter", key), json{{"param", key}});
            }
        }
    }

    // ParamType::Name: a non-empty string (required by the schema).
    [[nodiscard]] std::string name(std::string_view key) const {
        const ParamSchema& spec = schema(key, ParamType::Name);
        const json* value = find(key);
        if (value == nullptr) {
            if (spec.required) fail_param(key, "missing (expected a string)");
            return {};
        }
        if (!value->is_string()) fail_param(key, "expected a string");
        auto text = value->get<std::string>();
        if (text.empty()) fail_param(key, "expected a non-empty string");
        return text;
    }

    // ParamType::Integer that is required or has a default.
    [[nodiscard]] std::uint64_t integer(std::string_view key) const {
        const ParamSchema& spec = schema(key, ParamType::Integer);
        if (!spec.required && !spec.has_default)
            throw std::logic_error(std::string(key) + ": neither required nor defaulted");
        const json* value = find(key);
        if (value == nullptr) {
            if (spec.required) fail_param(key, "missing (expected a non-negative integer)");
            return spec.fallback;
        }
        return schema_integer(spec, *value);
    }

    // ParamType::Integer that is neither required nor defaulted: nullopt when absent.
    [[nodiscard]] std::optional<std::uint64_t> optional_integer(std::string_view key) const {
        const ParamSchema& spec = schema(key, ParamType::Integer);
        const json* value = find(key);
        if (value == nullptr) return std::nullopt;
        return schema_integer(spec, *value);
    }

    // ParamType::String of at most `max` bytes.
    [[nodiscard]] std::string string(std::string_view key) const {
        const ParamSchema& spec = schema(key, ParamType::String);
        const json* value = find(key);
        if (value == nullptr) {
            if (spec.required) fail_param(key, "missing (expected a string)");
            return {};
        }
        if (!value->is_string()) fail_param(key, "expected a string");
        auto text = value->get<std::string>();
        if (text.size() > spec.max) fail_param(key, fmt::format("longer than {} bytes", spec.max));
        return text;
    }

    // "mode": "stop-and-copy" (the default) or "live".
    [[nodiscard]] MvstorMode mode() const {
        static_assert(schema_detail::kModes[0] == "stop-and-copy" &&
                      schema_detail::kModes[1] == "live");
        return choice("mode") == 1 ? MvstorMode::Live : MvstorMode::StopAndCopy;
    }

    // ParamType::StringList: nullopt when absent.
    [[nodiscard]] std::optional<std::vector<std::string>> string_list(std::string_view key) const {
        const ParamSchema& spec = schema(key, ParamType::StringList);
        const json* value = find(key);
        if (value == nullptr) return std::nullopt;
        if (!value->is_array()) fail_param(key, "expected an array of strings");
        if (value->size() > spec.max) fail_param(key, fmt::format("more than {} names", spec.max));
        std::vector<std::string> out;
        for (const json& item : *value) {
            if (!item.is_string() || item.get_ref<const std::string&>().empty() ||
                item.get_ref<const std::string&>().size() > kMaxFilterEntryBytes) {
                fail_param(key, fmt::format("expected an array of strings of 1 to {} bytes",
                                            kMaxFilterEntryBytes));
            }
            out.push_back(item.get<std::string>());
        }
        return out;
    }

    [[nodiscard]] const json& object() const { return params_; }

    [[nodiscard]] const json* find(std::string_view key) const {
        auto it = params_.find(key);
        return it == params_.end() ? nullptr : &*it;
    }

  private:
    // The schema of `key`, which the parser must have declared with `type`: anything else is a
    // bug in this file, never the client's fault.
    const ParamSchema& schema(std::string_view key, ParamType type) const {
        const ParamSchema* spec = find_param(method_, key);
        if (spec == nullptr || spec->type != type) {
            throw std::logic_error(
                fmt::format("{}: parameter {} is not in the method's schema "
                            "with this type",
                            method_.name, key));
        }
        return *spec;
    }

    std::size_t choice(std::string_view key) const {
        const ParamSchema& spec = schema(key, ParamType::Choice);
        const json* value = find(key);
        if (value == nullptr) return spec.fallback;
        std::string expected;
        for (std::size_t i = 0; i < spec.choices.size(); ++i)
            expected += fmt::format("{}\"{}\"", i == 0 ? "" : " or ", spec.choices[i]);
        if (!value->is_string()) fail_param(key, "expected " + expected);
        const auto& text = value->get_ref<const std::string&>();
        for (std::size_t i = 0; i < spec.choices.size(); ++i)
            if (spec.choices[i] == text) return i;
        fail_param(key, fmt::format("expected {}, got \"{}\"", expected, sanitize_utf8(text)));
    }

    const json& params_;
    const MethodSchema& method_;
};

// The schema's defaults are the Api's own: a client that omits a parameter gets what a caller
// inside the daemon gets.
constexpr std::uint64_t schema_default(std::string_view method, std::string_view param) {
    // By name, without comparing a global's address (GCC with ASan refuses that in a constant
    // expression).
    for (const auto& schema : kMethodSchemas)
        if (schema.name == method)
            for (const auto& p : schema.params)
                if (p.name == param) return p.fallback;
    return ~std::uint64_t{0};
}
static_assert(schema_default("storage.mvstor", "target_pause_us") ==
              static_cast<std::uint64_t>(LivePolicy{}.target_pause.count()));
static_assert(schema_default("storage.mvstor", "max_rounds") == LivePolicy{}.max_rounds);
static_assert(schema_default("storage.mvstor", "max_total_ms") ==
              static_cast<std::uint64_t>(LivePolicy{}.max_total.count()));

Call parse_no_params(const Params&) {
    return ListCall{};
}

Call parse_ping(const Params&) {
    return PingCall{};
}

Call parse_describe(const Params&) {
    return DescribeCall{};
}

Call parse_mvstor(const Params& checked) {
    MvstorCall call;
    call.request.lpar = checked.name("lpar");
    call.request.origin_mib = checked.integer("origin_mib");
    call.request.drain_timeout = std::chrono::milliseconds(checked.integer("timeout_ms"));
    call.request.mode = checked.mode();
    auto& policy = call.request.policy;
    policy.target_pause = std::chrono::microseconds(checked.integer("target_pause_us"));
    policy.max_rounds = static_cast<unsigned>(checked.integer("max_rounds"));
    policy.max_total = std::chrono::milliseconds(checked.integer("max_total_ms"));
    return call;
}

Call parse_console(const Params& checked) {
    ConsoleCall call;
    call.lpar = checked.name("lpar");
    call.max_bytes = static_cast<std::size_t>(checked.integer("bytes"));
    call.since = checked.optional_integer("since");
    return call;
}

Call parse_console_write(const Params& checked) {
    return ConsoleWriteCall{checked.name("lpar"), checked.string("data")};
}

template <bool attach>
Call parse_console_input(const Params& checked) {
    return ConsoleInputCall{checked.name("lpar"), attach};
}

// The one definition parser (definition_json.hpp), shared with the configuration file.
Call parse_define(const Params& checked) {
    return DefineCall{parse_definition(checked.object())};
}

template <Lifecycle operation>
Call parse_lifecycle(const Params& checked) {
    return LifecycleCall{operation, checked.name("lpar")};
}

Call parse_remove(const Params& checked) {
    return RemoveCall{checked.name("lpar")};
}

Call parse_config(const Params&) {
    return ConfigCall{};
}

Call parse_stats(const Params&) {
    return StatsCall{};
}

Call parse_cancel(const Params& checked) {
    return CancelCall{checked.name("lpar")};
}

Call parse_exchange(const Params& checked) {
    ExchangeCall call;
    call.request.a = checked.name("a");
    call.request.b = checked.name("b");
    call.request.drain_timeout = std::chrono::milliseconds(checked.integer("timeout_ms"));
    return call;
}

template <bool carry_out>
Call parse_grow(const Params& checked) {
    GrowCall call;
    call.lpar = checked.name("lpar");
    call.extra_mib = checked.integer("mib");
    call.carry_out = carry_out;
    if constexpr (carry_out) call.mode = checked.mode();
    return call;
}

// storage.expand, storage.shrink, storage.grow. The hypervisor works in 2 MiB blocks (its
// virtio-mem block size): the schema refuses an odd mib, so that it never half-plugs a block.
template <Resize operation>
Call parse_resize(const Params& checked) {
    ResizeCall call;
    call.operation = operation;
    call.request.lpar = checked.name("lpar");
    call.request.mib = checked.integer("mib");
    call.request.timeout = std::chrono::milliseconds(checked.integer("timeout_ms"));
    if constexpr (operation == Resize::Grow) call.mode = checked.mode();
    return call;
}

template <bool subscribe>
Call parse_subscription(const Params& checked) {
    SubscribeCall call{subscribe, {}};
    if constexpr (subscribe) {
        if (auto events = checked.string_list("events")) {
            for (const std::string& name : *events) {
                bool known = false;
                for (const EventSchema& event : kEventSchemas)
                    known = known || event_name_matches(name, event.name);
                if (!known) {
                    fail_param("events", fmt::format("no event is named \"{}\" (system.describe "
                                                     "lists them)",
                                                     sanitize_utf8(name)));
                }
            }
            call.filter.events = std::move(*events);
        }
        if (auto lpars = checked.string_list("lpars")) call.filter.lpars = std::move(*lpars);
    }
    return call;
}

struct MethodEntry {
    std::string_view name;
    Call (*parse)(const Params& params);
};

// Each method of the schema (protocol_schema.hpp, which also says where it runs) with its parser.
constexpr std::array kMethods{
    MethodEntry{"lpar.list", parse_no_params},
    MethodEntry{"storage.mvstor", parse_mvstor},
    MethodEntry{"lpar.console", parse_console},
    MethodEntry{"lpar.console_write", parse_console_write},
    MethodEntry{"lpar.console_attach", parse_console_input<true>},
    MethodEntry{"lpar.console_detach", parse_console_input<false>},
    MethodEntry{"system.ping", parse_ping},
    MethodEntry{"lpar.define", parse_define},
    MethodEntry{"lpar.activate", parse_lifecycle<Lifecycle::Activate>},
    MethodEntry{"lpar.stop", parse_lifecycle<Lifecycle::Stop>},
    MethodEntry{"lpar.start", parse_lifecycle<Lifecycle::Start>},
    MethodEntry{"lpar.reset", parse_lifecycle<Lifecycle::Reset>},
    MethodEntry{"lpar.deactivate", parse_lifecycle<Lifecycle::Deactivate>},
    MethodEntry{"lpar.remove", parse_remove},
    MethodEntry{"system.config", parse_config},
    MethodEntry{"system.stats", parse_stats},
    MethodEntry{"storage.cancel", parse_cancel},
    MethodEntry{"storage.exchange", parse_exchange},
    MethodEntry{"storage.plan_grow", parse_grow<false>},
    MethodEntry{"storage.make_room", parse_grow<true>},
    MethodEntry{"storage.expand", parse_resize<Resize::Expand>},
    MethodEntry{"storage.shrink", parse_resize<Resize::Shrink>},
    MethodEntry{"storage.grow", parse_resize<Resize::Grow>},
    MethodEntry{"events.subscribe", parse_subscription<true>},
    MethodEntry{"events.unsubscribe", parse_subscription<false>},
    MethodEntry{"system.describe", parse_describe},
};

// Every method of the schema has a parser here, and every parser a schema.
constexpr bool parsers_match_schema() {
    if (kMethods.size() != std::size(kMethodSchemas)) return false;
    for (const auto& entry : kMethods) {
        bool found = false;
        for (const auto& schema : kMethodSchemas) found = found || schema.name == entry.name;
        if (!found) return false;
    }
    return true;
}
static_assert(parsers_match_schema(), "kMethods and kMethodSchemas must list the same methods");

// How many bytes at the end of `text` start a UTF-8 character that continues past it (0-3): left
// for the next read, so that a character cut by a read's end is not sent as U+FFFD twice.
std::size_t incomplete_utf8_tail(std::string_view text) {
    for (std::size_t back = 1; back <= std::min<std::size_t>(3, text.size()); ++back) {
        const auto byte = static_cast<unsigned char>(text[text.size() - back]);
        if ((byte & 0xc0) == 0x80) continue;  // a continuation byte: look further back
        const std::size_t length = byte >= 0xf0 ? 4 : byte >= 0xe0 ? 3 : byte >= 0xc0 ? 2 : 1;
        return length > back ? back : 0;
    }
    return 0;
}

// lpar.console: {"lpar", "text", "start", "next", "ipl"} and "lost" when bytes from `since` on
// are gone from the ring. Offsets count the raw bytes the guest wrote; `next` is where the
// following read carries on.
json console_result(Api& api, const ConsoleCall& call) {
    ConsoleText read = api.console(call.lpar, call.since, call.max_bytes);
    // The contract is "at most max_bytes": hold the Api to it.
    if (read.text.size() > call.max_bytes) {
        if (call.since) {
            read.text.resize(call.max_bytes);  // from `since`: the first bytes
        } else {
            read.start += read.text.size() - call.max_bytes;  // the most recent bytes
            read.text.erase(0, read.text.size() - call.max_bytes);
        }
    }
    read.text.resize(read.text.size() - incomplete_utf8_tail(read.text));
    json result{{"lpar", call.lpar},
                {"text", sanitize_utf8(read.text)},
                {"start", read.start},
                {"next", read.start + read.text.size()},
                {"ipl", read.ipl}};
    if (call.since && read.start > *call.since) result["lost"] = read.start - *call.since;
    return result;
}

json run_resize(Api& api, const ResizeCall& call) {
    switch (call.operation) {
        case Resize::Expand:
            return to_json(api.expand(call.request));
        case Resize::Shrink:
            return to_json(api.shrink(call.request));
        case Resize::Grow:
            return to_json(api.grow(call.request, call.mode));
    }
    throw std::logic_error("unknown resize operation");
}

LparStatus run_lifecycle(Api& api, const LifecycleCall& call) {
    switch (call.operation) {
        case Lifecycle::Activate:
            return api.activate(call.lpar);
        case Lifecycle::Stop:
            return api.stop(call.lpar);
        case Lifecycle::Start:
            return api.start(call.lpar);
        case Lifecycle::Reset:
            return api.reset(call.lpar);
        case Lifecycle::Deactivate:
            return api.deactivate(call.lpar);
    }
    throw std::logic_error("unknown lifecycle operation");
}

json parse_config_text(const std::string& text) {
    json config = json::parse(text, nullptr, false);
    if (config.is_discarded() || !config.is_object()) {
        throw std::runtime_error("the hypervisor's configuration is not a JSON object");
    }
    return config;
}

// The executors, one per Call: each runs its call on the Api and gives the result's JSON.
// std::visit picks the one for the parsed call; a Call without one does not compile.
struct Executor {
    Api& api;

    json operator()(const ListCall&) const { return to_json(api.list()); }
    json operator()(const PingCall&) const { return json{{"version", daemon_version()}}; }
    json operator()(const MvstorCall& call) const { return to_json(api.mvstor(call.request)); }
    json operator()(const DefineCall& call) const { return to_json(api.define(call.definition)); }
    json operator()(const LifecycleCall& call) const { return to_json(run_lifecycle(api, call)); }
    json operator()(const RemoveCall& call) const {
        api.remove(call.lpar);
        return json{{"removed", call.lpar}};
    }
    json operator()(const ConfigCall&) const { return parse_config_text(api.system_config()); }
    json operator()(const StatsCall&) const { return to_json(api.stats()); }
    json operator()(const CancelCall& call) const {
        api.cancel_mvstor(call.lpar);
        return json{{"cancelled", call.lpar}};
    }
    json operator()(const SubscribeCall& call) const {
        json answer{{"subscribed", call.subscribe}};
        if (call.subscribe) answer["filter"] = to_json(call.filter);
        return answer;
    }
    json operator()(const DescribeCall&) const { return describe_protocol(); }
    json operator()(const ExchangeCall& call) const { return to_json(api.exchange(call.request)); }
    json operator()(const GrowCall& call) const {
        return to_json(call.carry_out ? api.make_room(call.lpar, call.extra_mib, call.mode)
                                      : api.plan_grow(call.lpar, call.extra_mib));
    }
    json operator()(const ResizeCall& call) const { return run_resize(api, call); }
    json operator()(const ConsoleCall& call) const { return console_result(api, call); }
    json operator()(const ConsoleWriteCall& call) const {
        const std::size_t written = api.console_write(call.lpar, call.data);
        return json{{"lpar", call.lpar}, {"written", written}};
    }
    json operator()(const ConsoleInputCall&) const {
        // The server answers these itself (console_input_response); a caller without a
        // connection has no input to take.
        throw Error(ErrorKind::Refused,
                    "lpar.console_attach needs a connection to the control socket");
    }
};

const MethodEntry* find_method(std::string_view name) {
    for (const auto& entry : kMethods) {
        if (entry.name == name) return &entry;
    }
    return nullptr;
}

// Validates the envelope; returns the id to answer with (null when it cannot be trusted).
ParsedCall parse_envelope(const json& request, json& answer_id) {
    if (request.is_array()) {
        throw RpcFailure(RpcErrorCode::InvalidRequest, "batch requests are not supported");
    }
    if (!request.is_object()) {
        throw RpcFailure(RpcErrorCode::InvalidRequest, "request must be a JSON object");
    }
    ParsedCall parsed;
    auto id = request.find("id");
    parsed.is_notification = id == request.end();
    if (!parsed.is_notification) {
        if (!id->is_string() && !id->is_number() && !id->is_null()) {
            throw RpcFailure(RpcErrorCode::InvalidRequest,
                             "id: expected a string, a number or null");
        }
        parsed.id = *id;
        answer_id = *id;
    }
    for (const auto& [key, value] : request.items()) {
        if (key != "jsonrpc" && key != "id" && key != "method" && key != "params") {
            throw RpcFailure(RpcErrorCode::InvalidRequest, fmt::format("{}: unknown member", key),
                             json{{"member", key}});
        }
    }
    auto version = request.find("jsonrpc");
    if (version == request.end() || !version->is_string() || *version != "2.0") {
        throw RpcFailure(RpcErrorCode::InvalidRequest, "jsonrpc: expected \"2.0\"");
    }
    auto method = request.find("method");
    if (method == request.end() || !method->is_string()) {
        throw RpcFailure(RpcErrorCode::InvalidRequest, "method: expected a string");
    }
    parsed.method = method->get<std::string>();
    return parsed;
}

}  // namespace

RpcErrorCode rpc_code_for(ErrorKind kind) noexcept {
    switch (kind) {
        case ErrorKind::NotFound:
            return RpcErrorCode::NotFound;
        case ErrorKind::InvalidArgument:
            return RpcErrorCode::InvalidArgument;
        case ErrorKind::Refused:
            return RpcErrorCode::Refused;
        case ErrorKind::Busy:
            return RpcErrorCode::Busy;
        case ErrorKind::System:
            return RpcErrorCode::System;
    }
    return RpcErrorCode::InternalError;
}

std::string_view rpc_code_name(RpcErrorCode code) noexcept {
    switch (code) {
        case RpcErrorCode::ParseError:
            return "ParseError";
        case RpcErrorCode::InvalidRequest:
            return "InvalidRequest";
        case RpcErrorCode::MethodNotFound:
            return "MethodNotFound";
        case RpcErrorCode::InvalidParams:
            return "InvalidParams";
        case RpcErrorCode::InternalError:
            return "InternalError";
        case RpcErrorCode::NotFound:
            return "NotFound";
        case RpcErrorCode::InvalidArgument:
            return "InvalidArgument";
        case RpcErrorCode::Refused:
            return "Refused";
        case RpcErrorCode::Busy:
            return "Busy";
        case RpcErrorCode::System:
            return "System";
    }
    return "Unknown";
}

std::string error_response(RpcErrorCode code, std::string_view message, const json& data) {
    return error_response_with_id(json(nullptr), code, message, data);
}

ParseOutcome parse_request(std::string_view line) {
    json answer_id = nullptr;
    bool is_notification = false;
    try {
        if (line.size() > kMaxRequestBytes) {
            throw RpcFailure(RpcErrorCode::InvalidRequest,
                             fmt::format("request larger than {} bytes", kMaxRequestBytes));
        }
        if (nests_deeper_than(line, kMaxNestingDepth)) {
            throw RpcFailure(RpcErrorCode::ParseError,
                             fmt::format("request nests deeper than {} levels", kMaxNestingDepth));
        }
        json request;
        try {
            request = json::parse(line);
        } catch (const json::parse_error& error) {
            throw RpcFailure(RpcErrorCode::ParseError, "parse error",
                             json{{"detail", error.what()}, {"byte", error.byte}});
        } catch (const json::exception& error) {  // out_of_range.406: a number like 1e400
            throw RpcFailure(RpcErrorCode::ParseError, "parse error",
                             json{{"detail", error.what()}});
        }
        ParsedCall parsed = parse_envelope(request, answer_id);
        is_notification = parsed.is_notification;

        const MethodEntry* entry = find_method(parsed.method);
        if (entry == nullptr) {
            throw RpcFailure(RpcErrorCode::MethodNotFound,
                             fmt::format("method not found: {}", parsed.method),
                             json{{"method", parsed.method}});
        }
        static const json kNoParams = json::object();
        auto params = request.find("params");
        if (params != request.end() && !params->is_object()) {
            fail_param("params", "expected an object (parameters by name)");
        }
        const MethodSchema& schema = *find_method_schema(entry->name);
        try {
            parsed.call =
                entry->parse(Params(params == request.end() ? kNoParams : *params, schema));
        } catch (const std::invalid_argument& error) {  // "key: why" from definition_json.hpp
            const std::string what = error.what();
            throw RpcFailure(RpcErrorCode::InvalidParams, what,
                             json{{"param", what.substr(0, what.find_first_of(".[:"))}});
        }
        parsed.execution = schema.execution;
        return parsed;
    } catch (const RpcFailure& failure) {
        if (is_notification) return RejectedRequest{};
        return RejectedRequest{
            error_response_with_id(answer_id, failure.code(), failure.what(), failure.data())};
    } catch (const std::exception& error) {  // a bug here must not take the connection down
        if (is_notification) return RejectedRequest{};
        return RejectedRequest{error_response_with_id(
            answer_id, RpcErrorCode::InternalError,
            fmt::format("internal error while parsing the request: {}", error.what()),
            json::object())};
    }
}

std::string execute(Api& api, const ParsedCall& parsed) {
    json result;
    try {
        result = std::visit(Executor{api}, parsed.call);
    } catch (const Error& error) {
        if (parsed.is_notification) return {};
        const RpcErrorCode code = rpc_code_for(error.kind());
        return error_response_with_id(parsed.id, code, error.what(),
                                      json{{"kind", rpc_code_name(code)}});
    } catch (const std::exception& error) {
        if (parsed.is_notification) return {};
        return error_response_with_id(parsed.id, RpcErrorCode::InternalError,
                                      fmt::format("internal error: {}", error.what()),
                                      json{{"method", parsed.method}});
    } catch (...) {
        if (parsed.is_notification) return {};
        return error_response_with_id(parsed.id, RpcErrorCode::InternalError,
                                      "internal error: unknown exception",
                                      json{{"method", parsed.method}});
    }
    if (parsed.is_notification) return {};
    return result_response(parsed.id, std::move(result));
}

std::string error_response_for(const ParsedCall& parsed, const Error& error) {
    if (parsed.is_notification) return {};
    const RpcErrorCode code = rpc_code_for(error.kind());
    return error_response_with_id(parsed.id, code, error.what(),
                                  json{{"kind", rpc_code_name(code)}});
}

std::string console_input_response(const ParsedCall& parsed, bool input, std::string_view holder) {
    if (parsed.is_notification) return {};
    const auto& call = std::get<ConsoleInputCall>(parsed.call);
    json result{{"lpar", call.lpar}, {"input", input}};
    if (!holder.empty()) result["holder"] = holder;
    return result_response(parsed.id, std::move(result));
}

std::string timeout_response(const ParsedCall& parsed, std::chrono::milliseconds timeout) {
    if (parsed.is_notification) return {};
    return error_response_with_id(
        parsed.id, kTimeoutCode,
        fmt::format("timed out after {:g} s", static_cast<double>(timeout.count()) / 1000.0),
        json{{"kind", "Timeout"}, {"timeout_ms", timeout.count()}, {"method", parsed.method}});
}

std::string handle_line(Api& api, std::string_view line) {
    ParseOutcome outcome = parse_request(line);
    if (auto* rejected = std::get_if<RejectedRequest>(&outcome))
        return std::move(rejected->response);
    return execute(api, std::get<ParsedCall>(outcome));
}

json to_json(const LparStatus& lpar) {
    return json{{"name", lpar.name},
                {"origin_mib", lpar.origin_mib},
                {"size_mib", lpar.size_mib},
                {"gap_mib", lpar.gap_mib},
                {"state", lpar.state},
                {"has_storage", lpar.has_storage},
                {"reason", lpar.reason},
                {"vcpus", lpar.vcpus},
                {"guest", lpar.guest},
                {"max_size_mib", lpar.max_size_mib},
                {"plugged_mib", lpar.plugged_mib}};
}

json to_json(const SystemStats& stats) {
    json lpars = json::array();
    for (const auto& lpar : stats.lpars) {
        json exits = json::object();
        for (const auto& exit : lpar.vcpu_exits) exits[exit.reason] = exit.count;
        lpars.push_back(json{{"name", lpar.name},
                             {"state", lpar.state},
                             {"guest", lpar.guest},
                             {"has_storage", lpar.has_storage},
                             {"origin_mib", lpar.origin_mib},
                             {"size_mib", lpar.size_mib},
                             {"plugged_mib", lpar.plugged_mib},
                             {"ipl", lpar.ipl},
                             {"vcpu_exits", std::move(exits)},
                             {"vcpu_run_us", lpar.vcpu_run_us},
                             {"disk_requests", lpar.disk_requests},
                             {"disk_errors", lpar.disk_errors},
                             {"disk_read_bytes", lpar.disk_read_bytes},
                             {"disk_written_bytes", lpar.disk_written_bytes}});
    }
    json operations = json::object();
    for (const auto& operation : stats.operations) {
        json outcomes = json::object();
        for (const auto& outcome : operation.outcomes) outcomes[outcome.outcome] = outcome.count;
        operations[operation.kind] = json{{"outcomes", std::move(outcomes)},
                                          {"bytes_copied", operation.bytes_copied},
                                          {"bytes_recopied", operation.bytes_recopied}};
    }
    return json{{"main_storage_mib", stats.main_storage_mib},
                {"free_mib", stats.free_mib},
                {"largest_free_gap_mib", stats.largest_free_gap_mib},
                {"uptime_us", stats.uptime_us},
                {"lpars", std::move(lpars)},
                {"operations", std::move(operations)},
                {"pauses", json{{"upper_us", stats.pauses.upper_us},
                                {"cumulative", stats.pauses.cumulative},
                                {"count", stats.pauses.count},
                                {"sum_us", stats.pauses.sum_us}}}};
}

json to_json(const SystemStatus& status) {
    json lpars = json::array();
    for (const auto& lpar : status.lpars) lpars.push_back(to_json(lpar));
    return json{{"main_storage_mib", status.main_storage_mib},
                {"free_mib", status.free_mib},
                {"lpars", std::move(lpars)}};
}

namespace {

json stop_json(const StopTiming& stop) {
    return json{{"stop_vcpus_us", stop.stop_vcpus_us},
                {"drain_us", stop.drain_us},
                {"harvest_us", stop.harvest_us},
                {"copy_us", stop.copy_us},
                {"keys_us", stop.keys_us},
                {"remap_us", stop.remap_us},
                {"resume_us", stop.resume_us},
                {"pause_us", stop.pause_us},
                {"bytes", stop.bytes},
                {"chunks", stop.chunks}};
}

}  // namespace

json to_json(const MvstorResult& result) {
    json phases = json::array();
    for (const auto& phase : result.phases) {
        phases.push_back(json{{"phase", phase.phase}, {"us", phase.microseconds}});
    }
    json stops = json::array();
    for (const auto& stop : result.stops) stops.push_back(stop_json(stop));
    return json{{"lpar", result.lpar},
                {"old_origin_mib", result.old_origin_mib},
                {"new_origin_mib", result.new_origin_mib},
                {"bytes_copied", result.bytes_copied},
                {"pause_us", result.pause_us},
                {"total_us", result.total_us},
                {"phases", std::move(phases)},
                {"mode", result.mode},
                {"stops_us", result.stops_us},
                {"rounds", result.rounds},
                {"bytes_recopied", result.bytes_recopied},
                {"policy_branch", result.policy_branch},
                {"stops", std::move(stops)},
                {"dirty_log", result.dirty_log}};
}

json to_json(const ExchangeResult& result) {
    json phases = json::array();
    for (const auto& phase : result.phases)
        phases.push_back(json{{"phase", phase.phase}, {"us", phase.microseconds}});
    return json{{"a", result.a},
                {"b", result.b},
                {"a_old_origin_mib", result.a_old_origin_mib},
                {"a_new_origin_mib", result.a_new_origin_mib},
                {"b_old_origin_mib", result.b_old_origin_mib},
                {"b_new_origin_mib", result.b_new_origin_mib},
                {"bytes_moved", result.bytes_moved},
                {"pause_us", result.pause_us},
                {"total_us", result.total_us},
                {"phases", std::move(phases)}};
}

json to_json(const GrowPlanResult& result) {
    json steps = json::array();
    for (const auto& step : result.steps)
        steps.push_back(json{{"lpar", step.lpar},
                             {"from_mib", step.from_mib},
                             {"to_mib", step.to_mib},
                             {"size_mib", step.size_mib}});
    json moves = json::array();
    for (const auto& move : result.moves) moves.push_back(to_json(move));
    return json{{"lpar", result.lpar},
                {"mib", result.extra_mib},
                {"possible", result.possible},
                {"steps", std::move(steps)},
                {"bytes_copied", result.bytes_copied},
                {"reason", result.reason},
                {"carried_out", result.carried_out},
                {"moves", std::move(moves)}};
}

json to_json(const ResizeResult& result) {
    return json{{"lpar", result.lpar},
                {"old_size_mib", result.old_size_mib},
                {"new_size_mib", result.new_size_mib},
                {"plugged_mib", result.plugged_mib},
                {"total_us", result.total_us}};
}

json to_json(const GrowResult& result) {
    return json{{"plan", to_json(result.plan)}, {"expansion", to_json(result.expansion)}};
}

// "2026-12-07T10:01:02.123456Z"
std::string rfc3339_utc(std::int64_t wall_us) {
    const std::int64_t seconds =
        wall_us >= 0 ? wall_us / 1'000'000 : (wall_us - 999'999) / 1'000'000;
    const auto micros = static_cast<std::int64_t>(wall_us - seconds * 1'000'000);
    const std::time_t t = static_cast<std::time_t>(seconds);
    std::tm utc{};
    ::gmtime_r(&t, &utc);
    return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z", utc.tm_year + 1900,
                       utc.tm_mon + 1, utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec, micros);
}

namespace {

json event_params(std::string_view type, std::int64_t wall_us, std::int64_t monotonic_us) {
    return json{{"event", type}, {"time", rfc3339_utc(wall_us)}, {"monotonic_us", monotonic_us}};
}

json describe_params(std::span<const ParamSchema> params) {
    json out = json::array();
    for (const ParamSchema& param : params) {
        json entry{
            {"name", param.name}, {"required", param.required}, {"description", param.description}};
        switch (param.type) {
            case ParamType::Name:
                entry["type"] = "string";
                entry["min_bytes"] = 1;
                break;
            case ParamType::String:
                entry["type"] = "string";
                entry["max_bytes"] = param.max;
                break;
            case ParamType::Integer:
                entry["type"] = "integer";
                entry["min"] = param.min;
                entry["max"] = param.max;
                if (param.multiple_of > 1) entry["multiple_of"] = param.multiple_of;
                if (param.has_default) entry["default"] = param.fallback;
                break;
            case ParamType::Boolean:
                entry["type"] = "boolean";
                if (param.has_default) entry["default"] = param.fallback != 0;
                break;
            case ParamType::Choice: {
                entry["type"] = "string";
                json choices = json::array();
                for (auto choice : param.choices) choices.push_back(choice);
                entry["choices"] = std::move(choices);
                if (param.has_default) entry["default"] = param.choices[param.fallback];
                break;
            }
            case ParamType::Disks:
                entry["type"] = "array";
                entry["max_items"] = param.max;
                break;
            case ParamType::StringList:
                entry["type"] = "array of strings";
                entry["max_items"] = param.max;
                break;
        }
        out.push_back(std::move(entry));
    }
    return out;
}

std::string_view field_type_name(FieldType type) {
    switch (type) {
        case FieldType::String:
            return "string";
        case FieldType::Integer:
            return "integer";
        case FieldType::Boolean:
            return "boolean";
        case FieldType::Array:
            return "array";
        case FieldType::Object:
            return "object";
    }
    return "unknown";
}

std::string_view execution_name(Execution execution) {
    switch (execution) {
        case Execution::Inline:
            return "inline";
        case Execution::Query:
            return "query";
        case Execution::LongRunning:
            return "long";
        case Execution::Session:
            return "session";
    }
    return "unknown";
}

}  // namespace

bool EventFilter::matches(const Event& event) const {
    const auto named = [&](const std::string& entry) {
        return event_name_matches(entry, event.type);
    };
    if (!events.empty() && std::none_of(events.begin(), events.end(), named)) return false;
    return lpars.empty() || std::find(lpars.begin(), lpars.end(), event.lpar) != lpars.end();
}

json to_json(const EventFilter& filter) {
    return json{{"events", filter.events}, {"lpars", filter.lpars}};
}

json describe_protocol() {
    json methods = json::array();
    for (const MethodSchema& method : kMethodSchemas) {
        methods.push_back(json{{"name", method.name},
                               {"summary", method.summary},
                               {"runs", execution_name(method.execution)},
                               {"params", describe_params(method.params)}});
    }
    json events = json::array();
    for (const EventSchema& event : kEventSchemas) {
        json fields = json::array();
        for (const FieldSchema& field : event.fields) {
            fields.push_back(json{{"name", field.name},
                                  {"type", field_type_name(field.type)},
                                  {"description", field.description}});
        }
        events.push_back(json{{"name", event.name},
                              {"summary", event.summary},
                              {"has_lpar", event.has_lpar},
                              {"fields", std::move(fields)}});
    }
    return json{{"version", daemon_version()},
                {"common_event_fields", json::array({"event", "lpar", "time", "monotonic_us"})},
                {"methods", std::move(methods)},
                {"events", std::move(events)}};
}

json event_json(const Event& event) {
    json params = event_params(event.type, event.wall_us, event.monotonic_us);
    params["lpar"] = event.lpar;
    json data = json::parse(event.data_json, nullptr, false);
    if (data.is_object()) {
        for (auto& [key, value] : data.items()) {
            if (!params.contains(key)) params[key] = std::move(value);
        }
    } else if (!data.is_discarded()) {
        params["data"] = std::move(data);
    } else {
        params["data"] = sanitize_utf8(event.data_json);  // keep what the hypervisor said
    }
    return params;
}

json events_dropped_json(std::uint64_t count) {
    json params = event_params("events.dropped", now_wall_us(), now_monotonic_us());
    params["count"] = count;
    return params;
}

std::string event_notification(const Event& event) {
    return dump_line(json{{"jsonrpc", "2.0"}, {"method", "event"}, {"params", event_json(event)}});
}

std::string events_dropped_notification(std::uint64_t count) {
    return dump_line(
        json{{"jsonrpc", "2.0"}, {"method", "event"}, {"params", events_dropped_json(count)}});
}

namespace {

// What a byte allows to follow it as the lead of a UTF-8 sequence: the sequence's length (0 when
// the byte leads none) and the range of the second byte. From RFC 3629's table, which excludes
// overlong forms (C0, C1, E0 80..9F, F0 80..8F), surrogates (ED A0..BF) and > U+10FFFF.
struct Utf8Lead {
    std::size_t length = 0;
    unsigned char second_min = 0x80, second_max = 0xBF;
};

Utf8Lead utf8_lead(unsigned char lead) {
    Utf8Lead rule;
    if (lead >= 0xC2 && lead <= 0xDF) {
        rule.length = 2;
    } else if (lead >= 0xE0 && lead <= 0xEF) {
        rule.length = 3;
        if (lead == 0xE0) rule.second_min = 0xA0;
        if (lead == 0xED) rule.second_max = 0x9F;
    } else if (lead >= 0xF0 && lead <= 0xF4) {
        rule.length = 4;
        if (lead == 0xF0) rule.second_min = 0x90;
        if (lead == 0xF4) rule.second_max = 0x8F;
    }
    return rule;
}

// How many bytes from `at` (a non-ASCII lead byte) form a well-formed prefix of the sequence it
// leads, at most rule.length; 0 when the byte leads none. Stops at the first byte out of range
// and at the end of `bytes`.
std::size_t utf8_valid_prefix(std::string_view bytes, std::size_t at, const Utf8Lead& rule) {
    std::size_t valid = rule.length == 0 ? 0 : 1;
    while (valid > 0 && valid < rule.length && at + valid < bytes.size()) {
        const auto next = static_cast<unsigned char>(bytes[at + valid]);
        const unsigned char min = valid == 1 ? rule.second_min : 0x80;
        const unsigned char max = valid == 1 ? rule.second_max : 0xBF;
        if (next < min || next > max) break;
        ++valid;
    }
    return valid;
}

}  // namespace

std::string sanitize_utf8(std::string_view bytes) {
    static constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD
    std::string out;
    out.reserve(bytes.size());
    std::size_t i = 0;
    while (i < bytes.size()) {
        const auto lead = static_cast<unsigned char>(bytes[i]);
        if (lead < 0x80) {
            out.push_back(static_cast<char>(lead));
            ++i;
            continue;
        }
        const Utf8Lead rule = utf8_lead(lead);
        const std::size_t valid = utf8_valid_prefix(bytes, i, rule);
        if (rule.length != 0 && valid == rule.length) {
            out.append(bytes.substr(i, rule.length));
            i += rule.length;
        } else {
            // One U+FFFD per maximal ill-formed subpart (Unicode's recommended practice).
            out.append(kReplacement);
            i += std::max<std::size_t>(valid, 1);
        }
    }
    return out;
}

bool nests_deeper_than(std::string_view text, std::size_t max_depth) noexcept {
    std::size_t depth = 0;
    bool in_string = false;
    bool escaped = false;
    for (char c : text) {
        if (in_string) {
            if (escaped) {
                escaped = false;
            } else if (c == '\\') {
                escaped = true;
            } else if (c == '"') {
                in_string = false;
            }
            continue;
        }
        if (c == '"') {
            in_string = true;
        } else if (c == '[' || c == '{') {
            if (++depth > max_depth) return true;
        } else if ((c == ']' || c == '}') && depth > 0) {
            --depth;
        }
    }
    return false;
}

std::string_view daemon_version() noexcept {
    return LPARVISOR_VERSION;
}

}  // namespace lparvisor::control
