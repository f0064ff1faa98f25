// The ACPI power registers of a hardware-reduced platform (boot/acpi.cpp points the FADT at
// them): SLEEP_CONTROL_REG, SLEEP_STATUS_REG and RESET_REG, one byte each at kBase + offset.
// Linux powers off by writing SLP_TYP(5) | SLP_EN to the sleep control register (ACPICA's
// acpi_hw_extended_sleep) and resets through the reset register (acpi_reboot). Either event
// goes to the owner through a callback with "power-off" or "reboot"; stopping the LPAR is the
// owner's business.
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <string>

#include "devices/device.hpp"

namespace lparvisor {

class PowerPort final : public PortDevice {
  public:
    static constexpr std::uint16_t kBase = 0x600;
    static constexpr std::uint16_t kPortCount = 3;
    static constexpr std::uint16_t kSleepControlOffset = 0;
    static constexpr std::uint16_t kSleepStatusOffset = 1;
    static constexpr std::uint16_t kResetOffset = 2;
    static constexpr std::uint8_t kResetValue = 0x01;  // the FADT's RESET_VALUE
    static constexpr std::uint8_t kS5SleepType = 5;    // the DSDT's _S5_ package says 5
    // Sleep control register layout (ACPI 6, 4.8.3.7): SLP_TYP bits 4:2, SLP_EN bit 5.
    static constexpr std::uint8_t kSleepTypeShift = 2;
    static constexpr std::uint8_t kSleepTypeMask = 0x1c;
    static constexpr std::uint8_t kSleepEnable = 0x20;
    // Sleep status register: WAK_STS bit 7, write 1 to clear.
    static constexpr std::uint8_t kWakeStatus = 0x80;

    using Event = std::function<void(const std::string& what)>;
    explicit PowerPort(Event event) : event_(std::move(event)) {}

    std::string name() const override { return "acpi-power"; }
    void read(std::uint16_t offset, std::span<std::uint8_t> data) override;
    void write(std::uint16_t offset, std::span<const std::uint8_t> data) override;

  private:
    Event event_;
    std::mutex mutex_;
    std::uint8_t sleep_status_ = 0;
};

}  // namespace lparvisor
