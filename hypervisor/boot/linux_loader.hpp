// Boots a stock Linux kernel in an LPAR through the x86 64-bit boot protocol
// (Documentation/arch/x86/boot.rst): the kernel, an optional initrd and the command line go into
// guest memory, with a zero page (struct boot_params) whose e820 map is exactly the LPAR's
// storage, the ACPI tables (acpi.hpp), a GDT and identity page tables; the boot vCPU then
// starts in long mode at CPL0 at the kernel's 64-bit entry with RSI = the zero page.
//
// Two kernel formats:
//  - bzImage ("HdrS" at 0x202, protocol >= 2.12 with XLF_KERNEL_64): the protected-mode part
//    goes to its preferred address (1 MiB if not relocatable) and runs from +0x200, where the
//    decompressor's startup_64 is. Decompressing is slow under PVM (docs/kvm-notes.md, Linux
//    under PVM).
//  - ELF vmlinux: PT_LOAD segments at their physical addresses, entry = e_entry (the physical
//    startup_64); the zero page's setup header is built from scratch.
//
// Low-memory layout (all below the EBDA at 0x9fc00; the kernel itself loads from 1 MiB up):
//   0x500 GDT, 0x7000 zero page, 0x8ff0 initial stack, 0x9000.. page tables, 0x20000 command
//   line, 0xe0000.. ACPI tables (reserved in the e820 map).
// Secondary vCPUs are not touched: Linux starts them with INIT/SIPI.
#pragma once

#include <linux/kvm.h>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "boot/acpi.hpp"
#include "storage/guest_memory.hpp"

namespace lparvisor::boot {

inline constexpr std::uint64_t kLinuxMinStorage = 32ull << 20;
inline constexpr std::uint64_t kLinuxGdtGpa = 0x500;
inline constexpr std::uint64_t kLinuxZeroPageGpa = 0x7000;
inline constexpr std::uint64_t kLinuxStackTop = 0x8ff0;
inline constexpr std::uint64_t kLinuxPageTableGpa = 0x9000;  // PML4, PDPT, then one PD per GiB
inline constexpr std::uint64_t kLinuxCmdlineGpa = 0x20000;
inline constexpr std::uint64_t kLinuxCmdlineArea = 0x10000;  // the most we ever reserve for it
inline constexpr std::uint64_t kLinuxEbdaGpa = 0x9fc00;      // reserved from here to 1 MiB
inline constexpr std::uint64_t kLinuxHighMemory = 0x100000;
inline constexpr std::uint16_t kLinuxCodeSelector = 0x10;  // __BOOT_CS of the boot protocol
inline constexpr std::uint16_t kLinuxDataSelector = 0x18;  // __BOOT_DS
inline constexpr std::uint16_t kLinuxTssSelector = 0x20;   // a placeholder TR (VMX needs one)

inline constexpr std::uint32_t kE820Ram = 1;
inline constexpr std::uint32_t kE820Reserved = 2;

struct E820Entry {
    std::uint64_t addr = 0, size = 0;
    std::uint32_t type = 0;
    bool operator==(const E820Entry&) const = default;
};

// RAM [0, 0x9fc00), reserved [0x9fc00, 1 MiB) (EBDA, BIOS area, ACPI tables), RAM
// [1 MiB, storage_bytes): the RAM entries add up to the LPAR's storage less the 385 KiB hole.
std::vector<E820Entry> linux_e820_map(std::uint64_t storage_bytes);

struct LinuxBootSpec {
    std::string lpar_name;  // for messages: "LPAR2: initrd ... does not fit ..."
    std::string kernel;     // path of a bzImage or an ELF vmlinux
    std::string initrd;     // path; empty: none
    std::string cmdline;
    unsigned vcpus = 1;  // described in the MADT
};

struct LinuxBootResult {
    std::string kind;            // "bzImage" or "vmlinux"
    std::uint16_t protocol = 0;  // boot protocol of the kernel's header (vmlinux: the one we write)
    std::uint64_t entry = 0;     // RIP at start
    std::uint64_t zero_page = kLinuxZeroPageGpa;      // RSI at start
    std::uint64_t kernel_start = 0, kernel_end = 0;   // incl. the bzImage's init_size
    std::uint64_t initrd_start = 0, initrd_size = 0;  // 0, 0: no initrd
    std::uint64_t cmdline_gpa = kLinuxCmdlineGpa, cmdline_size = 0;  // length without the NUL
    std::uint64_t page_tables = kLinuxPageTableGpa;                  // CR3
    std::uint64_t mapped_bytes = 0;  // the identity map covers [0, mapped_bytes)
    std::uint64_t gdt = kLinuxGdtGpa;
    AcpiTables acpi;
    std::vector<E820Entry> e820;
};

// Reads the files named by `spec` and writes everything into `memory` (the whole LPAR storage,
// 32 MiB at least, ending at or below the PCI window). Throws Error (InvalidArgument) with the
// LPAR, the path and the facts for a bad or unsupported kernel, an initrd or kernel that does
// not fit, a command line that is too long, too little storage or an unreadable file.
LinuxBootResult load_linux(const LinuxBootSpec& spec, const GuestMemory& memory);

// The same with the files' contents given (spec.kernel and spec.initrd only name them in
// messages; an initrd is loaded if spec.initrd is not empty).
LinuxBootResult load_linux_bytes(const LinuxBootSpec& spec, std::span<const std::uint8_t> kernel,
                                 std::span<const std::uint8_t> initrd, const GuestMemory& memory);

// The boot vCPU's entry state. `sregs` should come from KVM_GET_SREGS (its APIC base, LDT and
// interrupt bitmap are kept); segments, GDT/IDT, CR0/CR3/CR4 and EFER are set for long mode at
// CPL0. `regs` is overwritten: RIP = entry, RSI = zero page, RSP = kLinuxStackTop, RFLAGS = 2
// (interrupts off). Apply both with KVM_SET_SREGS and KVM_SET_REGS.
void apply_linux_entry(kvm_sregs& sregs, kvm_regs& regs, const LinuxBootResult& boot);

}  // namespace lparvisor::boot
