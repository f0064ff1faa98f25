// The device interface and the port-I/O bus. A device sees offsets inside its own range; the
// bus is fixed once the LPAR is built, so dispatch takes no lock (lock order: a device's own
// mutex comes after the LPAR's, and only a console log's comes after it; devices never call back
// into the bus or the LPAR with it held).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "devices/quiescable.hpp"

namespace lparvisor {

class PortDevice : public Quiescable {
  public:
    // `data` is the access (1, 2 or 4 bytes, little-endian): read fills it, write consumes it.
    virtual void read(std::uint16_t offset, std::span<std::uint8_t> data) = 0;
    virtual void write(std::uint16_t offset, std::span<const std::uint8_t> data) = 0;
};

class IoBus {
  public:
    // Throws if [base, base + length) overlaps a registered range.
    void add(std::uint16_t base, std::uint16_t length, std::shared_ptr<PortDevice> device);

    // false when no device claims the port (the vCPU loop then stops the LPAR with a reason).
    [[nodiscard]] bool read(std::uint16_t port, std::span<std::uint8_t> data) const;
    [[nodiscard]] bool write(std::uint16_t port, std::span<const std::uint8_t> data) const;

    std::vector<std::shared_ptr<PortDevice>> devices() const;

  private:
    struct Entry {
        std::uint16_t base;
        std::uint16_t length;
        std::shared_ptr<PortDevice> device;
    };
    const Entry* find(std::uint16_t port, std::size_t size) const;
    std::vector<Entry> entries_;
};

}  // namespace lparvisor
