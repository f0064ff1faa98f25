// Move-only owner of an mmap()ed range.
#pragma once

#include <sys/mman.h>

#include <cstddef>
#include <cstdint>
#include <utility>

namespace lparvisor {

class Mapping {
  public:
    Mapping() = default;
    Mapping(void* address, std::size_t length) noexcept : address_(address), length_(length) {}
    Mapping(Mapping&& other) noexcept
        : address_(std::exchange(other.address_, nullptr)),
          length_(std::exchange(other.length_, 0)) {}
    Mapping& operator=(Mapping&& other) noexcept {
        if (this != &other) {
            reset();
            address_ = std::exchange(other.address_, nullptr);
            length_ = std::exchange(other.length_, 0);
        }
        return *this;
    }
    Mapping(const Mapping&) = delete;
    Mapping& operator=(const Mapping&) = delete;
    ~Mapping() { reset(); }

    std::uint8_t* data() const noexcept { return static_cast<std::uint8_t*>(address_); }
    std::size_t size() const noexcept { return length_; }
    bool valid() const noexcept { return address_ != nullptr; }
    void reset() noexcept {
        if (address_ != nullptr) ::munmap(address_, length_);
        address_ = nullptr;
        length_ = 0;
    }

  private:
    void* address_ = nullptr;
    std::size_t length_ = 0;
};

}  // namespace lparvisor
