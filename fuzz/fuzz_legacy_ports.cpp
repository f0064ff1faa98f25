// libFuzzer target for the legacy ports a Linux LPAR has: the i8042's reset line (0x60-0x64)
// and the ACPI power registers (0x600-0x602), both on a real IoBus as the LPAR wires them, so
// that accesses straddling or missing a device's range go through the bus's dispatch too.
//
// Input: 4-byte ops { u8 kind, u8 port, u8 size, u8 value }: kind bit 0 set is a read, clear a
// write of size 1/2/4 (size % 3) carrying value in its first byte (the rest 0); port picks
// 0x5e + port % 10 when kind bit 1 is clear, else 0x5fe + port % 8.
// Invariants beyond "no crash, no sanitizer report": an access is claimed exactly when it lies
// inside a device's range; the owner hears "reboot" exactly for 0xfe written to 0x64 and 0x01
// written to 0x602, "power-off" exactly for SLP_EN with SLP_TYP 5 written to 0x600, and nothing
// else; reads of these registers give 0 except the sleep status, which never shows WAK_STS.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "devices/device.hpp"
#include "devices/i8042.hpp"
#include "devices/power_port.hpp"
#include "fuzz_support.hpp"

namespace {

using namespace lparvisor;

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    fuzz::quiet_logs();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::vector<std::string> events;
    auto event = [&](const std::string& what) { events.push_back(what); };
    IoBus bus;
    bus.add(I8042::kBase, I8042::kPortCount, std::make_shared<I8042>(event));
    bus.add(PowerPort::kBase, PowerPort::kPortCount, std::make_shared<PowerPort>(event));

    fuzz::Input in(data, size);
    while (in.size() >= 4) {
        const auto kind = in.take<std::uint8_t>();
        const auto selector = in.take<std::uint8_t>();
        const std::size_t n = std::size_t{1} << (in.take<std::uint8_t>() % 3);
        const auto value = in.take<std::uint8_t>();
        const auto port = static_cast<std::uint16_t>(
            (kind & 2) ? PowerPort::kBase - 2 + selector % 8 : I8042::kBase - 2 + selector % 10);
        const bool in_i8042 = port >= I8042::kBase && port + n <= I8042::kBase + I8042::kPortCount;
        const bool in_power =
            port >= PowerPort::kBase && port + n <= PowerPort::kBase + PowerPort::kPortCount;
        const std::size_t events_before = events.size();
        if (kind & 1) {
            std::vector<std::uint8_t> bytes(n, 0xee);
            const bool claimed = bus.read(port, bytes);
            fuzz::check(claimed == (in_i8042 || in_power), "read claimed wrongly");
            if (claimed)
                for (std::uint8_t b : bytes)
                    fuzz::check((b & PowerPort::kWakeStatus) == 0 && (in_power || b == 0),
                                "a legacy register read something other than 0");
        } else {
            std::vector<std::uint8_t> bytes(n, 0);
            bytes[0] = value;
            const bool claimed = bus.write(port, bytes);
            fuzz::check(claimed == (in_i8042 || in_power), "write claimed wrongly");
            const char* expected = nullptr;
            if (port == I8042::kBase + I8042::kCommandOffset && value == I8042::kPulseReset)
                expected = "reboot";
            if (port == PowerPort::kBase + PowerPort::kResetOffset &&
                value == PowerPort::kResetValue)
                expected = "reboot";
            if (port == PowerPort::kBase + PowerPort::kSleepControlOffset &&
                (value & PowerPort::kSleepEnable) != 0 &&
                ((value & PowerPort::kSleepTypeMask) >> PowerPort::kSleepTypeShift) ==
                    PowerPort::kS5SleepType)
                expected = "power-off";
            if (!claimed) expected = nullptr;
            fuzz::check(events.size() == events_before + (expected ? 1 : 0),
                        "a write raised an event it should not have, or none it should");
            if (expected) {
                fuzz::check(events.back() == expected, "the wrong event came");
                fuzz::tally(expected);
            }
        }
        fuzz::check(events.size() == events_before || !(kind & 1), "a read raised an event");
    }
    return 0;
}
