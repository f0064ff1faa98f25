#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "devices/i8042.hpp"
#include "devices/power_port.hpp"

using namespace lparvisor;

namespace {
void out8(PortDevice& device, std::uint16_t offset, std::uint8_t value) {
    device.write(offset, {&value, 1});
}
std::uint8_t in8(PortDevice& device, std::uint16_t offset) {
    std::uint8_t value = 0xaa;
    device.read(offset, {&value, 1});
    return value;
}
}  // namespace

TEST_CASE("the sleep control register powers off on SLP_TYP 5 with SLP_EN", "[power]") {
    std::vector<std::string> events;
    PowerPort port([&](const std::string& what) { events.push_back(what); });
    // What ACPICA's acpi_hw_extended_sleep does for S5: clear WAK_STS, then SLP_TYP|SLP_EN.
    out8(port, PowerPort::kSleepStatusOffset, PowerPort::kWakeStatus);
    CHECK(events.empty());
    out8(port, PowerPort::kSleepControlOffset, 5 << 2);  // SLP_TYP without SLP_EN: nothing
    CHECK(events.empty());
    out8(port, PowerPort::kSleepControlOffset, 3 << 2 | 0x20);  // S3: not offered, ignored
    CHECK(events.empty());
    out8(port, PowerPort::kSleepControlOffset, 5 << 2 | 0x20);
    REQUIRE(events.size() == 1);
    CHECK(events[0] == "power-off");
    CHECK(in8(port, PowerPort::kSleepStatusOffset) == 0);  // never wakes up
}

TEST_CASE("the reset register reboots on the FADT's reset value only", "[power]") {
    std::vector<std::string> events;
    PowerPort port([&](const std::string& what) { events.push_back(what); });
    out8(port, PowerPort::kResetOffset, 0x06);
    CHECK(events.empty());
    out8(port, PowerPort::kResetOffset, PowerPort::kResetValue);
    REQUIRE(events.size() == 1);
    CHECK(events[0] == "reboot");
    CHECK(in8(port, PowerPort::kResetOffset) == 0);
    CHECK(port.name() == "acpi-power");
    PowerPort silent({});  // no callback: writes are harmless
    out8(silent, PowerPort::kResetOffset, PowerPort::kResetValue);
}

TEST_CASE("the i8042 reads empty and reboots on 0xFE to its command port", "[power]") {
    std::vector<std::string> events;
    I8042 kbd([&](const std::string& what) { events.push_back(what); });
    CHECK(I8042::kBase == 0x60);
    CHECK(I8042::kBase + I8042::kCommandOffset == 0x64);
    // Linux's reboot: kb_wait() polls status bit 1 (input buffer full) until clear, then 0xFE.
    CHECK((in8(kbd, I8042::kCommandOffset) & 0x02) == 0);
    CHECK(in8(kbd, I8042::kDataOffset) == 0);
    out8(kbd, I8042::kDataOffset, 0xfe);     // 0xFE to the data port is not a reset
    out8(kbd, I8042::kCommandOffset, 0x20);  // "read command byte": ignored
    CHECK(events.empty());
    out8(kbd, I8042::kCommandOffset, 0xfe);
    REQUIRE(events.size() == 1);
    CHECK(events[0] == "reboot");
    std::uint8_t wide[4] = {1, 2, 3, 4};
    kbd.read(I8042::kCommandOffset, wide);
    CHECK((wide[0] | wide[1] | wide[2] | wide[3]) == 0);
}
