#include "devices/console_log.hpp"

#include <spdlog/spdlog.h>

#include "util/error.hpp"

namespace lparvisor {

ConsoleLog::ConsoleLog(std::string lpar, std::size_t capacity, const std::string& file_path)
    : lpar_(std::move(lpar)), capacity_(capacity) {
    ring_.reserve(capacity_);
    if (!file_path.empty()) {
        file_.open(file_path, std::ios::out | std::ios::app | std::ios::binary);
        if (!file_) throw_errno(lpar_ + ": open console file " + file_path);
    }
}

void ConsoleLog::append(std::string_view bytes) {
    std::lock_guard lock(mutex_);
    for (char c : bytes) {
        if (ring_.size() < capacity_) {
            ring_.push_back(c);
        } else {
            ring_[head_] = c;
            head_ = (head_ + 1) % capacity_;
        }
        if (c == '\n') {
            spdlog::debug("{}| {}", lpar_, line_);
            line_.clear();
        } else if (c != '\r' && line_.size() < 4096) {
            line_.push_back(c);
        }
    }
    total_ += bytes.size();
    if (file_.is_open()) {
        file_.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
        if (bytes.find('\n') != std::string_view::npos) file_.flush();
    }
}

std::string ConsoleLog::tail(std::size_t max_bytes) const {
    std::lock_guard lock(mutex_);
    std::string ordered =
        ring_.size() < capacity_ ? ring_ : ring_.substr(head_) + ring_.substr(0, head_);
    if (ordered.size() > max_bytes) ordered.erase(0, ordered.size() - max_bytes);
    return ordered;
}

std::uint64_t ConsoleLog::total_bytes() const {
    std::lock_guard lock(mutex_);
    return total_;
}

}  // namespace lparvisor
