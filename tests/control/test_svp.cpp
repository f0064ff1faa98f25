// The real svp binary against a ControlServer serving the test-double Api.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

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

    std::vector<std::string> argv_storage{SVP_PATH};
    argv_storage.insert(argv_storage.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& arg : argv_storage) argv.push_back(arg.data());
    argv.push_back(nullptr);

    int out_pipe[2], err_pipe[2];
    REQUIRE(::pipe2(out_pipe, O_CLOEXEC) == 0);
    REQUIRE(::pipe2(err_pipe, O_CLOEXEC) == 0);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, out_pipe[1], 1);
    posix_spawn_file_actions_adddup2(&actions, err_pipe[1], 2);
    pid_t pid = 0;
    const int spawned = ::posix_spawn(&pid, SVP_PATH, &actions, nullptr, argv.data(), envp.data());
    posix_spawn_file_actions_destroy(&actions);
    ::close(out_pipe[1]);
    ::close(err_pipe[1]);
    REQUIRE(spawned == 0);

    Outcome outcome;
    Fd out_fd(out_pipe[0]), err_fd(err_pipe[0]);
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

}  // namespace

TEST_CASE("svp lpars prints the Fig. 3A table", "[svp]") {
    ServerFixture fixture;
    const Outcome outcome = run_svp_on(fixture, {"lpars"});
    CHECK(outcome.exit_code == 0);
    CHECK(outcome.err.empty());
    CHECK(outcome.out ==
          "LPAR NAME   MS AREA ORIGIN   MS AREA SIZE   MS GAP   STATE\n"
          "            (MiB)            (MiB)          (MiB)\n"
          "LPAR1                    0            128        0   running\n"
          "LPAR2                  128            256      125   running\n"
          "\n"
          "AVAILABLE PHYSICAL MAIN STORAGE AREA: 509 MiB (free 125 MiB)\n");
}

TEST_CASE("svp lpars shows why an LPAR stopped and widens for long names", "[svp]") {
    ServerFixture fixture;
    fixture.api.status.lpars[0].name = "LONG-LPAR-NAME-1";
    fixture.api.status.lpars[1].state = "stopped";
    fixture.api.status.lpars[1].reason = "guest exit 0";
    const Outcome outcome = run_svp_on(fixture, {"lpars"});
    CHECK(outcome.exit_code == 0);
    CHECK(outcome.out ==
          "LPAR NAME          MS AREA ORIGIN   MS AREA SIZE   MS GAP   STATE\n"
          "                   (MiB)            (MiB)          (MiB)\n"
          "LONG-LPAR-NAME-1                0            128        0   running\n"
          "LPAR2                         128            256      125   stopped (guest exit 0)\n"
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
          "  stop_vcpus          0.1 ms\n"
          "  drain_io            0.3 ms\n"
          "  check_target        0.0 ms\n"
          "  copy               30.0 ms\n"
          "  remap               0.6 ms\n"
          "  resume              0.2 ms\n"
          "  scrub              26.8 ms\n");
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
