// The HTTP listener (control/http_server.hpp) and the Prometheus text (control/metrics.hpp): the
// handler's routes, the token and its refusals on the test double, and the server over real
// loopback sockets (the event stream, the limits, stop()).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>

#include <boost/asio/io_context.hpp>
#include <boost/beast/http/verb.hpp>
#include <catch2/catch.hpp>

#include "control/http_server.hpp"
#include "control/metrics.hpp"
#include "fake_api.hpp"
#include "test_support.hpp"

using namespace lparvisor;
using namespace lparvisor::control;
using namespace lparvisor::control::test;
namespace http = boost::beast::http;

namespace {

constexpr auto kPatience = std::chrono::seconds(60);  // bounds a hang only
const std::string kToken(64, 'a');

HttpRequest request(http::verb verb, std::string target, std::string body = {},
                    std::string token = {}) {
    HttpRequest r{verb, target, 11};
    r.set(http::field::host, "127.0.0.1:8080");
    if (!token.empty()) r.set(http::field::authorization, "Bearer " + token);
    r.body() = std::move(body);
    r.prepare_payload();
    return r;
}

const std::string kMvstorCall =
    R"({"jsonrpc":"2.0","id":7,"method":"storage.mvstor","params":{"lpar":"LPAR2","origin_mib":192}})";

SystemStats sample_stats() {
    SystemStats stats;
    stats.largest_free_gap_mib = 125;
    stats.uptime_us = 2'500'000;
    LparStats lpar;
    lpar.name = "LPAR\"2\\\n";  // every character the format must escape
    lpar.state = "running";
    lpar.guest = "firmware";
    lpar.has_storage = true;
    lpar.origin_mib = 128;
    lpar.size_mib = 256;
    lpar.ipl = 1;
    lpar.vcpu_exits = {{"io", 41}, {"mmio", 0}};
    lpar.vcpu_run_us = 1'500'000;
    lpar.disk_requests = 9;
    lpar.disk_read_bytes = 4096;
    stats.lpars.push_back(lpar);
    stats.operations.push_back({"mvstor", {{"ok", 3}, {"refused", 1}}, 805306368, 4096});
    stats.pauses = {{100, 1000}, {1, 2}, 3, 1600};
    return stats;
}

// A blocking TCP client of the listener.
class TcpClient {
  public:
    explicit TcpClient(std::uint16_t port) : fd_(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
        REQUIRE(fd_.valid());
        sockaddr_in address{};
        address.sin_family = AF_INET;
        address.sin_port = htons(port);
        address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        // SAFETY: sockaddr_in is the sockaddr connect() expects for AF_INET; size is the struct's.
        const auto* generic = reinterpret_cast<const sockaddr*>(&address);
        REQUIRE(::connect(fd_.get(), generic, sizeof(address)) == 0);
    }
    void send(std::string_view bytes) {
        while (!bytes.empty()) {
            const ssize_t n = ::send(fd_.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL);
            REQUIRE(n > 0);
            bytes.remove_prefix(static_cast<std::size_t>(n));
        }
    }
    // Reads until `text` has arrived, the peer closes, or the patience runs out: what arrived.
    std::string read_until(std::string_view text) {
        const auto deadline = std::chrono::steady_clock::now() + kPatience;
        while (received_.find(text) == std::string::npos &&
               std::chrono::steady_clock::now() < deadline) {
            pollfd p{fd_.get(), POLLIN, 0};
            if (::poll(&p, 1, 100) <= 0) continue;
            char buffer[4096];
            const ssize_t n = ::recv(fd_.get(), buffer, sizeof(buffer), 0);
            if (n <= 0) {
                closed_ = true;
                break;
            }
            received_.append(buffer, static_cast<std::size_t>(n));
        }
        return received_;
    }
    std::string read_to_close() {
        read_until(std::string(1, '\0') + "never");
        return received_;
    }
    bool closed() const { return closed_; }

  private:
    Fd fd_;
    std::string received_;
    bool closed_ = false;
};

struct RunningServer {
    explicit RunningServer(FakeApi& api, HttpLimits limits = {})
        : server(io, HttpEndpoint{"127.0.0.1", 0}, api, kToken, limits),
          thread([this] { io.run(); }) {}
    ~RunningServer() {
        server.stop();
        thread.join();
    }
    boost::asio::io_context io;
    HttpServer server;
    std::thread thread;
};

std::string get(std::string_view target) {
    return fmt::format("GET {} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", target);
}

}  // namespace

TEST_CASE("the Prometheus text: families, escaped labels, a cumulative histogram", "[http]") {
    const auto text = prometheus_text(sample_stats(), {{{200, 5}, {401, 1}}, 2, 1});
    CHECK_THAT(text, Catch::Contains("# TYPE lparvisor_lpar_vcpu_exits_total counter\n"));
    CHECK_THAT(
        text, Catch::Contains(
                  "lparvisor_lpar_vcpu_exits_total{lpar=\"LPAR\\\"2\\\\\\n\",reason=\"io\"} 41\n"));
    CHECK_THAT(text,
               Catch::Contains("lparvisor_lpar_storage_origin_bytes{lpar=\"LPAR\\\"2\\\\\\n\"} "
                               "134217728\n"));
    CHECK_THAT(text, Catch::Contains(
                         "lparvisor_lpar_state{lpar=\"LPAR\\\"2\\\\\\n\",state=\"running\"} 1\n"));
    CHECK_THAT(text, Catch::Contains(
                         "lparvisor_lpar_state{lpar=\"LPAR\\\"2\\\\\\n\",state=\"stopped\"} 0\n"));
    CHECK_THAT(text, Catch::Contains(
                         "lparvisor_lpar_vcpu_run_seconds_total{lpar=\"LPAR\\\"2\\\\\\n\"} 1.5\n"));
    CHECK_THAT(text, Catch::Contains(
                         "lparvisor_operations_total{kind=\"mvstor\",outcome=\"refused\"} 1\n"));
    CHECK_THAT(text,
               Catch::Contains("lparvisor_operation_recopied_bytes_total{kind=\"mvstor\"} 4096\n"));
    CHECK_THAT(text, Catch::Contains("lparvisor_pause_seconds_bucket{le=\"0.0001\"} 1\n"
                                     "lparvisor_pause_seconds_bucket{le=\"0.001\"} 2\n"
                                     "lparvisor_pause_seconds_bucket{le=\"+Inf\"} 3\n"
                                     "lparvisor_pause_seconds_sum 0.0016\n"
                                     "lparvisor_pause_seconds_count 3\n"));
    CHECK_THAT(text, Catch::Contains("lparvisor_main_storage_largest_free_gap_bytes 131072000\n"));
    CHECK_THAT(text, Catch::Contains("lparvisor_http_responses_total{code=\"401\"} 1\n"));
    CHECK_THAT(text, Catch::Contains("lparvisor_http_event_streams 1\n"));
    // Every sample follows its family's TYPE line (the format requires a family's lines together).
    std::string family;
    std::istringstream lines(text);
    for (std::string line; std::getline(lines, line);) {
        if (line.starts_with("# TYPE ")) {
            family = line.substr(7, line.find(' ', 7) - 7);
            continue;
        }
        if (line.starts_with("#")) continue;
        INFO(line);
        CHECK(line.starts_with(family));
    }
}

TEST_CASE("the handler serves the page, the counters and the map, and names what it refuses",
          "[http]") {
    FakeApi api;
    api.stats_template = sample_stats();
    HttpHandler handler(api, kToken, true);

    auto page = handler.handle(request(http::verb::get, "/"));
    CHECK(page.result_int() == 200);
    CHECK_THAT(page.body(), Catch::Contains("/frame.js"));
    CHECK_THAT(std::string(page["Content-Security-Policy"]), Catch::Contains("default-src 'self'"));
    CHECK(handler.handle(request(http::verb::get, "/frame.js")).result_int() == 200);
    CHECK(handler.handle(request(http::verb::get, "/frame.css")).result_int() == 200);

    auto metrics = handler.handle(request(http::verb::get, "/metrics?x=1"));
    CHECK(metrics.result_int() == 200);
    CHECK_THAT(std::string(metrics[http::field::content_type]),
               Catch::StartsWith("text/plain; version=0.0.4"));
    CHECK_THAT(metrics.body(), Catch::Contains("lparvisor_main_storage_bytes 533725184\n"));
    CHECK(api.stats_calls == 1);

    auto lpars = handler.handle(request(http::verb::get, "/api/lpars"));
    CHECK(lpars.result_int() == 200);
    CHECK(nlohmann::json::parse(lpars.body()) == to_json(api.list()));

    auto missing = handler.handle(request(http::verb::get, "/etc/passwd"));
    CHECK(missing.result_int() == 404);
    CHECK_THAT(missing.body(), Catch::Contains("no such page: /etc/passwd"));
    auto wrong = handler.handle(request(http::verb::post, "/metrics"));
    CHECK(wrong.result_int() == 405);
    CHECK(std::string(wrong[http::field::allow]) == "GET");
    CHECK(handler.handle(request(http::verb::get, "/api/call")).result_int() == 405);

    // A page elsewhere that a DNS-rebinding name points at this loopback listener reads nothing.
    auto rebound = request(http::verb::get, "/api/lpars");
    rebound.set(http::field::host, "attacker.example:8080");
    CHECK(handler.handle(rebound).result_int() == 421);
    for (const char* host : {"127.attacker.example:8080", "127.0.0.1.evil.example", "127.",
                             "[::1]evil.example", "localhost.evil.example", "[::1"}) {
        INFO(host);
        rebound.set(http::field::host, host);
        CHECK(handler.handle(rebound).result_int() == 421);
    }
    for (const char* host : {"127.0.0.1", "127.0.0.2:9", "LocalHost:8080", "[::1]:8080", "[::1]"}) {
        INFO(host);
        rebound.set(http::field::host, host);
        CHECK(handler.handle(rebound).result_int() == 200);
    }
    auto future = request(http::verb::get, "/");
    future.version(99);
    CHECK(handler.handle(future).result_int() == 505);
    rebound.set(http::field::host, "attacker.example:8080");
    HttpHandler open_handler(api, kToken, false);
    CHECK(open_handler.handle(rebound).result_int() == 200);
}

TEST_CASE("operations need the token, one of the page's methods, and a request with an id",
          "[http]") {
    FakeApi api;
    HttpHandler handler(api, kToken, true);

    auto anonymous = handler.handle(request(http::verb::post, "/api/call", kMvstorCall));
    CHECK(anonymous.result_int() == 401);
    CHECK_THAT(anonymous.body(), Catch::Contains("http.token"));
    CHECK(std::string(anonymous[http::field::www_authenticate]) == "Bearer");
    auto guessed =
        handler.handle(request(http::verb::post, "/api/call", kMvstorCall, std::string(64, 'b')));
    CHECK(guessed.result_int() == 401);
    CHECK_THAT(guessed.body(), Catch::Contains("wrong token"));
    CHECK(handler.handle(request(http::verb::post, "/api/call", kMvstorCall, kToken + "a"))
              .result_int() == 401);
    HttpHandler no_token(api, "", true);
    CHECK(no_token.handle(request(http::verb::post, "/api/call", kMvstorCall, "")).result_int() ==
          401);

    auto forbidden = handler.handle(
        request(http::verb::post, "/api/call",
                R"({"jsonrpc":"2.0","id":1,"method":"lpar.deactivate","params":{"lpar":"LPAR2"}})",
                kToken));
    CHECK(forbidden.result_int() == 403);
    CHECK_THAT(forbidden.body(), Catch::Contains("lpar.deactivate is not offered over HTTP"));
    auto garbled = handler.handle(request(http::verb::post, "/api/call", "{\"jsonrpc\":", kToken));
    CHECK(garbled.result_int() == 400);
    CHECK_THAT(garbled.body(), Catch::Contains("-32700"));
    auto notification = handler.handle(
        request(http::verb::post, "/api/call",
                R"({"jsonrpc":"2.0","method":"lpar.stop","params":{"lpar":"LPAR2"}})", kToken));
    CHECK(notification.result_int() == 400);
    CHECK(api.mvstor_requests.empty());
    CHECK(api.lifecycle_calls.empty());

    auto moved = handler.handle(request(http::verb::post, "/api/call", kMvstorCall, kToken));
    CHECK(moved.result_int() == 200);
    auto answer = nlohmann::json::parse(moved.body());
    CHECK(answer["id"] == 7);
    CHECK(answer["result"]["new_origin_mib"] == 192);
    REQUIRE(api.mvstor_requests.size() == 1);
    CHECK(api.mvstor_requests[0].origin_mib == 192);

    // A refusal of the Api is a JSON-RPC error inside a 200, as on the socket.
    api.throw_next(ErrorKind::Refused, "LPAR2: target overlaps LPAR1");
    auto refused = handler.handle(request(http::verb::post, "/api/call", kMvstorCall, kToken));
    CHECK(refused.result_int() == 200);
    CHECK(nlohmann::json::parse(refused.body())["error"]["code"] == -32003);

    const auto counters = handler.counters();
    auto count_of = [&](unsigned code) {
        for (auto [status, n] : counters.responses)
            if (status == code) return n;
        return std::uint64_t{0};
    };
    CHECK(count_of(401) == 3);  // no_token counts its own
    CHECK(count_of(403) == 1);
    CHECK(count_of(400) == 2);
    CHECK(count_of(200) == 2);
}

TEST_CASE("one page operation at a time: a second is told to wait (503)", "[http]") {
    FakeApi api;
    api.close_mvstor_gate();
    HttpHandler handler(api, kToken, true);
    std::thread first([&] {
        CHECK(handler.handle(request(http::verb::post, "/api/call", kMvstorCall, kToken))
                  .result_int() == 200);
    });
    REQUIRE(api.wait_for_mvstor_running(kPatience));
    auto second = handler.handle(request(http::verb::post, "/api/call", kMvstorCall, kToken));
    CHECK(second.result_int() == 503);
    CHECK_THAT(second.body(), Catch::Contains("another operation"));
    // Queries are not held up by it.
    CHECK(handler.handle(request(http::verb::get, "/api/lpars")).result_int() == 200);
    api.release_mvstor();
    first.join();
    CHECK(
        handler.handle(request(http::verb::post, "/api/call", kMvstorCall, kToken)).result_int() ==
        200);
}

TEST_CASE("--http's address: loopback by default, anything else on purpose, bad ones named",
          "[http]") {
    auto bare = parse_http_endpoint("8080");
    CHECK(bare.address == "127.0.0.1");
    CHECK(bare.port == 8080);
    CHECK(bare.is_loopback());
    auto v6 = parse_http_endpoint("[::1]:9");
    CHECK(v6.address == "::1");
    CHECK(v6.is_loopback());
    CHECK_FALSE(parse_http_endpoint("0.0.0.0:8080").is_loopback());
    CHECK_THROWS_WITH(parse_http_endpoint("localhost:8080"),
                      Catch::Contains("'localhost' is not an IP address"));
    CHECK_THROWS_WITH(parse_http_endpoint("127.0.0.1:0"), Catch::Contains("1 to 65535"));
    CHECK_THROWS_WITH(parse_http_endpoint("127.0.0.1:99999"), Catch::Contains("1 to 65535"));
    CHECK_THROWS_WITH(parse_http_endpoint(":80"), Catch::Contains("not an IP address"));
    CHECK_THROWS_AS(parse_http_endpoint(""), Error);
}

TEST_CASE("the server: requests over one connection, the event stream, stop()", "[http][socket]") {
    FakeApi api;
    RunningServer running(api);
    const auto port = running.server.port();
    REQUIRE(port != 0);

    TcpClient client(port);
    client.send(get("/api/lpars"));
    CHECK_THAT(client.read_until("\"LPAR2\""), Catch::StartsWith("HTTP/1.1 200 OK"));
    client.send(get("/metrics"));  // keep-alive: the same connection answers again
    CHECK_THAT(client.read_until("lparvisor_http_connections"),
               Catch::Contains("lparvisor_main_storage_bytes"));

    TcpClient stream(port);
    stream.send(get("/events"));
    CHECK_THAT(stream.read_until(": connected\n\n"),
               Catch::Contains("Content-Type: text/event-stream"));
    REQUIRE(api.wait_for_subscribers(1, kPatience));
    CHECK(running.server.handler().event_streams() == 1);
    api.emit({"mvstor.progress", "LPAR2", R"({"copied":1048576,"total":2097152})"});
    const auto events = stream.read_until("}\n\n");
    CHECK_THAT(events, Catch::Contains("\ndata: {"));
    CHECK_THAT(events, Catch::Contains("\"event\":\"mvstor.progress\""));
    CHECK_THAT(events, Catch::Contains("\"copied\":1048576"));
    CHECK_THAT(events, Catch::Contains("\"lpar\":\"LPAR2\""));

    // stop() ends the stream and the subscription, and closes the idle keep-alive connection.
    running.server.stop();
    stream.read_to_close();
    CHECK(stream.closed());
    client.read_to_close();
    CHECK(client.closed());
    CHECK(api.subscriber_count() == 0);
}

TEST_CASE("the server's limits: headers, body, connections, event streams", "[http][socket]") {
    FakeApi api;
    HttpLimits limits;
    limits.max_connections = 3;
    limits.max_event_streams = 1;
    RunningServer running(api, limits);
    const auto port = running.server.port();

    {
        TcpClient big_headers(port);
        big_headers.send("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + std::string(9000, 'x') +
                         "\r\n\r\n");
        auto answer = big_headers.read_to_close();
        CHECK_THAT(answer, Catch::StartsWith("HTTP/1.1 431"));
        CHECK_THAT(answer, Catch::Contains("request headers over 8192 bytes"));
    }
    {
        // The client sends its whole body after the refusal: it still reads the 413.
        TcpClient big_body(port);
        big_body.send(
            "POST /api/call HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 20000\r\n\r\n" +
            std::string(20000, '{'));
        auto answer = big_body.read_to_close();
        CHECK_THAT(answer, Catch::StartsWith("HTTP/1.1 413"));
        CHECK_THAT(answer, Catch::Contains("request body over 16384 bytes"));
    }
    {
        TcpClient garbage(port);
        garbage.send("HELLO\r\n\r\n");
        CHECK_THAT(garbage.read_to_close(), Catch::StartsWith("HTTP/1.1 400"));
    }
    REQUIRE(eventually([&] { return running.server.handler().connections() == 0; }, kPatience));

    TcpClient first_stream(port);
    first_stream.send(get("/events"));
    first_stream.read_until(": connected");
    {
        TcpClient second_stream(port);
        second_stream.send(get("/events"));
        CHECK_THAT(second_stream.read_to_close(),
                   Catch::Contains("too many event streams (at most 1)"));
    }  // closed: the server, lingering for the rest of a request, sees the end and lets go
    REQUIRE(eventually([&] { return running.server.handler().connections() == 1; }, kPatience));

    TcpClient idle(port);
    REQUIRE(eventually([&] { return running.server.handler().connections() == 2; }, kPatience));
    TcpClient third(port);
    REQUIRE(eventually([&] { return running.server.handler().connections() == 3; }, kPatience));
    TcpClient one_too_many(port);
    auto refused = one_too_many.read_to_close();
    CHECK_THAT(refused, Catch::StartsWith("HTTP/1.1 503"));
    CHECK_THAT(refused, Catch::Contains("too many connections (at most 3)"));
    // The open ones are still served.
    idle.send(get("/api/lpars"));
    CHECK_THAT(idle.read_until("\"LPAR1\""), Catch::StartsWith("HTTP/1.1 200"));
}
