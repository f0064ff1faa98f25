#include "boot/firmware_loader.hpp"

#include <cpuid.h>
#include <elf.h>

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include "boot/boot_file.hpp"
#include "util/error.hpp"

namespace lparvisor::boot {

namespace {

constexpr std::uint64_t kPresent = 1, kWritable = 2, kUser = 4, kWriteThrough = 8,
                        kCacheDisable = 0x10, kAccessed = 0x20, kDirty = 0x40, kLargePage = 0x80;
constexpr std::uint64_t kTssSize = 104;
constexpr std::uint64_t kIoBitmapBytes = 8192;
// The storage unit and the page-table page size: 2 MiB.
constexpr std::uint64_t k2MiB = std::uint64_t{2} * 1024 * 1024;

void write_or_throw(const GuestMemory& memory, std::uint64_t gpa, const void* data,
                    std::size_t length, const char* what) {
    // SAFETY: data points at `length` bytes of a local object.
    if (!memory.write(GuestPhysAddr{gpa}, {static_cast<const std::uint8_t*>(data), length}))
        throw Error(ErrorKind::InvalidArgument,
                    fmt::format("firmware boot: {} at {:#x}+{} is outside the LPAR's storage", what,
                                gpa, length));
}

// Whether this host's CPU is QEMU's TCG emulator (CPUID leaf 0x40000000 says "TCGTCGTCGTCG"):
// the nested-KVM test harness runs lparvisor there.
bool host_is_qemu_tcg() {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    __get_cpuid(1, &eax, &ebx, &ecx, &edx);
    if ((ecx & (1u << 31)) == 0) return false;  // no hypervisor at all
    __cpuid(0x40000000, eax, ebx, ecx, edx);
    return ebx == 0x54474354 && ecx == 0x43544743 && edx == 0x47435447;  // "TCGTCGTCGTCG"
}

std::uint64_t segment_descriptor(std::uint64_t type_and_flags) {
    // base 0, limit 0xfffff (ignored in 64-bit mode except for data segments' g/db bits)
    return 0x000f00000000ffffull | type_and_flags;
}

}  // namespace

std::vector<std::uint16_t> firmware_ports() {
    std::vector<std::uint16_t> ports;
    for (std::uint16_t p = LPV_PORT_COM1; p < LPV_PORT_COM1 + 8; ++p) ports.push_back(p);
    ports.push_back(LPV_PORT_DEBUG_EXIT);
    for (std::uint16_t p = LPV_PORT_STORAGE_KEY; p < LPV_PORT_STORAGE_KEY + 4; ++p)
        ports.push_back(p);
    // PCI configuration mechanism #1: address 0xcf8-0xcfb, data 0xcfc-0xcff
    for (std::uint16_t p = LPV_PORT_PCI_CONFIG; p < LPV_PORT_PCI_CONFIG + 8; ++p)
        ports.push_back(p);
    ports.push_back(LPV_PORT_I8042_COMMAND);
    return ports;
}

LoadedImage load_firmware_elf(const std::string& path, const GuestMemory& memory,
                              const std::string& lpar) {
    auto file = read_boot_file(lpar, "firmware", path, kMaxFirmwareBytes);
    return load_firmware_elf_bytes(file, path, memory);
}

LoadedImage load_firmware_elf_bytes(const std::vector<std::uint8_t>& file, const std::string& what,
                                    const GuestMemory& memory) {
    auto fail = [&](const std::string& why) -> Error {
        return Error(ErrorKind::InvalidArgument, "firmware " + what + ": " + why);
    };
    Elf64_Ehdr header;
    if (file.size() < sizeof header) throw fail("too short for an ELF header");
    std::memcpy(&header, file.data(), sizeof header);
    if (std::memcmp(header.e_ident, ELFMAG, SELFMAG) != 0) throw fail("not an ELF file");
    if (header.e_ident[EI_CLASS] != ELFCLASS64 || header.e_machine != EM_X86_64)
        throw fail("not an x86-64 ELF64 executable");
    if (header.e_type != ET_EXEC) throw fail("not a static executable (ET_EXEC)");
    if (header.e_phentsize != sizeof(Elf64_Phdr)) throw fail("unexpected program header size");
    std::uint64_t table_end = header.e_phoff + std::uint64_t{header.e_phnum} * sizeof(Elf64_Phdr);
    if (header.e_phoff > file.size() || table_end > file.size())
        throw fail("program headers beyond the end of the file");

    LoadedImage image{header.e_entry, UINT64_MAX, 0};
    for (unsigned i = 0; i < header.e_phnum; ++i) {
        Elf64_Phdr ph;
        std::memcpy(&ph, file.data() + header.e_phoff + i * sizeof(Elf64_Phdr), sizeof ph);
        if (ph.p_type != PT_LOAD || ph.p_memsz == 0) continue;
        if (ph.p_filesz > ph.p_memsz) throw fail(fmt::format("segment {}: filesz > memsz", i));
        if (ph.p_offset > file.size() || ph.p_filesz > file.size() - ph.p_offset)
            throw fail(fmt::format("segment {}: file range beyond the end of the file", i));
        if (ph.p_paddr < LPV_IMAGE_GPA || ph.p_paddr > LPV_IMAGE_END ||
            ph.p_memsz > LPV_IMAGE_END - ph.p_paddr)
            throw fail(
                fmt::format("segment {} at {:#x}+{:#x} is outside the image area {:#x}-{:#x}", i,
                            ph.p_paddr, ph.p_memsz, LPV_IMAGE_GPA, LPV_IMAGE_END));
        auto target = memory.write_span(GuestPhysAddr{ph.p_paddr}, ph.p_memsz);
        if (!target) throw fail(fmt::format("segment {} does not fit the LPAR's storage", i));
        std::memcpy(target->data(), file.data() + ph.p_offset, ph.p_filesz);
        std::memset(target->data() + ph.p_filesz, 0, ph.p_memsz - ph.p_filesz);
        image.lowest = std::min<std::uint64_t>(image.lowest, ph.p_paddr);
        image.highest = std::max<std::uint64_t>(image.highest, ph.p_paddr + ph.p_memsz);
    }
    if (image.highest == 0) throw fail("no loadable segment");
    if (image.entry < image.lowest || image.entry >= image.highest)
        throw fail(fmt::format("entry point {:#x} is not inside the loaded image", image.entry));
    return image;
}

void build_system_area(const GuestMemory& memory, const FirmwareParams& params) {
    const std::uint64_t storage = memory.size();
    if (storage < kMinFirmwareStorage || storage % k2MiB != 0)
        throw Error(ErrorKind::InvalidArgument,
                    fmt::format("{}: the firmware needs at least 4 MiB of storage in 2 MiB units",
                                params.lpar_name));
    if (storage > LPV_MAX_STORAGE)
        throw Error(ErrorKind::InvalidArgument,
                    fmt::format("{}: {} MiB of storage reaches the PCI window at {:#x}",
                                params.lpar_name, storage >> 20, LPV_PCI_MMIO_GPA));
    if (params.max_storage % k2MiB != 0)
        throw Error(ErrorKind::InvalidArgument,
                    fmt::format("{}: maximum storage {:#x} is not a multiple of 2 MiB",
                                params.lpar_name, params.max_storage));
    if (params.max_storage > LPV_MAX_STORAGE)
        throw Error(ErrorKind::InvalidArgument,
                    fmt::format("{}: {} MiB of maximum storage reaches the PCI window at {:#x}",
                                params.lpar_name, params.max_storage >> 20, LPV_PCI_MMIO_GPA));
    // What the page tables map write-back: the storage and the memory EXPAND may plug above it.
    const std::uint64_t mapped = std::max(storage, params.max_storage);
    if (params.vcpus == 0 || params.vcpus > LPV_MAX_VCPUS)
        throw Error(ErrorKind::InvalidArgument, fmt::format("{}: the firmware runs 1 to {} vCPUs",
                                                            params.lpar_name, LPV_MAX_VCPUS));

    // GDT: null, kernel code/data, user data, user code (the SYSRET order), then the TSS.
    std::uint64_t gdt[7] = {
        0,
        segment_descriptor(0x00a09a0000000000ull),  // 0x08 kernel code: L, P, DPL0, code r/x
        segment_descriptor(0x00c0920000000000ull),  // 0x10 kernel data
        segment_descriptor(0x00c0f20000000000ull),  // 0x1b user data, DPL3
        segment_descriptor(0x00a0fa0000000000ull),  // 0x23 user code, L, DPL3
        0,
        0};
    const std::uint64_t tss_limit = kTssSize + kIoBitmapBytes;  // includes the trailing 0xff byte
    gdt[5] = (tss_limit & 0xffff) | ((LPV_TSS_GPA & 0xffffff) << 16) | (0x89ull << 40) |
             (((tss_limit >> 16) & 0xf) << 48) | (((LPV_TSS_GPA >> 24) & 0xff) << 56);
    gdt[6] = LPV_TSS_GPA >> 32;
    write_or_throw(memory, LPV_GDT_GPA, gdt, sizeof gdt, "GDT");

    // TSS with its I/O permission bitmap: a clear bit opens a port to CPL3 (IOPL=3 does not
    // work on PVM, docs/kvm-notes.md, PVM). rsp0 is unused: there is no IDT, any fault is a
    // triple fault.
    std::vector<std::uint8_t> tss(kTssSize + kIoBitmapBytes + 1, 0);
    std::uint64_t rsp0 = LPV_STACK_TOP - LPV_MAX_VCPUS * LPV_STACK_SIZE;
    std::memcpy(&tss[4], &rsp0, 8);
    std::uint16_t iomap_base = kTssSize;
    std::memcpy(&tss[102], &iomap_base, 2);
    std::fill(tss.begin() + kTssSize, tss.end(), std::uint8_t{0xff});
    for (std::uint16_t port : firmware_ports())
        tss[kTssSize + port / 8] &= static_cast<std::uint8_t>(~(1u << (port % 8)));
    write_or_throw(memory, LPV_TSS_GPA, tss.data(), tss.size(), "TSS");

    // Identity page tables with 2 MiB pages, user-accessible (the firmware runs at CPL3): the
    // storage and the hot-pluggable memory above it (up to max_storage) write-back, the PCI
    // window (the device BARs) uncached, so one PD per GiB up to the window's end even for a
    // small LPAR. Everything ends at or below the window's end (LPV_MAX_STORAGE is its start),
    // so the tables always fit [LPV_PAGE_TABLE_GPA, LPV_PAGE_TABLE_END).
    const std::uint64_t gib = 1024ull * 1024 * 1024;
    const std::uint64_t page_2m = k2MiB;
    const std::uint64_t window_end = LPV_PCI_MMIO_GPA + LPV_PCI_MMIO_SIZE;
    const std::uint64_t directories =
        std::max((mapped + gib - 1) / gib, (window_end + gib - 1) / gib);
    static_assert(
        LPV_PAGE_TABLE_GPA +
                (2 + (LPV_PCI_MMIO_GPA + LPV_PCI_MMIO_SIZE + (1ull << 30) - 1) / (1ull << 30)) *
                    0x1000 <=
            LPV_PAGE_TABLE_END,
        "the page-table area holds the tables for everything up to the PCI window's end");
    const std::uint64_t pml4 = LPV_PAGE_TABLE_GPA, pdpt = pml4 + 0x1000, pd0 = pdpt + 0x1000;
    if (pd0 + directories * 0x1000 > LPV_PAGE_TABLE_END)
        throw Error(ErrorKind::InvalidArgument,
                    fmt::format("{}: {} MiB is more storage than the firmware's page tables map",
                                params.lpar_name, mapped >> 20));
    const std::uint64_t table_flags = kPresent | kWritable | kUser | kAccessed;
    std::vector<std::uint64_t> tables((2 + directories) * 512, 0);
    tables[0] = pdpt | table_flags;
    for (std::uint64_t d = 0; d < directories; ++d)
        tables[512 + d] = (pd0 + d * 0x1000) | table_flags;
    for (std::uint64_t page = 0; page < mapped / page_2m; ++page)
        tables[1024 + page] = page * page_2m | table_flags | kDirty | kLargePage;
    for (std::uint64_t gpa = LPV_PCI_MMIO_GPA; gpa < window_end; gpa += page_2m)
        tables[1024 + gpa / page_2m] =
            gpa | table_flags | kDirty | kLargePage | kWriteThrough | kCacheDisable;
    write_or_throw(memory, pml4, tables.data(), tables.size() * 8, "page tables");

    lpv_boot_info info{};
    info.magic = LPV_BOOT_MAGIC;
    info.version = LPV_BOOT_VERSION;
    info.vcpu_count = params.vcpus;
    info.storage_bytes = storage;
    info.test_area_gpa = LPV_TEST_AREA_GPA;
    info.tsc_khz = params.tsc_khz;
    info.rewrite_pages_per_sec = params.rewrite_pages_per_sec;
    info.working_set_bytes = params.working_set_bytes;
    info.flags = (params.storage_keys ? LPV_BOOT_FLAG_STORAGE_KEYS : 0) |
                 (params.pci_bus ? LPV_BOOT_FLAG_PCI : 0) |
                 (params.console_flood ? LPV_BOOT_FLAG_CONSOLE_FLOOD : 0) |
                 (params.reboot_at_end ? LPV_BOOT_FLAG_REBOOT_AT_END : 0) |
                 (params.triple_fault_at_end ? LPV_BOOT_FLAG_TRIPLE_FAULT_AT_END : 0) |
                 (params.report_progress ? LPV_BOOT_FLAG_REPORT_PROGRESS : 0);
    info.round_limit = params.round_limit;
    info.max_storage_bytes = mapped > storage ? mapped : 0;
    std::snprintf(info.name, sizeof info.name, "%s", params.lpar_name.c_str());
    write_or_throw(memory, LPV_BOOT_INFO_GPA, &info, sizeof info, "boot info");
}

void set_cpl3_entry_state(kvm::Vcpu& vcpu, std::uint64_t entry, unsigned index) {
    kvm_sregs sregs = vcpu.get_sregs();
    auto segment = [](std::uint16_t selector, std::uint8_t type, bool code) {
        kvm_segment s{};
        s.base = 0;
        s.limit = 0xffffffff;
        s.selector = selector;
        s.type = type;
        s.present = 1;
        s.dpl = 3;
        s.db = code ? 0 : 1;
        s.s = 1;
        s.l = code ? 1 : 0;
        s.g = 1;
        return s;
    };
    sregs.cs = segment(LPV_SEL_USER_CODE, 0xb, true);
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = segment(LPV_SEL_USER_DATA, 0x3, false);
    sregs.tr = kvm_segment{};
    sregs.tr.base = LPV_TSS_GPA;
    sregs.tr.limit = static_cast<std::uint32_t>(kTssSize + kIoBitmapBytes);
    sregs.tr.selector = LPV_SEL_TSS;
    // A busy 64-bit TSS (11), as `ltr` leaves it and as Intel VMX requires at entry; SVM and
    // KVM's emulator (PVM) accept it too. Only QEMU's TCG, where the nested-KVM test harness runs
    // (emulated SVM, so type 9 enters fine), checks I/O permissions against an available TSS (9)
    // alone.
    sregs.tr.type = host_is_qemu_tcg() ? 0x9 : 0xb;
    sregs.tr.present = 1;
    sregs.ldt = kvm_segment{};
    sregs.ldt.unusable = 1;
    sregs.gdt.base = LPV_GDT_GPA;
    sregs.gdt.limit = 7 * 8 - 1;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;  // no IDT: an exception is a triple fault (KVM_EXIT_SHUTDOWN)
    sregs.cr3 = LPV_PAGE_TABLE_GPA;
    sregs.cr4 = 0x20;        // PAE
    sregs.cr0 = 0x80000033;  // PG, NE, ET, MP, PE
    sregs.efer = 0x500;      // LME, LMA
    vcpu.set_sregs(sregs);

    kvm_regs regs{};
    regs.rip = entry;
    regs.rsp = LPV_STACK_TOP - index * LPV_STACK_SIZE;
    regs.rdi = LPV_BOOT_INFO_GPA;
    regs.rsi = index;
    regs.rflags = 0x2;
    vcpu.set_regs(regs);
}

}  // namespace lparvisor::boot
