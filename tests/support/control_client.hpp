// A real client of the control socket for the KVM tests: one request per connection, or a
// subscriber that collects event notifications on its own connection.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <nlohmann/json.hpp>

#include "control/server.hpp"

namespace lparvisor::test {

// One JSON-RPC request, one response line back (a fresh connection each time).
nlohmann::json rpc(const std::filesystem::path& socket, const std::string& line);
// rpc() with {"jsonrpc":"2.0","id":1,"method":method,"params":params}.
nlohmann::json rpc_call(const std::filesystem::path& socket, const std::string& method,
                        const nlohmann::json& params = nlohmann::json::object());

// The daemon's control socket, served from a background thread as lparvisor's main() does.
class SocketFixture {
  public:
    SocketFixture(control::Api& api, const std::filesystem::path& socket_path);
    ~SocketFixture();
    const std::filesystem::path& path() const { return path_; }

  private:
    boost::asio::io_context io_;
    std::filesystem::path path_;
    std::unique_ptr<control::ControlServer> server_;
    std::thread thread_;
};

// A second client that subscribes to events and keeps every notification it receives. The
// constructor returns once the daemon has answered the subscription, so every event published
// after it reaches this client. Events arrive on their own connection, after the response that
// caused them may already have reached another client: wait_for() an event before looking at
// what came before it.
class EventSubscriber {
  public:
    explicit EventSubscriber(const std::filesystem::path& socket);
    ~EventSubscriber();
    std::vector<nlohmann::json> events_of(const std::string& type) const;
    // Whether an event of `type` for which `match` holds arrived within `deadline` (a bound on a
    // broken daemon, not a measure of speed).
    bool wait_for(const std::string& type,
                  const std::function<bool(const nlohmann::json&)>& match = {},
                  std::chrono::seconds deadline = std::chrono::seconds(120));

  private:
    int fd_ = -1;
    std::atomic<bool> stop_{false};
    mutable std::mutex mutex_;
    std::condition_variable arrived_;
    bool subscribed_ = false;
    std::vector<nlohmann::json> events_;
    std::thread reader_;
};

}  // namespace lparvisor::test
