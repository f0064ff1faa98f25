#include "support/control_client.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <catch2/catch.hpp>

namespace lparvisor::test {

namespace {

int connect_to(const std::filesystem::path& socket) {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::snprintf(address.sun_path, sizeof address.sun_path, "%s", socket.c_str());
    // SAFETY: sockaddr_un is the sockaddr the call expects for AF_UNIX.
    REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0);
    return fd;
}

void send_line(int fd, const std::string& line) {
    std::string request = line + "\n";
    REQUIRE(::write(fd, request.data(), request.size()) == static_cast<ssize_t>(request.size()));
}

}  // namespace

nlohmann::json rpc(const std::filesystem::path& socket, const std::string& line) {
    int fd = connect_to(socket);
    send_line(fd, line);
    std::string response;
    char c;
    while (::read(fd, &c, 1) == 1 && c != '\n') response.push_back(c);
    ::close(fd);
    INFO("response: " << response);
    return nlohmann::json::parse(response);
}

nlohmann::json rpc_call(const std::filesystem::path& socket, const std::string& method,
                        const nlohmann::json& params) {
    return rpc(socket,
               nlohmann::json{{"jsonrpc", "2.0"}, {"id", 1}, {"method", method}, {"params", params}}
                   .dump());
}

SocketFixture::SocketFixture(control::Api& api, const std::filesystem::path& socket_path)
    : path_(socket_path) {
    server_ = std::make_unique<control::ControlServer>(io_, path_, api);
    thread_ = std::thread([this] { io_.run(); });
}

SocketFixture::~SocketFixture() {
    server_->stop();
    thread_.join();
}

EventSubscriber::EventSubscriber(const std::filesystem::path& socket) : fd_(connect_to(socket)) {
    send_line(fd_, R"({"jsonrpc":"2.0","id":"sub","method":"events.subscribe"})");
    reader_ = std::thread([this] {
        std::string line;
        while (!stop_) {
            pollfd p{fd_, POLLIN, 0};
            if (::poll(&p, 1, 50) <= 0) continue;
            char buffer[4096];
            ssize_t n = ::read(fd_, buffer, sizeof buffer);
            if (n <= 0) break;
            for (ssize_t i = 0; i < n; ++i) {
                if (buffer[i] != '\n') {
                    line.push_back(buffer[i]);
                    continue;
                }
                auto message = nlohmann::json::parse(line, nullptr, false);
                line.clear();
                if (!message.is_object()) continue;
                std::lock_guard lock(mutex_);
                if (message.value("method", "") == "event") {
                    events_.push_back(message["params"]);
                } else if (message.value("id", "") == "sub" && message.contains("result")) {
                    subscribed_ = true;
                }
                arrived_.notify_all();
            }
        }
    });
    std::unique_lock lock(mutex_);
    const bool answered =
        arrived_.wait_for(lock, std::chrono::seconds(60), [this] { return subscribed_; });
    lock.unlock();
    if (!answered) {
        stop_ = true;
        reader_.join();
        ::close(fd_);
        FAIL("events.subscribe was not answered within 60 s");
    }
}

EventSubscriber::~EventSubscriber() {
    stop_ = true;
    reader_.join();
    ::close(fd_);
}

std::vector<nlohmann::json> EventSubscriber::events_of(const std::string& type) const {
    std::lock_guard lock(mutex_);
    std::vector<nlohmann::json> found;
    for (const auto& e : events_)
        if (e.value("event", "") == type) found.push_back(e);
    return found;
}

bool EventSubscriber::wait_for(const std::string& type,
                               const std::function<bool(const nlohmann::json&)>& match,
                               std::chrono::seconds deadline) {
    std::unique_lock lock(mutex_);
    return arrived_.wait_for(lock, deadline, [&] {
        for (const auto& e : events_)
            if (e.value("event", "") == type && (!match || match(e))) return true;
        return false;
    });
}

}  // namespace lparvisor::test
