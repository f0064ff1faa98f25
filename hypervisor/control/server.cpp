#include "control/server.hpp"

#include <pthread.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>

#include "control/worker_pool.hpp"
#include "sandbox/sandbox.hpp"
#include "util/error.hpp"
#include "util/fd.hpp"

namespace lparvisor::control {

namespace asio = boost::asio;
using Protocol = asio::local::stream_protocol;
using boost::system::error_code;
using Clock = std::chrono::steady_clock;

namespace {

constexpr mode_t kSocketMode = 0600;
constexpr std::size_t kLoggedRequestBytes = 256;
// At most one warning per this long sums up the evictions and refusals of a full client table.
constexpr auto kFullTableWarningInterval = std::chrono::seconds(60);

struct PeerCredentials {
    pid_t pid = 0;
    uid_t uid = 0;
    gid_t gid = 0;
};

bool peer_credentials(int fd, PeerCredentials& peer) {
    ucred credentials{};
    socklen_t length = sizeof(credentials);
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &length) != 0) return false;
    peer = {credentials.pid, credentials.uid, credentials.gid};
    return true;
}

// "60 s", "3600 s", "0.5 s", "2.25 s": for messages.
std::string seconds_text(Clock::duration duration) {
    const double seconds = std::chrono::duration<double>(duration).count();
    return seconds >= 10 ? fmt::format("{:.0f} s", seconds) : fmt::format("{:.3g} s", seconds);
}

std::string excerpt(std::string_view line) {
    if (line.size() <= kLoggedRequestBytes) return std::string(line);
    return fmt::format("{}... ({} bytes)", line.substr(0, kLoggedRequestBytes), line.size());
}

bool is_blank(std::string_view line) {
    return line.find_first_not_of(" \t\r") == std::string_view::npos;
}

sockaddr_un socket_address(const std::filesystem::path& path) {
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    if (path.native().size() >= sizeof(address.sun_path)) {
        throw Error(ErrorKind::InvalidArgument,
                    fmt::format("control socket path {} is too long ({} bytes, at most {})",
                                path.native(), path.native().size(), sizeof(address.sun_path) - 1));
    }
    path.native().copy(address.sun_path, path.native().size());
    return address;
}

// Decides what to do with whatever is at `path` before binding: nothing there is fine, a socket
// that nobody answers on is stale and removed, anything else stops the start.
void clear_stale_socket(const std::filesystem::path& path) {
    struct stat status {};
    if (::lstat(path.c_str(), &status) != 0) {
        if (errno == ENOENT) return;
        throw_errno(fmt::format("control socket {}: lstat", path.native()));
    }
    if (!S_ISSOCK(status.st_mode)) {
        throw Error(ErrorKind::Refused,
                    fmt::format("control socket {} exists and is not a socket: not replacing it",
                                path.native()));
    }
    Fd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!probe.valid()) throw_errno("control socket probe: socket");
    const sockaddr_un address = socket_address(path);
    // SAFETY: sockaddr_un is the sockaddr that AF_UNIX expects; the size is the struct's own.
    if (::connect(probe.get(), reinterpret_cast<const sockaddr*>(&address), sizeof(address)) == 0 ||
        errno == EAGAIN || errno == EINPROGRESS) {  // EAGAIN: alive, its backlog is just full
        throw Error(
            ErrorKind::Busy,
            fmt::format("another daemon is already serving the control socket {}", path.native()));
    }
    if (errno != ECONNREFUSED) {
        throw_errno(fmt::format("control socket {}: cannot tell whether it is in use (connect)",
                                path.native()));
    }
    spdlog::info("control: removing stale socket {}", path.native());
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
        throw_errno(fmt::format("control socket {}: unlink stale socket", path.native()));
    }
}

// The events of one subscription, between the sink (hypervisor threads, vCPU threads included:
// it only takes `mutex` for a push) and the connection's strand, which takes one at a time.
class EventQueue {
  public:
    EventQueue(std::size_t limit, EventFilter filter, std::function<void()> wake)
        : limit_(std::max<std::size_t>(limit, 1)),
          wake_(std::move(wake)),
          filter_(std::move(filter)) {}

    // The sink. Never blocks on the socket, never grows beyond the limit; an event the client's
    // filter does not want is not queued (and so never counted as dropped).
    void push(const Event& event) {
        bool wake_now = false;
        {
            std::lock_guard lock(mutex_);
            if (closed_ || !filter_.matches(event)) return;
            if (items_.size() >= limit_) {
                ++dropped_;
                return;
            }
            if (dropped_ > 0) {  // room again: say how many were lost, where they were lost
                items_.push_back(Item{{}, std::exchange(dropped_, 0)});
            }
            if (items_.size() >= limit_) {
                ++dropped_;
            } else {
                items_.push_back(Item{event, 0});
            }
            wake_now = !wake_pending_;
            wake_pending_ = true;
        }
        if (wake_now) wake_();
    }

    // The next notification line, or nullopt when there is none (the next push wakes the strand).
    std::optional<std::string> pop_line() {
        Item item;
        {
            std::lock_guard lock(mutex_);
            if (items_.empty()) {
                if (dropped_ == 0 || closed_) {
                    wake_pending_ = false;
                    return std::nullopt;
                }
                item.dropped = std::exchange(dropped_, 0);
            } else {
                item = std::move(items_.front());
                items_.pop_front();
            }
        }
        // Serialized here, on the strand, so that the sink stays a copy and a push.
        return item.dropped > 0 ? events_dropped_notification(item.dropped)
                                : event_notification(item.event);
    }

    // events.subscribe again: from now on, this filter. Events already queued still go out.
    void set_filter(EventFilter filter) {
        std::lock_guard lock(mutex_);
        filter_ = std::move(filter);
    }

    // False when the queue was closed meanwhile: the caller keeps (and destroys) the subscription.
    bool adopt(std::unique_ptr<Subscription>& subscription) {
        std::lock_guard lock(mutex_);
        if (closed_) return false;
        subscription_ = std::move(subscription);
        return true;
    }

    // No more events; hands the subscription out so that the caller destroys it off any lock.
    std::unique_ptr<Subscription> close() {
        std::lock_guard lock(mutex_);
        closed_ = true;
        items_.clear();
        dropped_ = 0;
        return std::move(subscription_);
    }

    std::size_t size() const {
        std::lock_guard lock(mutex_);
        return items_.size();
    }

  private:
    struct Item {
        Event event;
        std::uint64_t dropped = 0;  // > 0: an events.dropped marker
    };

    const std::size_t limit_;
    const std::function<void()> wake_;
    mutable std::mutex mutex_;
    std::deque<Item> items_;
    std::uint64_t dropped_ = 0;  // lost since the last marker
    bool wake_pending_ = false;  // the strand will look at the queue again without a wake
    bool closed_ = false;
    EventFilter filter_;
    std::unique_ptr<Subscription> subscription_;
};

}  // namespace

class Connection;

struct ControlServer::Shared : std::enable_shared_from_this<ControlServer::Shared> {
    Shared(asio::io_context& io_context, std::filesystem::path socket_path, Api& api_ref,
           ServerLimits server_limits)
        : io(io_context),
          path(std::move(socket_path)),
          api(api_ref),
          limits(std::move(server_limits)),
          acceptor(asio::make_strand(io_context)),
          retry_timer(acceptor.get_executor()),
          sweep_timer(acceptor.get_executor()),
          query_pool(limits.query_threads, "ctl-query"),
          long_pool(limits.long_threads, "ctl-long") {}

    // One entry of `connections`, guarded by `mutex`. Busy, subscribed and idle_since are
    // written by the connection's strand (note_activity), read by the accept and sweep paths, so
    // that choosing a silent connection to drop and that connection starting a request are
    // ordered by the one lock: a connection chosen is never busy, and never becomes busy.
    struct Client {
        std::weak_ptr<Connection> connection;
        bool counted = false;          // against max_clients: admitted and not (being) dropped
        bool busy = false;             // a request line read and not yet answered
        bool subscribed = false;       // holds an events subscription
        bool dropping = false;         // chosen by the idle timeout or an eviction: closing
        Clock::time_point idle_since;  // the connect, or the last request line or answer
    };

    void listen();
    void accept_next();
    void on_accepted(Protocol::socket socket);
    void unregister(std::uint64_t id);
    // The connection's state changed (on its strand). False when it is being dropped: then it
    // must not start the request it just read.
    bool note_activity(std::uint64_t id, bool busy, bool subscribed);
    std::size_t close_idle();
    void schedule_sweep();
    void stop();
    [[nodiscard]] Clock::time_point now() const {
        return limits.clock ? limits.clock() : Clock::now();
    }
    // The counted, silent connection idle longest (ties: the oldest), or none; under `mutex`.
    std::unordered_map<std::uint64_t, Client>::iterator longest_silent_locked();
    // Counts a table-full event; true when it is time for the (rate-limited) warning.
    bool full_table_warning_due_locked();

    asio::io_context& io;
    const std::filesystem::path path;
    Api& api;
    const ServerLimits limits;
    Protocol::acceptor acceptor;  // used on its own strand only
    asio::steady_timer retry_timer;
    asio::steady_timer sweep_timer;  // the idle timeout's periodic sweep, on the acceptor strand
    WorkerPool query_pool;
    WorkerPool long_pool;
    std::atomic<bool> stopping{false};

    mutable std::mutex mutex;  // guards the members below
    std::unordered_map<std::uint64_t, Client> connections;
    // The event queue of each subscribed connection, so that stop() can end every subscription
    // before it returns (the Api need only outlive the server) and queued_events() can count.
    std::unordered_map<std::uint64_t, std::weak_ptr<EventQueue>> subscribers;
    // Who holds each LPAR's console input (lpar.console_attach): lpar.console_write from any
    // other connection is refused until the holder detaches or its connection closes.
    struct ConsoleInputHolder {
        std::uint64_t connection = 0;
        std::string who;  // "client 3 (pid 1234, uid 0) since 12:00:01 UTC"
    };
    std::unordered_map<std::string, ConsoleInputHolder> console_inputs;
    std::uint64_t next_id = 1;
    std::size_t counted_clients = 0;
    std::size_t evicted_unreported = 0;  // since the last table-full warning
    std::size_t refused_unreported = 0;
    std::optional<Clock::time_point> last_full_table_warning;  // real time, not limits.clock
    dev_t socket_device = 0;  // identity of the socket file this server bound, so that stop()
    ino_t socket_inode = 0;   // never removes a successor's socket
    bool socket_bound = false;

    std::mutex stop_mutex;  // serializes stop() callers; the second waits for the first
    bool stopped = false;
};

// One client: reads a line, answers it, reads the next. Everything runs on the socket's strand.
class Connection : public std::enable_shared_from_this<Connection> {
  public:
    Connection(std::shared_ptr<ControlServer::Shared> shared, Protocol::socket socket,
               std::uint64_t id, PeerCredentials peer)
        : shared_(std::move(shared)),
          socket_(std::move(socket)),
          strand_(socket_.get_executor()),
          id_(id),
          peer_(peer) {}

    void start() {
        asio::dispatch(strand_, [self = shared_from_this()] { self->read_next(); });
    }

    // Answers with one error line and closes: used for clients that are not admitted.
    void refuse(std::string response) {
        asio::dispatch(strand_, [self = shared_from_this(), response = std::move(response)] {
            self->send(response, true);
        });
    }

    void close_from_server() {
        asio::post(strand_, [self = shared_from_this()] { self->close("server stopping"); });
    }

    // Closes a silent connection (idle timeout, eviction) with one error line saying why. The
    // line is written without waiting: a client that does not read gets no say in when its slot
    // is freed. A response write still in flight is finished if it is done (its handler merely
    // pending) and cut off if it is stuck on a client that does not read; in that case the line
    // is left out rather than written into the middle of the response, and only the log says why.
    void drop(std::string line, std::string reason) {
        asio::post(strand_, [self = shared_from_this(), line = std::move(line),
                             reason = std::move(reason)]() mutable {
            if (self->closed_ || self->pending_drop_) return;
            self->pending_drop_ = PendingDrop{std::move(line), std::move(reason)};
            if (!self->writing_) return self->finish_drop(true);
            error_code ignored;
            self->socket_.cancel(ignored);  // the write's handler calls finish_drop
        });
    }

    // Ends a subscription off the strand: the destructor of a Subscription may wait for a sink
    // call in progress, and the Api may take its own locks there.
    static void release_subscription(ControlServer::Shared& shared,
                                     std::unique_ptr<Subscription> subscription) {
        if (!subscription) return;
        auto holder = std::make_shared<std::unique_ptr<Subscription>>(std::move(subscription));
        if (!shared.query_pool.submit([holder] { holder->reset(); })) holder->reset();
    }

  private:
    void finish_drop(bool line_allowed) {
        PendingDrop drop = std::move(*pending_drop_);
        pending_drop_.reset();
        if (line_allowed && !closed_) {
            drop.line.push_back('\n');
            (void)::send(socket_.native_handle(), drop.line.data(), drop.line.size(),
                         MSG_DONTWAIT | MSG_NOSIGNAL);
        }
        close(drop.reason);
    }

    void read_next() {
        if (closed_) return;
        if (input_ended_) return close("client finished");
        asio::async_read_until(
            socket_, asio::dynamic_buffer(buffer_, shared_->limits.max_line_bytes + 1), '\n',
            [self = shared_from_this()](error_code error, std::size_t length) {
                self->on_read(error, length);
            });
    }

    void on_read(error_code error, std::size_t length) {
        // A drop in progress waits for the write, not for this read.
        if (closed_ || pending_drop_) return;
        if (error == asio::error::not_found) {  // max_line_bytes + 1 bytes and still no '\n'
            spdlog::warn("control: client {}: request larger than {} bytes, closing", id_,
                         shared_->limits.max_line_bytes);
            return send(error_response(RpcErrorCode::InvalidRequest,
                                       fmt::format("request larger than {} bytes",
                                                   shared_->limits.max_line_bytes),
                                       {{"limit", shared_->limits.max_line_bytes}}),
                        true);
        }
        if (error == asio::error::eof && !is_blank(buffer_)) {
            // The client half-closed after a last request without '\n': answer it, then close.
            input_ended_ = true;
            std::string line = std::exchange(buffer_, {});
            return handle(std::move(line));
        }
        if (error == asio::error::eof) return close("client closed");
        if (error) return close(error.message());
        std::string line = buffer_.substr(0, length - 1);
        buffer_.erase(0, length);
        handle(std::move(line));
    }

    void handle(std::string line) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (is_blank(line)) return read_next();
        // Chosen to be dropped meanwhile: the drop, already posted, closes it.
        if (!shared_->note_activity(id_, true, events_ != nullptr)) return;
        spdlog::debug("control: client {} request: {}", id_, excerpt(line));

        ParseOutcome outcome = parse_request(line);
        if (auto* rejected = std::get_if<RejectedRequest>(&outcome)) {
            return send(std::move(rejected->response), false);
        }
        auto& parsed = std::get<ParsedCall>(outcome);
        switch (parsed.execution) {
            case Execution::Inline:
                return send(execute(shared_->api, parsed), false);
            case Execution::Session:
                if (std::holds_alternative<ConsoleInputCall>(parsed.call))
                    return handle_console_input(parsed);
                return handle_session(std::move(parsed));
            case Execution::Query:
                if (const auto* write = std::get_if<ConsoleWriteCall>(&parsed.call)) {
                    if (auto refusal = console_input_refusal(write->lpar))
                        return send(error_response_for(parsed, *refusal), false);
                }
                return run_query(std::move(parsed));
            case Execution::LongRunning:
                break;
        }
        const bool submitted =
            shared_->long_pool.submit([self = shared_from_this(), parsed = std::move(parsed)] {
                std::string response = execute(self->shared_->api, parsed);
                asio::post(self->strand_,
                           [self, response = std::move(response)] { self->send(response, false); });
            });
        if (!submitted) close("server stopping");
    }

    // On the query pool, under the query timeout: whichever comes first, the result or the timer,
    // answers; the other is dropped (a late result is only logged).
    void run_query(ParsedCall parsed) {
        const std::uint64_t sequence = ++query_sequence_;
        awaited_query_ = sequence;
        const auto timeout = shared_->limits.query_timeout;
        query_timer_.expires_after(timeout);
        query_timer_.async_wait([self = shared_from_this(), sequence,
                                 timed_out = timeout_response(parsed, timeout),
                                 method = parsed.method, timeout](error_code error) {
            if (error || self->awaited_query_ != sequence) return;
            self->awaited_query_ = 0;
            spdlog::warn("control: client {}: {} timed out after {} ms", self->id_, method,
                         timeout.count());
            self->send(timed_out, false);
        });
        const bool submitted = shared_->query_pool.submit([self = shared_from_this(),
                                                           parsed = std::move(parsed), sequence] {
            std::string response = execute(self->shared_->api, parsed);
            asio::post(self->strand_,
                       [self, sequence, method = parsed.method, response = std::move(response)] {
                           if (self->awaited_query_ != sequence) {
                               spdlog::info("control: client {}: late result of {} discarded",
                                            self->id_, method);
                               return;
                           }
                           self->awaited_query_ = 0;
                           self->query_timer_.cancel();
                           self->send(response, false);
                       });
        });
        if (!submitted) close("server stopping");
    }

    // lpar.console_attach takes the LPAR's console input for this connection, unless another
    // holds it (the answer then names the holder, and this connection may still read);
    // lpar.console_detach gives it back. Bounded: an LPAR name is at most kMaxLparNameBytes, and
    // a connection holds at most kMaxConsoleInputs inputs.
    void handle_console_input(const ParsedCall& parsed) {
        static constexpr std::size_t kMaxConsoleInputs = 16;
        const auto& call = std::get<ConsoleInputCall>(parsed.call);
        if (call.lpar.size() > kMaxLparNameBytes) {
            return send(error_response_for(
                            parsed, Error(ErrorKind::NotFound, "no LPAR has a name that long")),
                        false);
        }
        bool input = false;
        std::string holder;
        {
            std::lock_guard lock(shared_->mutex);
            auto& holders = shared_->console_inputs;
            auto it = holders.find(call.lpar);
            if (!call.attach) {
                if (it != holders.end() && it->second.connection == id_) holders.erase(it);
            } else if (it != holders.end() && it->second.connection != id_) {
                holder = it->second.who;
            } else if (it == holders.end() && console_inputs_.size() >= kMaxConsoleInputs) {
                return send(
                    error_response_for(
                        parsed, Error(ErrorKind::Refused,
                                      fmt::format("this connection holds the console "
                                                  "input of {} LPARs already (at most {})",
                                                  console_inputs_.size(), kMaxConsoleInputs))),
                    false);
            } else {
                holders[call.lpar] = {
                    id_, fmt::format("client {} (pid {}, uid {}) since {}", id_, peer_.pid,
                                     peer_.uid, rfc3339_utc(now_wall_us()))};
                input = true;
            }
        }
        if (input && console_inputs_.insert(call.lpar).second) {
            spdlog::info("control: client {} (pid {}) holds {}'s console input", id_, peer_.pid,
                         call.lpar);
        }
        if (!call.attach && console_inputs_.erase(call.lpar) > 0) {
            spdlog::info("control: client {} gave {}'s console input back", id_, call.lpar);
        }
        send(console_input_response(parsed, input, holder), false);
    }

    // Why this connection may not type at `lpar`'s console now (another connection holds its
    // input), or nothing.
    std::optional<Error> console_input_refusal(const std::string& lpar) const {
        std::lock_guard lock(shared_->mutex);
        auto it = shared_->console_inputs.find(lpar);
        if (it == shared_->console_inputs.end() || it->second.connection == id_) return {};
        return Error(ErrorKind::Busy,
                     fmt::format("{}'s console input is held by {}; its output can still be read "
                                 "(lpar.console), and it can be typed at once that client "
                                 "detaches or disconnects",
                                 lpar, it->second.who));
    }

    void release_console_inputs() {
        if (console_inputs_.empty()) return;
        std::lock_guard lock(shared_->mutex);
        for (const auto& lpar : console_inputs_) {
            auto it = shared_->console_inputs.find(lpar);
            if (it != shared_->console_inputs.end() && it->second.connection == id_)
                shared_->console_inputs.erase(it);
        }
        console_inputs_.clear();
    }

    void handle_session(ParsedCall parsed) {
        const auto& call = std::get<SubscribeCall>(parsed.call);
        const bool subscribe = call.subscribe;
        if (subscribe && events_ != nullptr) {  // subscribed already: a new filter
            events_->set_filter(call.filter);
            return send(execute(shared_->api, parsed), false);
        }
        if (!subscribe && events_ == nullptr) {  // nothing to end
            return send(execute(shared_->api, parsed), false);
        }
        if (!subscribe) {
            // No event is written after this response: the queue refuses them from now on.
            std::unique_ptr<Subscription> subscription = events_->close();
            events_.reset();
            {
                std::lock_guard lock(shared_->mutex);
                shared_->subscribers.erase(id_);
            }
            release_subscription(*shared_, std::move(subscription));
            return send(execute(shared_->api, parsed), false);
        }
        // The wake only holds the connection weakly: the sink holds the queue, the queue must not
        // keep a closed connection alive.
        auto queue = std::make_shared<EventQueue>(shared_->limits.max_queued_events, call.filter,
                                                  [weak = weak_from_this(), strand = strand_] {
                                                      asio::post(strand, [weak] {
                                                          if (auto self = weak.lock()) self->pump();
                                                      });
                                                  });
        const bool submitted = shared_->query_pool.submit([self = shared_from_this(), queue,
                                                           parsed = std::move(parsed)] {
            std::string response;
            std::unique_ptr<Subscription> subscription;
            try {
                subscription = self->shared_->api.subscribe(
                    [queue](const Event& event) { queue->push(event); });
            } catch (const Error& error) {
                response = error_response_for(parsed, error);
            } catch (const std::exception& error) {
                response = error_response_for(
                    parsed, Error(ErrorKind::System,
                                  fmt::format("events.subscribe failed: {}", error.what())));
            }
            const bool subscribed = subscription != nullptr;
            if (subscribed) {
                response = execute(self->shared_->api, parsed);
                if (queue->adopt(subscription)) {
                    // Registered here, before the pool can be shut down: stop() sees it.
                    std::lock_guard lock(self->shared_->mutex);
                    self->shared_->subscribers[self->id_] = queue;
                }
                subscription.reset();  // not adopted: the queue was closed meanwhile
            }
            asio::post(self->strand_, [self, queue, subscribed, response = std::move(response)] {
                if (subscribed && !self->closed_) {
                    self->events_ = queue;  // events follow this response, never precede it
                } else if (subscribed) {
                    {
                        std::lock_guard lock(self->shared_->mutex);
                        self->shared_->subscribers.erase(self->id_);
                    }
                    release_subscription(*self->shared_, queue->close());
                }
                self->send(response, false);
            });
        });
        if (!submitted) {
            queue->close();
            close("server stopping");
        }
    }

    // Queues one response line (none for a notification); once it is written, reads the next
    // request or closes.
    void send(std::string response, bool close_after) {
        if (closed_) return;
        // Answered (or refused): silent again from now on, unless subscribed.
        (void)shared_->note_activity(id_, false, events_ != nullptr);
        if (response.empty()) return close_after ? close("refused") : read_next();
        if (response.size() > kLoggedRequestBytes) {
            spdlog::debug("control: client {} response: {} bytes", id_, response.size());
        } else {
            spdlog::debug("control: client {} response: {}", id_, response);
        }
        response.push_back('\n');
        pending_response_ = Outgoing{std::move(response), true, close_after};
        pump();
    }

    // Starts the next write unless one is in flight: the response first, then one event. One line
    // per async_write, so lines are never split or interleaved; taking events only when the socket
    // is idle is what bounds a slow subscriber to its EventQueue.
    void pump() {
        if (closed_ || writing_) return;
        if (pending_response_) {
            outgoing_ = std::move(*pending_response_);
            pending_response_.reset();
        } else if (events_) {
            std::optional<std::string> line = events_->pop_line();
            if (!line) return;
            outgoing_ = Outgoing{std::move(*line), false, false};
            outgoing_.line.push_back('\n');
        } else {
            return;
        }
        writing_ = true;
        asio::async_write(socket_, asio::buffer(outgoing_.line),
                          [self = shared_from_this()](error_code error, std::size_t) {
                              self->writing_ = false;
                              if (self->pending_drop_) return self->finish_drop(!error);
                              if (error) return self->close(error.message());
                              if (self->outgoing_.is_response) {
                                  if (self->outgoing_.close_after) return self->close("refused");
                                  self->read_next();
                              }
                              self->pump();
                          });
    }

    void close(std::string_view reason) {
        if (closed_) return;
        closed_ = true;
        query_timer_.cancel();
        release_console_inputs();
        if (events_) {
            {
                std::lock_guard lock(shared_->mutex);
                shared_->subscribers.erase(id_);
            }
            release_subscription(*shared_, events_->close());
            events_.reset();
        }
        error_code ignored;
        socket_.shutdown(Protocol::socket::shutdown_both, ignored);
        socket_.close(ignored);
        shared_->unregister(id_);
        spdlog::info("control: client {} (pid {}, uid {}) closed ({})", id_, peer_.pid, peer_.uid,
                     reason);
    }

    std::shared_ptr<ControlServer::Shared> shared_;
    Protocol::socket socket_;
    const asio::any_io_executor strand_;
    const std::uint64_t id_;
    const PeerCredentials peer_;  // for the log
    struct Outgoing {
        std::string line;  // with its '\n'
        bool is_response = false;
        bool close_after = false;
    };

    std::string buffer_;
    Outgoing outgoing_;                         // the line being written
    std::optional<Outgoing> pending_response_;  // at most one: requests are served one at a time
    struct PendingDrop {
        std::string line;  // the error line for the client, without '\n'
        std::string reason;
    };
    std::optional<PendingDrop> pending_drop_;  // set by drop() while a write is in flight
    bool writing_ = false;
    std::shared_ptr<EventQueue> events_;    // set while subscribed
    std::set<std::string> console_inputs_;  // the LPARs whose console input this one holds
    asio::steady_timer query_timer_{strand_};
    std::uint64_t query_sequence_ = 0;
    std::uint64_t awaited_query_ = 0;  // the query whose answer is still due; 0: none
    bool input_ended_ = false;
    bool closed_ = false;
};

void ControlServer::Shared::listen() {
    const sockaddr_un address = socket_address(path);  // checks the length first
    if (path.has_parent_path()) {
        std::error_code error;
        std::filesystem::create_directories(path.parent_path(), error);
        if (error) {
            throw Error(ErrorKind::System,
                        fmt::format("control socket directory {}: {}", path.parent_path().native(),
                                    error.message()));
        }
    }
    clear_stale_socket(path);

    error_code error;
    if (acceptor.open(Protocol(), error)) {
        throw Error(ErrorKind::System, fmt::format("control socket: socket: {}", error.message()));
    }
    const int fd = acceptor.native_handle();
    // Linux gives the bound file the socket inode's mode: narrowing it first means the file is
    // never wider than 0600. The chmod below, before listen(), is what guarantees it everywhere
    // else: until listen() nobody can connect, whatever the file's mode.
    (void)::fchmod(fd, kSocketMode);
    // SAFETY: sockaddr_un is the sockaddr that AF_UNIX expects; the size is the struct's own.
    if (::bind(fd, reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0) {
        const int saved = errno;
        if (saved == EADDRINUSE) {
            throw Error(
                ErrorKind::Busy,
                fmt::format("control socket {}: another daemon bound it just now", path.native()));
        }
        throw_errno(fmt::format("control socket {}: bind", path.native()), saved);
    }
    struct stat status {};
    if (::chmod(path.c_str(), kSocketMode) != 0 || ::lstat(path.c_str(), &status) != 0) {
        const int saved = errno;
        ::unlink(path.c_str());
        throw_errno(fmt::format("control socket {}: chmod 0600", path.native()), saved);
    }
    {
        std::lock_guard lock(mutex);
        socket_device = status.st_dev;
        socket_inode = status.st_ino;
        socket_bound = true;
    }
    const int backlog = static_cast<int>(std::max<std::size_t>(16, limits.max_clients));
    if (acceptor.listen(backlog, error)) {
        ::unlink(path.c_str());
        throw Error(ErrorKind::System,
                    fmt::format("control socket {}: listen: {}", path.native(), error.message()));
    }
    spdlog::info("control: serving {} (mode 0600, at most {} clients, silent ones closed after {})",
                 path.native(), limits.max_clients,
                 limits.client_idle_timeout.count() > 0 ? seconds_text(limits.client_idle_timeout)
                                                        : std::string("never"));
    asio::post(acceptor.get_executor(), [self = shared_from_this()] {
        self->accept_next();
        self->schedule_sweep();
    });
}

void ControlServer::Shared::accept_next() {
    if (stopping) return;
    acceptor.async_accept(asio::make_strand(io), [self = shared_from_this()](
                                                     error_code error, Protocol::socket socket) {
        if (self->stopping || error == asio::error::operation_aborted) return;
        if (error == asio::error::no_descriptors || error == asio::error::no_buffer_space ||
            error == asio::error::no_memory) {
            // Out of fds or memory: accepting again at once would spin. Back off a little.
            spdlog::warn("control: accept: {} (retrying in 100 ms)", error.message());
            self->retry_timer.expires_after(std::chrono::milliseconds(100));
            self->retry_timer.async_wait([self](error_code) { self->accept_next(); });
            return;
        }
        if (error) {
            spdlog::warn("control: accept: {}", error.message());
        } else {
            self->on_accepted(std::move(socket));
        }
        self->accept_next();
    });
}

void ControlServer::Shared::on_accepted(Protocol::socket socket) {
    PeerCredentials peer;
    const bool known_peer = peer_credentials(socket.native_handle(), peer);
    const bool allowed = known_peer && (peer.uid == 0 || peer.uid == ::geteuid());
    const Clock::time_point accepted_at = now();

    std::shared_ptr<Connection> connection;
    std::shared_ptr<Connection> evicted;
    Client evicted_client;
    std::string refusal;
    std::uint64_t id = 0;
    bool warn_full = false;
    std::size_t evicted_count = 0;
    std::size_t refused_count = 0;
    {
        std::lock_guard lock(mutex);
        id = next_id++;
        if (!allowed) {
            refusal = error_response(
                RpcErrorCode::Refused,
                known_peer ? fmt::format("permission denied: uid {} may not use the control socket "
                                         "(only root and uid {})",
                                         peer.uid, ::geteuid())
                           : std::string("permission denied: peer credentials unavailable"));
        } else if (counted_clients >= limits.max_clients) {
            // Full: make room by dropping the connection silent longest. The victim's slot is
            // handed over here, under the lock, so the table never holds more than max_clients
            // counted connections, however fast they arrive.
            auto victim = longest_silent_locked();
            if (victim != connections.end()) evicted = victim->second.connection.lock();
            if (evicted) {
                victim->second.dropping = true;
                victim->second.counted = false;
                --counted_clients;
                evicted_client = victim->second;
                ++evicted_unreported;
            } else {
                refusal =
                    error_response(RpcErrorCode::Busy,
                                   fmt::format("too many clients (at most {})", limits.max_clients),
                                   {{"limit", limits.max_clients}});
                ++refused_unreported;
            }
            warn_full = full_table_warning_due_locked();
            if (warn_full) {
                evicted_count = std::exchange(evicted_unreported, 0);
                refused_count = std::exchange(refused_unreported, 0);
            }
        }
        const bool counted = refusal.empty();
        connection = std::make_shared<Connection>(shared_from_this(), std::move(socket), id, peer);
        connections.emplace(id, Client{connection, counted, false, false, false, accepted_at});
        if (counted) ++counted_clients;
    }
    if (warn_full) {
        spdlog::warn(
            "control: {} clients connected (the limit): since the last such warning, {} "
            "silent client(s) dropped to make room, {} new client(s) refused (each is "
            "logged at info level)",
            limits.max_clients, evicted_count, refused_count);
    }
    if (evicted) {
        const auto silent = accepted_at - evicted_client.idle_since;
        evicted->drop(
            error_response(
                RpcErrorCode::Busy,
                fmt::format("dropped to make room for a new client: silent for {} "
                            "while {} clients were connected (the limit)",
                            seconds_text(silent), limits.max_clients),
                {{"kind", "Busy"},
                 {"reason", "evicted"},
                 {"limit", limits.max_clients},
                 {"silent_ms",
                  std::chrono::duration_cast<std::chrono::milliseconds>(silent).count()}}),
            fmt::format("dropped to make room for client {}: silent for {}, {} clients connected",
                        id, seconds_text(silent), limits.max_clients));
    }
    if (!refusal.empty()) {
        // A full table is summed up in the rate-limited warning above; a stranger is worth one.
        spdlog::log(allowed ? spdlog::level::info : spdlog::level::warn,
                    "control: client {} (pid {}, uid {}) refused: {}", id, peer.pid, peer.uid,
                    allowed ? "too many clients, none of them silent" : "permission denied");
        connection->refuse(std::move(refusal));
        return;
    }
    spdlog::info("control: client {} connected (pid {}, uid {})", id, peer.pid, peer.uid);
    connection->start();
}

std::unordered_map<std::uint64_t, ControlServer::Shared::Client>::iterator
ControlServer::Shared::longest_silent_locked() {
    auto best = connections.end();
    for (auto it = connections.begin(); it != connections.end(); ++it) {
        const Client& client = it->second;
        if (!client.counted || client.dropping || client.busy || client.subscribed) continue;
        if (best == connections.end() || client.idle_since < best->second.idle_since ||
            (client.idle_since == best->second.idle_since && it->first < best->first)) {
            best = it;
        }
    }
    return best;
}

bool ControlServer::Shared::full_table_warning_due_locked() {
    const auto real_now = Clock::now();
    if (last_full_table_warning &&
        real_now - *last_full_table_warning < kFullTableWarningInterval) {
        return false;
    }
    last_full_table_warning = real_now;
    return true;
}

void ControlServer::Shared::unregister(std::uint64_t id) {
    std::lock_guard lock(mutex);
    auto it = connections.find(id);
    if (it == connections.end()) return;
    if (it->second.counted) --counted_clients;
    connections.erase(it);
}

bool ControlServer::Shared::note_activity(std::uint64_t id, bool busy, bool subscribed) {
    const Clock::time_point at = now();
    std::lock_guard lock(mutex);
    auto it = connections.find(id);
    if (it == connections.end() || it->second.dropping) return false;
    it->second.busy = busy;
    it->second.subscribed = subscribed;
    it->second.idle_since = at;
    return true;
}

std::size_t ControlServer::Shared::close_idle() {
    const auto timeout = limits.client_idle_timeout;
    if (timeout.count() <= 0 || stopping) return 0;
    const Clock::time_point at = now();
    std::vector<std::pair<std::shared_ptr<Connection>, Clock::duration>> idle;
    {
        std::lock_guard lock(mutex);
        for (auto& [id, client] : connections) {
            if (!client.counted || client.dropping || client.busy || client.subscribed) continue;
            if (at - client.idle_since < timeout) continue;
            auto connection = client.connection.lock();
            if (!connection) continue;
            client.dropping = true;
            client.counted = false;
            --counted_clients;
            idle.emplace_back(std::move(connection), at - client.idle_since);
        }
    }
    for (auto& [connection, silent] : idle) {
        connection->drop(
            error_response(
                kTimeoutCode,
                fmt::format("idle for {} without a request: closing", seconds_text(timeout)),
                {{"kind", "Timeout"}, {"reason", "idle"}, {"idle_timeout_ms", timeout.count()}}),
            fmt::format("idle timeout: no request for {} (limit {})", seconds_text(silent),
                        seconds_text(timeout)));
    }
    return idle.size();
}

void ControlServer::Shared::schedule_sweep() {
    const auto timeout = limits.client_idle_timeout;
    if (timeout.count() <= 0 || stopping) return;
    const auto period = std::clamp<std::chrono::milliseconds>(
        timeout / 4, std::chrono::milliseconds(10), std::chrono::milliseconds(1000));
    sweep_timer.expires_after(period);
    sweep_timer.async_wait([self = shared_from_this()](error_code error) {
        if (error || self->stopping) return;
        self->close_idle();
        self->schedule_sweep();
    });
}

void ControlServer::Shared::stop() {
    std::lock_guard stop_lock(stop_mutex);
    if (stopped) return;
    stopped = true;
    stopping = true;

    // The file goes first, so that new clients fail at once instead of queueing on a dying socket.
    std::vector<std::shared_ptr<Connection>> open;
    {
        std::lock_guard lock(mutex);
        struct stat status {};
        if (socket_bound && ::lstat(path.c_str(), &status) == 0 && status.st_dev == socket_device &&
            status.st_ino == socket_inode) {
            ::unlink(path.c_str());
        }
        socket_bound = false;
        for (auto& [id, client] : connections) {
            if (auto connection = client.connection.lock()) open.push_back(std::move(connection));
        }
    }
    asio::post(acceptor.get_executor(), [self = shared_from_this()] {
        error_code ignored;
        self->acceptor.close(ignored);
        self->retry_timer.cancel();
        self->sweep_timer.cancel();
    });
    for (auto& connection : open) connection->close_from_server();
    open.clear();

    // A relocation cannot be abandoned half-way: wait for the running ones.
    query_pool.shutdown();
    long_pool.shutdown();

    // No sink may be called once stop() returns: end the subscriptions here, on this thread.
    std::vector<std::shared_ptr<EventQueue>> queues;
    {
        std::lock_guard lock(mutex);
        for (auto& [id, weak] : subscribers) {
            if (auto queue = weak.lock()) queues.push_back(std::move(queue));
        }
        subscribers.clear();
    }
    for (auto& queue : queues) queue->close().reset();
    spdlog::info("control: stopped serving {}", path.native());
}

ControlServer::ControlServer(asio::io_context& io, std::filesystem::path socket_path, Api& api,
                             ServerLimits limits)
    : shared_(std::make_shared<Shared>(io, std::move(socket_path), api, std::move(limits))) {
    try {
        shared_->listen();
    } catch (...) {
        shared_->stopping = true;
        shared_->query_pool.shutdown();
        shared_->long_pool.shutdown();
        throw;
    }
}

ControlServer::~ControlServer() {
    stop();
}

void ControlServer::stop() {
    shared_->stop();
}

const std::filesystem::path& ControlServer::socket_path() const noexcept {
    return shared_->path;
}

std::size_t ControlServer::queued_events() const {
    std::vector<std::shared_ptr<EventQueue>> queues;
    {
        std::lock_guard lock(shared_->mutex);
        for (auto& [id, weak] : shared_->subscribers) {
            if (auto queue = weak.lock()) queues.push_back(std::move(queue));
        }
    }
    std::size_t total = 0;
    for (auto& queue : queues) total += queue->size();
    return total;
}

std::size_t ControlServer::close_idle_clients() {
    return shared_->close_idle();
}

std::size_t ControlServer::client_count() const noexcept {
    std::lock_guard lock(shared_->mutex);
    return shared_->counted_clients;
}

}  // namespace lparvisor::control
