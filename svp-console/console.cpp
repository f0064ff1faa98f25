#include "console.hpp"

#include <poll.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <iostream>
#include <optional>
#include <string_view>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace lparvisor::svp {
namespace {

using nlohmann::json;

constexpr std::size_t kReadBytes = std::size_t{64} * 1024;  // one lpar.console read while following
constexpr std::size_t kWriteBytes = 4096;  // lpar.console_write's most (the schema's)
constexpr auto kBusyPoll = std::chrono::milliseconds(20);  // while typed bytes wait for room

// A terminal on `fd` in raw mode (every key goes to the LPAR as typed, Ctrl-C included) for the
// object's life; the settings are restored on every way out. Nothing happens when `fd` is not a
// terminal.
class RawTerminal {
  public:
    explicit RawTerminal(int fd) : fd_(fd) {
        if (::isatty(fd) != 1 || ::tcgetattr(fd, &saved_) != 0) return;
        termios raw = saved_;
        ::cfmakeraw(&raw);
        active_ = ::tcsetattr(fd, TCSAFLUSH, &raw) == 0;
    }
    ~RawTerminal() {
        if (active_) (void)::tcsetattr(fd_, TCSAFLUSH, &saved_);
    }
    RawTerminal(const RawTerminal&) = delete;
    RawTerminal& operator=(const RawTerminal&) = delete;
    [[nodiscard]] bool active() const noexcept { return active_; }

  private:
    int fd_;
    termios saved_{};
    bool active_ = false;
};

struct ReadOutcome {
    std::optional<Reply> refusal;  // the daemon refused the read
    bool more = false;             // a full read: more output is probably waiting
};

// Reads the LPAR's output by offset and prints it: the most recent `options.bytes` first, then
// everything from where the previous read ended.
class OutputReader {
  public:
    OutputReader(Session& session, const ConsoleOptions& options, int& next_id, const char* eol)
        : session_(session), options_(options), next_id_(next_id), eol_(eol) {}

    ReadOutcome read() {
        json params{{"lpar", options_.lpar}, {"bytes", next_ ? kReadBytes : options_.bytes}};
        if (next_) params["since"] = *next_;
        Reply reply = session_.request(next_id_++, "lpar.console", params, options_.timeout);
        if (!reply.ok && next_ && is_refused(reply)) {
            // Between two IPLs (a reset, a guest reboot, a deactivation): no console for a
            // while. Said once; the next IPL's output follows when there is one.
            if (!waiting_)
                note(fmt::format("{} (waiting for it)",
                                 reply.error().value("message", std::string("no console"))));
            waiting_ = true;
            return {std::nullopt, false};
        }
        if (!reply.ok) return {std::move(reply), false};
        waiting_ = false;
        const json& result = reply.result();
        const auto ipl = result.value("ipl", std::uint64_t{0});
        if (next_ && ipl != ipl_) {
            // Reset or restarted: a new IPL's output, whose offsets start again at 0.
            note(fmt::format("{} was re-IPLed; its output from the start", options_.lpar));
            next_ = 0;
            ipl_ = ipl;
            return {std::nullopt, true};
        }
        ipl_ = ipl;
        if (const auto lost = result.value("lost", std::uint64_t{0}); lost > 0)
            note(fmt::format("{} bytes of {}'s output were lost before they could be read", lost,
                             options_.lpar));
        const std::string& text = result.at("text").get_ref<const std::string&>();
        print(text);
        const auto next = result.at("next").get<std::uint64_t>();
        const bool more = next_ && next - *next_ >= kReadBytes;
        next_ = next;
        return {std::nullopt, more};
    }

    void set_eol(const char* eol) { eol_ = eol; }

    // One line of svp's own on stderr, kept apart from the LPAR's output.
    void note(const std::string& line) const {
        std::cout.flush();
        std::cerr << eol_ << "svp: " << line << eol_;
        std::cerr.flush();
    }

  private:
    void print(const std::string& text) const {
        if (text.empty()) return;
        if (options_.json_lines) {
            std::cout << json{{"lpar", options_.lpar}, {"text", text}}.dump(
                             -1, ' ', false, json::error_handler_t::replace)
                      << '\n';
        } else {
            std::cout << text;
        }
        std::cout.flush();
    }

    Session& session_;
    const ConsoleOptions& options_;
    int& next_id_;
    const char* eol_;
    static bool is_refused(const Reply& reply) {
        constexpr int kRefused = -32003;  // docs/control-protocol.md: not in a state that allows it
        return reply.error().value("code", 0) == kRefused;
    }

    std::optional<std::uint64_t> next_;  // none before the first read
    std::uint64_t ipl_ = 0;
    bool waiting_ = false;  // the LPAR had no console at the last read
};

// The length of the UTF-8 sequence that `lead` starts (1-4); 0 for a byte that starts none.
std::size_t utf8_length(unsigned char lead) {
    return lead < 0x80             ? 1
           : (lead & 0xe0) == 0xc0 ? 2
           : (lead & 0xf0) == 0xe0 ? 3
           : (lead & 0xf8) == 0xf0 ? 4
                                   : 0;
}

// Whether every byte is a UTF-8 continuation byte (10xxxxxx); an empty string counts as all.
bool all_continuations(std::string_view bytes) {
    return std::all_of(bytes.begin(), bytes.end(),
                       [](char byte) { return (static_cast<unsigned char>(byte) & 0xc0) == 0x80; });
}

// How many bytes at the front of `pending` (at most `limit`) can go as one JSON string: whole
// UTF-8 characters only (a character cut by a read waits for its end). A byte that starts no
// valid character is replaced by '?' in place: a terminal that is not UTF-8 still types.
std::size_t sendable_prefix(std::string& pending, std::size_t limit) {
    std::size_t i = 0;
    while (i < pending.size()) {
        const std::size_t length = utf8_length(static_cast<unsigned char>(pending[i]));
        if (length == 0) {
            pending[i] = '?';
            continue;
        }
        if (i + length > limit) break;
        const std::string_view after = std::string_view(pending).substr(i + 1);
        if (i + length > pending.size()) {
            // Incomplete: its end may still come, unless what came is not a continuation.
            if (all_continuations(after)) break;
            pending[i] = '?';
            continue;
        }
        if (!all_continuations(after.substr(0, length - 1))) {
            pending[i] = '?';
            continue;
        }
        i += length;
    }
    return i;
}

void sleep_unless(const volatile std::sig_atomic_t& interrupted, std::chrono::milliseconds wait) {
    for (auto waited = std::chrono::milliseconds(0); waited < wait && !interrupted;
         waited += std::chrono::milliseconds(10)) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
}

// `console --attach` once attached: reads the output, sends what is typed while the LPAR's
// UART takes it, and gives the console input back (once) at the end of input or of the session.
class Attachment {
  public:
    Attachment(Session& session, const ConsoleOptions& options, int& next_id, OutputReader& reader,
               bool input)
        : session_(session),
          options_(options),
          next_id_(next_id),
          reader_(reader),
          lpar_{{"lpar", options.lpar}},
          input_(input) {}

    // Until the detach key, `interrupted` or a refusal: kExitOk, or the refusal's exit code.
    int run(const volatile std::sig_atomic_t& interrupted, const RefusalHandler& refuse) {
        int status = kExitOk;
        while (!interrupted) {
            ReadOutcome outcome = reader_.read();
            if (outcome.refusal) {
                status = refuse(*outcome.refusal);
                break;
            }
            Sent sent;
            if (input_) sent = send_typed(refuse);
            if (sent.status) status = *sent.status;
            if (status != kExitOk) break;
            if (detached_) {  // what was typed before the detach key has had its one try
                if (!to_send_.empty())
                    reader_.note(
                        fmt::format("{} typed bytes were not taken (the guest is not "
                                    "reading its console)",
                                    to_send_.size()));
                break;
            }
            const auto wait = outcome.more ? std::chrono::milliseconds(0)
                              : sent.full  ? kBusyPoll
                                           : options_.interval;
            if (!stdin_open_) {
                sleep_unless(interrupted, wait);
                continue;
            }
            read_typed(wait);
        }
        return status;
    }

    void give_input_back() {
        if (!input_) return;
        input_ = false;
        (void)session_.request(next_id_++, "lpar.console_detach", lpar_, options_.timeout);
    }

  private:
    struct Sent {
        bool full = false;          // the UART's buffer took less than offered: try again soon
        std::optional<int> status;  // a refused write: the refusal's exit code
    };

    // Offers what was typed, in whole characters, until all is taken, the UART is full or a
    // write is refused.
    Sent send_typed(const RefusalHandler& refuse) {
        Sent sent;
        while (!to_send_.empty() && !sent.full) {
            const std::size_t n = sendable_prefix(to_send_, kWriteBytes);
            if (n == 0) break;
            const Reply written = session_.request(
                next_id_++, "lpar.console_write",
                {{"lpar", options_.lpar}, {"data", to_send_.substr(0, n)}}, options_.timeout);
            if (!written.ok) {
                sent.status = refuse(written);
                break;
            }
            const auto taken = written.result().at("written").get<std::size_t>();
            to_send_.erase(0, std::min(taken, to_send_.size()));
            sent.full = taken < n;
        }
        return sent;
    }

    // Waits up to `wait` for typed bytes on stdin and takes them; at the end of stdin, gives the
    // input back and goes on showing the output.
    void read_typed(std::chrono::milliseconds wait) {
        pollfd ready{STDIN_FILENO, POLLIN, 0};
        const int events = ::poll(&ready, 1, static_cast<int>(wait.count()));
        if (events <= 0) return;  // nothing typed, or a signal
        char buffer[4096];
        const ssize_t got = ::read(STDIN_FILENO, buffer, sizeof buffer);
        if (got < 0 && errno == EINTR) return;
        if (got <= 0) {
            stdin_open_ = false;
            give_input_back();
            reader_.note(
                fmt::format("input ended; still showing {}'s output (Ctrl-C ends)", options_.lpar));
            return;
        }
        take_typed(std::string_view(buffer, static_cast<std::size_t>(got)));
    }

    // Up to the detach key: queued to send, or dropped (said once) while another client holds
    // the input.
    void take_typed(std::string_view typed) {
        if (const auto key = typed.find(kDetachKey); key != std::string_view::npos) {
            typed = typed.substr(0, key);
            detached_ = true;
        }
        if (input_) {
            to_send_.append(typed);
        } else if (!typed.empty() && !told_read_only_) {
            reader_.note("read-only: another client holds the input; what is typed is dropped");
            told_read_only_ = true;
        }
    }

    Session& session_;
    const ConsoleOptions& options_;
    int& next_id_;
    OutputReader& reader_;
    const json lpar_;
    bool input_;           // this client holds the console input
    std::string to_send_;  // typed, not yet taken by the LPAR's UART
    bool stdin_open_ = true, detached_ = false, told_read_only_ = false;
};

}  // namespace

int follow_console(const ConsoleOptions& options, const volatile std::sig_atomic_t& interrupted,
                   const RefusalHandler& refuse) {
    Session session(options.socket_path, options.timeout);
    int id = 1;
    OutputReader reader(session, options, id, "\n");
    while (!interrupted) {
        ReadOutcome outcome = reader.read();
        if (outcome.refusal) return refuse(*outcome.refusal);
        if (!outcome.more) sleep_unless(interrupted, options.interval);
    }
    return kExitOk;
}

int attach_console(const ConsoleOptions& options, const volatile std::sig_atomic_t& interrupted,
                   const RefusalHandler& refuse) {
    Session session(options.socket_path, options.timeout);
    int id = 1;
    const json lpar{{"lpar", options.lpar}};
    // The recent output first: it also finds out whether there is such an LPAR.
    OutputReader reader(session, options, id, "\n");
    if (ReadOutcome first = reader.read(); first.refusal) return refuse(*first.refusal);
    const Reply attached = session.request(id++, "lpar.console_attach", lpar, options.timeout);
    if (!attached.ok) return refuse(attached);
    const bool input = attached.result().value("input", false);
    if (input) {
        std::cerr << fmt::format("svp: attached to {}'s console (Ctrl-] detaches)\n", options.lpar);
    } else {
        std::cerr << fmt::format(
            "svp: {}'s console input is held by {}: attached read-only (Ctrl-] detaches)\n",
            options.lpar, attached.result().value("holder", std::string("another client")));
    }

    Attachment attachment(session, options, id, reader, input);
    int status = kExitOk;
    {
        RawTerminal terminal(STDIN_FILENO);
        reader.set_eol(terminal.active() ? "\r\n" : "\n");
        status = attachment.run(interrupted, refuse);
    }  // the terminal is itself again
    try {
        attachment.give_input_back();
    } catch (const Failure&) {
        // The connection is gone: the daemon gave the input back when it closed.
    }
    std::cerr << fmt::format("svp: detached from {}'s console\n", options.lpar);
    return status;
}

}  // namespace lparvisor::svp
