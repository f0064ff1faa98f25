// ACPI tables for a Linux LPAR: the Debian cloud kernel has no MP-table parser, so it finds its
// local APICs, the IOAPIC and the other vCPUs only through ACPI (docs/kvm-notes.md, Debian
// kernel as a guest). The platform is "hardware-reduced" (FADT flag HW_REDUCED_ACPI, as
// Firecracker and Cloud Hypervisor do): no SCI, no PM1 blocks, no FACS; power-off goes through
// the sleep control register and reset through the reset register, both served by
// devices/power_port.hpp.
//
// Everything lives in the BIOS area [kAcpiRsdpGpa, kAcpiAreaEnd), which the Linux e820 map
// (linux_loader.hpp) reports as reserved: RSDP (revision 2), XSDT, FADT (revision 6), MADT and a
// DSDT with \_S5_, the PCI root bridge (PNP0A03: without it Linux does not scan bus 0) and COM1
// (PNP0501: without it the 8250 driver gets no IRQ on a hardware-reduced platform).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "storage/guest_memory.hpp"

namespace lparvisor::boot {

inline constexpr std::uint64_t kAcpiRsdpGpa = 0xe0000;  // where Linux also scans for "RSD PTR "
inline constexpr std::uint64_t kAcpiAreaEnd = 0x100000;
inline constexpr std::uint32_t kLocalApicGpa = 0xfee00000;
inline constexpr std::uint32_t kIoApicGpa = 0xfec00000;
// APIC ids are vCPU indexes 0..vcpus-1 and the IOAPIC's id is `vcpus`: all must fit a byte
// (0xff is the broadcast id).
inline constexpr unsigned kAcpiMaxVcpus = 254;
inline constexpr char kAcpiOemId[] = "LPARVS";

// Where each table went (guest-physical addresses), for the zero page and for tests.
struct AcpiTables {
    std::uint64_t rsdp = 0, xsdt = 0, fadt = 0, madt = 0, dsdt = 0;
    std::uint64_t end = 0;  // first byte after the last table
};

// Builds the tables for `vcpus` vCPUs into `memory` from kAcpiRsdpGpa on. Throws Error
// (InvalidArgument) naming `lpar` if vcpus is 0 or above kAcpiMaxVcpus, or the storage is too
// small to hold the BIOS area.
AcpiTables build_acpi_tables(const GuestMemory& memory, unsigned vcpus, const std::string& lpar);

// The pieces, public for the unit tests. Each returns a complete table with its checksum set.
std::vector<std::uint8_t> acpi_rsdp(GuestPhysAddr xsdt);
std::vector<std::uint8_t> acpi_xsdt(std::span<const GuestPhysAddr> tables);
std::vector<std::uint8_t> acpi_fadt(GuestPhysAddr dsdt);
std::vector<std::uint8_t> acpi_madt(unsigned vcpus);
std::vector<std::uint8_t> acpi_dsdt();

// The byte that makes `bytes` (with this byte) sum to 0 mod 256.
std::uint8_t acpi_checksum(std::span<const std::uint8_t> bytes);
// True if `bytes` sums to 0 mod 256 (a table with a correct checksum does).
bool acpi_sum_is_zero(std::span<const std::uint8_t> bytes);

}  // namespace lparvisor::boot
