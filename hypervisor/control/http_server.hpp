// The optional HTTP listener (lparvisor --http ADDR:PORT), on Boost.Beast: Prometheus metrics and
// the SVP frame, a live map of main storage in the browser (docs/http.md).
//
//   GET  /            the SVP frame (index.html; /frame.js, /frame.css): plain files compiled in
//   GET  /metrics     the counters in the Prometheus text format (control/metrics.hpp)
//   GET  /api/lpars   lpar.list's result;  GET /api/stats  system.stats' result
//   GET  /events      the daemon's events as Server-Sent Events, one JSON object per message
//   POST /api/call    a JSON-RPC request for one of the page's operations (MVSTOR, EXCHANGE,
//                     EXPAND, SHRINK, stop, start), only with "Authorization: Bearer TOKEN"
//
// The token is made at start and written to a file only the daemon's user can read; the page is
// read-only without it. Why a token and not the socket's peer credentials: TCP has none, and any
// local process (and any web page the operator's browser opens, through it) can reach a loopback
// port. Why a header and not a cookie: a browser never adds it by itself, so another site's page
// cannot make the operator's browser send an operation (no CSRF). The Host check below keeps a
// DNS-rebinding page from even reading the map of a listener bound to loopback.
//
// Limits: headers 8 KiB (431), a body 16 KiB (413), 32 connections (then 503 and close), 8 event
// streams, 30 s to send a request or take a response (then the connection is closed), one page
// operation at a time (503). Bad requests get a status and a one-line reason, never a crash.
//
// Threading: the io_context thread that runs the control socket accepts, reads and writes; the
// Api calls run on the listener's own two workers (control sandbox class), so a query never waits
// behind a relocation. The event sink only queues and wakes the connection's strand.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include <boost/asio/io_context.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>

#include "control/api.hpp"
#include "control/metrics.hpp"

namespace lparvisor::control {

using HttpRequest = boost::beast::http::request<boost::beast::http::string_body>;
using HttpResponse = boost::beast::http::response<boost::beast::http::string_body>;

struct HttpLimits {
    std::size_t max_connections = 32;
    std::size_t max_event_streams = 8;
    std::uint32_t max_header_bytes = 8 * 1024;
    std::uint64_t max_body_bytes = std::uint64_t{16} * 1024;
    std::chrono::milliseconds io_timeout{30000};  // to send a request, or to take a response
    std::size_t max_queued_events = 256;          // per event stream; beyond, dropped and counted
    std::chrono::milliseconds keepalive{15000};   // an event stream's comment line when idle
    std::size_t threads = 2;
};

// --http's value: "127.0.0.1:8080", "[::1]:8080", "0.0.0.0:8080" (on purpose), or a bare port
// (loopback). Throws Error(InvalidArgument) saying what is wrong.
struct HttpEndpoint {
    std::string address;
    std::uint16_t port = 0;
    [[nodiscard]] bool is_loopback() const;
};
[[nodiscard]] HttpEndpoint parse_http_endpoint(std::string_view spec);

// 32 random bytes as hex, written to `path` (mode 0600, replacing a stale file, never following
// a link). Throws Error(System) naming the path.
[[nodiscard]] std::string create_token_file(const std::filesystem::path& path);

// The transport-free part: one request in, one response out, with the Api calls made on the
// calling thread. The server, the tests and the fuzzer drive it alike.
class HttpHandler {
  public:
    // `token` empty: every operation is refused. `loopback_only`: requests must name a loopback
    // Host (DNS rebinding).
    HttpHandler(Api& api, std::string token, bool loopback_only);

    // Whether the request asks for /events (the server streams it; handle() answers 405 for a
    // method other than GET, like any route).
    [[nodiscard]] bool is_event_stream(const HttpRequest& request) const;
    // A refusal the server sends before streaming (Host check), or nothing.
    [[nodiscard]] std::optional<HttpResponse> check_event_stream(const HttpRequest& request);
    // Everything but the stream itself. Does not throw.
    [[nodiscard]] HttpResponse handle(const HttpRequest& request);
    // A response with a one-line reason (text/plain), counted like the others.
    [[nodiscard]] HttpResponse error(unsigned status, std::string_view reason,
                                     unsigned version = 11, bool keep_alive = false);

    // For /metrics: the listener's own counters.
    void connection_opened() { ++connections_; }
    void connection_closed() { --connections_; }
    void stream_opened() { ++event_streams_; }
    void stream_closed() { --event_streams_; }
    [[nodiscard]] std::size_t event_streams() const { return event_streams_.load(); }
    [[nodiscard]] std::size_t connections() const { return connections_.load(); }
    void count(unsigned status);
    [[nodiscard]] HttpCounters counters() const;

  private:
    HttpResponse route(const HttpRequest& request);
    HttpResponse operation(const HttpRequest& request);
    HttpResponse respond(const HttpRequest& request, std::string_view type, std::string body);
    bool host_allowed(const HttpRequest& request) const;

    Api& api_;
    const std::string token_;
    const bool loopback_only_;
    std::atomic<bool> operation_running_{false};
    std::atomic<std::size_t> connections_{0};
    std::atomic<std::size_t> event_streams_{0};
    mutable std::mutex counts_mutex_;
    std::map<unsigned, std::uint64_t> responses_;
};

class HttpServer {
  public:
    // Binds and listens on `endpoint` and starts accepting on `io`. Throws Error(System) naming
    // the address when it cannot (in use, not an address of this host). `api` must outlive it.
    HttpServer(boost::asio::io_context& io, const HttpEndpoint& endpoint, Api& api,
               std::string token, HttpLimits limits = {});
    ~HttpServer();  // stop()
    HttpServer(const HttpServer&) = delete;
    HttpServer& operator=(const HttpServer&) = delete;

    // Stops accepting, closes every connection (event streams unsubscribe), and waits for the
    // Api calls already running. Idempotent; from any thread but the io_context's.
    void stop();
    [[nodiscard]] std::uint16_t port() const noexcept;  // the bound one (endpoint port 0: any)
    [[nodiscard]] HttpHandler& handler() noexcept;

    struct Shared;

  private:
    std::shared_ptr<Shared> shared_;
};

}  // namespace lparvisor::control
