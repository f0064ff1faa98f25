// The control socket: newline-delimited JSON-RPC 2.0 over a Unix stream socket (mode 0600), served
// with Boost.Asio. The protocol core is json_rpc.hpp; the wire contract docs/control-protocol.md.
//
// Threading: the io_context may be run by one thread or several; every connection has its own
// strand, and requests of one connection are answered one at a time, in order. No Api call runs on
// an io_context thread: queries (lpar.list, lpar.console, storage.cancel ...) run on a small query
// pool and the long operations (storage.mvstor, lpar.activate ...) on a separate pool, so that
// neither a relocation nor a query stuck behind it can stall the socket, and a relocation can never
// starve lpar.list.
//
// Clients that say nothing: the control socket is the operator's only way in, so a few local
// processes that connect and send nothing (or half a line) must not be able to lock the operator
// out. Two rules, both about *silent* connections: those with no request running (read and not
// yet answered) and no events subscription.
//  - Idle timeout: a silent connection that completes no request line within client_idle_timeout
//    (60 s) gets one error line, -32005 "idle for 60 s without a request: closing" with data.kind
//    "Timeout", and is closed. A subscriber waits for events by design and is never timed out; it
//    stays bounded by max_clients and max_queued_events.
//  - Eviction when full: when max_clients are connected, a new connection evicts the connection
//    that has been silent longest; the evicted one gets -32004 "dropped to make room for a new
//    client ..." and is closed. Only when no connection is silent (all are running a request or
//    subscribed) is the new connection refused, with -32004 "too many clients (at most N)".
// Why eviction rather than a slot kept free for the operator: the server cannot tell the
// operator's connection from a silent one when it connects, so a reserved slot can be taken by
// the next silent client just as well, and then the operator waits for the idle timeout. Eviction
// needs no guess: a connection that is working (a request running, a subscription) keeps its
// slot, and silent ones make room, oldest silence first, so a fresh connection (svp sends its
// request at once) is the last candidate. A flood of silent connections thus only ever evicts
// silent connections, and the operator's request is served at once.
// Drops are logged one line each at info (client id, pid, uid, why); table-full conditions
// (evictions, refusals) are summed up in at most one warning a minute.
//
// Events: a connection that sent events.subscribe holds an Api Subscription whose sink (called on
// hypervisor threads, vCPU threads included) only appends to a bounded per-connection queue under
// a short lock and wakes the connection's strand; the strand writes one line at a time, responses
// first, so that a subscriber that does not read costs at most max_queued_events events.
//
// Usage in the daemon:
//     boost::asio::io_context io;
//     ControlServer server(io, "/run/lparvisor/control.sock", hypervisor);  // throws Error
//     boost::asio::signal_set signals(io, SIGINT, SIGTERM);
//     signals.async_wait([&](auto, int) { server.stop(); });
//     io.run();  // returns once stop() has closed the acceptor and every connection
//     // ~ControlServer, then ~io_context
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <filesystem>
#include <functional>
#include <memory>
#include <string_view>

#include <boost/asio/io_context.hpp>

#include "control/api.hpp"
#include "control/json_rpc.hpp"

namespace lparvisor::control {

inline constexpr std::string_view kDefaultSocketPath = "/run/lparvisor/control.sock";

struct ServerLimits {
    std::size_t max_line_bytes = kMaxRequestBytes;  // longer lines: error, then close (the core
                                                    // refuses above kMaxRequestBytes anyway)
    // Connections served at once. A further one evicts the connection silent longest (no request
    // running, no subscription), or is refused (error, then close) when none is silent.
    std::size_t max_clients = 64;
    std::size_t query_threads = 2;  // workers for lpar.list / lpar.console
    std::size_t long_threads = 2;   // workers for storage.mvstor
    // A Query call still running after this is answered with -32005 "timed out after N s"; its
    // late result is discarded. LongRunning calls are never timed out here.
    std::chrono::milliseconds query_timeout{30000};
    // Events waiting for one subscribed connection; beyond it they are dropped and counted, and
    // one "events.dropped" notification follows once there is room again.
    std::size_t max_queued_events = 1024;
    // A connection with no request running and no subscription that completes no request line
    // for this long is sent a -32005 error line (data.kind "Timeout") and closed. 0: never.
    // Checked every second (every timeout/4 when that is shorter), and by close_idle_clients().
    std::chrono::milliseconds client_idle_timeout{60000};
    // The clock of the idle timeout and of the eviction order; empty: steady_clock::now. A seam
    // for tests, which move time forward instead of waiting for it.
    std::function<std::chrono::steady_clock::time_point()> clock;
};

class ControlServer {
  public:
    // Creates, binds (mode 0600) and listens on `socket_path`, and starts accepting on `io`.
    // Throws Error(Busy) when another daemon answers on the path, Error(Refused) when the path
    // exists but is not a socket, Error(InvalidArgument) for a path too long for sockaddr_un, and
    // Error(System) when a host call fails. A stale socket file (nobody listening) is replaced.
    // `api` must outlive the server.
    ControlServer(boost::asio::io_context& io, std::filesystem::path socket_path, Api& api,
                  ServerLimits limits = {});
    ~ControlServer();  // stop()

    ControlServer(const ControlServer&) = delete;
    ControlServer& operator=(const ControlServer&) = delete;

    // Stops accepting, removes the socket file (only if it is still the one this server bound),
    // closes every connection, and waits for the Api calls already running on the workers to
    // return (calls still queued are dropped unanswered). Idempotent; callable from any thread,
    // including an io_context thread. Once it returns, the io_context runs out of server work and
    // io.run() returns (if nothing else keeps it busy).
    void stop();

    [[nodiscard]] const std::filesystem::path& socket_path() const noexcept;
    // Connections currently counted against max_clients.
    [[nodiscard]] std::size_t client_count() const noexcept;
    // Closes now every connection silent for client_idle_timeout or longer (the server does it on
    // its own every second): the number it closes. Callable from any thread; for tests, which
    // move ServerLimits::clock forward and then call it, and for diagnostics.
    std::size_t close_idle_clients();
    // Events waiting in the per-connection queues of all subscribers (each at most
    // max_queued_events, plus one events.dropped marker): for tests and diagnostics.
    [[nodiscard]] std::size_t queued_events() const;

    struct Shared;  // state shared with the connections (they may outlive a stop() in flight)

  private:
    std::shared_ptr<Shared> shared_;
};

}  // namespace lparvisor::control
