// One JSON-RPC call to the lparvisor control socket, with a deadline.
#pragma once

#include <chrono>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace lparvisor::svp {

// svp's exit codes (docs/control-protocol.md, "svp").
enum ExitCode : int {
    kExitOk = 0,
    kExitRefused = 1,   // the daemon answered with a JSON-RPC error
    kExitUsage = 2,     // bad command line (CLI11)
    kExitNoDaemon = 3,  // cannot connect to the socket
    kExitProtocol = 4,  // no answer in time, or an answer that is not JSON-RPC
};

// A failure that ends svp with `exit_code`; what() is the message for stderr.
class Failure : public std::runtime_error {
  public:
    Failure(int exit_code, const std::string& message)
        : std::runtime_error(message), exit_code_(exit_code) {}
    [[nodiscard]] int exit_code() const noexcept { return exit_code_; }

  private:
    int exit_code_;
};

// The implicit default constructor is noexcept, like nlohmann::json's, and throws nothing:
// json's makes a null value. clang-tidy 14 follows it into json_value(value_t) and counts the
// throws of the branches for other types; nlohmann's own constructor carries the same NOLINT.
// NOLINTNEXTLINE(bugprone-exception-escape): a false positive, for the reason above
struct Reply {
    nlohmann::json response;  // the whole response object
    bool ok = false;          // true: response["result"]; false: response["error"]
    [[nodiscard]] const nlohmann::json& result() const { return response.at("result"); }
    [[nodiscard]] const nlohmann::json& error() const { return response.at("error"); }
};

// Where svp looks for the daemon: $LPARVISOR_SOCKET, else /run/lparvisor/control.sock.
[[nodiscard]] std::string default_socket_path();

// Sends one request and waits for its response until `timeout` has passed in total.
// Throws Failure(kExitNoDaemon) when it cannot connect, Failure(kExitProtocol) on a timeout, a
// closed connection or a malformed response. A JSON-RPC error is a Reply with ok == false.
[[nodiscard]] Reply call(const std::string& socket_path, std::string_view method,
                         const nlohmann::json& params, std::chrono::milliseconds timeout);

// One persistent connection, for the commands that make several calls or listen to events
// (watch, console --follow, mvstor's progress). Lines are read into a buffer; a notification
// that arrives while a response is awaited goes to the caller's callback.
class Session {
  public:
    using Clock = std::chrono::steady_clock;
    using NotificationHandler = std::function<void(const nlohmann::json&)>;

    // Connects within `timeout`; Failure(kExitNoDaemon) when nobody listens.
    Session(std::string socket_path, std::chrono::milliseconds timeout);
    ~Session();
    Session(const Session&) = delete;
    Session& operator=(const Session&) = delete;

    void send_request(int id, std::string_view method, const nlohmann::json& params);
    // Sends a request and waits for its response; notifications meanwhile go to `on_notification`.
    [[nodiscard]] Reply request(int id, std::string_view method, const nlohmann::json& params,
                                std::chrono::milliseconds timeout,
                                const NotificationHandler& on_notification = {});

    // A whole line already received, if any (without '\n').
    [[nodiscard]] std::optional<std::string> take_line();
    // Waits up to `wait` for bytes and appends them to the buffer. False when the wait ended with
    // nothing (timeout or a signal); Failure(kExitProtocol) when the daemon closed the connection.
    bool receive(std::chrono::milliseconds wait);

    [[nodiscard]] int fd() const noexcept { return fd_; }
    [[nodiscard]] const std::string& path() const noexcept { return path_; }

  private:
    std::string path_;
    int fd_ = -1;
    std::string buffer_;
};

// Checks a parsed response line against the request id; a JSON-RPC error is ok == false.
[[nodiscard]] Reply to_reply(nlohmann::json response, int id, const std::string& socket_path,
                             std::string_view line);

// "NotFound" for -32001 etc.; "error" for codes svp does not know.
[[nodiscard]] std::string_view error_code_name(int code) noexcept;

}  // namespace lparvisor::svp
