// An LPAR's serial output: a ring buffer of the most recent bytes, optionally mirrored to a file,
// and each complete line handed to the log at debug level.
//
// Everything here is bounded, whatever the guest writes: the ring holds `capacity` bytes; a
// line without end is logged in pieces of kMaxLineBytes; log lines go through the LPAR's
// LogRateLimiter; the file never grows past `file_max_bytes`: when NAME.log would, its bytes
// become NAME.log.1 (replacing the previous ones) and NAME.log starts again empty. Rotation
// copies between the two files, both opened when the LPAR is activated, and opens and renames
// nothing: it runs on the vCPU thread that writes the UART, whose sandbox allows no path
// operations (docs/threat-model.md), and it works after lparvisor has dropped root. Where
// NAME.log.1 cannot be opened or the copy fails, NAME.log is truncated in place instead (said
// once in the log).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "util/fd.hpp"
#include "util/rate_limit.hpp"

namespace lparvisor {

class ConsoleLog {
  public:
    static constexpr std::uint64_t kDefaultFileMaxBytes = 16ull * 1024 * 1024;
    static constexpr std::size_t kMaxLineBytes = 1024;  // a longer line is logged in pieces

    ConsoleLog(std::string lpar, std::size_t capacity, const std::string& file_path = {},
               std::uint64_t file_max_bytes = kDefaultFileMaxBytes,
               std::shared_ptr<LogRateLimiter> limiter = {});
    ~ConsoleLog();
    ConsoleLog(const ConsoleLog&) = delete;
    ConsoleLog& operator=(const ConsoleLog&) = delete;

    void append(std::string_view bytes);
    std::string tail(std::size_t max_bytes) const;  // the most recent bytes, oldest first
    // Output by offset (bytes since the LPAR's IPL), for a reader that follows it: at most
    // `max_bytes` from `since` (clamped to what the ring still holds: start > since means bytes
    // were lost), or without `since` the most recent `max_bytes`.
    struct Slice {
        std::string text;
        std::uint64_t start = 0;  // the offset of text's first byte
    };
    Slice read(std::optional<std::uint64_t> since, std::size_t max_bytes) const;
    std::uint64_t total_bytes() const;       // everything ever appended
    std::size_t pending_line_bytes() const;  // the line not yet ended (<= kMaxLineBytes)
    void flush();                            // what is buffered for the file, now

  private:
    void emit_line();     // line_ to the log (caller holds mutex_)
    void flush_locked();  // file_buffer_ to the file
    void write_file(std::string_view bytes);
    void rotate();  // NAME.log's bytes -> NAME.log.1, or truncate in place
    void drop_file(const std::string& why, int error);

    std::string lpar_;
    mutable std::mutex mutex_;
    std::string ring_;
    std::size_t capacity_;
    std::size_t head_ = 0;  // next write position once the ring is full
    std::uint64_t total_ = 0;
    std::string line_;
    bool line_cut_ = false;  // line_ continues a line logged in pieces
    std::shared_ptr<LogRateLimiter> limiter_;

    std::string file_path_;
    std::uint64_t file_max_;
    Fd file_;
    Fd old_file_;  // NAME.log.1; invalid when it could not be opened
    std::uint64_t file_size_ = 0;
    std::string file_buffer_;  // written at each line's end or when it reaches 4 KiB
    bool rotation_failed_ = false;
};

}  // namespace lparvisor
