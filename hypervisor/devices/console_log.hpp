// An LPAR's serial output: a ring buffer of the most recent bytes, optionally mirrored to a file,
// and each complete line handed to the log at debug level.
#pragma once

#include <cstdint>
#include <fstream>
#include <mutex>
#include <string>
#include <string_view>

namespace lparvisor {

class ConsoleLog {
  public:
    ConsoleLog(std::string lpar, std::size_t capacity, const std::string& file_path = {});

    void append(std::string_view bytes);
    std::string tail(std::size_t max_bytes) const;  // the most recent bytes, oldest first
    std::uint64_t total_bytes() const;              // everything ever appended

  private:
    std::string lpar_;
    mutable std::mutex mutex_;
    std::string ring_;
    std::size_t capacity_;
    std::size_t head_ = 0;  // next write position once the ring is full
    std::uint64_t total_ = 0;
    std::string line_;
    std::ofstream file_;
};

}  // namespace lparvisor
