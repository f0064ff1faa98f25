#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>

#include "devices/console_log.hpp"
#include "devices/device.hpp"
#include "devices/uart8250.hpp"
#include "lpar/hypervisor.hpp"
#include "util/error.hpp"

using namespace lparvisor;

namespace {

// A device that stays busy until told otherwise: the step-202 drain must wait for it and give up
// at the deadline, naming it.
class HeldDevice final : public PortDevice {
  public:
    std::atomic<bool> busy{true};
    std::atomic<int> accepting_changes{0};
    std::string name() const override { return "held-device"; }
    void read(std::uint16_t, std::span<std::uint8_t>) override {}
    void write(std::uint16_t, std::span<const std::uint8_t>) override {}
    void stop_accepting() override { ++accepting_changes; }
    void resume_accepting() override { ++accepting_changes; }
    bool idle() const override { return !busy; }
};

}  // namespace

TEST_CASE("the I/O bus dispatches by range and refuses overlaps", "[devices]") {
    auto console = std::make_shared<ConsoleLog>("T", 64);
    IoBus bus;
    bus.add(0x3f8, 8, std::make_shared<Uart8250>(console));
    CHECK_THROWS_WITH(bus.add(0x3fc, 8, std::make_shared<HeldDevice>()),
                      Catch::Contains("overlaps uart8250"));
    std::uint8_t ch = 'x';
    CHECK(bus.write(0x3f8, {&ch, 1}));
    std::uint8_t lsr = 0;
    CHECK(bus.read(0x3fd, {&lsr, 1}));
    CHECK((lsr & 0x20) != 0);  // THR empty: the guest may write
    CHECK_FALSE(bus.write(0x400, {&ch, 1}));
    std::uint8_t four[4] = {};
    CHECK_FALSE(bus.read(0x3fe, four));  // a 4-byte access running past the device
    CHECK(console->tail(10) == "x");
}

TEST_CASE("the UART keeps scratch and divisor latch, output goes to the console ring",
          "[devices]") {
    auto console = std::make_shared<ConsoleLog>("T", 8);
    Uart8250 uart(console);
    std::uint8_t v = 0x5a;
    uart.write(7, {&v, 1});
    std::uint8_t r = 0;
    uart.read(7, {&r, 1});
    CHECK(r == 0x5a);
    v = 0x80;
    uart.write(3, {&v, 1});  // DLAB on: offset 0 is the divisor, not output
    v = 0x01;
    uart.write(0, {&v, 1});
    v = 0x03;
    uart.write(3, {&v, 1});
    for (char c : std::string("hello world\n")) {
        auto b = static_cast<std::uint8_t>(c);
        uart.write(0, {&b, 1});
    }
    CHECK(console->tail(100) == "o world\n");  // the ring keeps the last 8 bytes
    CHECK(console->total_bytes() == 12);
}

TEST_CASE("step 202: the drain waits for busy devices and names them at the deadline",
          "[devices]") {
    auto held = std::make_shared<HeldDevice>();
    auto console = std::make_shared<ConsoleLog>("T", 8);
    std::vector<std::shared_ptr<PortDevice>> devices{std::make_shared<Uart8250>(console), held};
    auto start = std::chrono::steady_clock::now();
    auto busy = drain_devices(devices, std::chrono::milliseconds(100));
    CHECK(std::chrono::steady_clock::now() - start >= std::chrono::milliseconds(100));
    REQUIRE(busy.size() == 1);
    CHECK(busy[0] == "held-device");
    CHECK(held->accepting_changes == 1);
    resume_devices(devices);
    CHECK(held->accepting_changes == 2);

    held->busy = false;
    CHECK(drain_devices(devices, std::chrono::milliseconds(100)).empty());
}
