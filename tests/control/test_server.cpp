// ControlServer over a real Unix socket, with the test-double Api.
#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <sys/wait.h>

#include <atomic>
#include <fstream>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

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

// Waits until `condition` holds, polling; false after the timeout.
template <typename Condition>
bool eventually(Condition condition, std::chrono::milliseconds timeout = 5000ms) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
        if (condition()) return true;
        std::this_thread::sleep_for(5ms);
    }
    return condition();
}

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

TEST_CASE("extra clients beyond max_clients are refused with an error line", "[socket]") {
    ServerLimits limits;
    limits.max_clients = 2;
    ServerFixture fixture(limits);
    auto first = std::make_unique<LineClient>(fixture.socket_path);
    LineClient second(fixture.socket_path);
    CHECK(request_and_wait(*first, kPing).contains("result"));
    CHECK(request_and_wait(second, kPing).contains("result"));
    REQUIRE(eventually([&] { return fixture.server->client_count() == 2; }));

    LineClient third(fixture.socket_path);
    const json refusal = parse_line(third.read_line());
    CHECK(refusal.at("error").at("code") == -32004);
    CHECK(refusal.at("error").at("message") == "too many clients (at most 2)");
    CHECK(third.closed_by_server());

    first.reset();  // frees a slot
    REQUIRE(eventually([&] { return fixture.server->client_count() == 1; }));
    LineClient fourth(fixture.socket_path);
    CHECK(request_and_wait(fourth, kPing).contains("result"));
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
    REQUIRE(::bind(successor.get(), reinterpret_cast<const sockaddr*>(&address), sizeof(address)) ==
            0);
    fixture.server->stop();
    CHECK(std::filesystem::exists(fixture.socket_path));
}

TEST_CASE("peers other than root and the daemon's uid are refused", "[socket]") {
    if (::geteuid() != 0) {
        WARN("not root: cannot connect as another uid, skipped");
        return;
    }
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
    CHECK(response.at("result") == json{{"subscribed", true}});
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

TEST_CASE("events reach subscribers only, as whole lines between responses", "[socket][events]") {
    ServerFixture fixture;
    LineClient subscriber(fixture.socket_path);
    LineClient bystander(fixture.socket_path);
    subscriber.send(std::string(kSubscribe) + "\n");
    subscribe(subscriber);
    REQUIRE(fixture.api.subscriber_count() == 1);

    fixture.api.emit({"lpar.state", "LPAR2", R"({"state":"stopped","reason":"guest exit 0"})"});
    const json event = parse_line(subscriber.read_line());
    CHECK(event == json{{"jsonrpc", "2.0"},
                        {"method", "event"},
                        {"params",
                         {{"event", "lpar.state"},
                          {"lpar", "LPAR2"},
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
