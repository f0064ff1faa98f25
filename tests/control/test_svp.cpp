// The real svp binary against a ControlServer serving the test-double Api.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <iterator>
#include <sstream>
#include <vector>

#include <nlohmann/json.hpp>

#include "control/json_rpc.hpp"
#include "test_support.hpp"

#ifndef SVP_PATH
#error "SVP_PATH must name the svp binary"
#endif

extern char** environ;

using nlohmann::json;
using namespace std::chrono_literals;
using namespace lparvisor;
using namespace lparvisor::control;
using namespace lparvisor::control::test;

namespace {

struct Outcome {
    int exit_code = -1;
    std::string out;
    std::string err;
};

// The svp binary started with `args` and environment `envp`, its stdout and stderr on pipes.
struct SpawnedSvp {
    pid_t pid = -1;
    Fd out;
    Fd err;
    Fd in;  // svp's stdin, when asked for
};

// With `with_stdin`, svp's stdin is a pipe whose write end is `in`; else it is inherited.
SpawnedSvp spawn_svp(const std::vector<std::string>& args, char* const* envp,
                     bool with_stdin = false) {
    std::vector<std::string> argv_storage{SVP_PATH};
    argv_storage.insert(argv_storage.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& arg : argv_storage) argv.push_back(arg.data());
    argv.push_back(nullptr);
    int out_pipe[2], err_pipe[2], in_pipe[2] = {-1, -1};
    REQUIRE(::pipe2(out_pipe, O_CLOEXEC) == 0);
    REQUIRE(::pipe2(err_pipe, O_CLOEXEC) == 0);
    if (with_stdin) REQUIRE(::pipe2(in_pipe, O_CLOEXEC) == 0);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    if (with_stdin) posix_spawn_file_actions_adddup2(&actions, in_pipe[0], 0);
    posix_spawn_file_actions_adddup2(&actions, out_pipe[1], 1);
    posix_spawn_file_actions_adddup2(&actions, err_pipe[1], 2);
    SpawnedSvp spawned;
    const int rc = ::posix_spawn(&spawned.pid, SVP_PATH, &actions, nullptr, argv.data(), envp);
    posix_spawn_file_actions_destroy(&actions);
    ::close(out_pipe[1]);
    ::close(err_pipe[1]);
    spawned.out = Fd(out_pipe[0]);
    spawned.err = Fd(err_pipe[0]);
    if (with_stdin) {
        ::close(in_pipe[0]);
        spawned.in = Fd(in_pipe[1]);
    }
    REQUIRE(rc == 0);
    return spawned;
}

// Runs svp with `args`; `socket_env` set -> $LPARVISOR_SOCKET, else it is removed.
Outcome run_svp(const std::vector<std::string>& args, std::optional<std::string> socket_env = {}) {
    std::vector<std::string> environment;
    for (char** entry = environ; *entry != nullptr; ++entry) {
        if (std::string_view(*entry).rfind("LPARVISOR_SOCKET=", 0) != 0)
            environment.emplace_back(*entry);
    }
    if (socket_env) environment.push_back("LPARVISOR_SOCKET=" + *socket_env);
    std::vector<char*> envp;
    for (auto& entry : environment) envp.push_back(entry.data());
    envp.push_back(nullptr);

    auto [pid, out_fd, err_fd, in_fd] = spawn_svp(args, envp.data());
    Outcome outcome;
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    bool out_open = true, err_open = true;
    while ((out_open || err_open) && std::chrono::steady_clock::now() < deadline) {
        pollfd fds[2] = {{out_open ? out_fd.get() : -1, POLLIN, 0},
                         {err_open ? err_fd.get() : -1, POLLIN, 0}};
        if (::poll(fds, 2, 1000) <= 0) continue;
        char chunk[4096];
        for (int i = 0; i < 2; ++i) {
            if (fds[i].revents == 0) continue;
            const ssize_t got = ::read(fds[i].fd, chunk, sizeof(chunk));
            if (got > 0) {
                (i == 0 ? outcome.out : outcome.err).append(chunk, static_cast<std::size_t>(got));
            } else {
                (i == 0 ? out_open : err_open) = false;
            }
        }
    }
    if (out_open || err_open) ::kill(pid, SIGKILL);
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    if (WIFEXITED(status)) outcome.exit_code = WEXITSTATUS(status);
    INFO("svp stdout: " << outcome.out);
    INFO("svp stderr: " << outcome.err);
    return outcome;
}

constexpr char kDetachKeyForTest = 0x1d;  // Ctrl-], as docs/control-protocol.md says

std::vector<std::string> with_socket(const ServerFixture& fixture, std::vector<std::string> args) {
    args.insert(args.begin(), {"--socket", fixture.socket_path.string()});
    return args;
}

// run_svp against the fixture's socket.
Outcome run_svp_on(ServerFixture& fixture, const std::vector<std::string>& args) {
    fixture.api.sync();
    Outcome outcome = run_svp(with_socket(fixture, args));
    fixture.api.sync();
    return outcome;
}

// The event names of --json progress: one JSON notification's params per line.
std::vector<std::string> event_types(const std::string& json_lines) {
    std::istringstream lines(json_lines);
    std::vector<std::string> types;
    for (std::string line; std::getline(lines, line);)
        types.push_back(json::parse(line).at("event").get<std::string>());
    return types;
}

}  // namespace

TEST_CASE("svp lpars prints the Fig. 3A table", "[svp]") {
    ServerFixture fixture;
    const Outcome outcome = run_svp_on(fixture, {"lpars"});
    CHECK(outcome.exit_code == 0);
    CHECK(outcome.err.empty());
    CHECK(outcome.out ==
          "LPAR NAME   MS AREA ORIGIN   MS AREA SIZE   MS GAP   GUEST      STATE\n"
          "            (MiB)            (MiB)          (MiB)\n"
          "LPAR1                    0            128        0   firmware   running\n"
          "LPAR2                  128            256      125   firmware   running\n"
          "\n"
          "AVAILABLE PHYSICAL MAIN STORAGE AREA: 509 MiB (free 125 MiB)\n");
}

TEST_CASE("svp stats sums the counters up; --json gives them all", "[svp]") {
    ServerFixture fixture;
    SystemStats& stats = fixture.api.stats_template;
    stats.largest_free_gap_mib = 125;
    LparStats lpar;
    lpar.name = "LPAR2";
    lpar.state = "running";
    lpar.ipl = 3;
    lpar.vcpu_exits = {{"io", 40}, {"mmio", 2}};
    lpar.vcpu_run_us = 2'500'000;
    lpar.disk_requests = 7;
    lpar.disk_read_bytes = 1024 * 1024;
    lpar.disk_written_bytes = 1024 * 1024;
    stats.lpars.push_back(lpar);
    stats.operations.push_back({"mvstor", {{"ok", 2}, {"refused", 1}, {"busy", 1}}, 512 << 20, 0});
    stats.pauses = {{1000, 10000}, {1, 3}, 3, 12000};
    const Outcome outcome = run_svp_on(fixture, {"stats"});
    CHECK(outcome.exit_code == 0);
    CHECK(outcome.out ==
          "LPAR       state             IPL      exits     run s  disk reqs   disk MiB\n"
          "LPAR2      running             3         42       2.5          7        2.0\n"
          "\n"
          "operation      ok   failed     copied\n"
          "mvstor          2        2    512 MiB\n"
          "\n"
          "pauses: 3, mean 4.0 ms, half at most 10.0 ms\n"
          "main storage 509 MiB, free 125 MiB, largest free gap 125 MiB\n");
    const Outcome raw = run_svp_on(fixture, {"--json", "stats"});
    CHECK(json::parse(raw.out).at("operations").at("mvstor").at("outcomes").at("busy") == 1);
}

TEST_CASE("svp lpars shows why an LPAR stopped and widens for long names", "[svp]") {
    ServerFixture fixture;
    fixture.api.status.lpars[0].name = "LONG-LPAR-NAME-1";
    fixture.api.status.lpars[1].state = "stopped";
    fixture.api.status.lpars[1].reason = "guest exit 0";
    const Outcome outcome = run_svp_on(fixture, {"lpars"});
    CHECK(outcome.exit_code == 0);
    CHECK(outcome.out ==
          "LPAR NAME          MS AREA ORIGIN   MS AREA SIZE   MS GAP   GUEST      STATE\n"
          "                   (MiB)            (MiB)          (MiB)\n"
          "LONG-LPAR-NAME-1                0            128        0   firmware   running\n"
          "LPAR2                         128            256      125   firmware   stopped (guest "
          "exit 0)\n"
          "\n"
          "AVAILABLE PHYSICAL MAIN STORAGE AREA: 509 MiB (free 125 MiB)\n");
}

TEST_CASE("svp --json prints the raw result, before or after the subcommand", "[svp]") {
    ServerFixture fixture;
    for (const auto& args : {std::vector<std::string>{"--json", "lpars"},
                             std::vector<std::string>{"lpars", "--json"}}) {
        const Outcome outcome = run_svp_on(fixture, args);
        CHECK(outcome.exit_code == 0);
        CHECK(json::parse(outcome.out) == to_json(fixture.api.status));
    }
}

TEST_CASE("svp mvstor prints the move and its phases", "[svp]") {
    ServerFixture fixture;
    const Outcome outcome = run_svp_on(fixture, {"mvstor", "LPAR2", "192"});
    CHECK(outcome.exit_code == 0);
    CHECK(outcome.out ==
          "MVSTOR LPAR2: 128 -> 192 MiB, 256 MiB copied, pause 31.2 ms, total 58.0 ms\n"
          "  check_target           0.0 ms\n"
          "  populate_target        0.9 ms\n"
          "  stop_vcpus             0.1 ms\n"
          "  drain_io               0.3 ms\n"
          "  copy                  30.0 ms\n"
          "  remap                  0.6 ms\n"
          "  resume                 0.2 ms\n"
          "  scrub                 26.8 ms\n");
    REQUIRE(fixture.api.mvstor_requests.size() == 1);
    CHECK(fixture.api.mvstor_requests[0].lpar == "LPAR2");
    CHECK(fixture.api.mvstor_requests[0].origin_mib == 192);
    CHECK(fixture.api.mvstor_requests[0].drain_timeout == 10000ms);

    const Outcome with_drain =
        run_svp_on(fixture, {"mvstor", "LPAR2", "0", "--timeout-ms", "2500"});
    CHECK(with_drain.exit_code == 0);
    REQUIRE(fixture.api.mvstor_requests.size() == 2);
    CHECK(fixture.api.mvstor_requests[1].drain_timeout == 2500ms);
}

TEST_CASE("svp console prints the text; svp ping the version", "[svp]") {
    ServerFixture fixture;
    fixture.api.console_text = "SUCCESS pattern verified\n";
    const Outcome console = run_svp_on(fixture, {"console", "LPAR1", "--bytes", "100"});
    CHECK(console.exit_code == 0);
    CHECK(console.out == "SUCCESS pattern verified\n");
    REQUIRE(fixture.api.console_requests.size() == 1);
    CHECK(fixture.api.console_requests[0] == std::pair<std::string, std::size_t>{"LPAR1", 100});

    const Outcome ping = run_svp_on(fixture, {"ping"});
    CHECK(ping.exit_code == 0);
    CHECK(ping.out == "lparvisor " + std::string(daemon_version()) + " is answering on " +
                          fixture.socket_path.string() + "\n");
}

TEST_CASE("svp finds the daemon through $LPARVISOR_SOCKET", "[svp]") {
    ServerFixture fixture;
    const Outcome outcome = run_svp({"ping"}, fixture.socket_path.string());
    CHECK(outcome.exit_code == 0);
}

TEST_CASE("svp exits 1 with the message and code name when the daemon refuses", "[svp]") {
    ServerFixture fixture;
    fixture.api.throw_next(ErrorKind::NotFound, "LPAR9: no such LPAR");
    const Outcome outcome = run_svp_on(fixture, {"mvstor", "LPAR9", "0"});
    CHECK(outcome.exit_code == 1);
    CHECK(outcome.out.empty());
    CHECK(outcome.err == "svp: LPAR9: no such LPAR (NotFound, code -32001)\n");

    fixture.api.throw_next(ErrorKind::Refused, "LPAR2: target 400-656 MiB overlaps LPAR3");
    const Outcome json_mode = run_svp_on(fixture, {"--json", "mvstor", "LPAR2", "400"});
    CHECK(json_mode.exit_code == 1);
    CHECK(json::parse(json_mode.out).at("error").at("code") == -32003);
    CHECK_THAT(json_mode.err, Catch::Contains("(Refused, code -32003)"));
}

TEST_CASE("svp exits 2 on usage errors and 0 on --help", "[svp]") {
    TempDir dir;
    const std::string socket = (dir.path() / "none.sock").string();
    CHECK(run_svp({"--socket", socket}).exit_code == 2);                     // no subcommand
    CHECK(run_svp({"--socket", socket, "mvstor", "LPAR2"}).exit_code == 2);  // missing origin
    CHECK(run_svp({"--socket", socket, "mvstor", "LPAR2", "x"}).exit_code == 2);
    CHECK(run_svp({"--socket", socket, "mvstor", "LPAR2", "1", "--timeout-ms", "0"}).exit_code ==
          2);
    CHECK(run_svp({"--socket", socket, "console", "LPAR2", "--bytes", "2000000"}).exit_code == 2);
    CHECK(run_svp({"--socket", socket, "frobnicate"}).exit_code == 2);
    CHECK(run_svp({"--timeout", "-1", "ping"}).exit_code == 2);

    const Outcome help = run_svp({"--help"});
    CHECK(help.exit_code == 0);
    CHECK_THAT(help.out, Catch::Contains("lpars") && Catch::Contains("mvstor") &&
                             Catch::Contains("console") && Catch::Contains("ping"));
    // svp's default socket is the one the daemon uses by default.
    CHECK_THAT(help.out, Catch::Contains(std::string(kDefaultSocketPath)));
    const Outcome sub_help = run_svp({"mvstor", "--help"});
    CHECK(sub_help.exit_code == 0);
    CHECK_THAT(sub_help.out, Catch::Contains("ORIGIN_MIB") && Catch::Contains("--timeout-ms"));
}

TEST_CASE("svp exits 3 when no daemon listens, naming the path", "[svp]") {
    TempDir dir;
    const std::string socket = (dir.path() / "control.sock").string();
    const Outcome outcome = run_svp({"--socket", socket, "lpars"});
    CHECK(outcome.exit_code == 3);
    CHECK_THAT(outcome.err, Catch::StartsWith("svp: cannot connect to " + socket) &&
                                Catch::Contains("is lparvisor running? use --socket"));
}

TEST_CASE("svp exits 4 when the answer does not come in time", "[svp]") {
    ServerFixture fixture;
    fixture.api.mvstor_hold = 1500ms;
    const Outcome outcome = run_svp_on(fixture, {"--timeout", "0.3", "mvstor", "LPAR2", "192"});
    CHECK(outcome.exit_code == 4);
    CHECK_THAT(outcome.err, Catch::Contains("no answer from " + fixture.socket_path.string()));
}

namespace {

// svp running in the background (watch, console --follow): read its output while it runs, then
// SIGINT it.
class BackgroundSvp {
  public:
    explicit BackgroundSvp(const std::vector<std::string>& args, bool with_stdin = false) {
        auto spawned = spawn_svp(args, environ, with_stdin);
        pid_ = spawned.pid;
        out_fd_ = std::move(spawned.out);
        err_fd_ = std::move(spawned.err);
        in_fd_ = std::move(spawned.in);
    }

    // What the operator types (with_stdin), and the end of it.
    void type(std::string_view keys) {
        REQUIRE(::write(in_fd_.get(), keys.data(), keys.size()) ==
                static_cast<ssize_t>(keys.size()));
    }
    void end_input() { in_fd_ = Fd(-1); }

    // Waits until svp has exited by itself: its exit code, or -1 after the timeout.
    int wait_exit(std::chrono::milliseconds timeout = 5000ms) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        int status = 0;
        while (std::chrono::steady_clock::now() < deadline) {
            pump(20);
            if (::waitpid(pid_, &status, WNOHANG) == pid_) {
                pid_ = -1;
                for (int i = 0; i < 5; ++i) pump(10);
                return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
            }
        }
        return -1;
    }

    // Reads until `done(stderr)` holds or the timeout passes.
    template <typename Done>
    bool read_err_until(Done done, std::chrono::milliseconds timeout = 5000ms) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        while (!done(err) && std::chrono::steady_clock::now() < deadline) pump(50);
        return done(err);
    }
    ~BackgroundSvp() {
        if (pid_ > 0) {
            ::kill(pid_, SIGKILL);
            ::waitpid(pid_, nullptr, 0);
        }
    }

    // Reads output until `done(stdout)` holds or the timeout passes.
    template <typename Done>
    bool read_until(Done done, std::chrono::milliseconds timeout = 5000ms) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        while (!done(out) && std::chrono::steady_clock::now() < deadline) pump(50);
        return done(out);
    }

    // SIGINT, then the exit code (-1 if it did not exit normally within 5 s).
    int interrupt() {
        ::kill(pid_, SIGINT);
        const auto deadline = std::chrono::steady_clock::now() + 5s;
        int status = 0;
        while (std::chrono::steady_clock::now() < deadline) {
            pump(20);
            const pid_t done = ::waitpid(pid_, &status, WNOHANG);
            if (done == pid_) {
                pid_ = -1;
                for (int i = 0; i < 5; ++i) pump(10);
                return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
            }
        }
        return -1;
    }

    std::string out;
    std::string err;

  private:
    void pump(int wait_ms) {
        pollfd fds[2] = {{out_fd_.get(), POLLIN, 0}, {err_fd_.get(), POLLIN, 0}};
        if (::poll(fds, 2, wait_ms) <= 0) return;
        char chunk[4096];
        for (int i = 0; i < 2; ++i) {
            if ((fds[i].revents & POLLIN) == 0) continue;
            const ssize_t got = ::read(fds[i].fd, chunk, sizeof(chunk));
            if (got > 0) (i == 0 ? out : err).append(chunk, static_cast<std::size_t>(got));
        }
    }

    pid_t pid_ = -1;
    Fd out_fd_{-1};
    Fd err_fd_{-1};
    Fd in_fd_{-1};
};

bool contains(const std::string& text, std::string_view part) {
    return text.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE("svp define, the lifecycle commands, remove and config", "[svp]") {
    ServerFixture fixture;
    const Outcome defined = run_svp_on(
        fixture, {"define", "LPAR3", "--size", "100", "--vcpus", "2", "--firmware", "/fw.elf"});
    CHECK(defined.exit_code == 0);
    CHECK(defined.out ==
          "LPAR NAME   MS AREA ORIGIN   MS AREA SIZE   MS GAP   GUEST      STATE\n"
          "            (MiB)            (MiB)          (MiB)\n"
          "LPAR3                    -            100        -   firmware   defined\n");
    REQUIRE(fixture.api.defined.size() == 1);
    CHECK(fixture.api.defined[0].vcpus == 2);
    CHECK(fixture.api.defined[0].firmware == "/fw.elf");
    CHECK(!fixture.api.defined[0].origin_mib.has_value());

    const Outcome listed = run_svp_on(fixture, {"lpars"});
    CHECK_THAT(
        listed.out,
        Catch::Contains("LPAR3                    -            100        -   firmware   defined"));

    const Outcome activated = run_svp_on(fixture, {"activate", "LPAR3"});
    CHECK(activated.exit_code == 0);
    CHECK_THAT(
        activated.out,
        Catch::Contains("LPAR3                  384            100       25   firmware   running"));
    CHECK_THAT(run_svp_on(fixture, {"stop", "LPAR3"}).out,
               Catch::Contains("stopped (operator stop)"));
    CHECK_THAT(run_svp_on(fixture, {"start", "LPAR3"}).out, Catch::Contains("running"));
    CHECK_THAT(run_svp_on(fixture, {"reset", "LPAR3"}).out, Catch::Contains("running"));
    const Outcome refused = run_svp_on(fixture, {"remove", "LPAR3"});
    CHECK(refused.exit_code == 1);
    CHECK(refused.err == "svp: LPAR3: is running, deactivate it first (Refused, code -32003)\n");
    CHECK_THAT(run_svp_on(fixture, {"deactivate", "LPAR3"}).out, Catch::Contains("defined"));
    const Outcome json_row = run_svp_on(fixture, {"--json", "activate", "LPAR3"});
    CHECK(json::parse(json_row.out).at("has_storage") == true);
    run_svp_on(fixture, {"deactivate", "LPAR3"});
    const Outcome removed = run_svp_on(fixture, {"remove", "LPAR3"});
    CHECK(removed.exit_code == 0);
    CHECK(removed.out == "removed LPAR3\n");
    CHECK(run_svp_on(fixture, {"activate", "LPAR3"}).exit_code == 1);

    const Outcome config = run_svp_on(fixture, {"config"});
    CHECK(config.exit_code == 0);
    CHECK(json::parse(config.out) == json::parse(fixture.api.config_json));
    CHECK_THAT(config.out, Catch::Contains("\n  \"lpars\": ["));  // pretty

    for (const char* command : {"define", "activate", "stop", "start", "reset", "deactivate",
                                "remove", "config", "cancel", "watch", "map"}) {
        const Outcome help = run_svp({command, "--help"});
        INFO(command);
        CHECK(help.exit_code == 0);
    }
    CHECK(run_svp({"--socket", "/nonexistent", "define", "X"}).exit_code == 2);  // no --size
    CHECK(run_svp({"--socket", "/nonexistent", "activate"}).exit_code == 2);
}

TEST_CASE("svp define takes every field of the configuration file's LPAR", "[svp]") {
    ServerFixture fixture;
    const Outcome linux = run_svp_on(fixture, {"define",     "L1",
                                               "--size",     "512",
                                               "--origin",   "1024",
                                               "--vcpus",    "2",
                                               "--kernel",   "/k/bzImage",
                                               "--initrd",   "/k/initrd",
                                               "--cmdline",  "console=ttyS0 quiet",
                                               "--disk",     "/d/a.img",
                                               "--disk",     "/d/b.img,ro,latency=5",
                                               "--no-rng",   "--max-size",
                                               "1024",       "--on-reboot",
                                               "stop",       "--on-poweroff",
                                               "deactivate", "--on-crash",
                                               "restart"});
    INFO(linux.err);
    CHECK(linux.exit_code == 0);
    const Outcome firmware = run_svp_on(
        fixture, {"define", "F1", "--size", "64", "--firmware", "/fw.elf",
                  "--rewrite-pages-per-sec", "5000", "--working-set", "32", "--round-limit", "7"});
    CHECK(firmware.exit_code == 0);
    REQUIRE(fixture.api.defined.size() == 2);

    LparDefinition expected_linux;
    expected_linux.name = "L1";
    expected_linux.size_mib = 512;
    expected_linux.origin_mib = 1024;
    expected_linux.vcpus = 2;
    expected_linux.kernel = "/k/bzImage";
    expected_linux.initrd = "/k/initrd";
    expected_linux.cmdline = "console=ttyS0 quiet";
    expected_linux.disks = {{"/d/a.img", false, 0}, {"/d/b.img", true, 5}};
    expected_linux.rng = false;
    expected_linux.max_size_mib = 1024;
    expected_linux.on_reboot = GuestAction::Stop;
    expected_linux.on_poweroff = GuestAction::Deactivate;
    expected_linux.on_crash = GuestAction::Restart;
    CHECK(fixture.api.defined[0] == expected_linux);
    LparDefinition expected_firmware;
    expected_firmware.name = "F1";
    expected_firmware.size_mib = 64;
    expected_firmware.firmware = "/fw.elf";
    expected_firmware.rewrite_pages_per_sec = 5000;
    expected_firmware.working_set_mib = 32;
    expected_firmware.round_limit = 7;
    CHECK(fixture.api.defined[1] == expected_firmware);

    // The daemon's validator answers for svp: the same words as for the configuration file.
    const Outcome vcpus = run_svp_on(fixture, {"define", "X", "--size", "64", "--vcpus", "9"});
    CHECK(vcpus.exit_code == 1);
    CHECK(vcpus.err ==
          "svp: vcpus: expected an integer from 1 to 8 (InvalidParams, code -32602)\n");
    const Outcome disk = run_svp_on(fixture, {"define", "X", "--size", "64", "--disk", "a,rw"});
    CHECK(disk.exit_code == 2);
    CHECK_THAT(disk.err, Catch::Contains("--disk a,rw: unknown option 'rw'"));
    const Outcome action =
        run_svp_on(fixture, {"define", "X", "--size", "64", "--on-reboot", "reset"});
    CHECK(action.exit_code == 1);
    CHECK(action.err ==
          "svp: on_reboot: expected \"restart\", \"stop\" or \"deactivate\" "
          "(InvalidParams, code -32602)\n");
    CHECK(fixture.api.defined.size() == 2);
}

TEST_CASE("svp cancel cancels a held mvstor", "[svp]") {
    ServerFixture fixture;
    fixture.api.close_mvstor_gate();
    LineClient relocating(fixture.socket_path);
    relocating.send(
        R"({"jsonrpc":"2.0","id":1,"method":"storage.mvstor","params":{"lpar":"LPAR2","origin_mib":192}})"
        "\n");
    REQUIRE(fixture.api.wait_for_mvstor_running(5000ms));
    const Outcome cancelled = run_svp_on(fixture, {"cancel", "LPAR2"});
    CHECK(cancelled.exit_code == 0);
    CHECK(cancelled.out == "cancelled the MVSTOR of LPAR2\n");
    CHECK(json::parse(relocating.read_line().value()).at("error").at("code") == -32004);
    const Outcome nothing = run_svp_on(fixture, {"cancel", "LPAR2"});
    CHECK(nothing.exit_code == 1);
    CHECK(nothing.err == "svp: LPAR2: no MVSTOR is running (NotFound, code -32001)\n");
}

TEST_CASE("svp map draws storage to scale and writes a well-formed SVG", "[svp]") {
    ServerFixture fixture;
    fixture.api.status.lpars.push_back({"LPAR3", 0, 64, 0, "defined", false, "", 1});
    TempDir dir;
    const std::string svg_path = (dir.path() / "map.svg").string();
    const Outcome map = run_svp_on(fixture, {"map", "--width", "40", "--svg", svg_path});
    CHECK(map.exit_code == 0);
    // 509 MiB in 40 cells: LPAR1 0-128 -> cells 0-10, LPAR2 128-384 -> 10-30, free 384-509.
    CHECK(map.out ==
          "main storage 509 MiB, 125 MiB free; one cell = 12.72 MiB\n"
          "|#LPAR1####=LPAR2==============..........|\n"
          "0                                  509 MiB\n"
          "\n"
          "  #  LPAR1  origin       0 MiB  size     128 MiB  gap       0 MiB  running\n"
          "  =  LPAR2  origin     128 MiB  size     256 MiB  gap     125 MiB  running\n"
          "  .  free   origin     384 MiB  size     125 MiB\n"
          "  -  LPAR3  not placed       size      64 MiB  defined\n");
    std::ifstream file(svg_path);
    const std::string svg((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
    CHECK_THAT(
        svg, Catch::StartsWith("<?xml") && Catch::Contains("<svg") && Catch::EndsWith("</svg>\n"));
    CHECK_THAT(svg, Catch::Contains(">LPAR1<") && Catch::Contains(">LPAR2<") &&
                        Catch::Contains(">free 125 MiB<") && Catch::Contains(">128<") &&
                        Catch::Contains(">384<"));
    // Tiny well-formedness check: every element opened is closed, in order.
    std::vector<std::string> open;
    bool balanced = true;
    for (std::size_t at = svg.find('<'); at != std::string::npos; at = svg.find('<', at + 1)) {
        const std::size_t end = svg.find('>', at);
        REQUIRE(end != std::string::npos);
        const std::string tag = svg.substr(at + 1, end - at - 1);
        if (tag.empty() || tag[0] == '?' || tag[0] == '!') continue;
        if (tag[0] == '/') {
            balanced = balanced && !open.empty() && open.back() == tag.substr(1);
            if (!open.empty()) open.pop_back();
        } else if (tag.back() != '/') {
            open.push_back(tag.substr(0, tag.find(' ')));
        }
    }
    CHECK(balanced);
    CHECK(open.empty());
    if (::access("/usr/bin/xmllint", X_OK) == 0) {
        const std::string command = "/usr/bin/xmllint --noout '" + svg_path + "'";
        CHECK(std::system(command.c_str()) == 0);
    }
}

TEST_CASE("svp watch prints events live and exits 0 on SIGINT", "[svp]") {
    ServerFixture fixture;
    for (const bool raw : {false, true}) {
        std::vector<std::string> args{"--socket", fixture.socket_path.string(), "watch"};
        if (raw) args.push_back("--json");
        BackgroundSvp watch(args);
        REQUIRE(fixture.api.wait_for_subscribers(1, 5000ms));
        fixture.api.emit({"lpar.state", "LPAR2", R"({"state":"stopped","reason":"guest exit 0"})"});
        fixture.api.emit({"mvstor.phase", "LPAR2", R"({"phase":"copy","us":30000})"});
        CHECK(watch.read_until(
            [](const std::string& out) { return std::count(out.begin(), out.end(), '\n') >= 2; }));
        CHECK(watch.interrupt() == 0);
        INFO(watch.out);
        if (raw) {
            const auto first = json::parse(watch.out.substr(0, watch.out.find('\n')));
            CHECK(first.at("params").at("event") == "lpar.state");
        } else {
            CHECK(contains(watch.out,
                           "lpar.state       LPAR2    reason=guest exit 0 state=stopped\n"));
            CHECK(contains(watch.out, "mvstor.phase     LPAR2    phase=copy us=30000\n"));
            CHECK(watch.out[2] == ':');  // HH:MM:SS.mmm first
        }
        // svp's connection is gone, and its subscription with it.
        const auto deadline = std::chrono::steady_clock::now() + 5s;
        while (fixture.api.subscriber_count() != 0 && std::chrono::steady_clock::now() < deadline)
            std::this_thread::sleep_for(10ms);
        CHECK(fixture.api.subscriber_count() == 0);
    }
}

TEST_CASE("svp watch --event and --lpar filter; each line shows the event's own time", "[svp]") {
    ServerFixture fixture;
    BackgroundSvp watch({"--socket", fixture.socket_path.string(), "watch", "--event", "mvstor.*",
                         "--lpar", "LPAR2"});
    REQUIRE(fixture.api.wait_for_subscribers(1, 5000ms));
    // 2025-12-07 10:01:02.123456 UTC, shown in local time as the test sees it.
    constexpr std::int64_t kWallUs = 1'765'101'662'123'456;
    fixture.api.emit({"lpar.state", "LPAR2", R"({"state":"stopped","reason":"x"})", kWallUs, 1});
    fixture.api.emit({"mvstor.phase", "LPAR1", R"({"phase":"copy","us":1})", kWallUs, 2});
    fixture.api.emit({"mvstor.phase", "LPAR2", R"({"phase":"copy","us":2})", kWallUs, 3});
    CHECK(watch.read_until(
        [](const std::string& out) { return out.find('\n') != std::string::npos; }));
    CHECK(watch.interrupt() == 0);
    INFO(watch.out);
    const std::time_t seconds = kWallUs / 1'000'000;
    std::tm local{};
    ::localtime_r(&seconds, &local);
    char clock[16];
    std::strftime(clock, sizeof(clock), "%H:%M:%S", &local);
    CHECK(watch.out == std::string(clock) + ".123  mvstor.phase     LPAR2    phase=copy us=2\n");
}

TEST_CASE("svp describe lists every method and event; bad watch filters are refused", "[svp]") {
    ServerFixture fixture;
    const Outcome described = run_svp_on(fixture, {"describe"});
    CHECK(described.exit_code == 0);
    INFO(described.out);
    for (const auto& method : lparvisor::control::kMethodSchemas)
        CHECK(contains(described.out, "\n  " + std::string(method.name) + " ("));
    for (const auto& event : lparvisor::control::kEventSchemas)
        CHECK(contains(described.out, "\n  " + std::string(event.name) + ": "));
    CHECK(contains(described.out, "  storage.mvstor (long pool): moves an LPAR's storage"));
    CHECK(
        contains(described.out, "      timeout_ms             integer 1..600000, default 10000: "));
    CHECK(contains(described.out, "      origin_mib             integer 0..2^44-1, required: "));
    CHECK(contains(described.out, "\"stop-and-copy\" | \"live\", default stop-and-copy"));
    const Outcome raw = run_svp_on(fixture, {"describe", "--json"});
    CHECK(json::parse(raw.out).at("methods").size() ==
          std::size(lparvisor::control::kMethodSchemas));

    const Outcome typo = run_svp_on(fixture, {"watch", "--event", "mvstor.dnoe"});
    CHECK(typo.exit_code == 1);
    CHECK(contains(typo.err, "no event is named \"mvstor.dnoe\""));
}

TEST_CASE("svp console --follow prints each byte once by offset, and says what was lost", "[svp]") {
    ServerFixture fixture;
    fixture.api.set_console_text("boot\n");
    BackgroundSvp follow({"--socket", fixture.socket_path.string(), "console", "LPAR2", "--follow",
                          "--bytes", "12"});
    CHECK(follow.read_until([](const std::string& out) { return out == "boot\n"; }));
    fixture.api.append_console_text("more\n");
    CHECK(follow.read_until([](const std::string& out) { return contains(out, "more\n"); }));
    // The same text again is new output (offsets, not text, say what is new).
    fixture.api.append_console_text("more\n");
    CHECK(follow.read_until([](const std::string& out) { return out == "boot\nmore\nmore\n"; }));
    // The ring keeps 4 bytes, and 6 came: 2 are lost, and svp says so.
    fixture.api.set_console_ring_bytes(4);
    fixture.api.append_console_text("again\n");
    CHECK(follow.read_until([](const std::string& out) { return contains(out, "ain\n"); }));
    // A re-IPL: the new output from its start.
    fixture.api.set_console_ring_bytes(1 << 20);
    fixture.api.restart_console("second boot\n");
    CHECK(follow.read_until([](const std::string& out) { return contains(out, "second boot\n"); }));
    std::this_thread::sleep_for(500ms);  // a few more polls print nothing
    CHECK(follow.interrupt() == 0);
    CHECK(follow.out == "boot\nmore\nmore\nain\nsecond boot\n");
    CHECK(contains(follow.err, "2 bytes of LPAR2's output were lost"));
    CHECK(contains(follow.err, "LPAR2 was re-IPLed; its output from the start"));

    // --json: each new piece as one JSON line.
    fixture.api.set_console_text("one\n");
    BackgroundSvp raw(
        {"--socket", fixture.socket_path.string(), "--json", "console", "LPAR2", "--follow"});
    CHECK(raw.read_until([](const std::string& out) { return contains(out, "\n"); }));
    fixture.api.append_console_text("two\n");
    CHECK(raw.read_until([](const std::string& out) { return contains(out, "two"); }));
    CHECK(raw.interrupt() == 0);
    CHECK(raw.out == R"({"lpar":"LPAR2","text":"one\n"})"
                     "\n"
                     R"({"lpar":"LPAR2","text":"two\n"})"
                     "\n");
}

TEST_CASE("svp console --attach types at the LPAR; a second attach reads only and is told who",
          "[svp][console]") {
    ServerFixture fixture;
    fixture.api.set_console_text("login: ");
    BackgroundSvp first({"--socket", fixture.socket_path.string(), "console", "LPAR2", "--attach"},
                        true);
    CHECK(first.read_err_until(
        [](const std::string& err) { return contains(err, "attached to LPAR2's console"); }));
    CHECK(first.read_until([](const std::string& out) { return out == "login: "; }));

    BackgroundSvp second({"--socket", fixture.socket_path.string(), "console", "LPAR2", "--attach"},
                         true);
    CHECK(second.read_err_until([](const std::string& err) { return contains(err, "read-only"); }));
    CHECK(contains(second.err, "LPAR2's console input is held by client "));

    // What the first types reaches the LPAR (the fake echoes it, as a terminal does); the UART
    // takes 3 bytes a write here, so svp must send the rest after.
    fixture.api.set_console_write_limit(3);
    first.type("echo hello-4242\r");
    CHECK(eventually([&] { return fixture.api.typed() == "echo hello-4242\r"; }));
    fixture.api.append_console_text("\r\nhello-4242\r\n# ");
    for (auto* session : {&first, &second}) {
        CHECK(session->read_until([](const std::string& out) {
            return out == "login: echo hello-4242\r\r\nhello-4242\r\n# ";
        }));
    }
    // The second's keys are dropped, and it is told so once.
    second.type("rm -rf /\r");
    CHECK(second.read_err_until(
        [](const std::string& err) { return contains(err, "what is typed is dropped"); }));
    std::this_thread::sleep_for(300ms);  // several polls: nothing of it reaches the LPAR
    CHECK(fixture.api.typed() == "echo hello-4242\r");

    // Ctrl-] detaches: what came before it is still sent.
    first.type(std::string("ls") + kDetachKeyForTest);
    CHECK(first.wait_exit() == 0);
    CHECK(contains(first.err, "detached from LPAR2's console"));
    CHECK(fixture.api.typed() == "echo hello-4242\rls");
    // The input is free now; the second stays read-only until it attaches again.
    BackgroundSvp third({"--socket", fixture.socket_path.string(), "console", "LPAR2", "--attach"},
                        true);
    CHECK(third.read_err_until(
        [](const std::string& err) { return contains(err, "attached to LPAR2's console"); }));
    third.end_input();  // stdin ends: input given back, output still followed
    CHECK(
        third.read_err_until([](const std::string& err) { return contains(err, "input ended"); }));
    CHECK(third.interrupt() == 0);
    CHECK(second.interrupt() == 0);
}

TEST_CASE("svp console --attach to an unknown LPAR is refused", "[svp][console]") {
    ServerFixture fixture;
    const Outcome unknown = run_svp_on(fixture, {"console", "NOPE", "--attach"});
    CHECK(unknown.exit_code == 1);
    CHECK(contains(unknown.err, "unknown LPAR 'NOPE'"));
    const Outcome both = run_svp_on(fixture, {"console", "LPAR2", "--attach", "--follow"});
    CHECK(both.exit_code == 2);
}

TEST_CASE("svp mvstor shows progress from events: one line per phase when not a TTY", "[svp]") {
    ServerFixture fixture;
    fixture.api.mvstor_emits_events = true;
    const Outcome moved = run_svp_on(fixture, {"mvstor", "LPAR2", "192"});
    CHECK(moved.exit_code == 0);
    CHECK_THAT(moved.out, Catch::StartsWith("MVSTOR LPAR2: 128 -> 192 MiB"));
    CHECK(moved.err ==
          "mvstor LPAR2: check_target done (0.0 ms)\n"
          "mvstor LPAR2: populate_target done (0.9 ms)\n"
          "mvstor LPAR2: stop_vcpus done (0.1 ms)\n"
          "mvstor LPAR2: drain_io done (0.3 ms)\n"
          "mvstor LPAR2: copy done (30.0 ms)\n"
          "mvstor LPAR2: remap done (0.6 ms)\n"
          "mvstor LPAR2: resume done (0.2 ms)\n"
          "mvstor LPAR2: scrub done (26.8 ms)\n");
    // --json: the result on stdout, the events as JSON lines on stderr.
    const Outcome raw = run_svp_on(fixture, {"--json", "mvstor", "LPAR2", "192"});
    CHECK(raw.exit_code == 0);
    CHECK(json::parse(raw.out).at("new_origin_mib") == 192);
    const std::vector<std::string> types = event_types(raw.err);
    REQUIRE(!types.empty());
    CHECK(types.front() == "mvstor.phase");
    CHECK(types.back() == "mvstor.done");
    CHECK(std::count(types.begin(), types.end(), "mvstor.progress") == 4);
}

TEST_CASE("svp exchange, expand, shrink and grow show progress from events too", "[svp]") {
    ServerFixture fixture;
    fixture.api.operations_emit_events = true;
    const Outcome exchanged = run_svp_on(fixture, {"exchange", "LPAR1", "LPAR2"});
    CHECK(exchanged.exit_code == 0);
    CHECK(exchanged.err ==
          "exchange LPAR1: check done (0.0 ms)\n"
          "exchange LPAR1: stop_vcpus done (0.1 ms)\n"
          "exchange LPAR1: exchange done (1.2 ms)\n"
          "exchange LPAR1: remap done (0.1 ms)\n"
          "exchange LPAR1: resume done (0.1 ms)\n");

    fixture.api.status.lpars[1].max_size_mib = 512;  // LPAR2: 256 MiB at 128, 125 MiB free above
    const Outcome expanded = run_svp_on(fixture, {"expand", "LPAR2", "64"});
    INFO(expanded.err);
    CHECK(expanded.exit_code == 0);
    CHECK(expanded.err ==
          "expand LPAR2: populate done (0.3 ms)\n"
          "expand LPAR2: plug done (4.0 ms)\n");
    const Outcome shrunk = run_svp_on(fixture, {"--json", "shrink", "LPAR2", "32"});
    CHECK(shrunk.exit_code == 0);
    CHECK(event_types(shrunk.err) == std::vector<std::string>{"shrink.phase", "shrink.progress",
                                                              "shrink.progress", "shrink.phase",
                                                              "storage.shrunk"});
    CHECK(json::parse(shrunk.out).at("new_size_mib") == 288);

    // grow: the room-making MVSTORs' events (the fake makes none here), then the EXPAND's.
    const Outcome grown = run_svp_on(fixture, {"grow", "LPAR2", "32"});
    CHECK(grown.exit_code == 0);
    CHECK(grown.err ==
          "expand LPAR2: populate done (0.3 ms)\n"
          "expand LPAR2: plug done (4.0 ms)\n");
}

TEST_CASE("svp exits 4 when the daemon's query timeout answers", "[svp]") {
    ServerLimits limits;
    limits.query_timeout = 100ms;
    ServerFixture fixture(limits);
    fixture.api.query_delay = 400ms;
    const Outcome outcome = run_svp_on(fixture, {"lpars"});
    CHECK(outcome.exit_code == 4);
    CHECK(outcome.err == "svp: timed out after 0.1 s (System, code -32005)\n");
}

TEST_CASE("svp lpars shows MAX SIZE once an LPAR can grow", "[svp][resize]") {
    ServerFixture fixture;
    fixture.api.status.lpars[0].max_size_mib = 512;
    fixture.api.status.lpars[0].guest = "linux";
    fixture.api.status.lpars[1].state = "stopped";
    fixture.api.status.lpars[1].reason = "guest exit 0";
    const Outcome outcome = run_svp_on(fixture, {"lpars"});
    CHECK(outcome.exit_code == 0);
    CHECK(outcome.out ==
          "LPAR NAME   MS AREA ORIGIN   MS AREA SIZE   MS GAP   MAX SIZE   GUEST      STATE\n"
          "            (MiB)            (MiB)          (MiB)    (MiB)\n"
          "LPAR1                    0            128        0        512   linux      running\n"
          "LPAR2                  128            256      125          -   firmware   stopped "
          "(guest exit 0)\n"
          "\n"
          "AVAILABLE PHYSICAL MAIN STORAGE AREA: 509 MiB (free 125 MiB)\n");
}

TEST_CASE("svp expand and shrink print the change and the table after", "[svp][resize]") {
    ServerFixture fixture;
    fixture.api.status.lpars[1].max_size_mib = 512;  // LPAR2 128..384, 125 MiB free above
    const Outcome expanded = run_svp_on(fixture, {"expand", "LPAR2", "64", "--timeout-ms", "500"});
    CHECK(expanded.exit_code == 0);
    CHECK(expanded.err.empty());
    CHECK(expanded.out ==
          "EXPAND LPAR2: 256 -> 320 MiB (+64 MiB), 64 MiB plugged, total 4.2 ms\n"
          "\n"
          "LPAR NAME   MS AREA ORIGIN   MS AREA SIZE   MS GAP   MAX SIZE   GUEST      STATE\n"
          "            (MiB)            (MiB)          (MiB)    (MiB)\n"
          "LPAR1                    0            128        0          -   firmware   running\n"
          "LPAR2                  128            320       61        512   firmware   running\n"
          "\n"
          "AVAILABLE PHYSICAL MAIN STORAGE AREA: 509 MiB (free 61 MiB)\n");
    REQUIRE(fixture.api.expand_requests.size() == 1);
    CHECK(fixture.api.expand_requests[0].lpar == "LPAR2");
    CHECK(fixture.api.expand_requests[0].mib == 64);
    CHECK(fixture.api.expand_requests[0].timeout == 500ms);

    const Outcome shrunk = run_svp_on(fixture, {"shrink", "LPAR2", "32"});
    CHECK(shrunk.exit_code == 0);
    CHECK_THAT(shrunk.out,
               Catch::StartsWith(
                   "SHRINK LPAR2: 320 -> 288 MiB (-32 MiB), 32 MiB plugged, total 4.2 ms\n\n") &&
                   Catch::Contains("LPAR2                  128            288       93        "
                                   "512   firmware   running\n"));
    REQUIRE(fixture.api.shrink_requests.size() == 1);
    CHECK(fixture.api.shrink_requests[0].timeout == 10000ms);

    // --json: the raw result only, no table.
    const Outcome raw = run_svp_on(fixture, {"--json", "expand", "LPAR2", "2"});
    CHECK(raw.exit_code == 0);
    CHECK(json::parse(raw.out) == json{{"lpar", "LPAR2"},
                                       {"old_size_mib", 288},
                                       {"new_size_mib", 290},
                                       {"plugged_mib", 34},
                                       {"total_us", 4200}});

    // The daemon's refusals: exit 1 with its message; nothing printed on stdout.
    // LPAR2 is 290 MiB now, 34 MiB of it added by EXPAND.
    const Outcome beyond = run_svp_on(fixture, {"expand", "LPAR2", "224"});
    CHECK(beyond.exit_code == 1);
    CHECK(beyond.out.empty());
    CHECK(beyond.err ==
          "svp: LPAR2: 290 MiB + 224 MiB is more than its maximum of 512 MiB (max_size_mib) "
          "(Refused, code -32003)\n");
    const Outcome unplugged = run_svp_on(fixture, {"shrink", "LPAR2", "36"});
    CHECK(unplugged.exit_code == 1);
    CHECK(unplugged.err ==
          "svp: LPAR2: only 34 MiB was added by EXPAND; its boot storage (256 MiB) cannot shrink "
          "(Refused, code -32003)\n");
    fixture.api.throw_next(ErrorKind::Busy, "LPAR2: the guest did not plug within 0.5 s");
    const Outcome busy = run_svp_on(fixture, {"--json", "expand", "LPAR2", "2"});
    CHECK(busy.exit_code == 1);
    CHECK(json::parse(busy.out).at("error").at("code") == -32004);

    // Usage errors (exit 2) never reach the daemon: odd, zero or missing MIB, bad --timeout-ms.
    const std::size_t expands = fixture.api.expand_requests.size();
    for (const auto& args : std::vector<std::vector<std::string>>{
             {"expand", "LPAR2", "63"},
             {"expand", "LPAR2", "0"},
             {"expand", "LPAR2", "x"},
             {"expand", "LPAR2"},
             {"shrink", "LPAR2", "3"},
             {"shrink", "LPAR2", "2", "--timeout-ms", "0"},
             {"expand", "LPAR2", "2", "--timeout-ms", "600001"},
         }) {
        const Outcome usage = run_svp_on(fixture, args);
        INFO(args[0] << " " << (args.size() > 2 ? args[2] : ""));
        CHECK(usage.exit_code == 2);
    }
    CHECK(fixture.api.expand_requests.size() == expands);
    CHECK(fixture.api.shrink_requests.size() == 2);  // the one that succeeded, the refusal
}

TEST_CASE("svp grow: --dry-run plans, without it storage.grow moves and expands", "[svp][resize]") {
    ServerFixture fixture;
    fixture.api.status.lpars[0].max_size_mib = 256;  // LPAR1 0..128, LPAR2 right above it

    const Outcome planned = run_svp_on(fixture, {"grow", "LPAR1", "64", "--dry-run"});
    CHECK(planned.exit_code == 0);
    CHECK(planned.out ==
          "LPAR1: to free 64 MiB above it with 1 MVSTOR(s), 256 MiB copied\n"
          "  MVSTOR LPAR2 128 -> 192 MiB (256 MiB)\n");
    CHECK(fixture.api.grow_requests.empty());

    const Outcome grown = run_svp_on(fixture, {"grow", "LPAR1", "64", "--timeout-ms", "800"});
    CHECK(grown.exit_code == 0);
    CHECK(grown.err.empty());
    CHECK(grown.out ==
          "LPAR1: freed 64 MiB above it with 1 MVSTOR(s), 256 MiB copied\n"
          "  MVSTOR LPAR2 128 -> 192 MiB (256 MiB), pause 31.2 ms, total 58.0 ms\n"
          "EXPAND LPAR1: 128 -> 192 MiB (+64 MiB), 64 MiB plugged, total 4.2 ms\n"
          "\n"
          "LPAR NAME   MS AREA ORIGIN   MS AREA SIZE   MS GAP   MAX SIZE   GUEST      STATE\n"
          "            (MiB)            (MiB)          (MiB)    (MiB)\n"
          "LPAR1                    0            192        0        256   firmware   running\n"
          "LPAR2                  192            256       61          -   firmware   running\n"
          "\n"
          "AVAILABLE PHYSICAL MAIN STORAGE AREA: 509 MiB (free 61 MiB)\n");
    REQUIRE(fixture.api.grow_requests.size() == 1);
    CHECK(fixture.api.grow_requests[0].first.lpar == "LPAR1");
    CHECK(fixture.api.grow_requests[0].first.mib == 64);
    CHECK(fixture.api.grow_requests[0].first.timeout == 800ms);
    CHECK(fixture.api.grow_requests[0].second == MvstorMode::StopAndCopy);

    // --live makes the moves live; --json prints {plan, expansion}.
    const Outcome live = run_svp_on(fixture, {"--json", "grow", "LPAR1", "60", "--live"});
    CHECK(live.exit_code == 0);
    const json result = json::parse(live.out);
    CHECK(result.at("plan").at("moves").at(0).at("mode") == "live");
    CHECK(result.at("expansion").at("new_size_mib") == 252);
    REQUIRE(fixture.api.grow_requests.size() == 2);
    CHECK(fixture.api.grow_requests[1].second == MvstorMode::Live);

    // Refused (no plan frees that much): exit 1, the message on stderr. LPAR2 (252..508) may
    // grow, so the refusal is the plan's.
    fixture.api.status.lpars[1].max_size_mib = 512;
    const Outcome refused = run_svp_on(fixture, {"grow", "LPAR2", "128"});
    CHECK(refused.exit_code == 1);
    CHECK(refused.out.empty());
    CHECK(refused.err == "svp: LPAR2: no MVSTORs free 128 MiB above it (Refused, code -32003)\n");
    CHECK(run_svp_on(fixture, {"grow", "LPAR1", "63"}).exit_code == 2);
    CHECK(run_svp_on(fixture, {"grow", "LPAR1", "63", "--dry-run"}).exit_code == 2);
}

TEST_CASE("svp --help lists expand, shrink and grow", "[svp][resize]") {
    const Outcome help = run_svp({"--help"});
    CHECK(help.exit_code == 0);
    CHECK_THAT(help.out, Catch::Contains("expand") && Catch::Contains("shrink") &&
                             Catch::Contains("grow") && Catch::Contains("make-room"));
    for (const char* command : {"expand", "shrink", "grow"}) {
        INFO(command);
        const Outcome sub_help = run_svp({command, "--help"});
        CHECK(sub_help.exit_code == 0);
        CHECK_THAT(sub_help.out, Catch::Contains("MIB") && Catch::Contains("--timeout-ms"));
    }
    CHECK_THAT(run_svp({"grow", "--help"}).out,
               Catch::Contains("--dry-run") && Catch::Contains("--live"));
}

TEST_CASE("70 silent clients do not stop svp lpars from answering", "[svp]") {
    ServerFixture fixture;  // the default limits: 64 clients
    REQUIRE(ServerLimits{}.max_clients == 64);
    std::vector<std::unique_ptr<LineClient>> silent;
    for (int i = 0; i < 70; ++i) {
        silent.push_back(std::make_unique<LineClient>(fixture.socket_path));
        if (i % 2 == 1) silent.back()->send(R"({"jsonrpc":"2.0","id":"late","meth)");  // mid-line
    }
    // Each connection beyond the 64th made room by evicting the one silent longest.
    auto expect_evicted = [](LineClient& client) {
        const auto line = client.read_line();
        REQUIRE(line.has_value());
        const json dropped = json::parse(*line);
        CHECK(dropped.at("error").at("code") == -32004);
        CHECK(dropped.at("error").at("data").at("reason") == "evicted");
        CHECK(dropped.at("error").at("data").at("limit") == 64);
        CHECK(client.closed_by_server());
    };
    for (int i = 0; i < 6; ++i) expect_evicted(*silent[i]);

    const Outcome outcome = run_svp_on(fixture, {"lpars"});
    CHECK(outcome.exit_code == 0);
    CHECK(outcome.err.empty());
    CHECK(outcome.out.find("LPAR2                  128            256      125") !=
          std::string::npos);
    expect_evicted(*silent[6]);  // svp's connection took its slot

    // The others were left alone: each is still served once it speaks.
    for (int i = 7; i < 70; ++i) {
        silent[i]->send(i % 2 == 1 ? R"(od":"system.ping"})"
                                     "\n"
                                   : R"({"jsonrpc":"2.0","id":"late","method":"system.ping"})"
                                     "\n");
        const auto line = silent[i]->read_line();
        REQUIRE(line.has_value());
        CHECK(json::parse(*line).at("id") == "late");
        CHECK(json::parse(*line).contains("result"));
    }
}
