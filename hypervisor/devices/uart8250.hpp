// COM1: an 8250/16550A UART, enough for a polling guest (THR, LSR, scratch, divisor latch).
// Output goes to the LPAR's ConsoleLog. There is no input yet: RBR reads 0, LSR.DR is clear.
#pragma once

#include <memory>
#include <mutex>

#include "devices/console_log.hpp"
#include "devices/device.hpp"

namespace lparvisor {

class Uart8250 final : public PortDevice {
  public:
    static constexpr std::uint16_t kPortCount = 8;
    explicit Uart8250(std::shared_ptr<ConsoleLog> console) : console_(std::move(console)) {}

    std::string name() const override { return "uart8250 (COM1)"; }
    void read(std::uint16_t offset, std::span<std::uint8_t> data) override;
    void write(std::uint16_t offset, std::span<const std::uint8_t> data) override;

  private:
    std::shared_ptr<ConsoleLog> console_;
    std::mutex mutex_;
    std::uint8_t ier_ = 0, lcr_ = 0, mcr_ = 0, scr_ = 0, dll_ = 0x0c, dlm_ = 0, fcr_ = 0;
};

}  // namespace lparvisor
