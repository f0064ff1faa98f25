// svp: the operator console of lparvisor (the patent's SVP / LPAR frame). One JSON-RPC call per
// invocation over the daemon's control socket; see docs/control-protocol.md.
//
// Exit codes: 0 ok, 1 the daemon refused (JSON-RPC error), 2 usage error, 3 cannot connect,
// 4 protocol error or timeout.
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <optional>
#include <string>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "client.hpp"
#include "table.hpp"

namespace lparvisor::svp {
namespace {

constexpr double kDefaultTimeoutSeconds = 10;
constexpr double kDefaultMvstorTimeoutSeconds = 60;

struct Options {
    std::string socket_path = default_socket_path();
    bool json_output = false;
    std::optional<double> timeout_seconds;

    std::string lpar;
    std::uint64_t origin_mib = 0;
    std::optional<std::uint64_t> drain_timeout_ms;
    std::uint64_t console_bytes = 4096;
};

std::chrono::milliseconds timeout_for(const Options& options, bool is_mvstor) {
    double seconds = kDefaultTimeoutSeconds;
    if (options.timeout_seconds) {
        seconds = *options.timeout_seconds;
    } else if (is_mvstor) {
        // The daemon may wait the whole drain timeout before it even starts copying.
        const double drain_seconds =
            static_cast<double>(options.drain_timeout_ms.value_or(10000)) / 1000.0;
        seconds = std::max(kDefaultMvstorTimeoutSeconds, drain_seconds + 50.0);
    }
    return std::chrono::milliseconds(static_cast<std::int64_t>(std::ceil(seconds * 1000.0)));
}

// Prints the daemon's refusal and returns the exit code for it.
int report_refusal(const Reply& reply, const Options& options) {
    const auto& error = reply.error();
    const int code = error.at("code").get<int>();
    if (options.json_output) std::cout << reply.response.dump(2) << '\n';
    std::cerr << fmt::format("svp: {} ({}, code {})\n", error.at("message").get<std::string>(),
                             error_code_name(code), code);
    return kExitRefused;
}

int run(const std::string& command, const Options& options) {
    nlohmann::json params = nlohmann::json::object();
    std::string method;
    if (command == "lpars") {
        method = "lpar.list";
    } else if (command == "mvstor") {
        method = "storage.mvstor";
        params = {{"lpar", options.lpar}, {"origin_mib", options.origin_mib}};
        if (options.drain_timeout_ms) params["timeout_ms"] = *options.drain_timeout_ms;
    } else if (command == "console") {
        method = "lpar.console";
        params = {{"lpar", options.lpar}, {"bytes", options.console_bytes}};
    } else {
        method = "system.ping";
    }

    const Reply reply =
        call(options.socket_path, method, params, timeout_for(options, command == "mvstor"));
    if (!reply.ok) return report_refusal(reply, options);
    const auto& result = reply.result();
    if (options.json_output) {
        std::cout << result.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << '\n';
        return kExitOk;
    }
    try {
        if (command == "lpars") {
            std::cout << format_lpar_table(result);
        } else if (command == "mvstor") {
            std::cout << format_mvstor(result);
        } else if (command == "console") {
            std::cout << result.at("text").get<std::string>();
        } else {
            std::cout << fmt::format("lparvisor {} is answering on {}\n",
                                     result.at("version").get<std::string>(), options.socket_path);
        }
    } catch (const nlohmann::json::exception& error) {
        throw Failure(kExitProtocol, fmt::format("unexpected {} result from {}: {}", method,
                                                 options.socket_path, error.what()));
    }
    std::cout.flush();
    return kExitOk;
}

int main_with_exceptions(int argc, char** argv) {
    Options options;
    CLI::App app{"svp: the operator console of lparvisor (LPAR list, MVSTOR, console)", "svp"};
    app.fallthrough();  // global options are accepted after the subcommand too
    app.require_subcommand(1, 1);
    app.add_option("--socket", options.socket_path,
                   "the daemon's control socket (default: $LPARVISOR_SOCKET, else "
                   "/run/lparvisor/control.sock)")
        ->capture_default_str();
    app.add_flag("--json", options.json_output, "print the raw JSON result instead of a table");
    app.add_option("--timeout", options.timeout_seconds,
                   "seconds to wait for the answer (default: 60 for mvstor, 10 otherwise)")
        ->check(CLI::PositiveNumber);

    auto* lpars = app.add_subcommand("lpars", "list the LPARs and main storage (Fig. 3A table)");
    auto* mvstor =
        app.add_subcommand("mvstor", "move an LPAR's main storage to a new origin (no re-IPL)");
    mvstor->add_option("LPAR", options.lpar, "the LPAR to move")->required();
    mvstor->add_option("ORIGIN_MIB", options.origin_mib, "the new origin in main storage, in MiB")
        ->required();
    mvstor
        ->add_option("--timeout-ms", options.drain_timeout_ms,
                     "how long to wait for the LPAR's devices to go idle (default 10000)")
        ->check(CLI::Range(1, 600000));
    auto* console = app.add_subcommand("console", "print the recent serial output of an LPAR");
    console->add_option("LPAR", options.lpar, "the LPAR")->required();
    console
        ->add_option("--bytes", options.console_bytes,
                     "how many of the most recent bytes (default 4096, at most 1048576)")
        ->check(CLI::Range(0, 1048576));
    auto* ping = app.add_subcommand("ping", "check that the daemon answers; print its version");

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& error) {
        const int code = app.exit(error);  // prints --help, or the error and a hint
        return code == 0 ? kExitOk : kExitUsage;
    }
    std::string command;
    for (auto* subcommand : {lpars, mvstor, console, ping}) {
        if (subcommand->parsed()) command = subcommand->get_name();
    }
    return run(command, options);
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
