#include "client.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <utility>

#include <fmt/format.h>

namespace lparvisor::svp {

namespace {

using Clock = std::chrono::steady_clock;

// A response to the largest console request (1 MiB, every byte escaped) fits well within this.
constexpr std::size_t kMaxResponseBytes = std::size_t{16} * 1024 * 1024;
constexpr int kRequestId = 1;

class SocketFd {
  public:
    explicit SocketFd(int fd) noexcept : fd_(fd) {}
    SocketFd(const SocketFd&) = delete;
    SocketFd& operator=(const SocketFd&) = delete;
    ~SocketFd() {
        if (fd_ >= 0) ::close(fd_);
    }
    [[nodiscard]] int get() const noexcept { return fd_; }

  private:
    int fd_;
};

int milliseconds_left(Clock::time_point deadline) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    return left.count() <= 0 ? 0 : static_cast<int>(std::min<long long>(left.count(), 1 << 30));
}

Failure timeout_failure(const std::string& path, std::chrono::milliseconds timeout) {
    return Failure(kExitProtocol,
                   fmt::format("no answer from {} within {:.1f} s (use --timeout to wait longer)",
                               path, static_cast<double>(timeout.count()) / 1000.0));
}

// Waits until the socket is ready for `events`; false at the deadline.
bool wait_ready(int fd, short events, Clock::time_point deadline) {
    for (;;) {
        const int left = milliseconds_left(deadline);
        if (left == 0) return false;
        pollfd poll_fd{fd, events, 0};
        const int ready = ::poll(&poll_fd, 1, left);
        if (ready > 0) return true;
        if (ready < 0 && errno != EINTR) {
            throw Failure(kExitProtocol, fmt::format("poll: {}", std::strerror(errno)));
        }
    }
}

void connect_socket(int fd, const std::string& path, Clock::time_point deadline,
                    std::chrono::milliseconds timeout) {
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    if (path.size() >= sizeof(address.sun_path)) {
        throw Failure(kExitNoDaemon, fmt::format("cannot connect to {}: path too long", path));
    }
    path.copy(address.sun_path, path.size());
    // A Unix socket connect() only blocks when the daemon's backlog is full; bound it.
    const int limit_ms = std::max(1, milliseconds_left(deadline));  // 0 would mean "forever"
    timeval limit{};
    limit.tv_sec = limit_ms / 1000;
    limit.tv_usec = static_cast<suseconds_t>(limit_ms % 1000) * 1000;
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof(limit));
    int result = 0;
    do {
        // SAFETY: sockaddr_un is the sockaddr that AF_UNIX expects.
        result = ::connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof(address));
    } while (result != 0 && errno == EINTR);
    if (result == 0) return;
    if (errno == EAGAIN || errno == EINPROGRESS) throw timeout_failure(path, timeout);
    throw Failure(kExitNoDaemon,
                  fmt::format("cannot connect to {}: {} (is lparvisor running? use --socket or "
                              "$LPARVISOR_SOCKET to name its control socket)",
                              path, std::strerror(errno)));
}

void send_all(int fd, std::string_view bytes, const std::string& path, Clock::time_point deadline,
              std::chrono::milliseconds timeout) {
    while (!bytes.empty()) {
        const ssize_t written = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
        if (written >= 0) {
            bytes.remove_prefix(static_cast<std::size_t>(written));
        } else if (errno == EAGAIN) {
            if (!wait_ready(fd, POLLOUT, deadline)) throw timeout_failure(path, timeout);
        } else if (errno != EINTR) {
            throw Failure(kExitProtocol,
                          fmt::format("sending to {}: {}", path, std::strerror(errno)));
        }
    }
}

std::string receive_line(int fd, const std::string& path, Clock::time_point deadline,
                         std::chrono::milliseconds timeout) {
    std::string received;
    char chunk[65536];
    for (;;) {
        if (auto newline = received.find('\n'); newline != std::string::npos) {
            received.resize(newline);
            return received;
        }
        if (received.size() > kMaxResponseBytes) {
            throw Failure(kExitProtocol, fmt::format("response from {} larger than {} bytes", path,
                                                     kMaxResponseBytes));
        }
        const ssize_t got = ::recv(fd, chunk, sizeof(chunk), 0);
        if (got > 0) {
            received.append(chunk, static_cast<std::size_t>(got));
        } else if (got == 0 || errno == ECONNRESET) {
            throw Failure(kExitProtocol,
                          fmt::format("{} closed the connection without answering", path));
        } else if (errno == EAGAIN) {
            if (!wait_ready(fd, POLLIN, deadline)) throw timeout_failure(path, timeout);
        } else if (errno != EINTR) {
            throw Failure(kExitProtocol,
                          fmt::format("reading from {}: {}", path, std::strerror(errno)));
        }
    }
}

}  // namespace

std::string default_socket_path() {
    const char* from_environment = std::getenv("LPARVISOR_SOCKET");
    if (from_environment != nullptr && *from_environment != '\0') return from_environment;
    return "/run/lparvisor/control.sock";
}

Reply to_reply(nlohmann::json response_json, int id, const std::string& socket_path,
               std::string_view line) {
    Reply reply;
    reply.response = std::move(response_json);
    const auto& response = reply.response;
    if (!response.is_object() || response.value("jsonrpc", "") != "2.0") {
        throw Failure(kExitProtocol,
                      fmt::format("{} answered something that is not JSON-RPC 2.0: {}", socket_path,
                                  line.substr(0, 200)));
    }
    if (response.contains("error") && response["error"].is_object() &&
        response["error"].value("code", nlohmann::json()).is_number_integer() &&
        response["error"].value("message", nlohmann::json()).is_string()) {
        // Errors about the connection itself (too many clients, not allowed) have id null.
        reply.ok = false;
        return reply;
    }
    if (!response.contains("result") || response.value("id", nlohmann::json()) != id) {
        throw Failure(kExitProtocol, fmt::format("{} answered without a result for request {}: {}",
                                                 socket_path, id, line.substr(0, 200)));
    }
    reply.ok = true;
    return reply;
}

Reply call(const std::string& socket_path, std::string_view method, const nlohmann::json& params,
           std::chrono::milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    SocketFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (fd.get() < 0) throw Failure(kExitNoDaemon, fmt::format("socket: {}", std::strerror(errno)));
    connect_socket(fd.get(), socket_path, deadline, timeout);
    ::fcntl(fd.get(), F_SETFL, ::fcntl(fd.get(), F_GETFL) | O_NONBLOCK);

    nlohmann::json request{{"jsonrpc", "2.0"}, {"id", kRequestId}, {"method", method}};
    if (!params.empty()) request["params"] = params;
    send_all(fd.get(), request.dump() + "\n", socket_path, deadline, timeout);
    const std::string line = receive_line(fd.get(), socket_path, deadline, timeout);
    try {
        return to_reply(nlohmann::json::parse(line), kRequestId, socket_path, line);
    } catch (const nlohmann::json::exception& error) {
        throw Failure(kExitProtocol,
                      fmt::format("{} answered with invalid JSON: {}", socket_path, error.what()));
    }
}

Session::Session(std::string socket_path, std::chrono::milliseconds timeout)
    : path_(std::move(socket_path)) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) throw Failure(kExitNoDaemon, fmt::format("socket: {}", std::strerror(errno)));
    try {
        connect_socket(fd_, path_, Clock::now() + timeout, timeout);
    } catch (...) {
        ::close(fd_);
        throw;
    }
    ::fcntl(fd_, F_SETFL, ::fcntl(fd_, F_GETFL) | O_NONBLOCK);
}

Session::~Session() {
    if (fd_ >= 0) ::close(fd_);
}

void Session::send_request(int id, std::string_view method, const nlohmann::json& params) {
    nlohmann::json request{{"jsonrpc", "2.0"}, {"id", id}, {"method", method}};
    if (!params.empty()) request["params"] = params;
    const std::chrono::milliseconds timeout(10000);
    send_all(fd_, request.dump() + "\n", path_, Clock::now() + timeout, timeout);
}

std::optional<std::string> Session::take_line() {
    const auto newline = buffer_.find('\n');
    if (newline == std::string::npos) return std::nullopt;
    std::string line = buffer_.substr(0, newline);
    buffer_.erase(0, newline + 1);
    return line;
}

bool Session::receive(std::chrono::milliseconds wait) {
    pollfd poll_fd{fd_, POLLIN, 0};
    const int ready = ::poll(&poll_fd, 1, static_cast<int>(wait.count()));
    if (ready <= 0) return false;  // timeout, or EINTR: the caller looks at its signal flag
    char chunk[65536];
    const ssize_t got = ::recv(fd_, chunk, sizeof(chunk), 0);
    if (got > 0) {
        buffer_.append(chunk, static_cast<std::size_t>(got));
        if (buffer_.size() > kMaxResponseBytes) {
            throw Failure(kExitProtocol, fmt::format("line from {} larger than {} bytes", path_,
                                                     kMaxResponseBytes));
        }
        return true;
    }
    if (got == 0 || errno == ECONNRESET) {
        throw Failure(kExitProtocol, fmt::format("{} closed the connection", path_));
    }
    if (errno == EAGAIN || errno == EINTR) return false;
    throw Failure(kExitProtocol, fmt::format("reading from {}: {}", path_, std::strerror(errno)));
}

Reply Session::request(int id, std::string_view method, const nlohmann::json& params,
                       std::chrono::milliseconds timeout,
                       const NotificationHandler& on_notification) {
    const auto deadline = Clock::now() + timeout;
    send_request(id, method, params);
    for (;;) {
        while (auto line = take_line()) {
            nlohmann::json message = nlohmann::json::parse(*line, nullptr, false);
            if (message.is_discarded()) {
                throw Failure(kExitProtocol, fmt::format("{} sent a line that is not JSON", path_));
            }
            if (message.is_object() && !message.contains("id") && message.contains("method")) {
                if (on_notification) on_notification(message);
                continue;
            }
            return to_reply(std::move(message), id, path_, *line);
        }
        const int left = milliseconds_left(deadline);
        if (left == 0) throw timeout_failure(path_, timeout);
        (void)receive(std::chrono::milliseconds(std::min(left, 250)));
    }
}

std::string_view error_code_name(int code) noexcept {
    switch (code) {
        case -32700:
            return "ParseError";
        case -32600:
            return "InvalidRequest";
        case -32601:
            return "MethodNotFound";
        case -32602:
            return "InvalidParams";
        case -32603:
            return "InternalError";
        case -32001:
            return "NotFound";
        case -32002:
            return "InvalidArgument";
        case -32003:
            return "Refused";
        case -32004:
            return "Busy";
        case -32005:
            return "System";
        default:
            return "error";
    }
}

}  // namespace lparvisor::svp
