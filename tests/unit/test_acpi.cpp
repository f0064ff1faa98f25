#include <catch2/catch.hpp>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include <lparvisor/abi.h>

#include "boot/acpi.hpp"
#include "devices/power_port.hpp"
#include "util/error.hpp"

using namespace lparvisor;
using namespace lparvisor::boot;

namespace {

std::uint64_t le(const std::vector<std::uint8_t>& t, std::size_t at, int bytes) {
    std::uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; --i) v = v << 8 | t.at(at + i);
    return v;
}
std::string text(const std::vector<std::uint8_t>& t, std::size_t at, std::size_t n) {
    REQUIRE(at + n <= t.size());
    // SAFETY: n bytes of t from `at`, inside it (checked above), as chars.
    return {reinterpret_cast<const char*>(t.data() + at), n};
}

void check_header(const std::vector<std::uint8_t>& t, const char* signature, int revision) {
    INFO(signature);
    REQUIRE(t.size() >= 36);
    CHECK(text(t, 0, 4) == signature);
    CHECK(le(t, 4, 4) == t.size());
    CHECK(t[8] == revision);
    CHECK(acpi_sum_is_zero(t));
    CHECK(text(t, 10, 6) == "LPARVS");
}

// One byte in system I/O space at `port`.
void check_io_register(const std::vector<std::uint8_t>& t, std::size_t at, std::uint16_t port) {
    INFO("GAS at " << at);
    CHECK(t[at] == 1);      // system I/O
    CHECK(t[at + 1] == 8);  // 8 bits wide
    CHECK(t[at + 2] == 0);
    CHECK(t[at + 3] == 1);  // byte access
    CHECK(le(t, at + 4, 8) == port);
}

struct Buffer {
    explicit Buffer(std::uint64_t size) : bytes(size, 0xcc), memory(bytes.data(), size) {}
    std::vector<std::uint8_t> read(std::uint64_t gpa, std::uint64_t n) const {
        std::vector<std::uint8_t> out(n);
        REQUIRE(memory.read(GuestPhysAddr{gpa}, out));
        return out;
    }
    std::vector<std::uint8_t> bytes;
    GuestMemory memory;
};

}  // namespace

TEST_CASE("the ACPI checksum byte makes a table sum to zero", "[acpi]") {
    std::vector<std::uint8_t> bytes = {1, 2, 3, 250};
    const std::uint8_t c = acpi_checksum(bytes);
    CHECK(c == 0);  // 256 = 0 already
    bytes.push_back(7);
    bytes.push_back(acpi_checksum(bytes));
    CHECK(acpi_sum_is_zero(bytes));
    CHECK(acpi_checksum(std::vector<std::uint8_t>{}) == 0);
}

TEST_CASE("the RSDP is revision 2 with both checksums and points at the XSDT", "[acpi]") {
    auto rsdp = acpi_rsdp(GuestPhysAddr{0xe0040});
    REQUIRE(rsdp.size() == 36);
    CHECK(text(rsdp, 0, 8) == "RSD PTR ");
    CHECK(acpi_sum_is_zero(std::span(rsdp).first(20)));
    CHECK(acpi_sum_is_zero(rsdp));
    CHECK(text(rsdp, 9, 6) == "LPARVS");
    CHECK(rsdp[15] == 2);
    CHECK(le(rsdp, 16, 4) == 0);  // no RSDT
    CHECK(le(rsdp, 20, 4) == 36);
    CHECK(le(rsdp, 24, 8) == 0xe0040);
}

TEST_CASE("the FADT is a hardware-reduced ACPI 6 FADT with sleep and reset registers", "[acpi]") {
    auto fadt = acpi_fadt(GuestPhysAddr{0xe0200});
    check_header(fadt, "FACP", 6);
    CHECK(fadt.size() == 276);
    CHECK(le(fadt, 36, 4) == 0);        // no FACS
    CHECK(le(fadt, 40, 4) == 0xe0200);  // DSDT
    CHECK(le(fadt, 46, 2) == 0);        // no SCI
    CHECK(le(fadt, 56, 4) == 0);        // no PM1a event block
    CHECK(le(fadt, 64, 4) == 0);        // no PM1a control block
    const auto flags = le(fadt, 112, 4);
    CHECK((flags & (1u << 20)) != 0);  // HW_REDUCED_ACPI
    CHECK((flags & (1u << 10)) != 0);  // RESET_REG_SUP
    const auto boot_arch = le(fadt, 109, 2);
    CHECK((boot_arch & 0x02) == 0);  // no 8042 flag: Linux's i8042 driver leaves it alone
    CHECK((boot_arch & 0x20) != 0);  // no CMOS RTC
    check_io_register(fadt, 116, PowerPort::kBase + PowerPort::kResetOffset);
    CHECK(fadt[128] == PowerPort::kResetValue);
    CHECK(le(fadt, 140, 8) == 0xe0200);                               // X_DSDT
    for (std::size_t at = 148; at < 244; ++at) CHECK(fadt[at] == 0);  // no X_PM blocks
    check_io_register(fadt, 244, PowerPort::kBase + PowerPort::kSleepControlOffset);
    check_io_register(fadt, 256, PowerPort::kBase + PowerPort::kSleepStatusOffset);
}

TEST_CASE("the MADT has one enabled local APIC per vCPU, the IOAPIC and IRQ0 -> GSI2", "[acpi]") {
    for (unsigned vcpus : {1u, 2u, 8u, 254u}) {
        INFO(vcpus << " vCPUs");
        auto madt = acpi_madt(vcpus);
        check_header(madt, "APIC", 5);
        CHECK(le(madt, 36, 4) == 0xfee00000);
        CHECK(le(madt, 40, 4) == 1);  // PCAT_COMPAT
        std::size_t at = 44;
        unsigned lapics = 0, ioapics = 0, overrides = 0, nmis = 0;
        while (at < madt.size()) {
            const std::uint8_t type = madt[at], length = madt[at + 1];
            REQUIRE(length >= 2);
            REQUIRE(at + length <= madt.size());
            switch (type) {
                case 0:
                    CHECK(length == 8);
                    CHECK(madt[at + 2] == lapics);  // processor UID
                    CHECK(madt[at + 3] == lapics);  // APIC id = index
                    CHECK(le(madt, at + 4, 4) == 1);
                    ++lapics;
                    break;
                case 1:
                    CHECK(length == 12);
                    CHECK(madt[at + 2] == vcpus);
                    CHECK(le(madt, at + 4, 4) == 0xfec00000);
                    CHECK(le(madt, at + 8, 4) == 0);
                    ++ioapics;
                    break;
                case 2:
                    CHECK(length == 10);
                    CHECK(madt[at + 2] == 0);         // ISA
                    CHECK(madt[at + 3] == 0);         // IRQ 0
                    CHECK(le(madt, at + 4, 4) == 2);  // GSI 2
                    ++overrides;
                    break;
                case 4:
                    CHECK(length == 6);
                    CHECK(madt[at + 5] == 1);  // LINT1
                    ++nmis;
                    break;
                default:
                    FAIL("unexpected MADT entry type " << int{type});
            }
            at += length;
        }
        CHECK(at == madt.size());
        CHECK(lapics == vcpus);
        CHECK(ioapics == 1);
        CHECK(overrides == 1);
        CHECK(nmis == 1);
    }
}

// AML PkgLength at `at`: {the length it encodes, how many bytes the encoding takes}.
std::pair<std::size_t, std::size_t> pkg_length(const std::vector<std::uint8_t>& t, std::size_t at) {
    std::size_t extra = t.at(at) >> 6;
    if (extra == 0) return {t[at] & 0x3fu, 1};
    std::size_t length = t[at] & 0x0fu;
    for (std::size_t i = 0; i < extra; ++i) length |= std::size_t{t.at(at + 1 + i)} << (4 + 8 * i);
    return {length, 1 + extra};
}

// Where the ASCII `what` first occurs in `t` at or after `from` (t.size() if nowhere).
std::size_t find(const std::vector<std::uint8_t>& t, const std::string& what,
                 std::size_t from = 0) {
    auto it = std::search(t.begin() + static_cast<std::ptrdiff_t>(from), t.end(), what.begin(),
                          what.end(),
                          [](std::uint8_t a, char b) { return a == static_cast<std::uint8_t>(b); });
    return static_cast<std::size_t>(it - t.begin());
}

TEST_CASE("the DSDT holds \\_S5_, the PCI root bridge and COM1 as well-formed AML", "[acpi]") {
    auto dsdt = acpi_dsdt();
    check_header(dsdt, "DSDT", 2);
    // Name (_S5_, Package () {5, 0}): the sleep type Linux writes to power off.
    const std::vector<std::uint8_t> s5 = {0x08, '_',  'S',  '5',  '_', 0x12,
                                          0x05, 0x02, 0x0a, 0x05, 0x00};
    REQUIRE(std::equal(s5.begin(), s5.end(), dsdt.begin() + 36));
    CHECK(dsdt[36 + 10] == 0);

    // Scope (\_SB) runs to the end of the table; Device (PCI0) and Device (COM1) fill it
    // exactly, each PkgLength ending where the next term starts.
    std::size_t scope = 36 + s5.size();
    REQUIRE(dsdt.at(scope) == 0x10);
    auto [scope_len, scope_len_bytes] = pkg_length(dsdt, scope + 1);
    CHECK(scope + 1 + scope_len == dsdt.size());
    CHECK(text(dsdt, scope + 1 + scope_len_bytes, 5) == "\\_SB_");
    std::size_t pci0 = scope + 1 + scope_len_bytes + 5;
    REQUIRE(dsdt.at(pci0) == 0x5b);
    REQUIRE(dsdt.at(pci0 + 1) == 0x82);
    auto [pci0_len, pci0_len_bytes] = pkg_length(dsdt, pci0 + 2);
    CHECK(text(dsdt, pci0 + 2 + pci0_len_bytes, 4) == "PCI0");
    std::size_t com1 = pci0 + 2 + pci0_len;
    REQUIRE(dsdt.at(com1) == 0x5b);
    REQUIRE(dsdt.at(com1 + 1) == 0x82);
    auto [com1_len, com1_len_bytes] = pkg_length(dsdt, com1 + 2);
    CHECK(text(dsdt, com1 + 2 + com1_len_bytes, 4) == "COM1");
    CHECK(com1 + 2 + com1_len == dsdt.size());

    // PCI0 is a PNP0A03 (EisaId 41 D0 0A 03) whose _CRS gives bus 0, config mechanism #1 and
    // the BAR window the host assigns in.
    std::vector<std::uint8_t> pci0_bytes(dsdt.begin() + static_cast<std::ptrdiff_t>(pci0),
                                         dsdt.begin() + static_cast<std::ptrdiff_t>(com1));
    CHECK(find(pci0_bytes, std::string("_HID\x0c\x41\xd0\x0a\x03", 9)) < pci0_bytes.size());
    std::size_t window = find(pci0_bytes, std::string("\x87\x17\x00", 3));
    REQUIRE(window + 26 <= pci0_bytes.size());
    CHECK(le(pci0_bytes, window + 10, 4) == LPV_PCI_MMIO_GPA);
    CHECK(le(pci0_bytes, window + 14, 4) == LPV_PCI_MMIO_GPA + LPV_PCI_MMIO_SIZE - 1);
    CHECK(le(pci0_bytes, window + 22, 4) == LPV_PCI_MMIO_SIZE);
    std::size_t config = find(pci0_bytes, std::string("\x47\x01\xf8\x0c\xf8\x0c", 6));
    CHECK(config < pci0_bytes.size());

    // COM1 is a PNP0501 at 0x3F8 with ISA IRQ 4 (mask bit 4), so Linux's 8250 gets its IRQ.
    std::vector<std::uint8_t> com1_bytes(dsdt.begin() + static_cast<std::ptrdiff_t>(com1),
                                         dsdt.end());
    CHECK(find(com1_bytes, std::string("_HID\x0c\x41\xd0\x05\x01", 9)) < com1_bytes.size());
    CHECK(find(com1_bytes, std::string("\x47\x01\xf8\x03\xf8\x03", 6)) < com1_bytes.size());
    CHECK(find(com1_bytes, std::string("\x22\x10\x00", 3)) < com1_bytes.size());
    // The buffer's declared size matches its bytes, End Tag last.
    std::size_t crs = find(com1_bytes, "_CRS");
    REQUIRE(crs + 8 < com1_bytes.size());
    CHECK(com1_bytes[crs + 4] == 0x11);
    CHECK(com1_bytes[crs + 6] == 0x0a);
    CHECK(crs + 8 + com1_bytes[crs + 7] == com1_bytes.size());
    CHECK(com1_bytes[com1_bytes.size() - 2] == 0x79);
}

TEST_CASE("build_acpi_tables links RSDP -> XSDT -> FADT/MADT -> DSDT in the BIOS area", "[acpi]") {
    Buffer buffer(2 * 1024 * 1024);
    auto at = build_acpi_tables(buffer.memory, 4, "LPAR1");
    CHECK(at.rsdp == kAcpiRsdpGpa);
    CHECK(at.end <= kAcpiAreaEnd);
    for (std::uint64_t a : {at.rsdp, at.xsdt, at.fadt, at.madt, at.dsdt}) {
        CHECK(a >= kAcpiRsdpGpa);
        CHECK(a % 16 == 0);
    }

    auto rsdp = buffer.read(at.rsdp, 36);
    CHECK(acpi_sum_is_zero(rsdp));
    CHECK(acpi_sum_is_zero(std::span(rsdp).first(20)));
    const std::uint64_t xsdt_gpa = le(rsdp, 24, 8);
    CHECK(xsdt_gpa == at.xsdt);
    auto table = [&](std::uint64_t gpa) {
        auto head = buffer.read(gpa, 36);
        return buffer.read(gpa, le(head, 4, 4));
    };
    auto xsdt = table(xsdt_gpa);
    check_header(xsdt, "XSDT", 1);
    REQUIRE(xsdt.size() == 36 + 2 * 8);
    auto fadt = table(le(xsdt, 36, 8));
    auto madt = table(le(xsdt, 44, 8));
    check_header(fadt, "FACP", 6);
    check_header(madt, "APIC", 5);
    CHECK(madt.size() == 44 + 4 * 8 + 12 + 10 + 6);
    auto dsdt = table(le(fadt, 140, 8));
    check_header(dsdt, "DSDT", 2);
    CHECK(le(fadt, 40, 4) == at.dsdt);
    // The rest of the area is cleared: no stale bytes for a "RSD PTR " scan to find.
    auto rest = buffer.read(at.end, kAcpiAreaEnd - at.end);
    CHECK(std::all_of(rest.begin(), rest.end(), [](std::uint8_t b) { return b == 0; }));
}

TEST_CASE("ACPI refuses vCPU counts it cannot describe and storage without a BIOS area", "[acpi]") {
    Buffer buffer(2 * 1024 * 1024);
    CHECK_THROWS_WITH(build_acpi_tables(buffer.memory, 0, "LPAR3"),
                      Catch::Contains("LPAR3") && Catch::Contains("0 vCPUs"));
    CHECK_THROWS_WITH(build_acpi_tables(buffer.memory, 255, "LPAR3"), Catch::Contains("255 vCPUs"));
    CHECK_NOTHROW(build_acpi_tables(buffer.memory, 254, "LPAR3"));
    Buffer tiny(512 * 1024);
    try {
        build_acpi_tables(tiny.memory, 1, "LPAR4");
        FAIL("no error");
    } catch (const Error& e) {
        CHECK(e.kind() == ErrorKind::InvalidArgument);
        CHECK_THAT(e.what(), Catch::Contains("LPAR4") && Catch::Contains("0xe0000"));
    }
}
