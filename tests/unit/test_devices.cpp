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
    std::vector<std::shared_ptr<Quiescable>> devices{std::make_shared<Uart8250>(console), held};
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

namespace {
std::uint8_t uart_in(Uart8250& uart, std::uint16_t offset) {
    std::uint8_t v = 0xaa;
    uart.read(offset, {&v, 1});
    return v;
}
void uart_out(Uart8250& uart, std::uint16_t offset, std::uint8_t value) {
    uart.write(offset, {&value, 1});
}
}  // namespace

TEST_CASE("the UART identifies as a 16550A the way Linux's autoconfig probes it", "[devices]") {
    auto console = std::make_shared<ConsoleLog>("T", 64);
    Uart8250 uart(console);
    // IER holds its low four bits only (the probe writes 0 and 0x0f and reads them back; bit 6,
    // the XScale "UUE" bit, must not stick).
    uart_out(uart, 1, 0x00);
    CHECK(uart_in(uart, 1) == 0x00);
    uart_out(uart, 1, 0x4f);
    CHECK(uart_in(uart, 1) == 0x0f);
    uart_out(uart, 1, 0x00);
    // Loopback: MCR = LOOP | OUT2 | RTS must read back MSR = DCD | CTS in the top nibble.
    uart_out(uart, 4, 0x1a);
    CHECK((uart_in(uart, 6) & 0xf0) == 0x90);
    uart_out(uart, 4, 0x1f);
    CHECK((uart_in(uart, 6) & 0xf0) == 0xf0);
    uart_out(uart, 4, 0x00);
    CHECK((uart_in(uart, 6) & 0xb0) == 0xb0);  // out of loopback: a terminal is attached
    // FIFO off: IIR bits 7:6 = 00; FIFO on: 11 (a 16550A; 10 would be the buggy 16550).
    CHECK((uart_in(uart, 2) & 0xc0) == 0x00);
    uart_out(uart, 2, 0x01);
    CHECK((uart_in(uart, 2) & 0xc0) == 0xc0);
    // No 64-byte FIFO (IIR bit 5) even when asked for one: not a 16750.
    uart_out(uart, 3, 0x80);
    uart_out(uart, 2, 0x21);
    CHECK((uart_in(uart, 2) & 0x20) == 0);
    uart_out(uart, 3, 0x00);
    CHECK(uart_in(uart, 2) == 0xc1);           // FIFO enabled, no interrupt pending
    CHECK((uart_in(uart, 5) & 0x60) == 0x60);  // THR and transmitter empty
}

TEST_CASE("UART loopback sends THR to RBR instead of the console", "[devices]") {
    auto console = std::make_shared<ConsoleLog>("T", 64);
    Uart8250 uart(console);
    uart_out(uart, 2, 0x07);  // FIFO on, cleared
    uart_out(uart, 4, 0x10);
    CHECK((uart_in(uart, 5) & 0x01) == 0);
    for (std::uint8_t b : {0x41, 0x42, 0x43}) uart_out(uart, 0, b);
    CHECK(console->total_bytes() == 0);
    CHECK((uart_in(uart, 5) & 0x01) == 0x01);  // data ready
    CHECK(uart_in(uart, 0) == 0x41);
    CHECK(uart_in(uart, 0) == 0x42);
    CHECK(uart_in(uart, 0) == 0x43);
    CHECK((uart_in(uart, 5) & 0x01) == 0);
    CHECK(uart_in(uart, 0) == 0);  // empty RBR reads 0
    // More than the 16-byte FIFO: the rest is lost and LSR reports the overrun once.
    for (int i = 0; i < 20; ++i) uart_out(uart, 0, static_cast<std::uint8_t>(i));
    CHECK((uart_in(uart, 5) & 0x03) == 0x03);
    CHECK((uart_in(uart, 5) & 0x02) == 0);
    for (int i = 0; i < 16; ++i) CHECK(uart_in(uart, 0) == i);
    uart_out(uart, 4, 0x00);
    uart_out(uart, 0, 'z');
    CHECK(console->tail(10) == "z");
}

TEST_CASE("the UART raises its IRQ for THR empty and lowers it on IIR read or IER clear",
          "[devices]") {
    auto console = std::make_shared<ConsoleLog>("T", 64);
    std::vector<bool> levels;
    Uart8250 uart(console, [&](bool level) { levels.push_back(level); });
    CHECK_FALSE(uart.irq_level());
    uart_out(uart, 2, 0x01);  // FIFO on
    uart_out(uart, 0, 'a');   // THRE interrupts off: no edge
    CHECK(levels.empty());

    // Enabling THRE interrupts with THR empty raises the line at once.
    uart_out(uart, 1, 0x02);
    REQUIRE(levels == std::vector<bool>{true});
    CHECK(uart.irq_level());
    // IIR reports THR empty (0x02) with the FIFO bits; reading it acknowledges the interrupt.
    CHECK(uart_in(uart, 2) == 0xc2);
    CHECK(levels == std::vector<bool>{true, false});
    CHECK(uart_in(uart, 2) == 0xc1);
    // Each THR write empties at once and raises it again.
    uart_out(uart, 0, 'b');
    CHECK(levels == std::vector<bool>{true, false, true});
    uart_out(uart, 0, 'c');  // still high: no new edge
    CHECK(levels.size() == 3);
    // Clearing IER lowers it; setting THRI again (the driver's THRE test) raises it again.
    uart_out(uart, 1, 0x00);
    CHECK(levels == std::vector<bool>{true, false, true, false});
    CHECK(uart_in(uart, 2) == 0xc1);
    uart_out(uart, 1, 0x02);
    CHECK(levels.back() == true);
    CHECK(uart_in(uart, 2) == 0xc2);
    CHECK(levels.back() == false);
    // Writing IER with THRI already on is not an edge: no new interrupt.
    uart_out(uart, 1, 0x03);
    CHECK(levels.back() == false);
    CHECK(console->tail(10) == "abc");

    // Received data (loopback or receive_input) raises "data available" when IER bit 0 is set,
    // ahead of THR empty, until the FIFO is read empty.
    CHECK(uart.receive_input(std::vector<std::uint8_t>{'x', 'y'}) == 2);
    CHECK(levels.back() == true);
    CHECK(uart_in(uart, 2) == 0xc4);
    CHECK(uart_in(uart, 0) == 'x');
    CHECK(uart_in(uart, 0) == 'y');
    CHECK(levels.back() == false);
    CHECK(uart_in(uart, 2) == 0xc1);
}

TEST_CASE("typed input waits behind the FIFO and reaches a guest that reads a byte at a time",
          "[devices]") {
    auto console = std::make_shared<ConsoleLog>("T", 64);
    std::vector<bool> levels;
    Uart8250 uart(console, [&](bool level) { levels.push_back(level); });
    uart_out(uart, 2, 0x01);  // FIFOs on: 16 bytes deep
    uart_out(uart, 1, 0x01);  // "data available" interrupts
    std::vector<std::uint8_t> line(100);
    for (std::size_t i = 0; i < line.size(); ++i) line[i] = static_cast<std::uint8_t>('a' + i % 26);
    CHECK(uart.receive_input(line) == line.size());
    CHECK(uart.input_waiting() == line.size());
    CHECK(levels == std::vector<bool>{true});
    std::vector<std::uint8_t> read;
    while (uart_in(uart, 5) & 0x01) read.push_back(uart_in(uart, 0));  // LSR.DR, then RBR
    CHECK(read == line);
    CHECK(uart.input_waiting() == 0);
    CHECK(levels == std::vector<bool>{true, false});  // high until the last byte was read

    // The buffer takes kInputBufferBytes and refuses the rest (the caller keeps it).
    std::vector<std::uint8_t> flood(Uart8250::kInputBufferBytes + 10, 'z');
    CHECK(uart.receive_input(flood) == Uart8250::kInputBufferBytes);
    CHECK(uart.receive_input(flood) == 0);
    uart_in(uart, 0);
    CHECK(uart.receive_input(flood) == 1);  // one byte read, one byte of room

    // In loopback the serial input is disconnected: typed bytes wait.
    Uart8250 loop(std::make_shared<ConsoleLog>("L", 64));
    uart_out(loop, 4, 0x10);
    CHECK(loop.receive_input(std::vector<std::uint8_t>{'q'}) == 1);
    CHECK((uart_in(loop, 5) & 0x01) == 0);
    uart_out(loop, 4, 0x00);
    CHECK((uart_in(loop, 5) & 0x01) == 0x01);
    CHECK(uart_in(loop, 0) == 'q');
}

TEST_CASE("a polled UART keeps IIR at 'no interrupt' whatever is written", "[devices]") {
    auto console = std::make_shared<ConsoleLog>("T", 64);
    Uart8250 uart(console);  // no callback: the test firmware's way
    for (char c : std::string("polled")) uart_out(uart, 0, static_cast<std::uint8_t>(c));
    CHECK(uart_in(uart, 2) == 0x01);
    CHECK(console->tail(10) == "polled");
    CHECK_FALSE(uart.irq_level());
}
