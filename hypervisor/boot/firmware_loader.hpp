// Starts the test firmware the way that works on both PVM and hardware KVM (docs/kvm-notes.md,
// Test firmware): the hypervisor builds the page tables, GDT and TSS (with an I/O permission
// bitmap for the firmware's ports) in guest memory and starts every vCPU directly in 64-bit mode
// at CPL3.
#pragma once

#include <linux/kvm.h>
#include <lparvisor/abi.h>

#include <cstdint>
#include <string>
#include <vector>

#include "kvm/kvm.hpp"
#include "storage/guest_memory.hpp"

namespace lparvisor::boot {

struct FirmwareParams {
    std::string lpar_name;
    unsigned vcpus = 1;
    std::uint64_t tsc_khz = 0;
    std::uint64_t rewrite_pages_per_sec = 0;
    std::uint64_t working_set_bytes = 0;
    std::uint64_t round_limit = 0;  // 0: run forever; otherwise stop via debug-exit after N rounds
    bool storage_keys = true;
    // The LPAR serves PCI config mechanism #1 (host bridge at 00:00.0, virtio-pci devices with
    // BARs in the PCI window): sets LPV_BOOT_FLAG_PCI, and the firmware then scans bus 0 and
    // drives its virtio-blk and virtio-rng. Off, the firmware never touches 0xcf8-0xcff (an
    // unserved port stops the LPAR). The ports are open in the TSS and the window is mapped
    // either way.
    bool pci_bus = false;
    // How far the LPAR may grow (EXPAND through its virtio-mem region right above the storage):
    // the page tables map [0, max(storage, max_storage)) and the boot info's max_storage_bytes
    // tells the firmware so. 0 = the storage size (nothing mapped above it). A multiple of
    // 2 MiB, at most LPV_MAX_STORAGE.
    std::uint64_t max_storage = 0;
    // Tests of the console limits: the firmware writes its console without end instead of
    // running its rounds (LPV_BOOT_FLAG_CONSOLE_FLOOD).
    bool console_flood = false;
    // Tests of on_reboot and on_crash: after round_limit the firmware reboots (i8042 reset
    // line) or triple-faults instead of the debug exit (LPV_BOOT_FLAG_*_AT_END).
    bool reboot_at_end = false;
    bool triple_fault_at_end = false;
    // Benchmarks: the firmware prints progress lines (LPV_BOOT_FLAG_REPORT_PROGRESS).
    bool report_progress = false;
};

// The smallest LPAR the firmware can run in: system area and image below 2 MiB, one 2 MiB page
// of pattern area above.
inline constexpr std::uint64_t kMinFirmwareStorage = 4ull * 1024 * 1024;

struct LoadedImage {
    std::uint64_t entry = 0;
    std::uint64_t lowest = 0, highest = 0;  // guest-physical extent of the PT_LOAD segments
};

// Reads an ELF64 x86-64 executable and copies its PT_LOAD segments into guest memory. Every
// segment must lie in [LPV_IMAGE_GPA, LPV_IMAGE_END); throws Error naming the file and problem
// (and the LPAR, if given). Only a regular file of at most kMaxFirmwareBytes (boot_file.hpp).
LoadedImage load_firmware_elf(const std::string& path, const GuestMemory& memory,
                              const std::string& lpar = {});
LoadedImage load_firmware_elf_bytes(const std::vector<std::uint8_t>& file, const std::string& what,
                                    const GuestMemory& memory);

// Writes the GDT, TSS + I/O bitmap, identity page tables (2 MiB pages, user: write-back
// [0, max(storage, params.max_storage)) and, uncached, the PCI window [LPV_PCI_MMIO_GPA,
// +LPV_PCI_MMIO_SIZE)) and boot info. Storage and max_storage must end at or below the window
// (LPV_MAX_STORAGE).
void build_system_area(const GuestMemory& memory, const FirmwareParams& params);

// The vCPU's registers for entry at CPL3 in long mode (vCPU `index` gets its own stack).
void set_cpl3_entry_state(kvm::Vcpu& vcpu, std::uint64_t entry, unsigned index);

// The ports a CPL3 guest may use (opened in the TSS I/O bitmap).
std::vector<std::uint16_t> firmware_ports();

}  // namespace lparvisor::boot
