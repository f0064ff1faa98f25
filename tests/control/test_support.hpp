// Helpers for the socket tests: a temp directory, a ControlServer on a background io_context
// thread, and a blocking line client with timeouts.
#pragma once

#include <poll.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <spdlog/spdlog.h>
#include <boost/asio/io_context.hpp>

#include "control/server.hpp"
#include "fake_api.hpp"
#include "util/fd.hpp"

namespace lparvisor::control::test {

using namespace std::chrono_literals;

class TempDir {
  public:
    TempDir() {
        std::string pattern =
            (std::filesystem::temp_directory_path() / "lparvisor-ctl-XXXXXX").string();
        if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
        path_ = pattern;
    }
    ~TempDir() {
        std::error_code ignored;
        std::filesystem::remove_all(path_, ignored);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    const std::filesystem::path& path() const { return path_; }

  private:
    std::filesystem::path path_;
};

// A ControlServer serving the FakeApi on <tmp>/control.sock from a background thread.
class ServerFixture {
  public:
    explicit ServerFixture(ServerLimits limits = {}, int io_threads = 1)
        : socket_path(dir.path() / "control.sock") {
        spdlog::set_level(spdlog::level::warn);
        server = std::make_unique<ControlServer>(io, socket_path, api, limits);
        io_thread = std::thread([this] { io.run(); });
        for (int i = 1; i < io_threads; ++i) extra_io_threads.emplace_back([this] { io.run(); });
    }
    ~ServerFixture() { shutdown(); }
    ServerFixture(const ServerFixture&) = delete;
    ServerFixture& operator=(const ServerFixture&) = delete;

    void shutdown() {
        if (server) server->stop();
        if (io_thread.joinable()) io_thread.join();
        for (auto& thread : extra_io_threads) {
            if (thread.joinable()) thread.join();
        }
        server.reset();
    }

    TempDir dir;
    std::filesystem::path socket_path;
    FakeApi api;
    boost::asio::io_context io;
    std::unique_ptr<ControlServer> server;
    std::thread io_thread;
    std::vector<std::thread> extra_io_threads;
};

inline Fd connect_unix(const std::filesystem::path& path) {
    Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd.valid()) throw std::runtime_error("socket failed");
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, path.c_str(), sizeof(address.sun_path) - 1);
    // SAFETY: sockaddr_un is what AF_UNIX expects.
    if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0) {
        throw std::runtime_error(std::string("connect failed: ") + std::strerror(errno));
    }
    return fd;
}

// A blocking newline-delimited client with per-call timeouts.
// Waits until `condition` holds, polling; false after the timeout.
template <typename Condition>
bool eventually(Condition condition, std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
        if (condition()) return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return condition();
}

class LineClient {
  public:
    explicit LineClient(const std::filesystem::path& path) : fd_(connect_unix(path)) {}

    void send(std::string_view bytes) {
        while (!bytes.empty()) {
            const ssize_t written = ::send(fd_.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL);
            if (written < 0) {
                if (errno == EINTR) continue;
                throw std::runtime_error(std::string("send failed: ") + std::strerror(errno));
            }
            bytes.remove_prefix(static_cast<std::size_t>(written));
        }
    }

    // Sends bytes and ignores errors: for clients that the server may already have closed.
    void send_best_effort(std::string_view bytes) {
        (void)::send(fd_.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    }

    // The next line without its '\n'; nullopt on EOF, reset or timeout (timed_out() tells).
    std::optional<std::string> read_line(std::chrono::milliseconds timeout = 5000ms) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        timed_out_ = false;
        for (;;) {
            if (auto newline = buffer_.find('\n'); newline != std::string::npos) {
                std::string line = buffer_.substr(0, newline);
                buffer_.erase(0, newline + 1);
                return line;
            }
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                deadline - std::chrono::steady_clock::now());
            if (left.count() <= 0) {
                timed_out_ = true;
                return std::nullopt;
            }
            pollfd poll_fd{fd_.get(), POLLIN, 0};
            const int ready = ::poll(&poll_fd, 1, static_cast<int>(left.count()));
            if (ready < 0 && errno == EINTR) continue;
            if (ready <= 0) continue;
            char chunk[65536];
            const ssize_t got = ::recv(fd_.get(), chunk, sizeof(chunk), 0);
            if (got < 0 && errno == EINTR) continue;
            if (got <= 0) return std::nullopt;  // EOF or ECONNRESET: closed by the server
            buffer_.append(chunk, static_cast<std::size_t>(got));
        }
    }

    // True once the server has closed the connection (EOF or reset) within the timeout.
    bool closed_by_server(std::chrono::milliseconds timeout = 5000ms) {
        while (auto line = read_line(timeout)) {
        }
        return !timed_out_;
    }

    bool timed_out() const { return timed_out_; }
    void shutdown_write() { ::shutdown(fd_.get(), SHUT_WR); }
    int fd() const { return fd_.get(); }

  private:
    Fd fd_;
    std::string buffer_;
    bool timed_out_ = false;
};

}  // namespace lparvisor::control::test
