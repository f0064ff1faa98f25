// libFuzzer target for the control socket's framing: a real control::ControlServer (Boost.Asio,
// its worker pools, its line reader) serving tests/control/fake_api.hpp's FakeApi on a Unix
// socket in a temporary directory, in-process and without KVM. Each input is one connection:
// its bytes are written in chunks (so lines arrive split and joined in every way), the client
// half-closes, and everything the server sends is read until it closes the connection.
//
// Input: u8 split seed (the chunk sizes, 1-64 bytes, come from it), then the byte stream.
// The server runs with a 4 KiB line limit, so that an over-long line is within reach.
// Invariants beyond "no crash, no sanitizer report": the server closes the connection after
// the client's half-close (within 10 s); everything it sends is whole lines, each one JSON-RPC
// 2.0 object (a response with an id and exactly one of result / error, or a notification); it
// never sends more responses than there were lines (notifications are not counted).
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>

#include <boost/asio/io_context.hpp>
#include <nlohmann/json.hpp>

#include "control/server.hpp"
#include "fake_api.hpp"
#include "fuzz_support.hpp"

namespace {

using namespace lparvisor;
using namespace lparvisor::control;

constexpr std::size_t kLineLimit = 4096;
constexpr auto kDeadline = std::chrono::seconds(10);

// One server for the whole run (started once; never torn down, so that no exit path can hang).
struct Server {
    Server() {
        char pattern[] = "/tmp/lparvisor-fuzz-control-XXXXXX";
        if (::mkdtemp(pattern) == nullptr) fuzz::fail("mkdtemp");
        dir = pattern;
        path = dir / "control.sock";
        ServerLimits limits;
        limits.max_line_bytes = kLineLimit;
        limits.query_timeout = std::chrono::seconds(5);
        server = std::make_unique<ControlServer>(io, path, api, limits);
        thread = std::thread([this] { io.run(); });
        thread.detach();
        std::atexit([] {
            std::error_code ignored;
            std::filesystem::remove_all(instance().dir, ignored);
        });
    }
    static Server& instance() {
        static Server* server = new Server;  // never destroyed (see above)
        return *server;
    }
    // What earlier inputs did to the fake's state does not leak into the next one. Under the
    // fake's lock: a notification of an earlier input may still be running in a worker.
    void reset_api() { api.reset(test::fig3a_status()); }

    std::filesystem::path dir;
    std::filesystem::path path;
    boost::asio::io_context io;
    test::FakeApi api;
    std::unique_ptr<ControlServer> server;
    std::thread thread;
};

int connect_to(const std::filesystem::path& path) {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) fuzz::fail("socket");
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, path.c_str(), sizeof(address.sun_path) - 1);
    // SAFETY: sockaddr_un is a sockaddr for connect(); the size is the struct's.
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof address) != 0)
        fuzz::fail("connect to the control socket");
    ::fcntl(fd, F_SETFL, O_NONBLOCK);
    return fd;
}

// True for a response, false for an event notification (the fake Api sends a relocation's or
// a resize's final event to subscribers, as the hypervisor does; they answer no line).
bool check_line(const std::string& line) {
    const auto message = nlohmann::json::parse(line, nullptr, false);
    if (message.is_discarded() || !message.is_object())
        fuzz::fail("the server sent a line that is not a JSON object");
    if (!message.contains("jsonrpc") || message["jsonrpc"] != "2.0")
        fuzz::fail("the server sent a line without \"jsonrpc\":\"2.0\"");
    if (message.contains("method")) return false;  // an event notification
    if (!message.contains("id") || message.contains("result") == message.contains("error"))
        fuzz::fail("the server sent a response without an id or one of result / error");
    return true;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    fuzz::quiet_logs();
    Server::instance();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    Server& server = Server::instance();
    server.reset_api();
    std::uint32_t seed = data[0] * 2654435761u + 1;
    // SAFETY: the fuzzer's size - 1 bytes after the first, as chars (which may alias anything).
    const std::string stream(reinterpret_cast<const char*>(data + 1), size - 1);

    const int fd = connect_to(server.path);
    std::size_t sent = 0;
    bool half_closed = false;
    std::string received;
    const auto deadline = std::chrono::steady_clock::now() + kDeadline;
    for (;;) {
        if (std::chrono::steady_clock::now() > deadline)
            fuzz::fail("the server did not close the connection after the client's half-close");
        if (sent == stream.size() && !half_closed) {
            ::shutdown(fd, SHUT_WR);
            half_closed = true;
        }
        pollfd p{fd, static_cast<short>(POLLIN | (half_closed ? 0 : POLLOUT)), 0};
        if (::poll(&p, 1, 100) < 0) continue;
        if (p.revents & POLLOUT) {
            seed = seed * 1103515245u + 12345u;
            const std::size_t chunk =
                std::min<std::size_t>(1 + (seed >> 16) % 64, stream.size() - sent);
            const ssize_t n = ::send(fd, stream.data() + sent, chunk, MSG_NOSIGNAL);
            if (n > 0) sent += static_cast<std::size_t>(n);
            if (n < 0 && errno != EAGAIN && errno != EINTR) {
                sent = stream.size();  // the server closed on us (a refused line): stop sending
            }
        }
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
            char buffer[65536];
            const ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
            if (n > 0) {
                received.append(buffer, static_cast<std::size_t>(n));
            } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
                break;  // closed (EOF or reset)
            }
        }
    }
    ::close(fd);

    if (!received.empty() && received.back() != '\n')
        fuzz::fail("the server's output does not end with a whole line");
    std::size_t responses = 0;
    for (std::size_t start = 0; start < received.size();) {
        const std::size_t end = received.find('\n', start);
        if (check_line(received.substr(start, end - start))) ++responses;
        start = end + 1;
    }
    const std::size_t lines =
        static_cast<std::size_t>(std::count(stream.begin(), stream.end(), '\n')) + 1;
    fuzz::check(responses <= lines, "more responses than request lines");
    fuzz::tally(responses == 0 ? "no response" : "responses");
    return 0;
}
