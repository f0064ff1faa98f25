// Port 0x501 (as QEMU's isa-debug-exit): a byte written here stops the LPAR with
// "guest exit CODE". Tests and firmware use it to finish on purpose.
#pragma once

#include <functional>

#include "devices/device.hpp"

namespace lparvisor {

class DebugExit final : public PortDevice {
  public:
    using StopFn = std::function<void(int code)>;
    explicit DebugExit(StopFn stop) : stop_(std::move(stop)) {}
    std::string name() const override { return "debug-exit"; }
    void read(std::uint16_t, std::span<std::uint8_t> data) override {
        for (auto& b : data) b = 0xff;
    }
    void write(std::uint16_t, std::span<const std::uint8_t> data) override { stop_(data[0]); }

  private:
    StopFn stop_;
};

}  // namespace lparvisor
