#include "devices/console_log.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <spdlog/spdlog.h>

#include "util/error.hpp"

namespace lparvisor {

namespace {

constexpr std::size_t kFileBufferBytes = 4096;

// O_NONBLOCK: a FIFO put there must not hang the LPAR's activation (it is refused below).
Fd open_console_file(const std::string& path, int extra_flags = 0) {
    return Fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NONBLOCK | extra_flags, 0644));
}

}  // namespace

ConsoleLog::ConsoleLog(std::string lpar, std::size_t capacity, const std::string& file_path,
                       std::uint64_t file_max_bytes, std::shared_ptr<LogRateLimiter> limiter)
    : lpar_(std::move(lpar)),
      capacity_(capacity),
      limiter_(own_log_limiter(std::move(limiter), lpar_)),
      file_path_(file_path),
      file_max_(std::max<std::uint64_t>(file_max_bytes, 1)) {
    ring_.reserve(capacity_);
    line_.reserve(kMaxLineBytes);
    if (!file_path.empty()) {
        file_ = open_console_file(file_path, O_APPEND);
        if (!file_.valid()) throw_errno(lpar_ + ": open console file " + file_path);
        struct stat st {};
        if (::fstat(file_.get(), &st) != 0) throw_errno(lpar_ + ": console file " + file_path);
        if (!S_ISREG(st.st_mode))
            throw Error(ErrorKind::InvalidArgument,
                        lpar_ + ": console file " + file_path + " is not a regular file");
        file_size_ = static_cast<std::uint64_t>(st.st_size);
        const std::string old = file_path + ".1";
        old_file_ = open_console_file(old);
        struct stat old_st {};
        if (old_file_.valid() &&
            (::fstat(old_file_.get(), &old_st) != 0 || !S_ISREG(old_st.st_mode)))
            old_file_.reset();
        if (!old_file_.valid()) {
            rotation_failed_ = true;
            spdlog::warn(
                "{}: console file {}: cannot use {} for rotation: truncating it in place "
                "at its limit of {} bytes",
                lpar_, file_path, old, file_max_);
        }
    }
}

ConsoleLog::~ConsoleLog() {
    std::lock_guard lock(mutex_);
    flush_locked();
}

void ConsoleLog::append(std::string_view bytes) {
    std::lock_guard lock(mutex_);
    for (char c : bytes) {
        if (ring_.size() < capacity_) {
            ring_.push_back(c);
        } else if (capacity_ != 0) {
            ring_[head_] = c;
            head_ = (head_ + 1) % capacity_;
        }
        if (c == '\n') {
            // A line that ended right where it was cut is all logged already.
            if (!line_.empty() || !line_cut_) emit_line();
            line_cut_ = false;
        } else if (c != '\r') {
            line_.push_back(c);
            if (line_.size() >= kMaxLineBytes) {  // a piece of a line without end
                emit_line();
                line_cut_ = true;
            }
        }
    }
    total_ += bytes.size();
    if (file_.valid()) {
        file_buffer_.append(bytes);
        if (file_buffer_.size() >= kFileBufferBytes || bytes.find('\n') != std::string_view::npos)
            flush_locked();
    }
}

void ConsoleLog::emit_line() {
    limiter_->log(spdlog::level::debug, "{}| {}", lpar_, line_);
    line_.clear();
}

void ConsoleLog::flush() {
    std::lock_guard lock(mutex_);
    flush_locked();
}

void ConsoleLog::flush_locked() {
    if (file_buffer_.empty()) return;
    std::string pending;
    pending.swap(file_buffer_);
    if (file_.valid()) write_file(pending);
    pending.clear();
    file_buffer_.swap(pending);  // keeps the buffer's allocation
}

void ConsoleLog::write_file(std::string_view bytes) {
    // Rotate before a chunk that would not fit, so that chunks (whole lines, mostly) stay
    // whole; a chunk larger than the cap is split.
    if (file_size_ > 0 && file_size_ + bytes.size() > file_max_) rotate();
    while (!bytes.empty() && file_.valid()) {
        if (file_size_ >= file_max_) {
            rotate();
            if (!file_.valid()) return;
        }
        const std::size_t room =
            static_cast<std::size_t>(std::min<std::uint64_t>(file_max_ - file_size_, bytes.size()));
        const ssize_t n = ::write(file_.get(), bytes.data(), room);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            drop_file("cannot write", n < 0 ? errno : EIO);
            return;
        }
        file_size_ += static_cast<std::uint64_t>(n);
        bytes.remove_prefix(static_cast<std::size_t>(n));
    }
}

void ConsoleLog::rotate() {
    if (!rotation_failed_) {
        // NAME.log's bytes replace NAME.log.1's, copied inside the kernel.
        bool copied = ::ftruncate(old_file_.get(), 0) == 0;
        loff_t from = 0, to = 0;
        while (copied && static_cast<std::uint64_t>(from) < file_size_) {
            const ssize_t n = ::copy_file_range(
                file_.get(), &from, old_file_.get(), &to,
                static_cast<std::size_t>(file_size_) - static_cast<std::size_t>(from), 0);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) copied = false;
        }
        if (!copied) {
            const int error = errno;
            rotation_failed_ = true;
            spdlog::warn(
                "{}: console file {}: cannot copy it to {}.1 ({}): truncating it in place at "
                "its limit of {} bytes from now on",
                lpar_, file_path_, file_path_, std::strerror(error), file_max_);
        }
    }
    if (::ftruncate(file_.get(), 0) != 0) {
        drop_file("cannot truncate", errno);
        return;
    }
    file_size_ = 0;  // O_APPEND: the next write lands at the new end, offset 0
}

void ConsoleLog::drop_file(const std::string& why, int error) {
    spdlog::error("{}: console file {}: {} ({}); no longer mirroring the console there", lpar_,
                  file_path_, why, std::strerror(error));
    file_.reset();
    file_buffer_.clear();
}

std::string ConsoleLog::tail(std::size_t max_bytes) const {
    std::lock_guard lock(mutex_);
    std::string ordered =
        ring_.size() < capacity_ ? ring_ : ring_.substr(head_) + ring_.substr(0, head_);
    if (ordered.size() > max_bytes) ordered.erase(0, ordered.size() - max_bytes);
    return ordered;
}

ConsoleLog::Slice ConsoleLog::read(std::optional<std::uint64_t> since,
                                   std::size_t max_bytes) const {
    std::lock_guard lock(mutex_);
    const std::uint64_t oldest = total_ - ring_.size();  // what the ring still holds
    const std::uint64_t start = since ? std::clamp(*since, oldest, total_)
                                      : total_ - std::min<std::uint64_t>(ring_.size(), max_bytes);
    const auto count = static_cast<std::size_t>(std::min<std::uint64_t>(total_ - start, max_bytes));
    Slice slice;
    slice.start = start;
    if (count == 0) return slice;
    // The oldest byte is at head_ (0 until the ring is full); offsets run on from there.
    const std::size_t first = (head_ + static_cast<std::size_t>(start - oldest)) % ring_.size();
    const std::size_t to_end = std::min(count, ring_.size() - first);
    slice.text.reserve(count);
    slice.text.append(ring_, first, to_end);
    slice.text.append(ring_, 0, count - to_end);
    return slice;
}

std::uint64_t ConsoleLog::total_bytes() const {
    std::lock_guard lock(mutex_);
    return total_;
}

std::size_t ConsoleLog::pending_line_bytes() const {
    std::lock_guard lock(mutex_);
    return line_.size();
}

}  // namespace lparvisor
