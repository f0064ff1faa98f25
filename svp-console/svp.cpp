// svp: the operator console of lparvisor (the patent's SVP / LPAR frame), a client of the daemon's
// control socket; see docs/control-protocol.md. Most commands are one JSON-RPC call; `watch`,
// `console --follow` and `mvstor`'s progress bar keep a connection open and listen to events.
//
// Exit codes: 0 ok, 1 the daemon refused (JSON-RPC error), 2 usage error, 3 cannot connect,
// 4 protocol error or timeout (also the daemon's own -32005 "timed out" answer).
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <fstream>
#include <iostream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "client.hpp"
#include "console.hpp"
#include "live.hpp"
#include "map.hpp"
#include "table.hpp"

namespace lparvisor::svp {
namespace {

using nlohmann::json;

constexpr double kDefaultTimeoutSeconds = 10;
constexpr double kDefaultMvstorTimeoutSeconds = 60;
constexpr double kDefaultLongTimeoutSeconds = 120;  // activate, reset, deactivate
constexpr auto kFollowInterval = std::chrono::milliseconds(200);
constexpr auto kAttachInterval = std::chrono::milliseconds(50);
// After a long command's result, how long its progress may still wait for events. The daemon
// publishes an operation's final event (mvstor.done, storage.expanded ...) before it answers, so
// after a success that event is on its way: the wait ends when it comes, and the bound only
// covers a lost one (events.dropped). Without a final event to wait for (make-room, a refusal),
// only what is already in flight is drained.
constexpr auto kFinalEventWait = std::chrono::milliseconds(10000);
constexpr auto kEventDrain = std::chrono::milliseconds(200);

volatile std::sig_atomic_t g_interrupted = 0;

extern "C" void on_interrupt(int) {
    g_interrupted = 1;
}

// SIGINT/SIGTERM end `watch` and `console --follow` cleanly (exit 0). No SA_RESTART, so that a
// blocking poll() returns at once.
void install_interrupt_handler() {
    struct sigaction action {};
    action.sa_handler = on_interrupt;
    sigemptyset(&action.sa_mask);
    ::sigaction(SIGINT, &action, nullptr);
    ::sigaction(SIGTERM, &action, nullptr);
}

struct Options {
    std::string socket_path = default_socket_path();
    bool json_output = false;
    std::optional<double> timeout_seconds;

    std::string lpar;
    std::uint64_t origin_mib = 0;
    std::optional<std::uint64_t> drain_timeout_ms;
    bool live = false;
    std::optional<std::uint64_t> target_pause_us;
    std::uint64_t console_bytes = 4096;
    bool follow = false;
    bool attach = false;

    std::uint64_t size_mib = 0;
    std::optional<std::uint64_t> define_origin_mib;
    std::optional<unsigned> vcpus;
    std::optional<std::string> firmware;
    std::optional<std::string> kernel, initrd, cmdline;
    std::vector<std::string> disks;  // PATH[,ro][,latency=MS]
    bool no_rng = false;
    std::optional<std::uint64_t> max_size_mib, rewrite_pages_per_sec, working_set_mib, round_limit;
    std::optional<std::string> on_reboot, on_poweroff, on_crash;  // restart, stop or deactivate

    std::string other_lpar;       // exchange
    std::uint64_t extra_mib = 0;  // grow / make-room / expand / shrink
    bool dry_run = false;

    std::vector<std::string> watch_events;  // watch --event
    std::vector<std::string> watch_lpars;   // watch --lpar

    std::size_t map_width = 72;
    std::optional<std::string> svg_path;
};

std::chrono::milliseconds to_ms(double seconds) {
    return std::chrono::milliseconds(static_cast<std::int64_t>(std::ceil(seconds * 1000.0)));
}

std::chrono::milliseconds timeout_for(const Options& options, const std::string& command) {
    if (options.timeout_seconds) return to_ms(*options.timeout_seconds);
    // --timeout-ms: mvstor's drain timeout, or how long expand/shrink/grow wait for the guest.
    const double wait_seconds =
        static_cast<double>(options.drain_timeout_ms.value_or(10000)) / 1000.0;
    if (command == "mvstor" || command == "expand" || command == "shrink") {
        // The daemon may wait that long before it even starts copying (scrubbing).
        return to_ms(std::max(kDefaultMvstorTimeoutSeconds, wait_seconds + 50.0));
    }
    if (command == "grow" && !options.dry_run) {  // the room-making MVSTORs come first
        return to_ms(std::max(kDefaultLongTimeoutSeconds, wait_seconds + 110.0));
    }
    if (command == "activate" || command == "reset" || command == "deactivate" ||
        command == "exchange" || command == "make-room") {
        return to_ms(kDefaultLongTimeoutSeconds);
    }
    return to_ms(kDefaultTimeoutSeconds);
}

// The commands that change LPAR sizes: their output ends with the storage table after.
bool shows_table_after(const std::string& command, const Options& options) {
    return command == "expand" || command == "shrink" || (command == "grow" && !options.dry_run);
}

// Prints the daemon's refusal and returns the exit code for it.
int report_refusal(const Reply& reply, const Options& options) {
    const auto& error = reply.error();
    const int code = error.at("code").get<int>();
    if (options.json_output) std::cout << reply.response.dump(2) << '\n';
    std::cerr << fmt::format("svp: {} ({}, code {})\n", error.at("message").get<std::string>(),
                             error_code_name(code), code);
    // The daemon's own query timeout is a timeout, like svp's.
    const bool timed_out = error.contains("data") && error["data"].is_object() &&
                           error["data"].value("kind", "") == "Timeout";
    return timed_out ? kExitProtocol : kExitRefused;
}

void print_json(const json& value) {
    std::cout << value.dump(2, ' ', false, json::error_handler_t::replace) << '\n';
}

// --disk PATH[,ro][,latency=MS]: one entry of lpar.define's disks, as the configuration writes
// it (a plain path when it has no options).
json disk_param(const std::string& text) {
    std::vector<std::string> parts;
    std::size_t start = 0;
    for (std::size_t comma; (comma = text.find(',', start)) != std::string::npos; start = comma + 1)
        parts.push_back(text.substr(start, comma - start));
    parts.push_back(text.substr(start));
    if (parts[0].empty()) throw Failure(kExitUsage, "--disk " + text + ": no image path");
    if (parts.size() == 1) return parts[0];
    json disk{{"path", parts[0]}};
    for (std::size_t i = 1; i < parts.size(); ++i) {
        if (parts[i] == "ro") {
            disk["read_only"] = true;
        } else if (parts[i].rfind("latency=", 0) == 0) {
            try {
                std::size_t used = 0;
                const auto ms = std::stoull(parts[i].substr(8), &used);
                if (used != parts[i].size() - 8) throw std::invalid_argument("trailing");
                disk["latency_ms"] = ms;
            } catch (const std::exception&) {
                throw Failure(kExitUsage, "--disk " + text + ": latency=MS takes a number");
            }
        } else {
            throw Failure(kExitUsage, "--disk " + text + ": unknown option '" + parts[i] +
                                          "' (PATH[,ro][,latency=MS])");
        }
    }
    return disk;
}

// lpar.define's params: every field of the configuration file's LPAR but "active". The
// daemon checks them all (one validator for every path); svp only shapes them.
json define_params(const Options& options) {
    json params{{"name", options.lpar}, {"size_mib", options.size_mib}};
    if (options.define_origin_mib) params["origin_mib"] = *options.define_origin_mib;
    if (options.vcpus) params["vcpus"] = *options.vcpus;
    if (options.firmware) params["firmware"] = *options.firmware;
    if (options.kernel) params["kernel"] = *options.kernel;
    if (options.initrd) params["initrd"] = *options.initrd;
    if (options.cmdline) params["cmdline"] = *options.cmdline;
    if (!options.disks.empty()) {
        json disks = json::array();
        for (const auto& disk : options.disks) disks.push_back(disk_param(disk));
        params["disks"] = std::move(disks);
    }
    if (options.no_rng) params["rng"] = false;
    if (options.max_size_mib) params["max_size_mib"] = *options.max_size_mib;
    if (options.rewrite_pages_per_sec)
        params["rewrite_pages_per_sec"] = *options.rewrite_pages_per_sec;
    if (options.working_set_mib) params["working_set_mib"] = *options.working_set_mib;
    if (options.round_limit) params["round_limit"] = *options.round_limit;
    if (options.on_reboot) params["on_reboot"] = *options.on_reboot;
    if (options.on_poweroff) params["on_poweroff"] = *options.on_poweroff;
    if (options.on_crash) params["on_crash"] = *options.on_crash;
    return params;
}

json mvstor_params(const Options& options) {
    json params{{"lpar", options.lpar}, {"origin_mib", options.origin_mib}};
    if (options.drain_timeout_ms) params["timeout_ms"] = *options.drain_timeout_ms;
    if (options.live) params["mode"] = "live";
    if (options.target_pause_us) params["target_pause_us"] = *options.target_pause_us;
    return params;
}

json exchange_params(const Options& options) {
    json params{{"a", options.lpar}, {"b", options.other_lpar}};
    if (options.drain_timeout_ms) params["timeout_ms"] = *options.drain_timeout_ms;
    return params;
}

// grow (not --dry-run), expand and shrink.
json resize_params(const std::string& command, const Options& options) {
    json params{{"lpar", options.lpar}, {"mib", options.extra_mib}};
    if (options.drain_timeout_ms) params["timeout_ms"] = *options.drain_timeout_ms;
    if (command == "grow" && options.live) params["mode"] = "live";
    return params;
}

json make_room_params(const Options& options) {
    json params{{"lpar", options.lpar}, {"mib", options.extra_mib}};
    if (options.live) params["mode"] = "live";
    return params;
}

bool is_lifecycle(const std::string& command) {
    return command == "activate" || command == "stop" || command == "start" || command == "reset" ||
           command == "deactivate" || command == "remove";
}

// The single-call commands: the method and params for each.
std::pair<std::string, json> request_for(const std::string& command, const Options& options) {
    if (command == "lpars" || command == "map") return {"lpar.list", json::object()};
    if (command == "mvstor") return {"storage.mvstor", mvstor_params(options)};
    if (command == "console") {
        return {"lpar.console", {{"lpar", options.lpar}, {"bytes", options.console_bytes}}};
    }
    if (command == "define") return {"lpar.define", define_params(options)};
    if (is_lifecycle(command)) return {"lpar." + command, {{"lpar", options.lpar}}};
    if (command == "cancel") return {"storage.cancel", {{"lpar", options.lpar}}};
    if (command == "exchange") return {"storage.exchange", exchange_params(options)};
    if (command == "grow" && options.dry_run) {
        return {"storage.plan_grow", {{"lpar", options.lpar}, {"mib", options.extra_mib}}};
    }
    if (command == "grow" || command == "expand" || command == "shrink")
        return {"storage." + command, resize_params(command, options)};
    if (command == "make-room") return {"storage.make_room", make_room_params(options)};
    if (command == "config") return {"system.config", json::object()};
    if (command == "stats") return {"system.stats", json::object()};
    if (command == "describe") return {"system.describe", json::object()};
    return {"system.ping", json::object()};
}

void print_result(const std::string& command, const json& result, const Options& options) {
    if (command == "lpars") {
        std::cout << format_lpar_table(result);
    } else if (command == "mvstor") {
        std::cout << format_mvstor(result);
    } else if (command == "console") {
        std::cout << result.at("text").get<std::string>();
    } else if (command == "config") {
        print_json(result);  // pretty either way: it is meant for lparvisor --config
    } else if (command == "remove") {
        std::cout << fmt::format("removed {}\n", result.at("removed").get<std::string>());
    } else if (command == "cancel") {
        std::cout << fmt::format("cancelled the MVSTOR of {}\n",
                                 result.at("cancelled").get<std::string>());
    } else if (command == "map") {
        std::cout << format_storage_map(result, options.map_width);
    } else if (command == "exchange") {
        std::cout << format_exchange(result);
    } else if ((command == "grow" && options.dry_run) || command == "make-room") {
        std::cout << format_grow_plan(result);
    } else if (command == "grow") {
        std::cout << format_grow(result);
    } else if (command == "expand") {
        std::cout << format_resize("EXPAND", result);
    } else if (command == "shrink") {
        std::cout << format_resize("SHRINK", result);
    } else if (command == "describe") {
        std::cout << format_describe(result);
    } else if (command == "stats") {
        std::cout << format_stats(result);
    } else if (command == "ping") {
        std::cout << fmt::format("lparvisor {} is answering on {}\n",
                                 result.at("version").get<std::string>(), options.socket_path);
    } else {
        std::cout << format_lpar_row(result);  // define and the lifecycle commands
    }
}

// After a size change: a blank line and the storage table as it is now. The change is done
// either way: a failure to list is only a note on stderr, not a failed command.
void print_table_after(const Options& options) {
    std::cout << '\n';
    try {
        const Reply reply =
            call(options.socket_path, "lpar.list", json::object(), timeout_for(options, "lpars"));
        if (reply.ok) {
            std::cout << format_lpar_table(reply.result());
            return;
        }
        std::cerr << fmt::format("svp: done, but lpar.list was refused: {}\n",
                                 reply.error().value("message", std::string("?")));
    } catch (const Failure& failure) {
        std::cerr << fmt::format("svp: done, but cannot list the LPARs: {}\n", failure.what());
    } catch (const json::exception& error) {
        std::cerr << fmt::format("svp: done, but lpar.list's result is unexpected: {}\n",
                                 error.what());
    }
}

// Prints a command's answer: the refusal (returning its exit code), or the result as a table or
// JSON, then the storage table after a size change.
int print_reply(const std::string& command, const Options& options, const std::string& method,
                const Reply& reply) {
    if (!reply.ok) return report_refusal(reply, options);
    const auto& result = reply.result();
    try {
        if (command == "map" && options.svg_path) {
            std::ofstream svg(*options.svg_path);
            svg << storage_map_svg(result);
            if (!svg.flush()) {
                throw Failure(kExitUsage, fmt::format("cannot write {}", *options.svg_path));
            }
        }
        if (options.json_output) {
            print_json(result);
        } else {
            print_result(command, result, options);
        }
    } catch (const json::exception& error) {
        throw Failure(kExitProtocol, fmt::format("unexpected {} result from {}: {}", method,
                                                 options.socket_path, error.what()));
    }
    if (!options.json_output && shows_table_after(command, options)) print_table_after(options);
    std::cout.flush();
    return kExitOk;
}

int run_single(const std::string& command, const Options& options) {
    const auto [method, params] = request_for(command, options);
    return print_reply(command, options, method,
                       call(options.socket_path, method, params, timeout_for(options, command)));
}

// Subscribes `session` to the events `filter` lets through; false when the daemon does not
// offer events. A daemon that predates filters refuses one: then every event, filtered here.
bool subscribe(Session& session, const Options& options, const json& filter) {
    const Reply reply =
        session.request(1, "events.subscribe", filter, timeout_for(options, "subscribe"));
    if (reply.ok || filter.empty()) return reply.ok;
    return session.request(2, "events.subscribe", json::object(), timeout_for(options, "subscribe"))
        .ok;
}

int run_watch(const Options& options) {
    install_interrupt_handler();
    Session session(options.socket_path, timeout_for(options, "watch"));
    json filter = json::object();
    if (!options.watch_events.empty()) filter["events"] = options.watch_events;
    if (!options.watch_lpars.empty()) filter["lpars"] = options.watch_lpars;
    const Reply reply =
        session.request(1, "events.subscribe", filter, timeout_for(options, "watch"),
                        [](const json&) {});  // nothing before the answer
    if (!reply.ok) return report_refusal(reply, options);
    if (!options.json_output) {
        std::cerr << fmt::format("svp: watching events on {} (Ctrl-C to stop)\n",
                                 options.socket_path);
    }
    while (!g_interrupted) {
        while (auto line = session.take_line()) {
            if (options.json_output) {
                std::cout << *line << '\n';
            } else {
                const json message = json::parse(*line, nullptr, false);
                if (message.is_discarded() || !message.contains("params")) continue;
                std::cout << format_event(message["params"], std::chrono::system_clock::now())
                          << '\n';
            }
            std::cout.flush();
        }
        (void)session.receive(std::chrono::milliseconds(250));
    }
    return kExitOk;
}

ConsoleOptions console_options(const Options& options) {
    ConsoleOptions console;
    console.socket_path = options.socket_path;
    console.lpar = options.lpar;
    console.bytes = options.console_bytes;
    console.json_lines = options.json_output;
    console.timeout = timeout_for(options, "console");
    // Typing wants its echo at once; following a log does not.
    console.interval = options.attach ? kAttachInterval : kFollowInterval;
    return console;
}

int run_console(const Options& options) {
    install_interrupt_handler();
    const auto refuse = [&](const Reply& reply) { return report_refusal(reply, options); };
    return options.attach ? attach_console(console_options(options), g_interrupted, refuse)
                          : follow_console(console_options(options), g_interrupted, refuse);
}

// What a long command's progress listens to, and which event ends it.
struct ProgressScope {
    std::vector<std::string> events;  // names or prefixes ("mvstor.*")
    std::vector<std::string> lpars;   // empty: any LPAR (grow and make-room move others)
    std::vector<std::string> finals;  // an event of these, about final_lpar, ends the progress
    std::string final_lpar;
};

std::optional<ProgressScope> progress_scope(const std::string& command, const Options& options) {
    if (command == "mvstor")
        return ProgressScope{
            {"mvstor.*"}, {options.lpar}, {"mvstor.done", "mvstor.failed"}, options.lpar};
    if (command == "exchange")
        return ProgressScope{{"exchange.*"}, {options.lpar}, {"exchange.done"}, options.lpar};
    if (command == "expand")
        return ProgressScope{
            {"expand.*", "storage.expanded"}, {options.lpar}, {"storage.expanded"}, options.lpar};
    if (command == "shrink")
        return ProgressScope{
            {"shrink.*", "storage.shrunk"}, {options.lpar}, {"storage.shrunk"}, options.lpar};
    if (command == "grow" && !options.dry_run)
        return ProgressScope{
            {"mvstor.*", "expand.*", "storage.expanded"}, {}, {"storage.expanded"}, options.lpar};
    if (command == "make-room") return ProgressScope{{"mvstor.*"}, {}, {}, {}};
    return std::nullopt;
}

// Draws a long command's progress on stderr from the events of a second connection: a bar on a
// terminal, a line per finished phase otherwise, the events themselves as JSON lines with --json.
class ProgressView {
  public:
    ProgressView(ProgressScope scope, bool tty, bool json_lines)
        : scope_(std::move(scope)), tty_(tty && !json_lines), json_lines_(json_lines) {}

    // True once the command's final event came.
    bool on_event(const json& params) {
        const std::string type = params.value("event", "");
        const std::string lpar = params.value("lpar", "");
        if (!wanted(type, lpar)) return false;
        const std::string op = type.substr(0, type.find('.'));
        if (json_lines_) {
            std::cerr << params.dump(-1, ' ', false, json::error_handler_t::replace) << '\n';
        } else if (type.ends_with(".progress")) {
            if (params.contains("copied")) {
                done_ = params.value("copied", std::uint64_t{0});
                total_ = params.value("total", std::uint64_t{0});
            } else {
                constexpr std::uint64_t kMiB = std::uint64_t{1024} * 1024;
                done_ = params.value(op == "shrink" ? "released_mib" : "plugged_mib",
                                     std::uint64_t{0}) *
                        kMiB;
                total_ = params.value("total_mib", std::uint64_t{0}) * kMiB;
            }
            if (tty_) draw(fmt::format("{} {} {}", op, lpar, verb(op)));
        } else if (type.ends_with(".phase")) {
            const std::string phase = params.value("phase", "?");
            if (tty_) {
                draw(fmt::format("{} {} {} done", op, lpar, phase));
            } else {
                std::cerr << fmt::format("{} {}: {} done ({})\n", op, lpar, phase,
                                         format_ms(params.value("us", std::uint64_t{0})));
            }
        } else if (type == "mvstor.failed" && !tty_) {
            std::cerr << fmt::format("mvstor {}: failed: {}\n", lpar,
                                     params.value("message", std::string("?")));
        }
        std::cerr.flush();
        const bool final =
            std::find(scope_.finals.begin(), scope_.finals.end(), type) != scope_.finals.end() &&
            lpar == scope_.final_lpar;
        if (final) finish();
        return final;
    }

    void finish() {
        if (tty_ && drawn_) std::cerr << "\r\033[K" << std::flush;
        drawn_ = false;
    }

  private:
    // The filter again, here: a daemon without filters sends everything.
    bool wanted(const std::string& type, const std::string& lpar) const {
        const auto named = [&](const std::string& entry) {
            return entry.ends_with(".*") ? type.starts_with(entry.substr(0, entry.size() - 1))
                                         : type == entry;
        };
        if (std::none_of(scope_.events.begin(), scope_.events.end(), named)) return false;
        return scope_.lpars.empty() ||
               std::find(scope_.lpars.begin(), scope_.lpars.end(), lpar) != scope_.lpars.end();
    }

    static std::string verb(const std::string& op) {
        if (op == "expand") return "plug";
        if (op == "shrink") return "unplug";
        return op == "mvstor" ? "copy" : op;
    }

    void draw(const std::string& label) {
        std::cerr << '\r' << "\033[K" << progress_bar(done_, total_, label) << std::flush;
        drawn_ = true;
    }

    ProgressScope scope_;
    bool tty_;
    bool json_lines_;
    bool drawn_ = false;
    std::uint64_t done_ = 0;
    std::uint64_t total_ = 0;
};

// Opens `events`, a second connection subscribed to what `scope` names; leaves it empty when
// the daemon takes no subscription (an older one) or the connection fails after all. A daemon
// that is not there at all is the command's failure: it throws.
void subscribe_progress(std::optional<Session>& events, const ProgressScope& scope,
                        const Options& options) {
    json filter{{"events", scope.events}};
    if (!scope.lpars.empty()) filter["lpars"] = scope.lpars;
    try {
        events.emplace(options.socket_path, timeout_for(options, "subscribe"));
        if (!subscribe(*events, options, filter)) events.reset();
    } catch (const Failure& failure) {
        if (failure.exit_code() == kExitNoDaemon) throw;
        events.reset();
    }
}

// Shows every event already received; true if one of them was the command's final event.
bool show_events(Session& events, ProgressView& view) {
    bool finished = false;
    while (auto line = events.take_line()) {
        const json message = json::parse(*line, nullptr, false);
        if (message.is_object() && message.contains("params") && !message.contains("id")) {
            finished = view.on_event(message["params"]) || finished;
        }
    }
    return finished;
}

// The command's answer (request id 1), if a whole line of it has come; Failure(kExitProtocol)
// when it is not JSON.
std::optional<Reply> take_reply(Session& session, const Options& options) {
    auto line = session.take_line();
    if (!line) return std::nullopt;
    try {
        return to_reply(json::parse(*line), 1, options.socket_path, *line);
    } catch (const json::exception& error) {
        throw Failure(kExitProtocol, fmt::format("{} answered with invalid JSON: {}",
                                                 options.socket_path, error.what()));
    }
}

// A long command (mvstor, exchange, expand, shrink, grow, make-room) with its progress from a
// second, subscribed connection; without events (an older daemon) it just waits for the result.
int run_with_progress(const std::string& command, const Options& options) {
    const auto scope = progress_scope(command, options);
    const auto timeout = timeout_for(options, command);
    std::optional<Session> events;
    if (scope) subscribe_progress(events, *scope, options);
    if (!events) return run_single(command, options);

    ProgressView view(*scope, ::isatty(STDERR_FILENO) == 1, options.json_output);
    Session session(options.socket_path, timeout);
    const auto [method, params] = request_for(command, options);
    session.send_request(1, method, params);
    const auto deadline = Session::Clock::now() + timeout;
    std::optional<Reply> reply;
    std::optional<Session::Clock::time_point> grace_end;
    bool finished = false;
    for (;;) {
        finished = show_events(*events, view) || finished;
        if (!reply) {
            reply = take_reply(session, options);
            if (reply)
                grace_end = Session::Clock::now() +
                            (scope->finals.empty() || !reply->ok ? kEventDrain : kFinalEventWait);
        }
        const auto now = Session::Clock::now();
        if (reply && (finished || now >= *grace_end)) break;
        if (!reply && now >= deadline) {
            view.finish();
            throw Failure(
                kExitProtocol,
                fmt::format("no answer from {} within {:.1f} s (use --timeout to wait "
                            "longer)",
                            options.socket_path, static_cast<double>(timeout.count()) / 1000.0));
        }
        // Whichever connection has something; both are polled briefly in turn.
        if (!reply) (void)session.receive(std::chrono::milliseconds(20));
        (void)events->receive(std::chrono::milliseconds(20));
    }
    view.finish();
    return print_reply(command, options, method, *reply);
}

int main_with_exceptions(int argc, char** argv) {
    Options options;
    CLI::App app{
        "svp: the operator console of lparvisor (LPARs, MVSTOR, EXCHANGE, EXPAND, events, console)",
        "svp"};
    app.fallthrough();  // global options are accepted after the subcommand too
    app.require_subcommand(1, 1);
    app.add_option("--socket", options.socket_path,
                   "the daemon's control socket (default: $LPARVISOR_SOCKET, else "
                   "/run/lparvisor/control.sock)")
        ->capture_default_str();
    app.add_flag("--json", options.json_output, "print the raw JSON result instead of a table");
    app.add_option("--timeout", options.timeout_seconds,
                   "seconds to wait for each answer (default: 60 for mvstor, expand and shrink, "
                   "120 for activate, reset, deactivate, exchange, make-room and grow, 10 "
                   "otherwise; longer when --timeout-ms asks for more)")
        ->check(CLI::PositiveNumber);

    auto* lpars = app.add_subcommand(
        "lpars", "list the LPARs and main storage (Fig. 3A table, with guest kind and max size)");
    auto* mvstor = app.add_subcommand(
        "mvstor", "move an LPAR's main storage to a new origin (no re-IPL); progress on stderr");
    mvstor->add_option("LPAR", options.lpar, "the LPAR to move")->required();
    mvstor->add_option("ORIGIN_MIB", options.origin_mib, "the new origin in main storage, in MiB")
        ->required();
    mvstor
        ->add_option("--timeout-ms", options.drain_timeout_ms,
                     "how long to wait for the LPAR's devices to go idle (default 10000)")
        ->check(CLI::Range(1, 600000));
    mvstor->add_flag("--live", options.live,
                     "move while the guest runs: pre-copy with dirty logging, then short stops");
    mvstor
        ->add_option("--target-pause-us", options.target_pause_us,
                     "live: the pause each stop aims for (default 1000)")
        ->check(CLI::Range(1, 10000000));
    auto* console = app.add_subcommand(
        "console", "print an LPAR's recent serial output, follow it, or attach to it");
    console->add_option("LPAR", options.lpar, "the LPAR")->required();
    console
        ->add_option("--bytes", options.console_bytes,
                     "how many of the most recent bytes (default 4096, at most 1048576)")
        ->check(CLI::Range(0, 1048576));
    auto* follow = console->add_flag("--follow,-f", options.follow,
                                     "keep printing new output as it comes (Ctrl-C to stop)");
    console
        ->add_flag("--attach,-a", options.attach,
                   "an interactive session: what you type goes to the LPAR's serial port (raw "
                   "terminal; Ctrl-] detaches). One client holds the input at a time; others "
                   "attach read-only and are told who holds it")
        ->excludes(follow);
    auto* ping = app.add_subcommand("ping", "check that the daemon answers; print its version");

    auto* define = app.add_subcommand("define", "define an LPAR (no storage until activate)");
    define->add_option("NAME", options.lpar, "the new LPAR's name")->required();
    // Ranges are the daemon's to check (svp describe shows them): one validator for every path.
    define->add_option("--size", options.size_mib, "its main storage, MiB (4-3584, even)")
        ->required();
    define->add_option("--origin", options.define_origin_mib,
                       "where its storage starts, MiB (default: first fit at activation)");
    define->add_option("--vcpus", options.vcpus, "virtual CPUs (1-8, default 1)");
    define->add_option("--firmware", options.firmware,
                       "the guest ELF (default: the daemon's test firmware)");
    define->add_option("--kernel", options.kernel,
                       "boot Linux from this bzImage or vmlinux instead of the firmware");
    define->add_option("--initrd", options.initrd, "the initrd (with --kernel)");
    define->add_option("--cmdline", options.cmdline, "the kernel command line (with --kernel)");
    define->add_option("--disk", options.disks,
                       "a virtio-blk disk: PATH[,ro][,latency=MS] (repeatable, at most 8)");
    define->add_flag("--no-rng", options.no_rng, "no virtio-rng device");
    define->add_option("--max-size", options.max_size_mib,
                       "how far EXPAND may grow it, MiB (default: it cannot grow)");
    define->add_option("--rewrite-pages-per-sec", options.rewrite_pages_per_sec,
                       "firmware pacing: pages rewritten per second");
    define->add_option("--working-set", options.working_set_mib,
                       "firmware pacing: MiB it rewrites");
    define->add_option("--round-limit", options.round_limit,
                       "firmware: verification rounds before it exits");
    define->add_option("--on-reboot", options.on_reboot,
                       "when the guest reboots: restart (default: re-IPL in place, storage "
                       "scrubbed), stop or deactivate");
    define->add_option("--on-poweroff", options.on_poweroff,
                       "when the guest powers off: stop (default), restart or deactivate");
    define->add_option("--on-crash", options.on_crash,
                       "when the guest crashes (triple fault, an exit nothing serves): stop "
                       "(default, registers in the reason), restart or deactivate");

    CLI::App* lifecycle[6];
    const char* lifecycle_names[6][2] = {
        {"activate", "IPL a defined LPAR: give it storage and start its vCPUs"},
        {"stop", "stop a running LPAR's vCPUs (its storage stays)"},
        {"start", "let a stopped LPAR run again"},
        {"reset", "reset: re-IPL an LPAR in place, its storage scrubbed (as a guest reboot does)"},
        {"deactivate", "stop an LPAR and give its storage back (it stays defined)"},
        {"remove", "delete a defined (inactive) LPAR"}};
    for (int i = 0; i < 6; ++i) {
        lifecycle[i] = app.add_subcommand(lifecycle_names[i][0], lifecycle_names[i][1]);
        lifecycle[i]->add_option("NAME", options.lpar, "the LPAR")->required();
    }
    auto* config = app.add_subcommand(
        "config", "print the configuration that recreates this system (for lparvisor --config)");
    auto* stats = app.add_subcommand(
        "stats",
        "the counters: per LPAR exits, run time and disk I/O; operations; pauses "
        "(--json: all of them, as /metrics has them)");
    auto* cancel = app.add_subcommand("cancel", "cancel the running MVSTOR of an LPAR");
    cancel->add_option("NAME", options.lpar, "the LPAR being moved")->required();
    auto* exchange = app.add_subcommand(
        "exchange", "two LPARs trade their storage areas (equal sizes, or neighbours swap places)");
    exchange->add_option("A", options.lpar, "one LPAR")->required();
    exchange->add_option("B", options.other_lpar, "the other LPAR")->required();
    exchange
        ->add_option("--timeout-ms", options.drain_timeout_ms,
                     "how long to wait for the LPARs' devices to go idle (default 10000)")
        ->check(CLI::Range(1, 600000));
    // EXPAND: sizes are whole 2 MiB blocks (the daemon refuses anything else too).
    const auto block_multiple = CLI::Validator(
        [](std::string& value) -> std::string {
            try {
                const auto mib = std::stoull(value);
                if (mib < 2 || mib % 2 != 0 || mib > (std::uint64_t{1} << 44) - 1)
                    return "expected a multiple of 2 MiB, at least 2";
                return {};
            } catch (const std::exception&) {
                return "expected a number of MiB";
            }
        },
        "MIB (multiple of 2)");
    const char* guest_timeout_help =
        "how long to wait for the guest to plug or unplug the memory (default 10000)";
    auto* grow = app.add_subcommand(
        "grow",
        "make room above LPAR with the cheapest MVSTORs of other LPARs, then EXPAND it by MIB "
        "(--dry-run: only show the plan)");
    grow->add_option("LPAR", options.lpar, "the LPAR that needs to grow")->required();
    grow->add_option("MIB", options.extra_mib, "how much more storage, MiB (a multiple of 2)")
        ->required()
        ->check(block_multiple);
    grow->add_flag("--dry-run", options.dry_run, "show the plan only; nothing moves or grows");
    grow->add_flag("--live", options.live, "make the room-making MVSTORs live (short stops)");
    grow->add_option("--timeout-ms", options.drain_timeout_ms, guest_timeout_help)
        ->check(CLI::Range(1, 600000));
    auto* expand = app.add_subcommand(
        "expand",
        "EXPAND: grow LPAR by MIB into the free storage directly above it (virtio-mem; the "
        "guest plugs it)");
    expand->add_option("LPAR", options.lpar, "the LPAR to grow")->required();
    expand->add_option("MIB", options.extra_mib, "how much more storage, MiB (a multiple of 2)")
        ->required()
        ->check(block_multiple);
    expand->add_option("--timeout-ms", options.drain_timeout_ms, guest_timeout_help)
        ->check(CLI::Range(1, 600000));
    auto* shrink = app.add_subcommand(
        "shrink", "give back the top MIB of an expanded LPAR (the guest unplugs them first)");
    shrink->add_option("LPAR", options.lpar, "the LPAR to shrink")->required();
    shrink
        ->add_option("MIB", options.extra_mib,
                     "how much storage to give back, MiB (a multiple of 2)")
        ->required()
        ->check(block_multiple);
    shrink->add_option("--timeout-ms", options.drain_timeout_ms, guest_timeout_help)
        ->check(CLI::Range(1, 600000));
    auto* make_room = app.add_subcommand(
        "make-room", "carry out grow's plan: move other LPARs so MIB are free above LPAR");
    make_room->add_option("LPAR", options.lpar, "the LPAR that needs room above it")->required();
    make_room->add_option("MIB", options.extra_mib, "how much room, MiB (a multiple of 2)")
        ->required();
    make_room->add_flag("--live", options.live, "make the moves live (short stops)");
    auto* watch = app.add_subcommand(
        "watch", "print events live, one line each (--json: the raw lines); Ctrl-C to stop");
    watch->add_option(
        "--event", options.watch_events,
        "only this event (repeatable; a prefix as mvstor.*; svp describe lists them)");
    watch->add_option("--lpar", options.watch_lpars, "only events about this LPAR (repeatable)");
    auto* describe = app.add_subcommand(
        "describe", "list every method the daemon takes (parameters, ranges) and every event");
    auto* map = app.add_subcommand("map", "draw main storage to scale: LPARs, origins and gaps");
    map->add_option("--width", options.map_width, "cells in the bar (default 72)")
        ->check(CLI::Range(8, 1000));
    map->add_option("--svg", options.svg_path, "also write the picture as an SVG file");

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& error) {
        const int code = app.exit(error);  // prints --help, or the error and a hint
        return code == 0 ? kExitOk : kExitUsage;
    }
    std::string command;
    for (auto* subcommand : app.get_subcommands()) command = subcommand->get_name();

    if (command == "watch") return run_watch(options);
    if (command == "console" && (options.follow || options.attach)) return run_console(options);
    if (progress_scope(command, options)) return run_with_progress(command, options);
    (void)lpars, (void)ping, (void)define, (void)config, (void)stats, (void)cancel, (void)watch,
        (void)map, (void)mvstor, (void)console, (void)exchange, (void)grow, (void)make_room,
        (void)expand, (void)shrink, (void)describe;
    return run_single(command, options);
}

}  // namespace
}  // namespace lparvisor::svp

int main(int argc, char** argv) {
    try {
        return lparvisor::svp::main_with_exceptions(argc, argv);
    } catch (const lparvisor::svp::Failure& failure) {
        std::cerr << "svp: " << failure.what() << '\n';
        return failure.exit_code();
    } catch (const std::exception& error) {
        std::cerr << "svp: " << error.what() << '\n';
        return lparvisor::svp::kExitProtocol;
    }
}
