#include "control/json_rpc.hpp"

#include "control/definition_json.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <exception>
#include <initializer_list>
#include <limits>
#include <new>
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

// The params object of one request. Every key must be known to the method, so that a typo
// ("orgin_mib") is an error instead of a silently applied default.
class Params {
  public:
    Params(const json& params, std::initializer_list<std::string_view> known_keys)
        : params_(params) {
        for (const auto& [key, value] : params_.items()) {
            if (std::find(known_keys.begin(), known_keys.end(), key) == known_keys.end()) {
                throw RpcFailure(RpcErrorCode::InvalidParams,
                                 fmt::format("{}: unknown parameter", key), json{{"param", key}});
            }
        }
    }

    [[nodiscard]] std::string required_name(std::string_view key) const {
        const json* value = find(key);
        if (value == nullptr) fail_param(key, "missing (expected a string)");
        if (!value->is_string()) fail_param(key, "expected a string");
        auto text = value->get<std::string>();
        if (text.empty()) fail_param(key, "expected a non-empty string");
        return text;
    }

    [[nodiscard]] std::uint64_t required_integer(std::string_view key, std::uint64_t min,
                                                 std::uint64_t max) const {
        const json* value = find(key);
        if (value == nullptr) fail_param(key, "missing (expected a non-negative integer)");
        return to_integer(key, *value, min, max);
    }

    [[nodiscard]] std::uint64_t optional_integer(std::string_view key, std::uint64_t min,
                                                 std::uint64_t max, std::uint64_t fallback) const {
        const json* value = find(key);
        return value == nullptr ? fallback : to_integer(key, *value, min, max);
    }

    [[nodiscard]] std::optional<std::uint64_t> maybe_integer(std::string_view key,
                                                             std::uint64_t min,
                                                             std::uint64_t max) const {
        const json* value = find(key);
        if (value == nullptr) return std::nullopt;
        return to_integer(key, *value, min, max);
    }

    [[nodiscard]] std::string optional_string(std::string_view key, std::size_t max_bytes) const {
        const json* value = find(key);
        if (value == nullptr) return {};
        if (!value->is_string()) fail_param(key, "expected a string");
        auto text = value->get<std::string>();
        if (text.size() > max_bytes)
            fail_param(key, fmt::format("longer than {} bytes", max_bytes));
        return text;
    }

    // "mode": "stop-and-copy" (the default) or "live".
    [[nodiscard]] MvstorMode mode() const {
        const auto text = optional_string("mode", 32);
        if (text == "live") return MvstorMode::Live;
        if (!text.empty() && text != "stop-and-copy") {
            fail_param("mode", "expected \"stop-and-copy\" or \"live\", got \"" +
                                   sanitize_utf8(text) + "\"");
        }
        return MvstorMode::StopAndCopy;
    }

    [[nodiscard]] bool optional_bool(std::string_view key, bool fallback) const {
        const json* value = find(key);
        if (value == nullptr) return fallback;
        if (!value->is_boolean()) fail_param(key, "expected true or false");
        return value->get<bool>();
    }

  private:
    const json* find(std::string_view key) const {
        auto it = params_.find(key);
        return it == params_.end() ? nullptr : &*it;
    }

    // nlohmann stores 0..2^64-1 as unsigned, negatives as signed, and anything else (fractions,
    // exponents, integers beyond 64 bits) as double: only the first is acceptable.
    static std::uint64_t to_integer(std::string_view key, const json& value, std::uint64_t min,
                                    std::uint64_t max) {
        const auto out_of_range = [&] {
            fail_param(key, fmt::format("expected an integer from {} to {}", min, max));
        };
        if (value.is_number_unsigned()) {
            auto number = value.get<std::uint64_t>();
            if (number < min || number > max) out_of_range();
            return number;
        }
        if (value.is_number_integer()) {  // signed: only negatives land here
            if (value.get<std::int64_t>() >= 0) {
                auto number = static_cast<std::uint64_t>(value.get<std::int64_t>());
                if (number < min || number > max) out_of_range();
                return number;
            }
            fail_param(key, "expected a non-negative integer");
        }
        if (value.is_number_float()) {
            double number = value.get<double>();
            if (std::isfinite(number) && number >= 0 && std::floor(number) == number &&
                number > static_cast<double>(max)) {
                out_of_range();  // an integer too large for 64 bits
            }
        }
        fail_param(key, "expected a non-negative integer");
    }

    const json& params_;
};

Call parse_no_params(const json& params) {
    Params checked(params, {});
    return ListCall{};
}

Call parse_ping(const json& params) {
    Params checked(params, {});
    return PingCall{};
}

Call parse_mvstor(const json& params) {
    Params checked(params, {"lpar", "origin_mib", "timeout_ms", "mode", "target_pause_us",
                            "max_rounds", "max_total_ms"});
    MvstorCall call;
    call.request.lpar = checked.required_name("lpar");
    call.request.origin_mib = checked.required_integer("origin_mib", 0, kMaxOriginMib);
    call.request.drain_timeout = std::chrono::milliseconds(
        checked.optional_integer("timeout_ms", 1, kMaxDrainTimeoutMs, kDefaultDrainTimeoutMs));
    call.request.mode = checked.mode();
    auto& policy = call.request.policy;
    policy.target_pause = std::chrono::microseconds(checked.optional_integer(
        "target_pause_us", 1, 10'000'000, static_cast<std::uint64_t>(policy.target_pause.count())));
    policy.max_rounds =
        static_cast<unsigned>(checked.optional_integer("max_rounds", 1, 10'000, policy.max_rounds));
    policy.max_total = std::chrono::milliseconds(checked.optional_integer(
        "max_total_ms", 0, 3'600'000, static_cast<std::uint64_t>(policy.max_total.count())));
    return call;
}

Call parse_console(const json& params) {
    Params checked(params, {"lpar", "bytes"});
    ConsoleCall call;
    call.lpar = checked.required_name("lpar");
    call.max_bytes = static_cast<std::size_t>(
        checked.optional_integer("bytes", 0, kMaxConsoleBytes, kDefaultConsoleBytes));
    return call;
}

Call parse_define(const json& params) {
    Params checked(params, {"name", "size_mib", "origin_mib", "vcpus", "firmware",
                            "rewrite_pages_per_sec", "working_set_mib", "round_limit", "kernel",
                            "initrd", "cmdline", "disks", "rng", "max_size_mib"});
    LparDefinition definition;
    definition.name = checked.required_name("name");
    definition.size_mib = checked.required_integer("size_mib", 1, kMaxSizeMib);
    definition.origin_mib = checked.maybe_integer("origin_mib", 0, kMaxOriginMib);
    definition.vcpus = static_cast<unsigned>(checked.optional_integer("vcpus", 1, kMaxVcpus, 1));
    definition.firmware = checked.optional_string("firmware", kMaxFirmwarePathBytes);
    constexpr auto kAny = std::numeric_limits<std::uint64_t>::max();
    definition.rewrite_pages_per_sec =
        checked.optional_integer("rewrite_pages_per_sec", 0, kAny, 0);
    definition.working_set_mib = checked.optional_integer("working_set_mib", 0, kMaxSizeMib, 0);
    definition.round_limit = checked.optional_integer("round_limit", 0, kAny, 0);
    definition.kernel = checked.optional_string("kernel", kMaxPathBytes);
    definition.initrd = checked.optional_string("initrd", kMaxPathBytes);
    definition.cmdline = checked.optional_string("cmdline", kMaxCmdlineBytes);
    definition.rng = checked.optional_bool("rng", true);
    // 0 or absent: no virtio-mem region. The hypervisor checks it against size_mib.
    definition.max_size_mib = checked.optional_integer("max_size_mib", 0, kMaxSizeMib, 0);
    try {
        if (params.contains("disks")) definition.disks = parse_disk_list(params["disks"], "disks");
        check_boot_source(definition);
    } catch (const std::invalid_argument& e) {
        std::string what = e.what();
        throw RpcFailure(RpcErrorCode::InvalidParams, what,
                         json{{"param", what.substr(0, what.find_first_of(".[:"))}});
    }
    return DefineCall{std::move(definition)};
}

template <Lifecycle operation>
Call parse_lifecycle(const json& params) {
    Params checked(params, {"lpar"});
    return LifecycleCall{operation, checked.required_name("lpar")};
}

Call parse_remove(const json& params) {
    Params checked(params, {"lpar"});
    return RemoveCall{checked.required_name("lpar")};
}

Call parse_config(const json& params) {
    Params checked(params, {});
    return ConfigCall{};
}

Call parse_cancel(const json& params) {
    Params checked(params, {"lpar"});
    return CancelCall{checked.required_name("lpar")};
}

Call parse_exchange(const json& params) {
    Params checked(params, {"a", "b", "timeout_ms"});
    ExchangeCall call;
    call.request.a = checked.required_name("a");
    call.request.b = checked.required_name("b");
    call.request.drain_timeout = std::chrono::milliseconds(
        checked.optional_integer("timeout_ms", 1, kMaxDrainTimeoutMs, kDefaultDrainTimeoutMs));
    return call;
}

template <bool carry_out>
Call parse_grow(const json& params) {
    Params checked =
        carry_out ? Params(params, {"lpar", "mib", "mode"}) : Params(params, {"lpar", "mib"});
    GrowCall call;
    call.lpar = checked.required_name("lpar");
    call.extra_mib = checked.required_integer("mib", 2, kMaxSizeMib);
    call.carry_out = carry_out;
    if constexpr (carry_out) call.mode = checked.mode();
    return call;
}

// storage.expand, storage.shrink, storage.grow. The hypervisor works in 2 MiB blocks (its
// virtio-mem block size): an odd mib is refused here, so that it never half-plugs a block.
template <Resize operation>
Call parse_resize(const json& params) {
    Params checked = operation == Resize::Grow
                         ? Params(params, {"lpar", "mib", "timeout_ms", "mode"})
                         : Params(params, {"lpar", "mib", "timeout_ms"});
    ResizeCall call;
    call.operation = operation;
    call.request.lpar = checked.required_name("lpar");
    call.request.mib = checked.required_integer("mib", 2, kMaxSizeMib);
    if (call.request.mib % 2 != 0) fail_param("mib", "expected a multiple of 2 (2 MiB blocks)");
    call.request.timeout = std::chrono::milliseconds(
        checked.optional_integer("timeout_ms", 1, kMaxDrainTimeoutMs, kDefaultDrainTimeoutMs));
    if constexpr (operation == Resize::Grow) call.mode = checked.mode();
    return call;
}

template <bool subscribe>
Call parse_subscription(const json& params) {
    Params checked(params, {});
    return SubscribeCall{subscribe};
}

struct MethodEntry {
    std::string_view name;
    Execution execution;
    Call (*parse)(const json& params);
};

// The method table: the one place that says which methods exist and where they run.
// activate (IPL: loads firmware, starts vCPUs), reset (clears storage) and deactivate (scrubs
// storage) take as long as the LPAR is large: the long pool, never timed out. stop and start only
// pause or resume vCPUs: the query pool, so that they are served while relocations fill the long
// pool, and the query timeout catches a hung one. storage.cancel must overtake the mvstor it
// cancels, which holds a long worker: the query pool too.
constexpr std::array kMethods{
    MethodEntry{"lpar.list", Execution::Query, parse_no_params},
    MethodEntry{"storage.mvstor", Execution::LongRunning, parse_mvstor},
    MethodEntry{"lpar.console", Execution::Query, parse_console},
    MethodEntry{"system.ping", Execution::Inline, parse_ping},
    MethodEntry{"lpar.define", Execution::Query, parse_define},
    MethodEntry{"lpar.activate", Execution::LongRunning, parse_lifecycle<Lifecycle::Activate>},
    MethodEntry{"lpar.stop", Execution::Query, parse_lifecycle<Lifecycle::Stop>},
    MethodEntry{"lpar.start", Execution::Query, parse_lifecycle<Lifecycle::Start>},
    MethodEntry{"lpar.reset", Execution::LongRunning, parse_lifecycle<Lifecycle::Reset>},
    MethodEntry{"lpar.deactivate", Execution::LongRunning, parse_lifecycle<Lifecycle::Deactivate>},
    MethodEntry{"lpar.remove", Execution::Query, parse_remove},
    MethodEntry{"system.config", Execution::Query, parse_config},
    MethodEntry{"storage.cancel", Execution::Query, parse_cancel},
    MethodEntry{"storage.exchange", Execution::LongRunning, parse_exchange},
    MethodEntry{"storage.plan_grow", Execution::Query, parse_grow<false>},
    MethodEntry{"storage.make_room", Execution::LongRunning, parse_grow<true>},
    MethodEntry{"storage.expand", Execution::LongRunning, parse_resize<Resize::Expand>},
    MethodEntry{"storage.shrink", Execution::LongRunning, parse_resize<Resize::Shrink>},
    MethodEntry{"storage.grow", Execution::LongRunning, parse_resize<Resize::Grow>},
    MethodEntry{"events.subscribe", Execution::Session, parse_subscription<true>},
    MethodEntry{"events.unsubscribe", Execution::Session, parse_subscription<false>},
};

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
        parsed.call = entry->parse(params == request.end() ? kNoParams : *params);
        parsed.execution = entry->execution;
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
        result = std::visit(
            [&api](const auto& call) -> json {
                using T = std::decay_t<decltype(call)>;
                if constexpr (std::is_same_v<T, ListCall>) {
                    return to_json(api.list());
                } else if constexpr (std::is_same_v<T, PingCall>) {
                    return json{{"version", daemon_version()}};
                } else if constexpr (std::is_same_v<T, MvstorCall>) {
                    return to_json(api.mvstor(call.request));
                } else if constexpr (std::is_same_v<T, DefineCall>) {
                    return to_json(api.define(call.definition));
                } else if constexpr (std::is_same_v<T, LifecycleCall>) {
                    return to_json(run_lifecycle(api, call));
                } else if constexpr (std::is_same_v<T, RemoveCall>) {
                    api.remove(call.lpar);
                    return json{{"removed", call.lpar}};
                } else if constexpr (std::is_same_v<T, ConfigCall>) {
                    return parse_config_text(api.system_config());
                } else if constexpr (std::is_same_v<T, CancelCall>) {
                    api.cancel_mvstor(call.lpar);
                    return json{{"cancelled", call.lpar}};
                } else if constexpr (std::is_same_v<T, SubscribeCall>) {
                    return json{{"subscribed", call.subscribe}};
                } else if constexpr (std::is_same_v<T, ExchangeCall>) {
                    return to_json(api.exchange(call.request));
                } else if constexpr (std::is_same_v<T, GrowCall>) {
                    return to_json(call.carry_out
                                       ? api.make_room(call.lpar, call.extra_mib, call.mode)
                                       : api.plan_grow(call.lpar, call.extra_mib));
                } else if constexpr (std::is_same_v<T, ResizeCall>) {
                    return run_resize(api, call);
                } else if constexpr (std::is_same_v<T, ConsoleCall>) {
                    std::string text = api.console(call.lpar, call.max_bytes);
                    // The contract is "the most recent max_bytes": hold the Api to it.
                    if (text.size() > call.max_bytes) text.erase(0, text.size() - call.max_bytes);
                    return json{{"lpar", call.lpar}, {"text", sanitize_utf8(text)}};
                } else {
                    static_assert(sizeof(T) == 0, "every Call needs an executor");
                }
            },
            parsed.call);
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

json to_json(const SystemStatus& status) {
    json lpars = json::array();
    for (const auto& lpar : status.lpars) lpars.push_back(to_json(lpar));
    return json{{"main_storage_mib", status.main_storage_mib},
                {"free_mib", status.free_mib},
                {"lpars", std::move(lpars)}};
}

json to_json(const MvstorResult& result) {
    json phases = json::array();
    for (const auto& phase : result.phases) {
        phases.push_back(json{{"phase", phase.phase}, {"us", phase.microseconds}});
    }
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
                {"policy_branch", result.policy_branch}};
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

std::string event_notification(const Event& event) {
    json params{{"event", event.type}, {"lpar", event.lpar}};
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
    return dump_line(json{{"jsonrpc", "2.0"}, {"method", "event"}, {"params", std::move(params)}});
}

std::string events_dropped_notification(std::uint64_t count) {
    return dump_line(json{{"jsonrpc", "2.0"},
                          {"method", "event"},
                          {"params", {{"event", "events.dropped"}, {"count", count}}}});
}

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
        // Length and the allowed range of the second byte (RFC 3629 table): this excludes
        // overlong forms (C0, C1, E0 80..9F, F0 80..8F), surrogates (ED A0..BF) and > U+10FFFF.
        std::size_t length = 0;
        unsigned char second_min = 0x80, second_max = 0xBF;
        if (lead >= 0xC2 && lead <= 0xDF) {
            length = 2;
        } else if (lead >= 0xE0 && lead <= 0xEF) {
            length = 3;
            if (lead == 0xE0) second_min = 0xA0;
            if (lead == 0xED) second_max = 0x9F;
        } else if (lead >= 0xF0 && lead <= 0xF4) {
            length = 4;
            if (lead == 0xF0) second_min = 0x90;
            if (lead == 0xF4) second_max = 0x8F;
        }
        std::size_t valid = length == 0 ? 0 : 1;  // bytes of a well-formed prefix seen so far
        while (valid > 0 && valid < length && i + valid < bytes.size()) {
            const auto next = static_cast<unsigned char>(bytes[i + valid]);
            const unsigned char min = valid == 1 ? second_min : 0x80;
            const unsigned char max = valid == 1 ? second_max : 0xBF;
            if (next < min || next > max) break;
            ++valid;
        }
        if (length != 0 && valid == length) {
            out.append(bytes.substr(i, length));
            i += length;
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
