#include "boot/acpi.hpp"

#include <lparvisor/abi.h>

#include <cstring>

#include <fmt/format.h>

#include "devices/power_port.hpp"
#include "devices/uart8250.hpp"
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
    std::span<const std::uint8_t> view() const { return b_; }
    void set_u32(std::size_t at, std::uint32_t v) {
        for (int i = 0; i < 4; ++i) b_.at(at + i) = static_cast<std::uint8_t>(v >> (8 * i));
    }

  private:
    void put(std::uint64_t v, int n) {
        for (int i = 0; i < n; ++i) b_.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
    }
    std::vector<std::uint8_t> b_;
};

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

std::vector<std::uint8_t> acpi_rsdp(GuestPhysAddr xsdt) {
    Bytes t;
    t.text("RSD PTR ", 8);
    t.u8(0);  // checksum of the ACPI 1.0 part (first 20 bytes)
    t.text(kAcpiOemId, 6);
    t.u8(2);   // revision 2: XSDT present
    t.u32(0);  // no RSDT: Linux uses the XSDT when the revision is >= 2
    t.u32(36);
    t.u64(xsdt.value);
    t.u8(0);  // extended checksum (all 36 bytes)
    t.zeros(3);
    auto& b = t.vec();
    b[8] = acpi_checksum(std::span(b).first(20));
    b[32] = acpi_checksum(b);
    return std::move(b);
}

std::vector<std::uint8_t> acpi_xsdt(std::span<const GuestPhysAddr> tables) {
    Bytes t;
    header(t, "XSDT", 1, "LPVXSDT");
    for (GuestPhysAddr gpa : tables) t.u64(gpa.value);
    return finish(t);
}

std::vector<std::uint8_t> acpi_fadt(GuestPhysAddr dsdt) {
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
    t.u32(dsdt.value <= 0xffffffff ? static_cast<std::uint32_t>(dsdt.value) : 0);  // 40 DSDT
    t.u8(0);                                                                       // 44 reserved
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
    t.u64(dsdt.value);                                                // 140 X_DSDT
    t.zeros(std::size_t{12} * 8);  // 148 X_PM1a_EVT .. X_GPE1_BLK: none
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

namespace {

// AML, hand-encoded (ACPI 6.5 chapter 20), only the few terms the DSDT needs.
constexpr std::uint8_t kAmlZero = 0x00, kAmlNameOp = 0x08, kAmlBytePrefix = 0x0a,
                       kAmlDWordPrefix = 0x0c, kAmlScopeOp = 0x10, kAmlBufferOp = 0x11,
                       kAmlPackageOp = 0x12, kAmlExtOpPrefix = 0x5b, kAmlDeviceOp = 0x82,
                       kAmlRootChar = 0x5c;

// PkgLength counts itself and everything after it in the term: 1 byte up to 63, else a lead
// byte (bits 7:6 = how many more bytes, bits 3:0 = the low nibble) and the rest 8 bits each.
void aml_pkg_length(Bytes& out, std::size_t content) {
    if (content + 1 < 0x40) {
        out.u8(static_cast<std::uint8_t>(content + 1));
        return;
    }
    for (std::size_t extra = 1; extra <= 3; ++extra) {
        std::size_t total = content + 1 + extra;
        if (total >= (std::size_t{1} << (4 + 8 * extra))) continue;
        out.u8(static_cast<std::uint8_t>((extra << 6) | (total & 0xf)));
        for (std::size_t i = 0; i < extra; ++i)
            out.u8(static_cast<std::uint8_t>(total >> (4 + 8 * i)));
        return;
    }
    throw Error(ErrorKind::InvalidArgument, "AML package longer than 256 MiB");
}

void aml_name_seg(Bytes& out, const char (&seg)[5]) {
    out.text(seg, 4);
}

// Name (SEG, <data>): `data` is already-encoded AML.
void aml_name(Bytes& out, const char (&seg)[5], const Bytes& data) {
    out.u8(kAmlNameOp);
    aml_name_seg(out, seg);
    out.raw(data.view());
}

Bytes aml_zero() {
    Bytes b;
    b.u8(kAmlZero);
    return b;
}

// EisaId ("PNP0A03"): the three letters 5 bits each, then the four hex digits, as a big-endian
// DWord (so "PNP0A03" reads 41 D0 0A 03 in the table).
Bytes aml_eisa_id(const char (&id)[8]) {
    auto letter = [&](int i) { return static_cast<std::uint32_t>(id[i] - '@') & 0x1f; };
    auto hex = [&](int i) {
        char c = id[i];
        return static_cast<std::uint32_t>(c <= '9' ? c - '0' : c - 'A' + 10);
    };
    std::uint32_t be = (letter(0) << 26) | (letter(1) << 21) | (letter(2) << 16) | (hex(3) << 12) |
                       (hex(4) << 8) | (hex(5) << 4) | hex(6);
    Bytes b;
    b.u8(kAmlDWordPrefix);
    for (int shift = 24; shift >= 0; shift -= 8) b.u8(static_cast<std::uint8_t>(be >> shift));
    return b;
}

// A named object with a body: Scope/Device/Buffer/Package-style terms.
void aml_term(Bytes& out, std::span<const std::uint8_t> opcode, const Bytes& body) {
    out.raw(opcode);
    aml_pkg_length(out, body.size());
    out.raw(body.view());
}

// Buffer (<size>) { <resource descriptors>, EndTag }: a ResourceTemplate.
Bytes aml_resource_template(Bytes descriptors) {
    descriptors.u8(0x79);  // End Tag, checksum 0 ("treat as summed to zero")
    descriptors.u8(0);
    Bytes body;
    if (descriptors.size() > 0xff) throw Error(ErrorKind::InvalidArgument, "_CRS too long");
    body.u8(kAmlBytePrefix);
    body.u8(static_cast<std::uint8_t>(descriptors.size()));
    body.raw(descriptors.vec());
    Bytes out;
    const std::uint8_t op[] = {kAmlBufferOp};
    aml_term(out, op, body);
    return out;
}

// Resource descriptors (ACPI 6.5 section 6.4). General flags 0x0c of the address-space
// descriptors: a producer (the bridge decodes the range for its children), positive decode,
// fixed minimum and maximum.
constexpr std::uint8_t kProducerFixed = 0x0c;

void io_port_descriptor(Bytes& d, std::uint16_t port, std::uint8_t length) {
    d.u8(0x47);  // I/O port descriptor, 7 bytes
    d.u8(1);     // decodes 16 address bits
    d.u16(port);
    d.u16(port);
    d.u8(1);  // alignment
    d.u8(length);
}

// Word Address Space descriptor: an I/O or bus-number range [first, last] the bridge decodes.
constexpr std::uint8_t kIoRange = 1, kBusNumberRange = 2;
void word_range(Bytes& d, std::uint8_t resource_type, std::uint16_t first, std::uint16_t last) {
    d.u8(0x88);
    d.u16(13);
    d.u8(resource_type);
    d.u8(kProducerFixed);
    d.u8(resource_type == kIoRange ? 3 : 0);  // I/O: both ISA and non-ISA ranges
    d.u16(0);                                 // granularity
    d.u16(first);
    d.u16(last);
    d.u16(0);  // translation
    d.u16(static_cast<std::uint16_t>(last - first + 1));
}

void dword_memory_window(Bytes& d, std::uint32_t first, std::uint32_t size) {
    d.u8(0x87);  // DWord Address Space descriptor
    d.u16(23);
    d.u8(0);  // memory range
    d.u8(kProducerFixed);
    d.u8(1);  // read-write, non-cacheable
    d.u32(0);
    d.u32(first);
    d.u32(first + size - 1);
    d.u32(0);
    d.u32(size);
}

void irq_descriptor(Bytes& d, unsigned irq) {
    d.u8(0x22);  // IRQ descriptor without flags: edge-triggered, active high, exclusive
    d.u16(static_cast<std::uint16_t>(1u << irq));
}

Bytes aml_device(const char (&seg)[5], const Bytes& body_terms) {
    Bytes body;
    aml_name_seg(body, seg);
    body.raw(body_terms.view());
    Bytes out;
    const std::uint8_t op[] = {kAmlExtOpPrefix, kAmlDeviceOp};
    aml_term(out, op, body);
    return out;
}

// The PCI root bridge. Without one, Linux with ACPI never scans bus 0 (pci_acpi_init leaves
// the scan to the ACPI root driver): it decodes configuration mechanism #1, bus 0, all I/O
// ports but 0xCF8-0xCFF, and the memory window the host assigns BARs in (devices/pci).
Bytes aml_pci_root() {
    Bytes crs;
    word_range(crs, kBusNumberRange, 0, 0);
    io_port_descriptor(crs, LPV_PORT_PCI_CONFIG, 8);
    word_range(crs, kIoRange, 0x0000, LPV_PORT_PCI_CONFIG - 1);
    word_range(crs, kIoRange, LPV_PORT_PCI_CONFIG + 8, 0xffff);
    static_assert(LPV_PCI_MMIO_GPA + LPV_PCI_MMIO_SIZE <= 0x100000000ull);
    dword_memory_window(crs, static_cast<std::uint32_t>(LPV_PCI_MMIO_GPA),
                        static_cast<std::uint32_t>(LPV_PCI_MMIO_SIZE));
    Bytes terms;
    aml_name(terms, "_HID", aml_eisa_id("PNP0A03"));
    aml_name(terms, "_UID", aml_zero());
    aml_name(terms, "_SEG", aml_zero());
    aml_name(terms, "_BBN", aml_zero());
    aml_name(terms, "_CRS", aml_resource_template(std::move(crs)));
    return aml_device("PCI0", terms);
}

// COM1 as a PNP0501 device. On a hardware-reduced platform Linux sets up no legacy ISA IRQs,
// so the 8250 driver's built-in COM1 cannot get IRQ 4 (the kernel's own printk, polled, still
// works; every user-space write to the console waits for a THR-empty interrupt forever). ACPI's
// _CRS registers GSI 4 for it, as on Cloud Hypervisor.
Bytes aml_com1() {
    Bytes crs;
    io_port_descriptor(crs, LPV_PORT_COM1, 8);
    irq_descriptor(crs, Uart8250::kCom1Irq);
    Bytes terms;
    aml_name(terms, "_HID", aml_eisa_id("PNP0501"));
    aml_name(terms, "_UID", aml_zero());
    aml_name(terms, "_CRS", aml_resource_template(std::move(crs)));
    return aml_device("COM1", terms);
}

}  // namespace

std::vector<std::uint8_t> acpi_dsdt() {
    Bytes t;
    header(t, "DSDT", 2, "LPVDSDT");  // revision 2: 64-bit integers
    // Name (_S5_, Package (0x02) { 0x05, Zero }): ACPICA reads SLP_TYPa from element 0 and
    // Linux writes it to the sleep control register to power off.
    static_assert(PowerPort::kS5SleepType == 5);
    Bytes s5_elements;
    s5_elements.u8(2);  // NumElements
    s5_elements.u8(kAmlBytePrefix);
    s5_elements.u8(PowerPort::kS5SleepType);
    s5_elements.u8(kAmlZero);
    Bytes s5;
    const std::uint8_t package[] = {kAmlPackageOp};
    aml_term(s5, package, s5_elements);
    aml_name(t, "_S5_", s5);
    // Scope (\_SB) { Device (PCI0) {...} Device (COM1) {...} }
    Bytes sb;
    sb.u8(kAmlRootChar);
    aml_name_seg(sb, "_SB_");
    sb.raw(aml_pci_root().view());
    sb.raw(aml_com1().view());
    const std::uint8_t scope[] = {kAmlScopeOp};
    aml_term(t, scope, sb);
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
    auto fadt_size = acpi_fadt(GuestPhysAddr{0}).size();
    at.dsdt = align16(at.fadt + fadt_size);
    auto dsdt = acpi_dsdt();
    at.madt = align16(at.dsdt + dsdt.size());
    auto madt = acpi_madt(vcpus);
    at.end = at.madt + madt.size();
    const GuestPhysAddr xsdt_entries[] = {GuestPhysAddr{at.fadt}, GuestPhysAddr{at.madt}};
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
    put(at.rsdp, acpi_rsdp(GuestPhysAddr{at.xsdt}), "RSDP");
    put(at.xsdt, xsdt, "XSDT");
    put(at.fadt, acpi_fadt(GuestPhysAddr{at.dsdt}), "FADT");
    put(at.dsdt, dsdt, "DSDT");
    put(at.madt, madt, "MADT");
    return at;
}

}  // namespace lparvisor::boot
