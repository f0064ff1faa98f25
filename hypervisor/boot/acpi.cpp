#include "boot/acpi.hpp"

#include <cstring>

#include <fmt/format.h>

#include "devices/power_port.hpp"
#include "util/error.hpp"

namespace lparvisor::boot {

namespace {

// Little-endian byte builder: ACPI tables are packed structures, so writing them field by field
// keeps every offset visible and leaves no padding to worry about.
class Bytes {
  public:
    void u8(std::uint8_t v) { b_.push_back(v); }
    void u16(std::uint16_t v) { put(v, 2); }
    void u32(std::uint32_t v) { put(v, 4); }
    void u64(std::uint64_t v) { put(v, 8); }
    void text(const char* s, std::size_t width) {  // space-padded, not NUL-terminated
        std::size_t n = std::strlen(s);
        for (std::size_t i = 0; i < width; ++i) u8(i < n ? static_cast<std::uint8_t>(s[i]) : ' ');
    }
    void raw(std::span<const std::uint8_t> s) { b_.insert(b_.end(), s.begin(), s.end()); }
    void zeros(std::size_t n) { b_.insert(b_.end(), n, 0); }
    std::size_t size() const { return b_.size(); }
    std::vector<std::uint8_t>& vec() { return b_; }
    void set_u32(std::size_t at, std::uint32_t v) {
        for (int i = 0; i < 4; ++i) b_.at(at + i) = static_cast<std::uint8_t>(v >> (8 * i));
    }

  private:
    void put(std::uint64_t v, int n) {
        for (int i = 0; i < n; ++i) b_.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
    }
    std::vector<std::uint8_t> b_;
};

constexpr std::size_t kHeaderSize = 36;
constexpr std::size_t kChecksumOffset = 9;

// The common System Description Table header; the length is patched by finish().
void header(Bytes& t, const char* signature, std::uint8_t revision, const char* table_id) {
    t.text(signature, 4);
    t.u32(0);  // length, set by finish()
    t.u8(revision);
    t.u8(0);  // checksum, set by finish()
    t.text(kAcpiOemId, 6);
    t.text(table_id, 8);
    t.u32(1);           // OEM revision
    t.text("LPVS", 4);  // creator id
    t.u32(1);           // creator revision
}

std::vector<std::uint8_t> finish(Bytes& t) {
    t.set_u32(4, static_cast<std::uint32_t>(t.size()));
    t.vec()[kChecksumOffset] = 0;
    t.vec()[kChecksumOffset] = acpi_checksum(t.vec());
    return std::move(t.vec());
}

// Generic Address Structure: one byte in system I/O space.
void io_byte_register(Bytes& t, std::uint16_t port) {
    t.u8(1);  // address space: system I/O
    t.u8(8);  // register bit width
    t.u8(0);  // bit offset
    t.u8(1);  // access size: byte
    t.u64(port);
}

}  // namespace

std::uint8_t acpi_checksum(std::span<const std::uint8_t> bytes) {
    std::uint8_t sum = 0;
    for (std::uint8_t b : bytes) sum = static_cast<std::uint8_t>(sum + b);
    return static_cast<std::uint8_t>(0x100 - sum);
}

bool acpi_sum_is_zero(std::span<const std::uint8_t> bytes) {
    std::uint8_t sum = 0;
    for (std::uint8_t b : bytes) sum = static_cast<std::uint8_t>(sum + b);
    return sum == 0;
}

std::vector<std::uint8_t> acpi_rsdp(std::uint64_t xsdt_gpa) {
    Bytes t;
    t.text("RSD PTR ", 8);
    t.u8(0);  // checksum of the ACPI 1.0 part (first 20 bytes)
    t.text(kAcpiOemId, 6);
    t.u8(2);   // revision 2: XSDT present
    t.u32(0);  // no RSDT: Linux uses the XSDT when the revision is >= 2
    t.u32(36);
    t.u64(xsdt_gpa);
    t.u8(0);  // extended checksum (all 36 bytes)
    t.zeros(3);
    auto& b = t.vec();
    b[8] = acpi_checksum(std::span(b).first(20));
    b[32] = acpi_checksum(b);
    return std::move(b);
}

std::vector<std::uint8_t> acpi_xsdt(std::span<const std::uint64_t> tables) {
    Bytes t;
    header(t, "XSDT", 1, "LPVXSDT");
    for (std::uint64_t gpa : tables) t.u64(gpa);
    return finish(t);
}

std::vector<std::uint8_t> acpi_fadt(std::uint64_t dsdt_gpa) {
    constexpr std::uint32_t kFlagWbinvd = 1u << 0;       // WBINVD works (it is a VM exit)
    constexpr std::uint32_t kFlagPowerButton = 1u << 4;  // no fixed-feature power button
    constexpr std::uint32_t kFlagSleepButton = 1u << 5;  // no fixed-feature sleep button
    constexpr std::uint32_t kFlagResetRegSup = 1u << 10;
    constexpr std::uint32_t kFlagHwReducedAcpi = 1u << 20;
    // IAPC_BOOT_ARCH: no VGA to probe, no CMOS RTC (Linux then registers no rtc_cmos device);
    // the 8042 flag stays clear so the i8042 driver does not probe the minimal controller.
    constexpr std::uint16_t kBootArchNoVga = 1u << 2;
    constexpr std::uint16_t kBootArchNoCmosRtc = 1u << 5;

    Bytes t;
    header(t, "FACP", 6, "LPVFACP");
    t.u32(0);  // 36 FIRMWARE_CTRL: no FACS on a hardware-reduced platform
    t.u32(dsdt_gpa <= 0xffffffff ? static_cast<std::uint32_t>(dsdt_gpa) : 0);  // 40 DSDT
    t.u8(0);                                                                   // 44 reserved
    t.u8(0);      // 45 preferred PM profile: unspecified
    t.u16(0);     // 46 SCI_INT: none (hardware-reduced)
    t.u32(0);     // 48 SMI_CMD: no SMM, ACPI is always enabled
    t.zeros(4);   // 52 ACPI_ENABLE, ACPI_DISABLE, S4BIOS_REQ, PSTATE_CNT
    t.zeros(32);  // 56 PM1a/b event, PM1a/b control, PM2 control, PM timer, GPE0/1 blocks
    t.zeros(8);   // 88 their lengths, GPE1_BASE, CST_CNT
    t.zeros(4);   // 96 P_LVL2_LAT, P_LVL3_LAT
    t.zeros(4);   // 100 FLUSH_SIZE, FLUSH_STRIDE
    t.zeros(5);   // 104 DUTY_OFFSET, DUTY_WIDTH, DAY_ALRM, MON_ALRM, CENTURY
    t.u16(kBootArchNoVga | kBootArchNoCmosRtc);  // 109 IAPC_BOOT_ARCH
    t.u8(0);                                     // 111 reserved
    t.u32(kFlagWbinvd | kFlagPowerButton | kFlagSleepButton | kFlagResetRegSup |
          kFlagHwReducedAcpi);                                        // 112 flags
    io_byte_register(t, PowerPort::kBase + PowerPort::kResetOffset);  // 116 RESET_REG
    t.u8(PowerPort::kResetValue);                                     // 128 RESET_VALUE
    t.u16(0);                                                         // 129 ARM_BOOT_ARCH
    t.u8(0);                                                          // 131 minor version
    t.u64(0);                                                         // 132 X_FIRMWARE_CTRL
    t.u64(dsdt_gpa);                                                  // 140 X_DSDT
    t.zeros(12 * 8);  // 148 X_PM1a_EVT .. X_GPE1_BLK: none
    io_byte_register(t, PowerPort::kBase + PowerPort::kSleepControlOffset);  // 244
    io_byte_register(t, PowerPort::kBase + PowerPort::kSleepStatusOffset);   // 256
    t.text("LPARVISR", 8);  // 268 hypervisor vendor identity
    return finish(t);       // 276 bytes, the ACPI 6 FADT
}

std::vector<std::uint8_t> acpi_madt(unsigned vcpus) {
    constexpr std::uint32_t kPcatCompat = 1;  // KVM's in-kernel irqchip has the dual 8259
    Bytes t;
    header(t, "APIC", 5, "LPVMADT");
    t.u32(kLocalApicGpa);
    t.u32(kPcatCompat);
    for (unsigned i = 0; i < vcpus; ++i) {  // Processor Local APIC
        t.u8(0);
        t.u8(8);
        t.u8(static_cast<std::uint8_t>(i));  // ACPI processor UID
        t.u8(static_cast<std::uint8_t>(i));  // APIC id = vCPU index (KVM's default)
        t.u32(1);                            // enabled
    }
    t.u8(1);  // I/O APIC
    t.u8(12);
    t.u8(static_cast<std::uint8_t>(vcpus));  // its id: the first one no local APIC uses
    t.u8(0);
    t.u32(kIoApicGpa);
    t.u32(0);  // GSI base
    t.u8(2);   // Interrupt Source Override: the PIT's ISA IRQ 0 is wired to IOAPIC pin 2
    t.u8(10);
    t.u8(0);   // bus: ISA
    t.u8(0);   // source IRQ
    t.u32(2);  // GSI
    t.u16(0);  // flags: conforms to the bus (edge, active high)
    t.u8(4);   // Local APIC NMI: LINT1 of every processor is NMI, as on a PC
    t.u8(6);
    t.u8(0xff);  // all processors
    t.u16(0);
    t.u8(1);
    return finish(t);
}

std::vector<std::uint8_t> acpi_dsdt() {
    // Name (_S5_, Package (0x02) { 0x05, Zero }), hand-assembled AML: ACPICA reads SLP_TYPa
    // from element 0 and Linux writes it to the sleep control register to power off.
    static_assert(PowerPort::kS5SleepType == 5);
    const std::uint8_t s5[] = {
        0x08,                  // NameOp
        '_',  'S',  '5', '_',  // NameString
        0x12,                  // PackageOp
        0x05,                  // PkgLength: this byte + NumElements + 3 bytes of elements
        0x02,                  // NumElements
        0x0a, 0x05,            // BytePrefix 5
        0x00,                  // ZeroOp
    };
    Bytes t;
    header(t, "DSDT", 2, "LPVDSDT");  // revision 2: 64-bit integers
    t.raw(s5);
    return finish(t);
}

AcpiTables build_acpi_tables(const GuestMemory& memory, unsigned vcpus, const std::string& lpar) {
    if (vcpus == 0 || vcpus > kAcpiMaxVcpus)
        throw Error(ErrorKind::InvalidArgument,
                    fmt::format("{}: {} vCPUs; the ACPI tables describe 1 to {}", lpar, vcpus,
                                kAcpiMaxVcpus));
    auto align16 = [](std::uint64_t a) { return (a + 15) & ~std::uint64_t{15}; };
    AcpiTables at;
    at.rsdp = kAcpiRsdpGpa;
    at.xsdt = kAcpiRsdpGpa + 0x40;
    at.fadt = kAcpiRsdpGpa + 0x80;
    auto fadt_size = acpi_fadt(0).size();
    at.dsdt = align16(at.fadt + fadt_size);
    auto dsdt = acpi_dsdt();
    at.madt = align16(at.dsdt + dsdt.size());
    auto madt = acpi_madt(vcpus);
    at.end = at.madt + madt.size();
    const std::uint64_t xsdt_entries[] = {at.fadt, at.madt};
    auto xsdt = acpi_xsdt(xsdt_entries);
    if (at.xsdt + xsdt.size() > at.fadt || at.end > kAcpiAreaEnd)
        throw Error(ErrorKind::InvalidArgument,
                    fmt::format("{}: the ACPI tables for {} vCPUs do not fit {:#x}-{:#x}", lpar,
                                vcpus, kAcpiRsdpGpa, kAcpiAreaEnd));

    auto put = [&](std::uint64_t gpa, const std::vector<std::uint8_t>& table, const char* what) {
        if (!memory.write(GuestPhysAddr{gpa}, table))
            throw Error(ErrorKind::InvalidArgument,
                        fmt::format("{}: ACPI {} at {:#x}+{} is outside the LPAR's {} MiB", lpar,
                                    what, gpa, table.size(), memory.size() >> 20));
    };
    // Clear the whole area first so that no stale bytes look like a second RSDP to a scan.
    if (!memory.contains(GuestPhysAddr{kAcpiRsdpGpa}, kAcpiAreaEnd - kAcpiRsdpGpa))
        throw Error(ErrorKind::InvalidArgument,
                    fmt::format("{}: {} MiB of storage does not reach the ACPI area at {:#x}", lpar,
                                memory.size() >> 20, kAcpiRsdpGpa));
    put(kAcpiRsdpGpa, std::vector<std::uint8_t>(kAcpiAreaEnd - kAcpiRsdpGpa, 0), "area");
    put(at.rsdp, acpi_rsdp(at.xsdt), "RSDP");
    put(at.xsdt, xsdt, "XSDT");
    put(at.fadt, acpi_fadt(at.dsdt), "FADT");
    put(at.dsdt, dsdt, "DSDT");
    put(at.madt, madt, "MADT");
    return at;
}

}  // namespace lparvisor::boot
