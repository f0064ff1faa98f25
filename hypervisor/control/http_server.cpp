#include "control/http_server.hpp"

#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <deque>
#include <optional>
#include <set>
#include <utility>
#include <variant>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/write.hpp>

#include "control/json_rpc.hpp"
#include "control/web_assets.hpp"
#include "control/worker_pool.hpp"
#include "util/error.hpp"
#include "util/fd.hpp"

namespace lparvisor::control {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;
using json = nlohmann::json;

namespace {

// The page's own files only: no inline script or style, nothing from elsewhere, never framed.
constexpr std::string_view kContentSecurityPolicy =
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'";

// What the page may ask for: the operator's storage operations and stop/start. Definitions,
// activation, the console and the configuration stay with the control socket.
constexpr std::array<std::string_view, 6> kPageMethods{"storage.mvstor", "storage.exchange",
                                                       "storage.expand", "storage.shrink",
                                                       "lpar.stop",      "lpar.start"};

std::string_view path_of(std::string_view target) {
    return target.substr(0, target.find('?'));
}

// Compares without stopping at the first difference, so the time taken says nothing about how
// much of a guess was right.
bool same_secret(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    unsigned char difference = 0;
    for (std::size_t i = 0; i < a.size(); ++i)
        difference |= static_cast<unsigned char>(a[i] ^ b[i]);
    return difference == 0;
}

bool is_loopback_host(std::string_view host) {
    // Host: NAME[:PORT] or [V6]:PORT. The name must *be* loopback: "localhost", or an address
    // that parses as one (a prefix test would let 127.attacker.example through).
    std::string_view name = host;
    if (name.starts_with('[')) {
        const auto close = name.find(']');
        if (close == std::string_view::npos) return false;
        const auto rest = name.substr(close + 1);
        if (!rest.empty() && !rest.starts_with(':')) return false;
        name = name.substr(1, close - 1);
    } else if (auto colon = name.rfind(':'); colon != std::string_view::npos) {
        name = name.substr(0, colon);
    }
    if (name.size() == 9) {
        std::string lower(name);
        std::transform(lower.begin(), lower.end(), lower.begin(),
                       [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
        if (lower == "localhost") return true;
    }
    boost::system::error_code ec;
    const auto address = asio::ip::make_address(std::string(name), ec);
    return !ec && address.is_loopback();
}

}  // namespace

// --- endpoint and token ---------------------------------------------------------------------

bool HttpEndpoint::is_loopback() const {
    boost::system::error_code ec;
    auto parsed = asio::ip::make_address(address, ec);
    return !ec && parsed.is_loopback();
}

HttpEndpoint parse_http_endpoint(std::string_view spec) {
    HttpEndpoint endpoint{"127.0.0.1", 0};
    std::string_view port = spec;
    if (auto colon = spec.rfind(':'); colon != std::string_view::npos) {
        std::string_view address = spec.substr(0, colon);
        port = spec.substr(colon + 1);
        if (address.size() >= 2 && address.front() == '[' && address.back() == ']')
            address = address.substr(1, address.size() - 2);
        boost::system::error_code ec;
        asio::ip::make_address(std::string(address), ec);
        if (address.empty() || ec)
            throw Error(ErrorKind::InvalidArgument,
                        fmt::format("--http {}: '{}' is not an IP address (give 127.0.0.1:PORT, "
                                    "[::1]:PORT, or 0.0.0.0:PORT to listen on every address)",
                                    spec, address));
        endpoint.address = std::string(address);
    }
    unsigned value = 0;
    bool digits = !port.empty() && port.size() <= 5;
    for (char c : port) {
        digits = digits && c >= '0' && c <= '9';
        if (digits) value = value * 10 + static_cast<unsigned>(c - '0');
    }
    if (!digits || value == 0 || value > 65535)
        throw Error(ErrorKind::InvalidArgument,
                    fmt::format("--http {}: the port must be a number from 1 to 65535", spec));
    endpoint.port = static_cast<std::uint16_t>(value);
    return endpoint;
}

std::string create_token_file(const std::filesystem::path& path) {
    std::array<unsigned char, 32> random{};
    std::size_t got = 0;
    while (got < random.size()) {
        const ssize_t n = ::getrandom(random.data() + got, random.size() - got, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) throw_errno("the HTTP token: getrandom");
        got += static_cast<std::size_t>(n);
    }
    std::string token;
    for (auto byte : random) token += fmt::format("{:02x}", byte);
    // A stale file (another run's token) goes; a link is never followed.
    if (::unlink(path.c_str()) != 0 && errno != ENOENT)
        throw_errno("the HTTP token file " + path.string() + ": unlink");
    Fd file(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
    if (!file.valid()) throw_errno("the HTTP token file " + path.string() + ": create");
    if (::fchmod(file.get(), 0600) != 0) throw_errno("the HTTP token file " + path.string());
    const std::string line = token + "\n";
    if (::write(file.get(), line.data(), line.size()) != static_cast<ssize_t>(line.size()))
        throw_errno("the HTTP token file " + path.string() + ": write");
    return token;
}

// --- the handler ----------------------------------------------------------------------------

HttpHandler::HttpHandler(Api& api, std::string token, bool loopback_only)
    : api_(api), token_(std::move(token)), loopback_only_(loopback_only) {
}

void HttpHandler::count(unsigned status) {
    std::lock_guard lock(counts_mutex_);
    ++responses_[status];
}

HttpCounters HttpHandler::counters() const {
    HttpCounters counters;
    {
        std::lock_guard lock(counts_mutex_);
        counters.responses.assign(responses_.begin(), responses_.end());
    }
    counters.connections = connections_.load();
    counters.event_streams = event_streams_.load();
    return counters;
}

HttpResponse HttpHandler::error(unsigned status, std::string_view reason, unsigned version,
                                bool keep_alive) {
    HttpResponse response{static_cast<http::status>(status), version};
    response.set(http::field::content_type, "text/plain; charset=utf-8");
    response.set(http::field::cache_control, "no-store");
    response.set("X-Content-Type-Options", "nosniff");
    response.body() = sanitize_utf8(reason) + "\n";
    response.keep_alive(keep_alive);
    response.prepare_payload();
    count(status);
    return response;
}

HttpResponse HttpHandler::respond(const HttpRequest& request, std::string_view type,
                                  std::string body) {
    HttpResponse response{http::status::ok, request.version()};
    response.set(http::field::content_type, beast::string_view(type.data(), type.size()));
    response.set(http::field::cache_control, "no-store");
    response.set("X-Content-Type-Options", "nosniff");
    response.set("Content-Security-Policy",
                 beast::string_view(kContentSecurityPolicy.data(), kContentSecurityPolicy.size()));
    response.set("Referrer-Policy", "no-referrer");
    response.body() = std::move(body);
    response.keep_alive(request.keep_alive());
    response.prepare_payload();
    count(200);
    return response;
}

bool HttpHandler::host_allowed(const HttpRequest& request) const {
    if (!loopback_only_) return true;
    auto host = request[http::field::host];
    return is_loopback_host(std::string_view(host.data(), host.size()));
}

bool HttpHandler::is_event_stream(const HttpRequest& request) const {
    return path_of(std::string_view(request.target().data(), request.target().size())) ==
               "/events" &&
           request.method() == http::verb::get;
}

std::optional<HttpResponse> HttpHandler::check_event_stream(const HttpRequest& request) {
    if (request.version() != 10 && request.version() != 11)
        return error(505, "HTTP/1.0 and HTTP/1.1 only");
    if (!host_allowed(request))
        return error(421, "this listener answers only to a loopback Host (127.0.0.1, localhost)",
                     request.version());
    return std::nullopt;
}

HttpResponse HttpHandler::handle(const HttpRequest& request) {
    try {
        return route(request);
    } catch (const Error& e) {
        const auto code = rpc_code_for(e.kind());
        return error(code == RpcErrorCode::NotFound ? 404
                     : code == RpcErrorCode::Busy   ? 503
                                                    : 500,
                     e.what(), request.version(), request.keep_alive());
    } catch (const std::exception& e) {
        return error(500, std::string("internal error: ") + e.what(), request.version(),
                     request.keep_alive());
    }
}

HttpResponse HttpHandler::route(const HttpRequest& request) {
    if (request.version() != 10 && request.version() != 11)
        return error(505, "HTTP/1.0 and HTTP/1.1 only");
    if (!host_allowed(request))
        return error(421, "this listener answers only to a loopback Host (127.0.0.1, localhost)",
                     request.version());
    const auto path =
        std::string(path_of(std::string_view(request.target().data(), request.target().size())));
    const bool get = request.method() == http::verb::get;
    struct Page {
        std::string_view path;
        std::string_view type;
        const std::string_view* body;
    };
    static const Page kPages[] = {
        {"/", "text/html; charset=utf-8", &web::kIndexHtml},
        {"/index.html", "text/html; charset=utf-8", &web::kIndexHtml},
        {"/frame.js", "text/javascript; charset=utf-8", &web::kFrameJs},
        {"/frame.css", "text/css; charset=utf-8", &web::kFrameCss},
    };
    auto wrong_method = [&](std::string_view allow) {
        auto response = error(405, fmt::format("{} takes {} only", path, allow), request.version(),
                              request.keep_alive());
        response.set(http::field::allow, beast::string_view(allow.data(), allow.size()));
        return response;
    };
    for (const auto& page : kPages) {
        if (path != page.path) continue;
        if (!get) return wrong_method("GET");
        return respond(request, page.type, std::string(*page.body));
    }
    if (path == "/metrics") {
        if (!get) return wrong_method("GET");
        return respond(request, "text/plain; version=0.0.4; charset=utf-8",
                       prometheus_text(api_.stats(), counters()));
    }
    if (path == "/api/lpars" || path == "/api/stats") {
        if (!get) return wrong_method("GET");
        const json body = path == "/api/lpars" ? to_json(api_.list()) : to_json(api_.stats());
        return respond(request, "application/json",
                       body.dump(-1, ' ', false, json::error_handler_t::replace));
    }
    if (path == "/events") return wrong_method("GET");
    if (path == "/api/call") {
        if (request.method() != http::verb::post) return wrong_method("POST");
        return operation(request);
    }
    return error(404, fmt::format("no such page: {} (try / or /metrics)", sanitize_utf8(path)),
                 request.version(), request.keep_alive());
}

HttpResponse HttpHandler::operation(const HttpRequest& request) {
    const auto version = request.version();
    const bool keep_alive = request.keep_alive();
    auto authorization = request[http::field::authorization];
    const std::string_view given(authorization.data(), authorization.size());
    constexpr std::string_view kScheme = "Bearer ";
    if (token_.empty() || !given.starts_with(kScheme)) {
        auto response = error(401,
                              "read-only: operations need the token the daemon wrote to its "
                              "http.token file (send it as Authorization: Bearer TOKEN)",
                              version, keep_alive);
        response.set(http::field::www_authenticate, "Bearer");
        return response;
    }
    if (!same_secret(given.substr(kScheme.size()), token_)) {
        auto response = error(401,
                              "wrong token: operations need the token in the daemon's "
                              "http.token file",
                              version, keep_alive);
        response.set(http::field::www_authenticate, "Bearer error=\"invalid_token\"");
        return response;
    }
    auto outcome = parse_request(request.body());
    if (auto* rejected = std::get_if<RejectedRequest>(&outcome))
        return error(400,
                     rejected->response.empty() ? "a notification gets no answer: give an id"
                                                : rejected->response,
                     version, keep_alive);
    auto& parsed = std::get<ParsedCall>(outcome);
    if (parsed.is_notification)
        return error(400, "give the request an id: the page waits for its answer", version,
                     keep_alive);
    if (std::find(kPageMethods.begin(), kPageMethods.end(), parsed.method) == kPageMethods.end())
        return error(403,
                     fmt::format("{} is not offered over HTTP (the page offers {}); use the "
                                 "control socket (svp)",
                                 parsed.method, fmt::join(kPageMethods, ", ")),
                     version, keep_alive);
    if (operation_running_.exchange(true))
        return error(503, "another operation from a page is running: wait for its answer", version,
                     keep_alive);
    struct Release {
        std::atomic<bool>& flag;
        ~Release() { flag = false; }
    } release{operation_running_};
    spdlog::info("http: {} {}", parsed.method, sanitize_utf8(request.body().substr(0, 256)));
    return respond(request, "application/json", execute(api_, parsed));
}

// --- the server -----------------------------------------------------------------------------

namespace {
class Session;
}

struct HttpServer::Shared {
    Shared(asio::io_context& context, Api& calls, std::string token, bool loopback_only,
           HttpLimits l)
        : io(context),
          api(calls),
          acceptor(asio::make_strand(context)),
          handler(calls, std::move(token), loopback_only),
          limits(l),
          pool(l.threads, "http-worker") {}
    asio::io_context& io;
    Api& api;
    tcp::acceptor acceptor;
    HttpHandler handler;
    HttpLimits limits;
    WorkerPool pool;
    std::mutex sessions_mutex;
    std::vector<std::weak_ptr<Session>> sessions;
    std::atomic<bool> stopping{false};
    std::uint16_t port = 0;
};

namespace {

class Session : public std::enable_shared_from_this<Session> {
  public:
    Session(std::shared_ptr<HttpServer::Shared> shared, tcp::socket socket)
        : shared_(std::move(shared)),
          stream_(std::move(socket)),
          keepalive_(stream_.get_executor()) {
        shared_->handler.connection_opened();
    }
    ~Session() {
        if (streaming_) shared_->handler.stream_closed();
        shared_->handler.connection_closed();
    }

    void start() { read_request(); }
    auto executor() { return stream_.get_executor(); }
    // Refuses the connection (too many) with one response, then closes.
    void refuse(std::string_view reason) { write(shared_->handler.error(503, reason)); }

    // From any thread: closes on the strand.
    void close() {
        asio::post(stream_.get_executor(), [self = shared_from_this()] { self->close_now(); });
    }

  private:
    struct EventQueue {
        std::mutex mutex;
        std::deque<Event> events;
        std::uint64_t dropped = 0;
        bool kick_posted = false;
    };

    void read_request() {
        parser_.emplace();
        parser_->header_limit(shared_->limits.max_header_bytes);
        parser_->body_limit(shared_->limits.max_body_bytes);
        stream_.expires_after(shared_->limits.io_timeout);
        http::async_read(stream_, buffer_, *parser_,
                         [self = shared_from_this()](beast::error_code ec, std::size_t) {
                             self->on_request(ec);
                         });
    }

    void on_request(beast::error_code ec) {
        if (closed_) return;
        auto& handler = shared_->handler;
        if (ec == http::error::end_of_stream || ec == beast::error::timeout ||
            ec == asio::error::operation_aborted || ec == asio::error::connection_reset ||
            ec == asio::error::eof)
            return close_now();
        if (ec == http::error::body_limit)
            return write(handler.error(
                413, fmt::format("request body over {} bytes", shared_->limits.max_body_bytes)));
        if (ec == http::error::header_limit)
            return write(handler.error(431, fmt::format("request headers over {} bytes",
                                                        shared_->limits.max_header_bytes)));
        if (ec) return write(handler.error(400, "bad request: " + ec.message()));
        HttpRequest request = parser_->release();
        if (handler.is_event_stream(request)) {
            if (auto refusal = handler.check_event_stream(request))
                return write(std::move(*refusal));
            return start_stream();
        }
        stream_.expires_never();  // the Api call may take a while (a move): no read is pending
        auto task = [self = shared_from_this(), request = std::move(request)]() mutable {
            auto response = self->shared_->handler.handle(request);
            asio::post(self->stream_.get_executor(),
                       [self, response = std::move(response)]() mutable {
                           self->write(std::move(response));
                       });
        };
        if (!shared_->pool.submit(std::move(task))) close_now();
    }

    void write(HttpResponse response) {
        if (closed_) return;
        auto message = std::make_shared<HttpResponse>(std::move(response));
        stream_.expires_after(shared_->limits.io_timeout);
        http::async_write(stream_, *message,
                          [self = shared_from_this(), message](beast::error_code ec, std::size_t) {
                              if (ec) return self->close_now();
                              if (message->need_eof()) return self->linger_then_close();
                              self->read_request();
                          });
    }

    // After a response that ends the connection, the client may still be sending (a body over
    // the limit): closing with unread bytes would reset the connection and could destroy the
    // response before the client reads it. So: no more sending, take what comes (at most
    // io_timeout), then close.
    void linger_then_close() {
        beast::error_code ignored;
        stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
        stream_.expires_after(shared_->limits.io_timeout);
        stream_.async_read_some(asio::buffer(discard_),
                                [self = shared_from_this()](beast::error_code ec, std::size_t) {
                                    if (ec) return self->close_now();
                                    self->linger_then_close();
                                });
    }

    // --- /events ---
    void start_stream() {
        auto& handler = shared_->handler;
        if (handler.event_streams() >= shared_->limits.max_event_streams)
            return write(
                handler.error(503, fmt::format("too many event streams (at most {}): close a page",
                                               shared_->limits.max_event_streams)));
        streaming_ = true;
        handler.stream_opened();
        handler.count(200);
        queue_ = std::make_shared<EventQueue>();
        // The sink runs on hypervisor threads (vCPU threads too): it only queues and wakes the
        // strand, and holds the session weakly so a late event never keeps it alive.
        std::weak_ptr<Session> weak = weak_from_this();
        auto executor = stream_.get_executor();
        const std::size_t limit = shared_->limits.max_queued_events;
        subscription_ =
            shared_->api.subscribe([queue = queue_, weak, executor, limit](const Event& event) {
                {
                    std::lock_guard lock(queue->mutex);
                    if (queue->events.size() >= limit) {
                        ++queue->dropped;
                        return;
                    }
                    queue->events.push_back(event);
                    if (queue->kick_posted) return;
                    queue->kick_posted = true;
                }
                asio::post(executor, [weak] {
                    if (auto self = weak.lock()) self->send_events();
                });
            });
        pending_.push_back(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
            "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n"
            "\r\n: connected\n\n");
        watch_for_close();
        arm_keepalive();
        flush();
    }

    void send_events() {
        if (closed_) return;
        std::deque<Event> events;
        std::uint64_t dropped = 0;
        {
            std::lock_guard lock(queue_->mutex);
            events.swap(queue_->events);
            dropped = std::exchange(queue_->dropped, 0);
            queue_->kick_posted = false;
        }
        for (const auto& event : events)
            pending_.push_back(
                "data: " + event_json(event).dump(-1, ' ', false, json::error_handler_t::replace) +
                "\n\n");
        if (dropped > 0)
            pending_.push_back("data: " + events_dropped_json(dropped).dump() + "\n\n");
        flush();
    }

    // Writes the pending text, one piece at a time; a reader that takes nothing for io_timeout
    // is closed.
    void flush() {
        if (closed_ || writing_ || pending_.empty()) return;
        writing_ = true;
        auto text = std::make_shared<std::string>(std::move(pending_.front()));
        pending_.pop_front();
        stream_.expires_after(shared_->limits.io_timeout);
        asio::async_write(stream_, asio::buffer(*text),
                          [self = shared_from_this(), text](beast::error_code ec, std::size_t) {
                              self->writing_ = false;
                              if (ec) return self->close_now();
                              self->stream_.expires_never();
                              self->flush();
                          });
    }

    // A page says nothing once its stream is open: a read that ends means it went away.
    void watch_for_close() {
        stream_.socket().async_read_some(
            asio::buffer(discard_), [self = shared_from_this()](beast::error_code ec, std::size_t) {
                if (ec) return self->close_now();
                self->watch_for_close();
            });
    }

    void arm_keepalive() {
        keepalive_.expires_after(shared_->limits.keepalive);
        keepalive_.async_wait([self = shared_from_this()](beast::error_code ec) {
            if (ec || self->closed_) return;
            if (self->pending_.empty() && !self->writing_)
                self->pending_.push_back(": keep-alive\n\n");
            self->flush();
            self->arm_keepalive();
        });
    }

    void close_now() {
        if (closed_) return;
        closed_ = true;
        subscription_.reset();  // no more events; the sink holds the queue, not us
        keepalive_.cancel();
        beast::error_code ignored;
        stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
        stream_.close();
    }

    std::shared_ptr<HttpServer::Shared> shared_;
    beast::tcp_stream stream_;
    beast::flat_buffer buffer_;
    std::optional<http::request_parser<http::string_body>> parser_;
    bool closed_ = false;
    // /events
    bool streaming_ = false;
    bool writing_ = false;
    std::shared_ptr<EventQueue> queue_;
    std::unique_ptr<Subscription> subscription_;
    std::deque<std::string> pending_;
    asio::steady_timer keepalive_;
    std::array<char, 256> discard_{};
};

void accept_next(const std::shared_ptr<HttpServer::Shared>& shared) {
    shared->acceptor.async_accept(
        asio::make_strand(shared->io), [shared](beast::error_code ec, tcp::socket socket) {
            if (shared->stopping.load() || ec == asio::error::operation_aborted) return;
            if (!ec) {
                auto session = std::make_shared<Session>(shared, std::move(socket));
                std::size_t open = 0;
                {
                    std::lock_guard lock(shared->sessions_mutex);
                    std::erase_if(shared->sessions, [](const auto& w) { return w.expired(); });
                    open = shared->sessions.size();
                    if (open < shared->limits.max_connections) shared->sessions.push_back(session);
                }
                if (open < shared->limits.max_connections) {
                    asio::post(session->executor(), [session] { session->start(); });
                } else {
                    asio::post(session->executor(), [session, shared] {
                        session->refuse(fmt::format("too many connections (at most {})",
                                                    shared->limits.max_connections));
                    });
                }
            } else {
                spdlog::warn("http: accept: {}", ec.message());
            }
            accept_next(shared);
        });
}

}  // namespace

HttpServer::HttpServer(asio::io_context& io, const HttpEndpoint& endpoint, Api& api,
                       std::string token, HttpLimits limits)
    : shared_(std::make_shared<Shared>(io, api, std::move(token), endpoint.is_loopback(), limits)) {
    boost::system::error_code ec;
    const tcp::endpoint where(asio::ip::make_address(endpoint.address, ec), endpoint.port);
    if (ec)
        throw Error(ErrorKind::InvalidArgument,
                    fmt::format("--http: '{}' is not an IP address", endpoint.address));
    auto fail = [&](const char* step) {
        throw Error(ErrorKind::System,
                    fmt::format("HTTP listener on {}:{}: {}: {}", endpoint.address, endpoint.port,
                                step, ec.message()));
    };
    auto& acceptor = shared_->acceptor;
    if (acceptor.open(where.protocol(), ec); ec) fail("socket");
    if (acceptor.set_option(tcp::acceptor::reuse_address(true), ec); ec) fail("SO_REUSEADDR");
    if (acceptor.bind(where, ec); ec) fail("bind");
    if (acceptor.listen(asio::socket_base::max_listen_connections, ec); ec) fail("listen");
    shared_->port = acceptor.local_endpoint().port();
    accept_next(shared_);
}

HttpServer::~HttpServer() {
    stop();
}

void HttpServer::stop() {
    if (shared_->stopping.exchange(true)) return;
    asio::post(shared_->acceptor.get_executor(), [shared = shared_] {
        beast::error_code ignored;
        shared->acceptor.close(ignored);
    });
    std::vector<std::shared_ptr<Session>> open;
    {
        std::lock_guard lock(shared_->sessions_mutex);
        for (auto& weak : shared_->sessions)
            if (auto session = weak.lock()) open.push_back(std::move(session));
        shared_->sessions.clear();
    }
    for (auto& session : open) session->close();
    shared_->pool.shutdown();
}

std::uint16_t HttpServer::port() const noexcept {
    return shared_->port;
}

HttpHandler& HttpServer::handler() noexcept {
    return shared_->handler;
}

}  // namespace lparvisor::control
