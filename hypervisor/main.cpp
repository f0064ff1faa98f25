// lparvisor: the daemon. Creates main storage, activates the configured LPARs (default: the
// patent's Fig. 3A), and serves the JSON-RPC control socket until SIGINT or SIGTERM.
#include <grp.h>
#include <pwd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <iostream>
#include <optional>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <nlohmann/json.hpp>

#include "control/http_server.hpp"
#include "control/server.hpp"
#include "kvm/kvm.hpp"
#include "lpar/config.hpp"
#include "lpar/hypervisor.hpp"
#include "sandbox/sandbox.hpp"
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

// --user: NAME, UID or UID:GID.
struct RunAs {
    uid_t uid = 0;
    gid_t gid = 0;
    std::string label;
};

RunAs parse_user(const std::string& spec) {
    RunAs who;
    auto colon = spec.find(':');
    std::string user = spec.substr(0, colon);
    auto all_digits = [](const std::string& s) {
        return !s.empty() && s.find_first_not_of("0123456789") == std::string::npos;
    };
    if (all_digits(user)) {
        who.uid = static_cast<uid_t>(std::stoul(user));
        const passwd* entry = ::getpwuid(who.uid);
        who.gid = entry != nullptr ? entry->pw_gid : static_cast<gid_t>(who.uid);
    } else {
        const passwd* entry = ::getpwnam(user.c_str());
        if (entry == nullptr)
            throw Error(
                ErrorKind::InvalidArgument,
                "--user " + spec + ": no such user (give a name from /etc/passwd or UID[:GID])");
        who.uid = entry->pw_uid;
        who.gid = entry->pw_gid;
    }
    if (colon != std::string::npos) {
        std::string group = spec.substr(colon + 1);
        if (!all_digits(group))
            throw Error(ErrorKind::InvalidArgument, "--user " + spec + ": GID must be a number");
        who.gid = static_cast<gid_t>(std::stoul(group));
    }
    if (who.uid == 0)
        throw Error(ErrorKind::InvalidArgument,
                    "--user " + spec + ": that is root; name another user");
    who.label = fmt::format("uid {} gid {}", who.uid, who.gid);
    return who;
}

// Drops root for good once /dev/kvm, the socket, main storage and the LPARs' images are open.
// glibc changes every thread's credentials (they are per thread in Linux).
void drop_privileges(const RunAs& who, const std::string& socket_path, bool made_socket_dir,
                     const std::string& token_path) {
    // The socket stays the operator's way in (root, or the new user) and removable at shutdown;
    // the HTTP token stays readable by the daemon's user alone.
    if (::chown(socket_path.c_str(), who.uid, who.gid) != 0)
        throw_errno("--user: chown " + socket_path);
    if (!token_path.empty() && ::chown(token_path.c_str(), who.uid, who.gid) != 0)
        throw_errno("--user: chown " + token_path);
    auto socket_dir = std::filesystem::path(socket_path).parent_path();
    if (made_socket_dir && ::chown(socket_dir.c_str(), who.uid, who.gid) != 0)
        throw_errno("--user: chown " + socket_dir.string());
    if (::setgroups(1, &who.gid) != 0) throw_errno("--user: setgroups");
    if (::setresgid(who.gid, who.gid, who.gid) != 0) throw_errno("--user: setresgid");
    if (::setresuid(who.uid, who.uid, who.uid) != 0) throw_errno("--user: setresuid");
    if (!socket_dir.empty() && ::access(socket_dir.c_str(), W_OK) != 0)
        spdlog::warn(
            "--user: {} is not writable by uid {}: the socket will be left behind at exit "
            "(give the socket a directory that user owns)",
            socket_dir.string(), who.uid);
    // The check that root cannot come back: a raw setuid on this thread alone (glibc's would
    // make every thread try it).
    uid_t real = 0, effective = 0, saved = 0;
    if (::getresuid(&real, &effective, &saved) != 0 || real != who.uid || effective != who.uid ||
        saved != who.uid || ::syscall(SYS_setuid, 0) == 0)
        throw Error(ErrorKind::System, "--user: root could not be dropped for good");
}

// What the command line says.
struct CommandLine {
    std::string config_path;
    std::string socket_path{control::kDefaultSocketPath};
    std::string console_dir;
    std::string firmware = default_firmware();
    std::string huge_pages = "auto";
    std::string log_level = "info";
    bool print_config = false;
    double client_idle_timeout_s = 60;
    std::uint64_t console_max_bytes = ConsoleLog::kDefaultFileMaxBytes;
    std::string run_as;
    bool no_sandbox = false;
    std::string http_spec;
    std::string http_token_path;
};

void add_options(CLI::App& app, CommandLine& line) {
    app.add_option("-c,--config", line.config_path, "JSON configuration (docs/configuration.md)")
        ->check(CLI::ExistingFile);
    app.add_option("-s,--socket", line.socket_path, "control socket path (created with mode 0600)")
        ->capture_default_str();
    app.add_option("--client-idle-timeout", line.client_idle_timeout_s,
                   "close control clients that send no request for SECONDS (subscribers "
                   "excepted; 0: never)")
        ->type_name("SECONDS")
        ->check(CLI::Range(0.0, 86400.0))
        ->capture_default_str();
    app.add_option("--console-dir", line.console_dir,
                   "also write each LPAR's serial output to DIR/NAME.log")
        ->check(CLI::ExistingDirectory);
    app.add_option("--console-max-bytes", line.console_max_bytes,
                   "cap on each DIR/NAME.log (suffix k, M or G: KiB, MiB, GiB); when it would "
                   "grow past it, it becomes NAME.log.1 (replacing the last) and a new one starts")
        ->transform(CLI::AsSizeValue(false))
        ->check(CLI::Range(std::uint64_t{4096}, std::uint64_t{1} << 40))
        ->capture_default_str();
    app.add_option(
           "--firmware", line.firmware,
           "test firmware for LPARs whose configuration names none (env LPARVISOR_FIRMWARE)")
        ->capture_default_str();
    app.add_option("--hugepages", line.huge_pages,
                   "2 MiB hugetlb backing for main storage: auto (when enough are free), on, off")
        ->check(CLI::IsMember({"auto", "on", "off"}))
        ->capture_default_str();
    app.add_option("--log-level", line.log_level,
                   "trace, debug (includes guest console lines), info, "
                   "warn, error")
        ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}))
        ->capture_default_str();
    app.add_option("--user", line.run_as,
                   "drop root for this user (NAME, UID or UID:GID) once /dev/kvm, the socket, main "
                   "storage and the LPARs' files are open; LPARs defined later need files that "
                   "user can open");
    app.add_flag("--no-sandbox", line.no_sandbox,
                 "run without the seccomp sandbox (docs/threat-model.md): for debugging only");
    app.add_option("--http", line.http_spec,
                   "also serve HTTP on ADDR:PORT (a bare PORT: 127.0.0.1): /metrics for "
                   "Prometheus and / the SVP frame, a live map of main storage (docs/http.md); "
                   "off by default")
        ->type_name("ADDR:PORT");
    app.add_option("--http-token-file", line.http_token_path,
                   "where --http writes the token the page's operations need (mode 0600; "
                   "default: http.token beside the socket)")
        ->type_name("PATH");
    app.add_flag("--print-config", line.print_config,
                 "print the effective configuration as JSON and exit");
}

// Before any thread exists: every thread is started confined from here on.
void start_sandbox(bool no_sandbox, bool will_drop_user) {
    if (no_sandbox) {
        spdlog::warn(
            "sandbox OFF (--no-sandbox): no seccomp filter, a compromised device or "
            "vCPU thread can make any system call lparvisor could");
        return;
    }
    const char* audit = std::getenv("LPARVISOR_SANDBOX_AUDIT");
    const bool audit_only = audit != nullptr && std::string_view(audit) == "1";
    if (audit_only)
        spdlog::warn(
            "sandbox in AUDIT mode (LPARVISOR_SANDBOX_AUDIT=1): forbidden system "
            "calls are allowed and only logged by the kernel; for development");
    sandbox::enable({.will_drop_user = will_drop_user, .audit_only = audit_only});
    spdlog::info(
        "sandbox on: a seccomp filter per thread class (main, control, vCPU, "
        "device worker), no_new_privs; a forbidden system call ends lparvisor "
        "(--no-sandbox turns it off)");
}

HypervisorOptions hypervisor_options(const CommandLine& line) {
    HypervisorOptions options;
    options.huge_pages = line.huge_pages == "on"    ? HugePagePolicy::On
                         : line.huge_pages == "off" ? HugePagePolicy::Off
                                                    : HugePagePolicy::Auto;
    options.default_firmware = line.firmware;
    options.console_dir = line.console_dir;
    options.console_max_bytes = line.console_max_bytes;
    return options;
}

// Creates the socket's directory (mode 0700) when it does not exist; whether it did.
bool make_socket_dir(const std::filesystem::path& socket_dir) {
    if (socket_dir.empty() || std::filesystem::exists(socket_dir)) return false;
    std::filesystem::create_directories(socket_dir);
    ::chmod(socket_dir.c_str(), 0700);
    return true;
}

void arm_faults() {
    if (const char* spec = std::getenv("LPARVISOR_FAULTS"); spec != nullptr && *spec != 0) {
        fault::arm_from_spec(spec);
        spdlog::warn("fault injection armed (LPARVISOR_FAULTS={}): for tests only", spec);
    }
}

// --http's endpoint, if given; its token file defaults to http.token beside the socket.
std::optional<control::HttpEndpoint> http_endpoint(CommandLine& line,
                                                   const std::filesystem::path& socket_dir) {
    if (line.http_spec.empty()) {
        if (!line.http_token_path.empty())
            throw Error(ErrorKind::InvalidArgument, "--http-token-file needs --http");
        return std::nullopt;
    }
    auto endpoint = control::parse_http_endpoint(line.http_spec);
    if (line.http_token_path.empty())
        line.http_token_path =
            (socket_dir.empty() ? std::filesystem::path(".") : socket_dir) / "http.token";
    return endpoint;
}

void start_http(std::optional<control::HttpServer>& http, boost::asio::io_context& io,
                const control::HttpEndpoint& endpoint, Hypervisor& hypervisor,
                const std::string& token_path) {
    auto token = control::create_token_file(token_path);
    http.emplace(io, endpoint, hypervisor, std::move(token));
    if (!endpoint.is_loopback())
        spdlog::warn(
            "http: listening on {}:{}, not loopback: anyone who can reach it sees the "
            "storage map and metrics (operations still need the token)",
            endpoint.address, http->port());
    spdlog::info(
        "http: http://{}:{}/ (the SVP frame), /metrics; operations need the "
        "token in {}",
        endpoint.address, http->port(), token_path);
}

// The daemon after the command line: set-up, serving until a signal, the orderly shutdown.
// Returns the exit status; throws what set-up cannot get past.
int run(CommandLine line) {
    SystemConfig config =
        line.config_path.empty() ? fig3a_config() : load_config_file(line.config_path);
    if (line.print_config) {
        std::cout << to_json(config).dump(2) << "\n";
        return 0;
    }
    if (auto reason = kvm::unavailable_reason())
        throw Error(ErrorKind::System, "cannot run guests: " + *reason);
    std::optional<RunAs> user;
    if (!line.run_as.empty()) user = parse_user(line.run_as);
    start_sandbox(line.no_sandbox, user.has_value());

    const HypervisorOptions options = hypervisor_options(line);
    const std::string& socket_path = line.socket_path;
    auto socket_dir = std::filesystem::path(socket_path).parent_path();
    const bool made_socket_dir = make_socket_dir(socket_dir);
    arm_faults();
    const std::optional<control::HttpEndpoint> endpoint = http_endpoint(line, socket_dir);
    std::string& http_token_path = line.http_token_path;
    Hypervisor hypervisor(config, options);
    boost::asio::io_context io;
    control::ServerLimits limits;
    limits.client_idle_timeout = std::chrono::duration_cast<std::chrono::milliseconds>(
        std::chrono::duration<double>(line.client_idle_timeout_s));
    control::ControlServer server(io, socket_path, hypervisor, limits);
    std::optional<control::HttpServer> http;
    if (endpoint)
        start_http(http, io, *endpoint, hypervisor, http_token_path);
    else
        http_token_path.clear();
    // The first SIGINT/SIGTERM shuts down in order: new requests are refused, a running
    // storage operation is cancelled (before its first stop) or finishes without pre-copy
    // (after it), which takes at most one copy of the LPAR plus three drain timeouts (a
    // chunk's stop, its retry, the undo's stop); then the LPARs stop. A second signal exits
    // at once.
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
            stopper = sandbox::spawn(sandbox::ThreadClass::Main, "stopper", [&] {
                if (http) http->stop();
                server.stop();  // waits for the running requests, now bounded
                boost::asio::post(io, [&] { signals.cancel(); });
            });
        };
    signals.async_wait(on_signal);
    if (user) {
        drop_privileges(*user, socket_path, made_socket_dir, http_token_path);
        spdlog::info("running as {} (--user); root dropped", user->label);
    }
    // Set-up is over: from here the main thread only serves the socket and shuts down.
    sandbox::confine_this_thread(sandbox::ThreadClass::Main, "lparvisor");
    log_table(hypervisor.list());
    spdlog::info("control socket {} ready (svp --socket {} lpars)", socket_path, socket_path);
    io.run();
    if (stopper.joinable()) stopper.join();
    if (http) {
        http->stop();
        std::error_code ignored;
        std::filesystem::remove(http_token_path, ignored);
    }
    spdlog::info("lparvisor stopped");
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    // Everything in the try, the command line's set-up too: no exception ends the daemon
    // without its message.
    try {
        CLI::App app{
            "lparvisor: runs LPARs (KVM guests) in one main-storage arena and relocates their "
            "storage while they run (MVSTOR).\nWith no --config it starts the patent's Fig. 3A: "
            "509 MiB of main storage, LPAR1 at 0 (128 MiB) and LPAR2 at 128 MiB (256 MiB), each "
            "running the test firmware.\nDrive it with `svp` (svp --help).",
            "lparvisor"};
        CommandLine line;
        add_options(app, line);
        CLI11_PARSE(app, argc, argv);

        spdlog::set_level(spdlog::level::from_str(line.log_level));
        spdlog::set_pattern("%Y-%m-%d %H:%M:%S.%e %^%l%$ %v");
        return run(std::move(line));
    } catch (const Error& e) {
        spdlog::error("{}", e.what());
        return 1;
    } catch (const std::exception& e) {
        spdlog::error("unexpected: {}", e.what());
        return 1;
    }
}
