// lparvisor: the daemon. Creates main storage, activates the configured LPARs (default: the
// patent's Fig. 3A), and serves the JSON-RPC control socket until SIGINT or SIGTERM.
#include <sys/stat.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <iostream>
#include <thread>

#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <nlohmann/json.hpp>

#include "control/server.hpp"
#include "kvm/kvm.hpp"
#include "lpar/config.hpp"
#include "lpar/hypervisor.hpp"
#include "util/error.hpp"
#include "util/fault.hpp"

using namespace lparvisor;

namespace {

std::string default_firmware() {
    if (const char* env = std::getenv("LPARVISOR_FIRMWARE")) return env;
    return LPARVISOR_DEFAULT_FIRMWARE;
}

void log_table(const control::SystemStatus& status) {
    spdlog::info("{:<10} {:>10} {:>10} {:>8}", "LPAR", "origin MiB", "size MiB", "gap MiB");
    for (const auto& l : status.lpars)
        spdlog::info("{:<10} {:>10} {:>10} {:>8}", l.name, l.origin_mib, l.size_mib, l.gap_mib);
    spdlog::info("main storage {} MiB, free {} MiB", status.main_storage_mib, status.free_mib);
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{
        "lparvisor: runs LPARs (KVM guests) in one main-storage arena and relocates their storage "
        "while they run (MVSTOR).\nWith no --config it starts the patent's Fig. 3A: 509 MiB of "
        "main "
        "storage, LPAR1 at 0 (128 MiB) and LPAR2 at 128 MiB (256 MiB), each running the test "
        "firmware.\nDrive it with `svp` (svp --help).",
        "lparvisor"};
    std::string config_path;
    std::string socket_path(control::kDefaultSocketPath);
    std::string console_dir;
    std::string firmware = default_firmware();
    std::string huge_pages = "auto";
    std::string log_level = "info";
    bool print_config = false;
    app.add_option("-c,--config", config_path, "JSON configuration (docs/configuration.md)")
        ->check(CLI::ExistingFile);
    app.add_option("-s,--socket", socket_path, "control socket path (created with mode 0600)")
        ->capture_default_str();
    app.add_option("--console-dir", console_dir,
                   "also write each LPAR's serial output to DIR/NAME.log")
        ->check(CLI::ExistingDirectory);
    app.add_option(
           "--firmware", firmware,
           "test firmware for LPARs whose configuration names none (env LPARVISOR_FIRMWARE)")
        ->capture_default_str();
    app.add_option("--hugepages", huge_pages,
                   "2 MiB hugetlb backing for main storage: auto (when enough are free), on, off")
        ->check(CLI::IsMember({"auto", "on", "off"}))
        ->capture_default_str();
    app.add_option("--log-level", log_level,
                   "trace, debug (includes guest console lines), info, "
                   "warn, error")
        ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}))
        ->capture_default_str();
    app.add_flag("--print-config", print_config,
                 "print the effective configuration as JSON and exit");
    CLI11_PARSE(app, argc, argv);

    spdlog::set_level(spdlog::level::from_str(log_level));
    spdlog::set_pattern("%Y-%m-%d %H:%M:%S.%e %^%l%$ %v");
    try {
        SystemConfig config = config_path.empty() ? fig3a_config() : load_config_file(config_path);
        if (print_config) {
            std::cout << to_json(config).dump(2) << "\n";
            return 0;
        }
        if (auto reason = kvm::unavailable_reason())
            throw Error(ErrorKind::System, "cannot run guests: " + *reason);

        HypervisorOptions options;
        options.huge_pages = huge_pages == "on"    ? HugePagePolicy::On
                             : huge_pages == "off" ? HugePagePolicy::Off
                                                   : HugePagePolicy::Auto;
        options.default_firmware = firmware;
        options.console_dir = console_dir;

        auto socket_dir = std::filesystem::path(socket_path).parent_path();
        if (!socket_dir.empty() && !std::filesystem::exists(socket_dir)) {
            std::filesystem::create_directories(socket_dir);
            ::chmod(socket_dir.c_str(), 0700);
        }

        if (const char* spec = std::getenv("LPARVISOR_FAULTS"); spec != nullptr && *spec != 0) {
            fault::arm_from_spec(spec);
            spdlog::warn("fault injection armed (LPARVISOR_FAULTS={}): for tests only", spec);
        }
        Hypervisor hypervisor(config, options);
        boost::asio::io_context io;
        control::ControlServer server(io, socket_path, hypervisor);
        // The first SIGINT/SIGTERM shuts down in order: new requests are refused, a running
        // storage operation is cancelled (before its first stop) or finishes without pre-copy
        // (after it), which takes at most one copy of the LPAR plus two drain timeouts; then the
        // LPARs stop. A second signal exits at once.
        boost::asio::signal_set signals(io, SIGINT, SIGTERM);
        std::thread stopper;
        std::function<void(const boost::system::error_code&, int)> on_signal =
            [&](const boost::system::error_code& error, int signal) {
                if (error) return;
                if (stopper.joinable()) {
                    spdlog::warn(
                        "second signal {}: exiting now, without waiting for the running "
                        "operation",
                        signal);
                    spdlog::default_logger()->flush();
                    std::_Exit(128 + signal);
                }
                spdlog::info(
                    "signal {}: shutting down (a second signal exits at once): stopping "
                    "the LPARs and removing {}",
                    signal, socket_path);
                hypervisor.request_shutdown();
                signals.async_wait(on_signal);
                stopper = std::thread([&] {
                    server.stop();  // waits for the running requests, now bounded
                    boost::asio::post(io, [&] { signals.cancel(); });
                });
            };
        signals.async_wait(on_signal);
        log_table(hypervisor.list());
        spdlog::info("control socket {} ready (svp --socket {} lpars)", socket_path, socket_path);
        io.run();
        if (stopper.joinable()) stopper.join();
        spdlog::info("lparvisor stopped");
        return 0;
    } catch (const Error& e) {
        spdlog::error("{}", e.what());
        return 1;
    } catch (const std::exception& e) {
        spdlog::error("unexpected: {}", e.what());
        return 1;
    }
}
