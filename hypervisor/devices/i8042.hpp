// The least of an i8042 keyboard controller that a Linux guest needs: the reset line. Linux
// reboots with `reboot=k` (and as the fallback after the ACPI reset register) by waiting for
// the input buffer to drain (status bit 1 clear) and writing 0xFE ("pulse reset") to port 0x64.
// There is no keyboard: status reads 0 (no output data, input buffer empty), data reads 0.
// The FADT does not set the 8042 boot flag, so Linux's i8042 driver does not probe it.
//
// Register it as one range kBase..kBase+kPortCount (0x60-0x64): offset 0 is the data port,
// offset 4 the status/command port. Offsets 1-3 read 0 and ignore writes; port 0x61 is taken by
// KVM's in-kernel PIT (its speaker port) when the LPAR has one, so it never reaches this device.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "devices/device.hpp"

namespace lparvisor {

class I8042 final : public PortDevice {
  public:
    static constexpr std::uint16_t kBase = 0x60;
    static constexpr std::uint16_t kPortCount = 5;
    static constexpr std::uint16_t kDataOffset = 0;
    static constexpr std::uint16_t kCommandOffset = 4;
    static constexpr std::uint8_t kPulseReset = 0xfe;

    using Event = std::function<void(const std::string& what)>;
    explicit I8042(Event event) : event_(std::move(event)) {}

    std::string name() const override { return "i8042"; }
    void read(std::uint16_t offset, std::span<std::uint8_t> data) override;
    void write(std::uint16_t offset, std::span<const std::uint8_t> data) override;

  private:
    Event event_;  // set once at construction: no lock needed
};

}  // namespace lparvisor
