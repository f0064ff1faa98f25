// ControlServer over a real Unix socket, with the test-double Api.
#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <sys/wait.h>

#include <atomic>
#include <fstream>
#include <vector>

#include <fmt/format.h>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <nlohmann/json.hpp>

#include "support/skip.hpp"
#include "test_support.hpp"

using nlohmann::json;
using namespace std::chrono_literals;
using namespace lparvisor;
using namespace lparvisor::control;
using namespace lparvisor::control::test;

namespace {

json parse_line(const std::optional<std::string>& line) {
    REQUIRE(line.has_value());
    return json::parse(*line);
}

json request_and_wait(LineClient& client, std::string_view request,
                      std::chrono::milliseconds timeout = 5000ms) {
    client.send(std::string(request) + "\n");
    return parse_line(client.read_line(timeout));
}

constexpr std::string_view kList = R"({"jsonrpc":"2.0","id":1,"method":"lpar.list"})";
constexpr std::string_view kPing = R"({"jsonrpc":"2.0","id":"ping","method":"system.ping"})";
constexpr std::string_view kMvstor =
    R"({"jsonrpc":"2.0","id":"mv","method":"storage.mvstor","params":{"lpar":"LPAR2","origin_mib":192}})";

}  // namespace

TEST_CASE("requests over the socket are answered in order", "[socket]") {
    ServerFixture fixture;
    LineClient client(fixture.socket_path);
    // Pipelined in one write, including a notification (no answer), a blank line and CRLF.
    client.send(std::string(kList) + "\n" + R"({"jsonrpc":"2.0","method":"lpar.list"})" + "\n\n" +
                std::string(kPing) + "\r\n" + R"({"jsonrpc":"2.0","id":3,"method":"nope"})" + "\n");
    const json first = parse_line(client.read_line());
    CHECK(first.at("id") == 1);
    CHECK(first.at("result").at("main_storage_mib") == 509);
    const json second = parse_line(client.read_line());
    CHECK(second.at("id") == "ping");
    CHECK(second.at("result").contains("version"));
    const json third = parse_line(client.read_line());
    CHECK(third.at("id") == 3);
    CHECK(third.at("error").at("code") == -32601);
    CHECK(fixture.api.list_calls == 2);
}

TEST_CASE("the socket file is created with mode 0600", "[socket]") {
    ServerFixture fixture;
    struct stat status {};
    REQUIRE(::lstat(fixture.socket_path.c_str(), &status) == 0);
    CHECK(S_ISSOCK(status.st_mode));
    CHECK((status.st_mode & 07777) == 0600);
    CHECK(fixture.server->socket_path() == fixture.socket_path);
}

TEST_CASE("the socket file is 0600 even under a permissive umask", "[socket]") {
    const mode_t old_umask = ::umask(0);
    ServerFixture fixture;
    ::umask(old_umask);
    struct stat status {};
    REQUIRE(::lstat(fixture.socket_path.c_str(), &status) == 0);
    CHECK((status.st_mode & 07777) == 0600);
}

TEST_CASE("a second server on a live socket is refused; the first keeps serving", "[socket]") {
    ServerFixture fixture;
    FakeApi other_api;
    boost::asio::io_context other_io;
    try {
        ControlServer second(other_io, fixture.socket_path, other_api);
        FAIL("the second server started");
    } catch (const Error& error) {
        CHECK(error.kind() == ErrorKind::Busy);
        CHECK_THAT(error.what(), Catch::Contains(fixture.socket_path.string()));
    }
    LineClient client(fixture.socket_path);
    CHECK(request_and_wait(client, kPing).contains("result"));
}

TEST_CASE("a stale socket file is replaced; a non-socket file is not", "[socket]") {
    TempDir dir;
    const auto path = dir.path() / "control.sock";
    FakeApi api;
    boost::asio::io_context io;
    SECTION("stale socket: bound once, nobody listening") {
        {
            Fd stale(::socket(AF_UNIX, SOCK_STREAM, 0));
            sockaddr_un address{};
            address.sun_family = AF_UNIX;
            std::strncpy(address.sun_path, path.c_str(), sizeof(address.sun_path) - 1);
            // SAFETY: sockaddr_un is the sockaddr bind() expects for AF_UNIX; size is the struct's.
            REQUIRE(::bind(stale.get(), reinterpret_cast<const sockaddr*>(&address),
                           sizeof(address)) == 0);
        }
        REQUIRE(std::filesystem::exists(path));
        ControlServer server(io, path, api);
        struct stat status {};
        REQUIRE(::lstat(path.c_str(), &status) == 0);
        CHECK((status.st_mode & 07777) == 0600);
    }
    SECTION("regular file") {
        std::ofstream(path) << "not a socket";
        try {
            ControlServer server(io, path, api);
            FAIL("started over a regular file");
        } catch (const Error& error) {
            CHECK(error.kind() == ErrorKind::Refused);
            CHECK_THAT(error.what(), Catch::Contains("is not a socket"));
        }
        CHECK(std::filesystem::is_regular_file(path));
    }
    SECTION("path too long for sockaddr_un") {
        const auto long_path = dir.path() / std::string(120, 'x');
        CHECK_THROWS_AS(ControlServer(io, long_path, api), Error);
    }
    SECTION("a missing parent directory is created") {
        const auto nested = dir.path() / "run" / "lparvisor" / "control.sock";
        ControlServer server(io, nested, api);
        CHECK(std::filesystem::exists(nested));
        server.stop();
        CHECK(!std::filesystem::exists(nested));
    }
}

TEST_CASE("an oversize line gets -32600 and the connection is closed", "[socket]") {
    ServerFixture fixture;
    LineClient client(fixture.socket_path);
    client.send_best_effort(std::string(70000, 'x'));
    const json response = parse_line(client.read_line());
    CHECK(response.at("id").is_null());
    CHECK(response.at("error").at("code") == -32600);
    CHECK(response.at("error").at("message") == "request larger than 65536 bytes");
    CHECK(client.closed_by_server());

    // A line of exactly the limit is fine.
    LineClient exact(fixture.socket_path);
    std::string line = R"({"jsonrpc":"2.0","id":1,"method":"system.ping"})";
    line.append(kMaxRequestBytes - line.size(), ' ');
    REQUIRE(line.size() == 65536);
    CHECK(request_and_wait(exact, line).at("id") == 1);
}

TEST_CASE("200 connections dropped mid-request do not disturb another client", "[socket]") {
    ServerFixture fixture;
    LineClient keeper(fixture.socket_path);
    int answered = 0;
    for (int i = 0; i < 200; ++i) {
        {
            LineClient dropped(fixture.socket_path);
            switch (i % 4) {
                case 0:
                    dropped.send_best_effort(R"({"jsonrpc":"2.0","id":1,"meth)");
                    break;
                case 1:
                    dropped.send_best_effort(std::string(kMvstor) + "\n");
                    break;  // answer lost
                case 2:
                    dropped.send_best_effort(std::string(kList) + "\n" + std::string(kList));
                    break;
                case 3:
                    break;  // nothing at all
            }
        }  // closed here, mid-request
        if (i % 10 == 0) {
            const json response = request_and_wait(keeper, kList);
            CHECK(response.at("id") == 1);
            ++answered;
        }
    }
    CHECK(answered == 20);
    CHECK(request_and_wait(keeper, kPing).contains("result"));
    // Every dropped connection is eventually closed and uncounted on the server.
    CHECK(eventually([&] { return fixture.server->client_count() == 1; }));
}

TEST_CASE("lpar.list is answered while storage.mvstor runs on a worker", "[socket]") {
    ServerFixture fixture;
    fixture.api.mvstor_hold = 1000ms;
    LineClient relocating(fixture.socket_path);
    relocating.send(std::string(kMvstor) + "\n");
    REQUIRE(fixture.api.wait_for_mvstor_running(5000ms));

    LineClient observer(fixture.socket_path);
    const auto asked = std::chrono::steady_clock::now();
    const json listed = request_and_wait(observer, kList, 900ms);
    const auto waited = std::chrono::steady_clock::now() - asked;
    CHECK(listed.at("result").at("lpars").size() == 2);
    CHECK(fixture.api.running_mvstors() == 1);  // the relocation is still going on
    CHECK(waited < 500ms);
    CHECK(request_and_wait(observer, kPing, 900ms).contains("result"));

    const json moved = parse_line(relocating.read_line(5000ms));
    CHECK(moved.at("id") == "mv");
    CHECK(moved.at("result").at("new_origin_mib") == 192);
    CHECK(fixture.api.running_mvstors() == 0);
}

TEST_CASE("several io_context threads and concurrent clients", "[socket]") {
    ServerFixture fixture(ServerLimits{}, 4);
    fixture.api.mvstor_hold = 50ms;
    std::atomic<int> failures{0};
    std::vector<std::thread> clients;
    for (int c = 0; c < 8; ++c) {
        clients.emplace_back([&, c] {
            try {
                LineClient client(fixture.socket_path);
                for (int i = 0; i < 25; ++i) {
                    const std::string_view request =
                        (i + c) % 10 == 0 ? kMvstor : (i % 2 ? kList : kPing);
                    client.send(std::string(request) + "\n");
                    auto line = client.read_line(5000ms);
                    if (!line || json::parse(*line).contains("error")) ++failures;
                }
            } catch (...) {
                ++failures;
            }
        });
    }
    for (auto& client : clients) client.join();
    CHECK(failures == 0);
    CHECK(eventually([&] { return fixture.server->client_count() == 0; }));
}

TEST_CASE("responses on one connection stay in request order across the worker", "[socket]") {
    ServerFixture fixture;
    fixture.api.mvstor_hold = 200ms;
    LineClient client(fixture.socket_path);
    client.send(std::string(kMvstor) + "\n" + std::string(kPing) + "\n" + std::string(kList) +
                "\n");
    CHECK(parse_line(client.read_line()).at("id") == "mv");
    CHECK(parse_line(client.read_line()).at("id") == "ping");
    CHECK(parse_line(client.read_line()).at("id") == 1);
}

TEST_CASE("a last request without newline before half-close is answered", "[socket]") {
    ServerFixture fixture;
    LineClient client(fixture.socket_path);
    client.send(kPing);
    client.shutdown_write();
    CHECK(parse_line(client.read_line()).at("id") == "ping");
    CHECK(client.closed_by_server());
}

TEST_CASE("stop() removes the socket file and closes the clients", "[socket]") {
    ServerFixture fixture;
    LineClient client(fixture.socket_path);
    CHECK(request_and_wait(client, kPing).contains("result"));
    REQUIRE(std::filesystem::exists(fixture.socket_path));
    fixture.server->stop();
    CHECK(!std::filesystem::exists(fixture.socket_path));
    CHECK(client.closed_by_server());
    CHECK_THROWS(connect_unix(fixture.socket_path));
    fixture.server->stop();    // idempotent
    fixture.io_thread.join();  // io.run() ran out of work
}

TEST_CASE("stop() waits for a running relocation; the server destructor removes the file",
          "[socket]") {
    ServerFixture fixture;
    fixture.api.mvstor_hold = 300ms;
    LineClient client(fixture.socket_path);
    client.send(std::string(kMvstor) + "\n");
    REQUIRE(fixture.api.wait_for_mvstor_running(5000ms));
    fixture.shutdown();  // stop + join + destroy
    CHECK(fixture.api.running_mvstors() == 0);
    CHECK(!std::filesystem::exists(fixture.socket_path));
}

TEST_CASE("stop() leaves a successor's socket file alone", "[socket]") {
    ServerFixture fixture;
    REQUIRE(::unlink(fixture.socket_path.c_str()) == 0);
    Fd successor(::socket(AF_UNIX, SOCK_STREAM, 0));
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, fixture.socket_path.c_str(), sizeof(address.sun_path) - 1);
    // SAFETY: sockaddr_un is the sockaddr bind() expects for AF_UNIX; the size is the struct's.
    REQUIRE(::bind(successor.get(), reinterpret_cast<const sockaddr*>(&address), sizeof(address)) ==
            0);
    fixture.server->stop();
    CHECK(std::filesystem::exists(fixture.socket_path));
}

// Runs alone, as its own ctest entry (a hidden tag): where the test is not root it cannot take
// another uid, and it ends the run with the skip code (ctest: Skipped).
TEST_CASE("peers other than root and the daemon's uid are refused", "[socket][.peer-uid]") {
    if (::geteuid() != 0) lparvisor::test::skip_run("not root: cannot connect as another uid");
    ServerFixture fixture;
    // Let the other uid through the file mode, so that the SO_PEERCRED check is what stops it.
    REQUIRE(::chmod(fixture.dir.path().c_str(), 0711) == 0);
    REQUIRE(::chmod(fixture.socket_path.c_str(), 0666) == 0);
    int result_pipe[2];
    REQUIRE(::pipe(result_pipe) == 0);
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        // Only async-signal-safe calls from here: the parent has threads.
        ::close(result_pipe[0]);
        if (::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(2);
        const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
        sockaddr_un address{};
        address.sun_family = AF_UNIX;
        std::strncpy(address.sun_path, fixture.socket_path.c_str(), sizeof(address.sun_path) - 1);
        // SAFETY: sockaddr_un is the sockaddr connect() expects for AF_UNIX; size is the struct's.
        if (::connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0)
            ::_exit(3);
        char line[512];
        ssize_t total = 0, got = 0;
        while ((got = ::read(fd, line + total,
                             sizeof(line) - 1 - static_cast<std::size_t>(total))) > 0) {
            total += got;
        }
        (void)!::write(result_pipe[1], line, static_cast<std::size_t>(total));
        ::_exit(0);
    }
    ::close(result_pipe[1]);
    std::string output;
    char chunk[512];
    ssize_t got = 0;
    while ((got = ::read(result_pipe[0], chunk, sizeof(chunk))) > 0)
        output.append(chunk, static_cast<std::size_t>(got));
    ::close(result_pipe[0]);
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    REQUIRE(WIFEXITED(status));
    REQUIRE(WEXITSTATUS(status) == 0);
    REQUIRE(!output.empty());
    const json refusal = json::parse(output.substr(0, output.find('\n')));
    CHECK(refusal.at("error").at("code") == -32003);
    CHECK_THAT(refusal.at("error").at("message").get<std::string>(), Catch::Contains("uid 65534"));
    CHECK(fixture.api.list_calls == 0);
}

namespace {

constexpr std::string_view kSubscribe =
    R"({"jsonrpc":"2.0","id":"sub","method":"events.subscribe"})";

// Reads lines until the response with `id`; notifications on the way are appended to `events`.
json response_with_id(LineClient& client, const json& id, std::vector<json>& events,
                      std::chrono::milliseconds timeout = 5000ms) {
    for (;;) {
        const json line = parse_line(client.read_line(timeout));
        if (line.contains("id") && line.at("id") == id) return line;
        REQUIRE(line.at("method") == "event");
        events.push_back(line.at("params"));
    }
}

void subscribe(LineClient& client) {
    std::vector<json> events;
    const json response = response_with_id(client, "sub", events);
    CHECK(response.at("result").at("subscribed") == true);
}

}  // namespace

TEST_CASE("lifecycle methods over the socket", "[socket]") {
    ServerFixture fixture;
    LineClient client(fixture.socket_path);
    const json defined = request_and_wait(
        client,
        R"({"jsonrpc":"2.0","id":1,"method":"lpar.define","params":{"name":"LPAR3","size_mib":64}})");
    CHECK(defined.at("result").at("state") == "defined");
    CHECK(defined.at("result").at("has_storage") == false);
    const json listed = request_and_wait(client, kList);
    CHECK(listed.at("result").at("lpars").back().at("has_storage") == false);
    for (std::string_view method : {"activate", "stop", "start", "reset", "deactivate"}) {
        const json response = request_and_wait(
            client,
            fmt::format(
                R"({{"jsonrpc":"2.0","id":2,"method":"lpar.{}","params":{{"lpar":"LPAR3"}}}})",
                method));
        INFO(method << ": " << response.dump());
        CHECK(response.contains("result"));
    }
    CHECK(
        request_and_wait(
            client, R"({"jsonrpc":"2.0","id":3,"method":"lpar.remove","params":{"lpar":"LPAR3"}})")
            .at("result") == json{{"removed", "LPAR3"}});
    const json gone = request_and_wait(
        client, R"({"jsonrpc":"2.0","id":4,"method":"lpar.activate","params":{"lpar":"LPAR3"}})");
    CHECK(gone.at("error").at("code") == -32001);
    const json config =
        request_and_wait(client, R"({"jsonrpc":"2.0","id":5,"method":"system.config"})");
    CHECK(config.at("result").at("main_storage_mib") == 509);
}

TEST_CASE("one connection holds an LPAR's console input; others read and are told who",
          "[socket][console]") {
    ServerFixture fixture;
    std::optional<LineClient> first(std::in_place, fixture.socket_path);
    LineClient second(fixture.socket_path);
    constexpr std::string_view kAttach =
        R"({"jsonrpc":"2.0","id":1,"method":"lpar.console_attach","params":{"lpar":"LPAR2"}})";
    constexpr std::string_view kDetach =
        R"({"jsonrpc":"2.0","id":2,"method":"lpar.console_detach","params":{"lpar":"LPAR2"}})";
    const auto write = [](std::string_view data) {
        return json{{"jsonrpc", "2.0"},
                    {"id", 3},
                    {"method", "lpar.console_write"},
                    {"params", {{"lpar", "LPAR2"}, {"data", data}}}}
            .dump();
    };

    // Nobody holds it: anyone may type (a script's one-off write).
    CHECK(request_and_wait(second, write("a")).at("result") ==
          json{{"lpar", "LPAR2"}, {"written", 1}});

    const json taken = request_and_wait(*first, kAttach);
    CHECK(taken.at("result") == json{{"lpar", "LPAR2"}, {"input", true}});
    CHECK(request_and_wait(*first, kAttach).at("result").at("input") == true);  // again: harmless

    const json refused = request_and_wait(second, kAttach);
    CHECK(refused.at("result").at("input") == false);
    const std::string holder = refused.at("result").at("holder").get<std::string>();
    CHECK_THAT(holder, Catch::StartsWith("client "));
    CHECK_THAT(holder, Catch::Contains("pid " + std::to_string(::getpid())));
    CHECK_THAT(holder, Catch::Contains(" since 20"));

    const json busy = request_and_wait(second, write("b"));
    CHECK(busy.at("error").at("code") == -32004);
    CHECK_THAT(busy.at("error").at("message").get<std::string>(),
               Catch::Contains("LPAR2's console input is held by " + holder));
    // Reading is never refused.
    CHECK(
        request_and_wait(
            second, R"({"jsonrpc":"2.0","id":4,"method":"lpar.console","params":{"lpar":"LPAR2"}})")
            .contains("result"));
    // Another LPAR's input is free.
    CHECK(request_and_wait(second, R"({"jsonrpc":"2.0","id":5,"method":"lpar.console_attach",)"
                                   R"("params":{"lpar":"LPAR1"}})")
              .at("result")
              .at("input") == true);
    // The second's detach gives back nothing it does not hold.
    CHECK(request_and_wait(second, kDetach).at("result").at("input") == false);
    CHECK(request_and_wait(second, write("c")).at("error").at("code") == -32004);

    CHECK(request_and_wait(*first, write("d")).at("result").at("written") == 1);
    CHECK(fixture.api.typed() == "ad");

    // The holder's connection closes: the input is free again.
    first.reset();
    CHECK(eventually([&] { return request_and_wait(second, write("e")).contains("result"); }));
    CHECK(fixture.api.typed() == "ade");
    CHECK(request_and_wait(second, kAttach).at("result").at("input") == true);
}

TEST_CASE("events reach subscribers only, as whole lines between responses", "[socket][events]") {
    ServerFixture fixture;
    LineClient subscriber(fixture.socket_path);
    LineClient bystander(fixture.socket_path);
    subscriber.send(std::string(kSubscribe) + "\n");
    subscribe(subscriber);
    REQUIRE(fixture.api.subscriber_count() == 1);

    fixture.api.emit({"lpar.state", "LPAR2", R"({"state":"stopped","reason":"guest exit 0"})",
                      1'765'101'662'000'001, 7});
    const json event = parse_line(subscriber.read_line());
    CHECK(event == json{{"jsonrpc", "2.0"},
                        {"method", "event"},
                        {"params",
                         {{"event", "lpar.state"},
                          {"lpar", "LPAR2"},
                          {"time", "2025-12-07T10:01:02.000001Z"},
                          {"monotonic_us", 7},
                          {"state", "stopped"},
                          {"reason", "guest exit 0"}}}});
    // The bystander gets its response and nothing else.
    CHECK(request_and_wait(bystander, kPing).at("id") == "ping");
    CHECK(!bystander.read_line(200ms).has_value());

    // Events and responses interleave on the subscriber, each line whole.
    std::thread emitter([&] {
        for (int i = 0; i < 300; ++i)
            fixture.api.emit({"mvstor.progress", "LPAR2", R"({"copied":1,"total":2})"});
    });
    std::vector<json> events;
    for (int i = 0; i < 20; ++i) {
        subscriber.send(std::string(kList) + "\n");
        CHECK(response_with_id(subscriber, 1, events).at("result").at("lpars").size() == 2);
    }
    emitter.join();
    while (events.size() < 300) {
        const auto line = subscriber.read_line(2000ms);
        REQUIRE(line.has_value());
        events.push_back(json::parse(*line).at("params"));
    }
    CHECK(events.size() == 300);

    // After unsubscribing, nothing more arrives.
    subscriber.send(R"({"jsonrpc":"2.0","id":"unsub","method":"events.unsubscribe"})"
                    "\n");
    CHECK(response_with_id(subscriber, "unsub", events).at("result") ==
          json{{"subscribed", false}});
    CHECK(eventually([&] { return fixture.api.subscriber_count() == 0; }));
    fixture.api.emit({"lpar.state", "LPAR2", "{}"});
    CHECK(!subscriber.read_line(200ms).has_value());
}

TEST_CASE("events.subscribe filters by event and LPAR; subscribing again replaces the filter",
          "[socket][events]") {
    ServerFixture fixture;
    LineClient subscriber(fixture.socket_path);
    subscriber.send(
        R"({"jsonrpc":"2.0","id":"sub","method":"events.subscribe","params":{"events":["mvstor.*"],"lpars":["LPAR2"]}})"
        "\n");
    std::vector<json> events;
    CHECK(response_with_id(subscriber, "sub", events).at("result") ==
          json{{"subscribed", true}, {"filter", {{"events", {"mvstor.*"}}, {"lpars", {"LPAR2"}}}}});
    // Events arrive in order: the ones the filter lets through, and nothing between them.
    fixture.api.emit({"lpar.state", "LPAR2", R"({"state":"stopped","reason":"x"})"});
    fixture.api.emit({"mvstor.phase", "LPAR1", R"({"phase":"copy","us":1})"});
    fixture.api.emit({"mvstor.phase", "LPAR2", R"({"phase":"copy","us":2})"});
    fixture.api.emit({"storage.expanded", "LPAR2", "{}"});
    fixture.api.emit({"mvstor.done", "LPAR2", "{}"});
    json first = parse_line(subscriber.read_line()).at("params");
    CHECK(first.at("event") == "mvstor.phase");
    CHECK(first.at("lpar") == "LPAR2");
    CHECK(first.at("us") == 2);
    CHECK(parse_line(subscriber.read_line()).at("params").at("event") == "mvstor.done");

    // A new filter: lpar.state of any LPAR.
    subscriber.send(
        R"({"jsonrpc":"2.0","id":"again","method":"events.subscribe","params":{"events":["lpar.state"]}})"
        "\n");
    CHECK(response_with_id(subscriber, "again", events).at("result").at("filter") ==
          json{{"events", {"lpar.state"}}, {"lpars", json::array()}});
    CHECK(events.empty());
    CHECK(fixture.api.subscriber_count() == 1);  // the same subscription, a new filter
    fixture.api.emit({"mvstor.phase", "LPAR2", R"({"phase":"copy","us":3})"});
    fixture.api.emit({"lpar.state", "LPAR1", R"({"state":"running","reason":"y"})"});
    const json second = parse_line(subscriber.read_line()).at("params");
    CHECK(second.at("event") == "lpar.state");
    CHECK(second.at("lpar") == "LPAR1");

    // A name no event has is refused, and the subscription keeps its filter.
    subscriber.send(
        R"({"jsonrpc":"2.0","id":"bad","method":"events.subscribe","params":{"events":["mvstor.dnoe"]}})"
        "\n");
    const json refused = response_with_id(subscriber, "bad", events);
    CHECK(refused.at("error").at("code") == -32602);
    CHECK(refused.at("error").at("message") ==
          "events: no event is named \"mvstor.dnoe\" (system.describe lists them)");
    fixture.api.emit({"lpar.state", "LPAR3", R"({"state":"running","reason":"z"})"});
    CHECK(parse_line(subscriber.read_line()).at("params").at("lpar") == "LPAR3");
}

TEST_CASE("a subscription ends when its connection closes", "[socket][events]") {
    ServerFixture fixture;
    {
        LineClient subscriber(fixture.socket_path);
        subscriber.send(std::string(kSubscribe) + "\n");
        subscribe(subscriber);
        CHECK(fixture.api.subscriber_count() == 1);
    }
    CHECK(eventually([&] { return fixture.api.subscriber_count() == 0; }));
    CHECK(eventually([&] { return fixture.server->client_count() == 0; }));
}

TEST_CASE("a subscriber that never reads stays bounded; events.dropped follows",
          "[socket][events]") {
    ServerLimits limits;
    limits.max_queued_events = 1024;
    ServerFixture fixture(limits);
    LineClient slow(fixture.socket_path);
    slow.send(std::string(kSubscribe) + "\n");
    subscribe(slow);

    const std::string padding(200, 'x');  // fills the socket buffers sooner
    constexpr int kEmitted = 20000;
    const auto started = std::chrono::steady_clock::now();
    for (int i = 0; i < kEmitted; ++i) {
        fixture.api.emit(
            {"mvstor.progress", "LPAR2",
             fmt::format(R"({{"copied":{},"total":{},"pad":"{}"}})", i, kEmitted, padding)});
        if (i % 1000 == 0) CHECK(fixture.server->queued_events() <= 1024);
    }
    // The sink never waited for the socket.
    CHECK(std::chrono::steady_clock::now() - started < 5s);
    CHECK(fixture.server->queued_events() <= 1024);

    // Other clients are served meanwhile.
    LineClient other(fixture.socket_path);
    CHECK(request_and_wait(other, kList).at("id") == 1);

    // Now read everything: what arrives plus what was dropped is what was emitted.
    std::uint64_t received = 0, dropped = 0, dropped_notes = 0;
    std::int64_t last_copied = -1;
    bool in_order = true;
    while (auto line = slow.read_line(1000ms)) {
        const json params = json::parse(*line).at("params");
        if (params.at("event") == "events.dropped") {
            dropped += params.at("count").get<std::uint64_t>();
            ++dropped_notes;
        } else {
            const auto copied = params.at("copied").get<std::int64_t>();
            in_order = in_order && copied > last_copied;
            last_copied = copied;
            ++received;
        }
    }
    CHECK(in_order);
    // One note per overflow episode: while the emitter still runs, the server may drain some
    // lines into the socket, send a note, and overflow again, so a loaded machine sees more.
    CHECK(dropped_notes >= 1);
    CHECK(dropped_notes <= dropped);
    CHECK(dropped > 0);
    CHECK(received + dropped == kEmitted);
    // The queue, plus what the two socket buffers held (a few hundred ~300-byte lines).
    CHECK(received <= 1024 + 2048);
    // It keeps working after the overflow.
    fixture.api.emit({"lpar.state", "LPAR1", "{}"});
    CHECK(json::parse(slow.read_line().value()).at("params").at("event") == "lpar.state");
}

TEST_CASE("storage.cancel is served while the mvstor it cancels holds a long worker", "[socket]") {
    ServerLimits limits;
    limits.long_threads = 1;  // the long pool is busy with the held mvstor
    ServerFixture fixture(limits);
    fixture.api.close_mvstor_gate();
    LineClient relocating(fixture.socket_path);
    relocating.send(std::string(kMvstor) + "\n");
    REQUIRE(fixture.api.wait_for_mvstor_running(5000ms));

    LineClient operator_client(fixture.socket_path);
    const json cancelled = request_and_wait(
        operator_client,
        R"({"jsonrpc":"2.0","id":"c","method":"storage.cancel","params":{"lpar":"LPAR2"}})",
        2000ms);
    CHECK(cancelled.at("result") == json{{"cancelled", "LPAR2"}});
    const json failed = parse_line(relocating.read_line(5000ms));
    CHECK(failed.at("id") == "mv");
    CHECK(failed.at("error").at("code") == -32004);
    CHECK(failed.at("error").at("message") == "LPAR2: MVSTOR cancelled");

    const json nothing = request_and_wait(
        operator_client,
        R"({"jsonrpc":"2.0","id":"c","method":"storage.cancel","params":{"lpar":"LPAR2"}})");
    CHECK(nothing.at("error").at("code") == -32001);
}

TEST_CASE("a query that does not return in time gets -32005; its late result is dropped",
          "[socket]") {
    ServerLimits limits;
    limits.query_timeout = 200ms;
    ServerFixture fixture(limits);
    fixture.api.query_delay = 700ms;
    LineClient client(fixture.socket_path);
    const auto asked = std::chrono::steady_clock::now();
    const json timed_out = request_and_wait(client, kList, 2000ms);
    CHECK(std::chrono::steady_clock::now() - asked < 650ms);
    CHECK(timed_out.at("id") == 1);
    CHECK(timed_out.at("error").at("code") == -32005);
    CHECK(timed_out.at("error").at("message") == "timed out after 0.2 s");
    CHECK(timed_out.at("error").at("data").at("kind") == "Timeout");
    // The connection goes on; the late answer never shows up.
    CHECK(request_and_wait(client, kPing).at("id") == "ping");
    CHECK(!client.read_line(800ms).has_value());
    fixture.api.sync();
    fixture.api.query_delay = 0ms;
    fixture.api.sync();
    CHECK(request_and_wait(client, kList, 2000ms).contains("result"));

    // LongRunning calls are not timed out by the server.
    fixture.api.mvstor_hold = 500ms;
    CHECK(request_and_wait(client, kMvstor, 3000ms).contains("result"));
}

namespace {

constexpr std::string_view kHalfLine = R"({"jsonrpc":"2.0","id":"half","meth)";

// A ServerLimits::clock that the test moves forward: the idle timeout is forced, never waited for.
class FakeClock {
  public:
    std::function<std::chrono::steady_clock::time_point()> function() const {
        return [offset = offset_] {
            return std::chrono::steady_clock::now() + std::chrono::milliseconds(offset->load());
        };
    }
    void advance(std::chrono::milliseconds by) { *offset_ += by.count(); }

  private:
    std::shared_ptr<std::atomic<std::int64_t>> offset_ =
        std::make_shared<std::atomic<std::int64_t>>(0);
};

// Opens the mvstor gate when the test ends, failed or not, so that stop() does not wait forever.
struct GateOpener {
    FakeApi& api;
    ~GateOpener() { api.release_mvstor(); }
};

// The one error line a dropped connection gets (id null, data.reason) before it is closed.
json expect_dropped(LineClient& client, int code, std::string_view reason,
                    std::chrono::milliseconds timeout = 5000ms) {
    const json line = parse_line(client.read_line(timeout));
    CHECK(line.at("id").is_null());
    CHECK(line.at("error").at("code") == code);
    CHECK(line.at("error").at("data").at("reason") == reason);
    CHECK(client.closed_by_server());
    return line;
}

// Collects the default logger's messages for the test's lifetime.
class LogCapture {
  public:
    // The other sinks keep to warnings meanwhile, so that the test's output stays quiet.
    LogCapture() {
        for (auto& sink : spdlog::default_logger()->sinks()) {
            saved_.emplace_back(sink, sink->level());
            sink->set_level(spdlog::level::warn);
        }
        spdlog::default_logger()->sinks().push_back(ring_);
    }
    ~LogCapture() {
        auto& sinks = spdlog::default_logger()->sinks();
        sinks.erase(std::remove(sinks.begin(), sinks.end(), ring_), sinks.end());
        for (auto& [sink, level] : saved_) sink->set_level(level);
        spdlog::set_level(spdlog::level::warn);
    }
    LogCapture(const LogCapture&) = delete;
    LogCapture& operator=(const LogCapture&) = delete;

    std::size_t count(spdlog::level::level_enum level, std::string_view needle) const {
        std::size_t found = 0;
        for (const auto& message : ring_->last_raw()) {
            const std::string_view text(message.payload.data(), message.payload.size());
            if (message.level == level && text.find(needle) != std::string_view::npos) ++found;
        }
        return found;
    }

  private:
    std::vector<std::pair<spdlog::sink_ptr, spdlog::level::level_enum>> saved_;
    std::shared_ptr<spdlog::sinks::ringbuffer_sink_mt> ring_ =
        std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(4096);
};

}  // namespace

TEST_CASE("a full table evicts the connection silent longest, never a busy one or a subscriber",
          "[socket]") {
    ServerLimits limits;
    limits.max_clients = 4;
    ServerFixture fixture(limits);
    fixture.api.close_mvstor_gate();
    GateOpener gate{fixture.api};
    // The two oldest connections work: one runs a request, one is subscribed.
    LineClient busy(fixture.socket_path);
    busy.send(std::string(kMvstor) + "\n");
    REQUIRE(fixture.api.wait_for_mvstor_running(5000ms));
    LineClient subscriber(fixture.socket_path);
    subscriber.send(std::string(kSubscribe) + "\n");
    subscribe(subscriber);
    // Two silent ones: one stopped mid-line, one never said anything.
    LineClient half_line(fixture.socket_path);
    half_line.send(kHalfLine);
    LineClient mute(fixture.socket_path);
    REQUIRE(eventually([&] { return fixture.server->client_count() == 4; }));

    // A fifth connection takes the slot of the one silent longest, and is served at once.
    LineClient first(fixture.socket_path);
    CHECK(request_and_wait(first, kPing).contains("result"));
    const json evicted = expect_dropped(half_line, -32004, "evicted");
    CHECK(evicted.at("error").at("data").at("limit") == 4);
    CHECK_THAT(evicted.at("error").at("message").get<std::string>(),
               Catch::StartsWith("dropped to make room for a new client: silent for ") &&
                   Catch::EndsWith(" while 4 clients were connected (the limit)"));
    CHECK(fixture.server->client_count() == 4);

    // `mute` has been silent longer than `first`, answered since.
    LineClient second(fixture.socket_path);
    CHECK(request_and_wait(second, kPing).contains("result"));
    expect_dropped(mute, -32004, "evicted");

    // With every connection running a request or subscribed, a newcomer is refused.
    first.send(std::string(kSubscribe) + "\n");
    subscribe(first);
    second.send(std::string(kSubscribe) + "\n");
    subscribe(second);
    LineClient refused(fixture.socket_path);
    const json refusal = parse_line(refused.read_line());
    CHECK(refusal.at("id").is_null());
    CHECK(refusal.at("error").at("code") == -32004);
    CHECK(refusal.at("error").at("message") == "too many clients (at most 4)");
    CHECK(refused.closed_by_server());

    // Nobody made room for it: the relocation is answered, the subscribers get events.
    fixture.api.release_mvstor();
    CHECK(parse_line(busy.read_line()).at("id") == "mv");
    fixture.api.emit({"lpar.state", "LPAR1", R"({"state":"running","reason":""})"});
    for (LineClient* client : {&subscriber, &first, &second}) {
        // The relocation's final event went out before its answer, as the hypervisor's does.
        CHECK(parse_line(client->read_line()).at("params").at("event") == "mvstor.done");
        CHECK(parse_line(client->read_line()).at("params").at("event") == "lpar.state");
    }
    // Answered, the former busy connection is silent: it is the one a newcomer evicts now.
    LineClient third(fixture.socket_path);
    CHECK(request_and_wait(third, kPing).contains("result"));
    expect_dropped(busy, -32004, "evicted");
    CHECK(fixture.server->client_count() == 4);
    CHECK(fixture.api.subscriber_count() == 3);
}

TEST_CASE("a flood of silent clients: one info line per drop, one warning in all", "[socket]") {
    LogCapture log;
    ServerLimits limits;
    limits.max_clients = 4;
    ServerFixture fixture(limits);
    spdlog::set_level(spdlog::level::info);
    std::vector<std::unique_ptr<LineClient>> silent;
    for (int i = 0; i < 20; ++i)
        silent.push_back(std::make_unique<LineClient>(fixture.socket_path));
    for (int i = 0; i < 16; ++i) expect_dropped(*silent[i], -32004, "evicted");
    const std::string who = fmt::format("(pid {}, uid {}) closed (dropped to make room for client",
                                        ::getpid(), ::getuid());
    CHECK(eventually([&] { return log.count(spdlog::level::info, who) == 16; }));
    CHECK(log.count(spdlog::level::warn, "") == 1);
    CHECK(log.count(spdlog::level::warn, "silent client(s) dropped to make room") == 1);
    LineClient operator_client(fixture.socket_path);
    CHECK(request_and_wait(operator_client, kList).at("result").at("lpars").size() == 2);
}

TEST_CASE("silent connections are closed after the idle timeout; working ones are not",
          "[socket]") {
    FakeClock clock;
    ServerLimits limits;
    limits.clock = clock.function();
    REQUIRE(limits.client_idle_timeout == 60s);
    ServerFixture fixture(limits);
    fixture.api.close_mvstor_gate();
    GateOpener gate{fixture.api};
    LineClient mute(fixture.socket_path);
    LineClient half_line(fixture.socket_path);
    half_line.send(kHalfLine);
    LineClient active(fixture.socket_path);
    LineClient subscriber(fixture.socket_path);
    subscriber.send(std::string(kSubscribe) + "\n");
    subscribe(subscriber);
    LineClient busy(fixture.socket_path);
    busy.send(std::string(kMvstor) + "\n");
    REQUIRE(fixture.api.wait_for_mvstor_running(5000ms));
    REQUIRE(eventually([&] { return fixture.server->client_count() == 5; }));

    clock.advance(40s);
    CHECK(request_and_wait(active, kPing).contains("result"));  // a request restarts the time
    clock.advance(30s);  // mute and half_line: silent for 70 s; active: for 30 s
    fixture.server->close_idle_clients();
    const json idle = expect_dropped(mute, -32005, "idle");
    CHECK(idle.at("error").at("message") == "idle for 60 s without a request: closing");
    CHECK(idle.at("error").at("data").at("kind") == "Timeout");
    CHECK(idle.at("error").at("data").at("idle_timeout_ms") == 60000);
    expect_dropped(half_line, -32005, "idle");
    CHECK(fixture.server->client_count() == 3);
    CHECK(request_and_wait(active, kPing).contains("result"));

    // A running request and a subscription are never idle, however long.
    clock.advance(3600s);
    fixture.server->close_idle_clients();
    expect_dropped(active, -32005, "idle");
    CHECK(fixture.server->client_count() == 2);
    fixture.api.release_mvstor();
    CHECK(parse_line(busy.read_line()).at("id") == "mv");
    fixture.api.emit({"lpar.state", "LPAR1", R"({"state":"running","reason":""})"});
    CHECK(parse_line(subscriber.read_line()).at("params").at("event") == "mvstor.done");
    CHECK(parse_line(subscriber.read_line()).at("params").at("event") == "lpar.state");

    // Answered, the former busy connection is silent; the subscriber stays.
    clock.advance(61s);
    fixture.server->close_idle_clients();
    expect_dropped(busy, -32005, "idle");
    CHECK(fixture.server->client_count() == 1);
    CHECK(fixture.api.subscriber_count() == 1);
}

TEST_CASE("a client that does not read its answer is still closed when idle", "[socket]") {
    LogCapture log;
    FakeClock clock;
    ServerLimits limits;
    limits.clock = clock.function();
    ServerFixture fixture(limits);
    spdlog::set_level(spdlog::level::info);
    fixture.api.set_console_text(std::string(1 << 20, 'x'));  // more than the socket buffers
    LineClient stuck(fixture.socket_path);
    stuck.send(R"({"jsonrpc":"2.0","id":"c","method":"lpar.console","params":{"lpar":"LPAR2",)"
               R"("bytes":1048576}})"
               "\n");
    REQUIRE(eventually([&] { return fixture.api.console_request_count() == 1; }));
    // Answered (as far as the server goes): silent from then on, though the write is stuck.
    REQUIRE(eventually([&] {
        clock.advance(61s);
        fixture.server->close_idle_clients();
        return fixture.server->client_count() == 0;
    }));
    CHECK(stuck.closed_by_server());
    CHECK(eventually([&] { return log.count(spdlog::level::info, "closed (idle timeout") == 1; }));
}

TEST_CASE("the server sweeps idle connections on its own", "[socket]") {
    FakeClock clock;
    ServerLimits limits;
    limits.clock = clock.function();
    ServerFixture fixture(limits);
    LineClient mute(fixture.socket_path);
    REQUIRE(eventually([&] { return fixture.server->client_count() == 1; }));
    clock.advance(61s);
    // No close_idle_clients(): the periodic sweep (every second) finds it.
    expect_dropped(mute, -32005, "idle", 30000ms);
    CHECK(fixture.server->client_count() == 0);
}

TEST_CASE("client_idle_timeout 0 keeps silent connections open", "[socket]") {
    FakeClock clock;
    ServerLimits limits;
    limits.clock = clock.function();
    limits.client_idle_timeout = 0ms;
    ServerFixture fixture(limits);
    LineClient mute(fixture.socket_path);
    REQUIRE(eventually([&] { return fixture.server->client_count() == 1; }));
    clock.advance(24h * 365);
    CHECK(fixture.server->close_idle_clients() == 0);
    CHECK(request_and_wait(mute, kPing).contains("result"));
}
