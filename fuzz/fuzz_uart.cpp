// libFuzzer target for COM1, the 16550A UART: every register access a guest can make (sizes 1,
// 2 and 4 at offsets 0-7, with and without DLAB, loopback, FIFO on and off) interleaved with
// input from outside (receive_input), the interrupt line followed through its callback.
//
// Input: 4-byte ops { u8 kind, u8 offset, u8 size, u8 value }; by kind % 3: 0 a write of value
// (size 1/2/4 by size % 3, value repeated) at offset % 8, 1 a read there, 2 receive_input of
// value % 24 bytes (value, value + 1, ...).
// Invariants beyond "no crash, no sanitizer report": the interrupt callback only reports
// changes (it alternates, starting from low) and irq_level() is the last level reported;
// receive_input never takes more than its buffer holds (input_waiting() never exceeds
// kInputBufferBytes + the FIFO), and every byte taken is either still waiting or was read by the
// guest, none made up or lost; the console receives exactly the bytes
// written to THR with DLAB clear outside loopback.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "devices/console_log.hpp"
#include "devices/uart8250.hpp"
#include "fuzz_support.hpp"

namespace {

using namespace lparvisor;

constexpr std::uint8_t kLcrDlab = 0x80;
constexpr std::uint8_t kMcrLoop = 0x10;

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    fuzz::quiet_logs();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    auto console = std::make_shared<ConsoleLog>("FUZZ", 256);
    bool level = false;
    unsigned changes = 0;
    Uart8250 uart(console, [&](bool now) {
        fuzz::check(now != level, "the IRQ callback reported a level that did not change");
        level = now;
        ++changes;
    });

    // A model of the two registers that decide where a THR write goes.
    std::uint8_t lcr = 0, mcr = 0;
    std::uint64_t expected_console = 0;
    fuzz::Input in(data, size);
    while (in.size() >= 4) {
        const auto kind = in.take<std::uint8_t>();
        const auto offset = static_cast<std::uint16_t>(in.take<std::uint8_t>() % 8);
        const std::size_t n = std::size_t{1} << (in.take<std::uint8_t>() % 3);
        const auto value = in.take<std::uint8_t>();
        switch (kind % 3) {
            case 0: {
                const std::vector<std::uint8_t> bytes(n, value);
                uart.write(offset, bytes);
                if (offset == 0 && (lcr & kLcrDlab) == 0 && (mcr & kMcrLoop) == 0)
                    ++expected_console;
                if (offset == 3) lcr = value;
                if (offset == 4) mcr = value & 0x1f;
                break;
            }
            case 1: {
                std::vector<std::uint8_t> bytes(n, 0xee);
                uart.read(offset, bytes);
                for (std::size_t i = 1; i < n; ++i)
                    fuzz::check(bytes[i] == 0, "bytes past the first of a wide read are not 0");
                break;
            }
            case 2: {
                std::vector<std::uint8_t> bytes(value % 24);
                for (std::size_t i = 0; i < bytes.size(); ++i)
                    bytes[i] = static_cast<std::uint8_t>(value + i);
                fuzz::check(uart.receive_input(bytes) <= Uart8250::kInputBufferBytes,
                            "receive_input took more than its buffer holds");
                fuzz::check(
                    uart.input_waiting() <= Uart8250::kInputBufferBytes + Uart8250::kFifoSize,
                    "more input waiting than the buffer and the FIFO hold");
                break;
            }
        }
        fuzz::check(uart.irq_level() == level, "irq_level() is not the level last reported");
    }
    fuzz::check(console->total_bytes() == expected_console,
                "the console did not get exactly the bytes written to THR");
    fuzz::tally(changes > 0 ? "irq line moved" : "irq line stayed low");
    return 0;
}
