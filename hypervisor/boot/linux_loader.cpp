#include "boot/linux_loader.hpp"

#include <asm/bootparam.h>
#include <elf.h>
#include <lparvisor/abi.h>

#include <algorithm>
#include <cstring>
#include <optional>

#include <fmt/format.h>

#include "boot/boot_file.hpp"
#include "util/error.hpp"

namespace lparvisor::boot {

static_assert(sizeof(boot_params) == 4096, "the zero page is one page");
static_assert(offsetof(boot_params, hdr) == 0x1f1);
static_assert(offsetof(boot_params, acpi_rsdp_addr) == 0x70);
static_assert(offsetof(boot_params, e820_table) == 0x2d0);

namespace {

constexpr std::uint64_t kMiB = 1ull << 20;
constexpr std::uint64_t kGiB = 1ull << 30;
constexpr std::uint64_t kPage = 4096;
constexpr std::uint32_t kHdrSMagic = 0x53726448;  // "HdrS"
constexpr std::uint16_t kBootFlag = 0xaa55;
constexpr std::uint16_t kMinProtocol = 0x020c;       // 2.12: xloadflags, the 64-bit entry
constexpr std::uint16_t kVmlinuxProtocol = 0x020f;   // what we claim in a made-up header
constexpr std::uint64_t kStartup64Offset = 0x200;    // startup_64 in the bzImage's payload
constexpr std::uint16_t kHeapEndPtr = 0xfe00;        // as a boot loader with a full setup heap
constexpr std::uint32_t kDefaultCmdlineSize = 2047;  // COMMAND_LINE_SIZE - 1 (x86)
constexpr std::uint32_t kDefaultInitrdAddrMax = 0x7fffffff;
constexpr std::uint8_t kLoaderUndefined = 0xff;  // type_of_loader: "undefined" boot loader
constexpr std::uint64_t kPtePresent = 1, kPteWritable = 2, kPteLarge = 0x80;
constexpr std::uint64_t kCr0Pe = 1, kCr0Et = 0x10, kCr0Ne = 0x20, kCr0Pg = 0x80000000;
constexpr std::uint64_t kCr4Pae = 0x20;
constexpr std::uint64_t kEferLme = 0x100, kEferLma = 0x400;

// "67.5 MiB", "64 MiB": sizes in messages.
std::string mib(std::uint64_t bytes) {
    if (bytes % kMiB == 0) return fmt::format("{} MiB", bytes / kMiB);
    return fmt::format("{:.1f} MiB", static_cast<double>(bytes) / static_cast<double>(kMiB));
}

std::uint64_t align_up(std::uint64_t v, std::uint64_t a) {
    return (v + a - 1) / a * a;
}
std::uint64_t align_down(std::uint64_t v, std::uint64_t a) {
    return v / a * a;
}

template <typename T>
T load_le(std::span<const std::uint8_t> bytes, std::size_t at) {
    T v{};
    std::memcpy(&v, bytes.data() + at, sizeof v);
    return v;
}

// One piece of the kernel to copy: file bytes at `gpa`, then zeros up to `memsz`.
struct Piece {
    std::uint64_t gpa = 0, memsz = 0;
    std::span<const std::uint8_t> bytes;
};

// What a kernel file contributes, before anything is written.
struct ParsedKernel {
    std::string kind;
    std::uint16_t protocol = 0;
    std::vector<Piece> pieces;
    std::uint64_t entry = 0;
    std::uint64_t start = 0, end = 0;  // what the kernel may use while booting
    setup_header hdr{};                // copied into the zero page
    std::uint32_t cmdline_size = kDefaultCmdlineSize;
    std::uint32_t initrd_addr_max = kDefaultInitrdAddrMax;
};

class Loader {
  public:
    Loader(const LinuxBootSpec& spec, const GuestMemory& memory) : spec_(spec), memory_(memory) {}

    [[noreturn]] void fail(const std::string& message) const {
        throw Error(ErrorKind::InvalidArgument, fmt::format("{}: {}", spec_.lpar_name, message));
    }
    [[noreturn]] void kernel_fail(const std::string& why) const {
        fail(fmt::format("kernel {}: {}", spec_.kernel, why));
    }

    void write(std::uint64_t gpa, std::span<const std::uint8_t> bytes, const char* what) const {
        if (!memory_.write(GuestPhysAddr{gpa}, bytes))
            fail(fmt::format("{} at {:#x}+{:#x} is outside the LPAR's {}", what, gpa, bytes.size(),
                             mib(memory_.size())));
    }
    template <typename T>
    void write_object(std::uint64_t gpa, const T& object, const char* what) const {
        // SAFETY: T is a trivially copyable object of sizeof(T) bytes.
        write(gpa, {reinterpret_cast<const std::uint8_t*>(&object), sizeof(T)}, what);
    }

    ParsedKernel parse(std::span<const std::uint8_t> file) const {
        if (file.size() >= SELFMAG && std::memcmp(file.data(), ELFMAG, SELFMAG) == 0)
            return parse_elf(file);
        if (file.size() >= 0x206 && load_le<std::uint32_t>(file, 0x202) == kHdrSMagic)
            return parse_bzimage(file);
        kernel_fail("neither an ELF vmlinux nor a bzImage (no \"HdrS\" magic at 0x202)");
    }

    ParsedKernel parse_bzimage(std::span<const std::uint8_t> file) const {
        ParsedKernel k;
        k.kind = "bzImage";
        // The header runs from 0x1f1 to 0x202 + the byte at 0x201 (the jump's displacement).
        const std::size_t header_end = 0x202 + file[0x201];
        if (header_end > file.size()) kernel_fail("the setup header runs past the end of the file");
        const std::size_t copy = std::min<std::size_t>(header_end - 0x1f1, sizeof(setup_header));
        // SAFETY: setup_header is a packed POD of sizeof(setup_header) >= copy bytes.
        std::memcpy(reinterpret_cast<std::uint8_t*>(&k.hdr), file.data() + 0x1f1, copy);

        k.protocol = k.hdr.version;
        if (k.protocol < kMinProtocol || copy < offsetof(setup_header, init_size) + 4)
            kernel_fail(fmt::format(
                "boot protocol {}.{:02} is too old: the 64-bit entry needs 2.12 or later",
                k.protocol >> 8, k.protocol & 0xff));
        if ((k.hdr.xloadflags & XLF_KERNEL_64) == 0)
            kernel_fail("has no 64-bit entry point (xloadflags lacks XLF_KERNEL_64)");
        if ((k.hdr.loadflags & LOADED_HIGH) == 0)
            kernel_fail("is a zImage (loads low); only a bzImage is supported");

        const std::uint64_t setup_sects = k.hdr.setup_sects == 0 ? 4 : k.hdr.setup_sects;
        const std::uint64_t payload_offset = (setup_sects + 1) * 512;
        if (payload_offset >= file.size())
            kernel_fail(
                fmt::format("the setup code ({} sectors) covers the whole file", setup_sects));
        const std::uint64_t payload = file.size() - payload_offset;

        // A relocatable kernel goes where it wants to run (pref_address, which is also where a
        // 64-bit decompressor puts the kernel at the least); then the compressed payload lies
        // inside its own decompression buffer [load, load + init_size). A fixed one goes to
        // 1 MiB and decompresses to pref_address.
        // pref_address is the file's word: beyond the PCI window no LPAR has storage, and
        // refusing it first keeps the sums below from wrapping (a pref_address near 2^64 once
        // aligned "up" to 0 and loaded the kernel over the zero page).
        if (k.hdr.pref_address >= LPV_PCI_MMIO_GPA)
            kernel_fail(
                fmt::format("asks to run at {:#x} (pref_address), beyond any LPAR's "
                            "storage (which ends below {:#x})",
                            std::uint64_t{k.hdr.pref_address}, LPV_PCI_MMIO_GPA));
        const std::uint64_t alignment = std::max<std::uint64_t>(k.hdr.kernel_alignment, kPage);
        if ((alignment & (alignment - 1)) != 0)
            kernel_fail(fmt::format("kernel_alignment {:#x} is not a power of two",
                                    std::uint32_t{k.hdr.kernel_alignment}));
        const std::uint64_t pref = std::max<std::uint64_t>(k.hdr.pref_address, kLinuxHighMemory);
        std::uint64_t load = kLinuxHighMemory, runtime = pref;
        if (k.hdr.relocatable_kernel != 0) load = runtime = align_up(pref, alignment);
        k.pieces.push_back({load, payload, file.subspan(payload_offset)});
        k.entry = load + kStartup64Offset;
        k.start = load;
        k.end = std::max(load + payload, runtime + std::uint64_t{k.hdr.init_size});
        k.cmdline_size = k.hdr.cmdline_size;
        k.initrd_addr_max = k.hdr.initrd_addr_max;
        return k;
    }

    // The ELF header, checked: an x86-64 executable whose program headers lie in the file.
    Elf64_Ehdr elf_header(std::span<const std::uint8_t> file) const {
        Elf64_Ehdr eh;
        if (file.size() < sizeof eh) kernel_fail("too short for an ELF header");
        std::memcpy(&eh, file.data(), sizeof eh);
        if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_machine != EM_X86_64)
            kernel_fail("not an x86-64 ELF64 file");
        if (eh.e_type != ET_EXEC) kernel_fail("not an executable (ET_EXEC) vmlinux");
        if (eh.e_phentsize != sizeof(Elf64_Phdr)) kernel_fail("unexpected program header size");
        if (eh.e_phoff > file.size() ||
            std::uint64_t{eh.e_phnum} * sizeof(Elf64_Phdr) > file.size() - eh.e_phoff)
            kernel_fail("program headers beyond the end of the file");
        return eh;
    }

    // Program header `i` when it loads something (PT_LOAD, memsz > 0), checked: its file bytes
    // inside the file, its physical range from 1 MiB up without wrapping. elf_header() proved
    // the program header table inside the file.
    std::optional<Elf64_Phdr> loadable_segment(std::span<const std::uint8_t> file,
                                               const Elf64_Ehdr& eh, unsigned i) const {
        Elf64_Phdr ph;
        std::memcpy(&ph, file.data() + eh.e_phoff + i * sizeof(Elf64_Phdr), sizeof ph);
        if (ph.p_type != PT_LOAD || ph.p_memsz == 0) return std::nullopt;
        if (ph.p_filesz > ph.p_memsz)
            kernel_fail(fmt::format("segment {}: file size > memory size", i));
        if (ph.p_offset > file.size() || ph.p_filesz > file.size() - ph.p_offset)
            kernel_fail(fmt::format("segment {}: file range beyond the end of the file", i));
        if (ph.p_paddr < kLinuxHighMemory || ph.p_paddr + ph.p_memsz < ph.p_paddr)
            kernel_fail(fmt::format("segment {} at physical {:#x} is below 1 MiB", i, ph.p_paddr));
        return ph;
    }

    ParsedKernel parse_elf(std::span<const std::uint8_t> file) const {
        ParsedKernel k;
        k.kind = "vmlinux";
        const Elf64_Ehdr eh = elf_header(file);

        std::optional<std::uint64_t> entry;
        k.start = UINT64_MAX;
        for (unsigned i = 0; i < eh.e_phnum; ++i) {
            const std::optional<Elf64_Phdr> ph = loadable_segment(file, eh, i);
            if (!ph) continue;
            k.pieces.push_back(
                {ph->p_paddr, ph->p_memsz, file.subspan(ph->p_offset, ph->p_filesz)});
            k.start = std::min(k.start, ph->p_paddr);
            k.end = std::max(k.end, ph->p_paddr + ph->p_memsz);
            // e_entry is the physical startup_64 in an x86-64 vmlinux; accept a virtual one too.
            if (eh.e_entry >= ph->p_paddr && eh.e_entry - ph->p_paddr < ph->p_memsz) {
                entry = eh.e_entry;
            } else if (!entry && eh.e_entry >= ph->p_vaddr &&
                       eh.e_entry - ph->p_vaddr < ph->p_memsz) {
                entry = ph->p_paddr + (eh.e_entry - ph->p_vaddr);
            }
        }
        if (k.pieces.empty()) kernel_fail("no loadable segment");
        if (!entry)
            kernel_fail(fmt::format("entry point {:#x} is in no loadable segment", eh.e_entry));
        k.entry = *entry;
        k.protocol = kVmlinuxProtocol;

        // The minimal setup header a boot loader of the 64-bit protocol provides.
        k.hdr.boot_flag = kBootFlag;
        k.hdr.header = kHdrSMagic;
        k.hdr.version = kVmlinuxProtocol;
        k.hdr.kernel_alignment = 0x200000;
        k.hdr.xloadflags = XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G;
        k.hdr.cmdline_size = kDefaultCmdlineSize;
        k.hdr.initrd_addr_max = kDefaultInitrdAddrMax;
        k.hdr.pref_address = k.start;
        k.hdr.init_size = static_cast<std::uint32_t>(k.end - k.start);
        return k;
    }

    LinuxBootResult run(std::span<const std::uint8_t> kernel_file,
                        std::span<const std::uint8_t> initrd) {
        const std::uint64_t storage = memory_.size();
        if (storage < kLinuxMinStorage)
            fail(fmt::format("{} of storage is too little for Linux (at least {})", mib(storage),
                             mib(kLinuxMinStorage)));
        if (storage > LPV_PCI_MMIO_GPA)
            fail(fmt::format("{} of storage runs into the PCI window at {:#x}", mib(storage),
                             LPV_PCI_MMIO_GPA));
        if (storage % kPage != 0)
            fail(fmt::format("storage of {:#x} bytes is not a whole number of pages", storage));

        ParsedKernel k = parse(kernel_file);
        if (k.end > storage)
            kernel_fail(fmt::format("({}) needs {:#x}-{:#x} ({} to {}) but the LPAR has {}", k.kind,
                                    k.start, k.end, mib(k.start), mib(k.end), mib(storage)));

        LinuxBootResult r;
        r.kind = k.kind;
        r.protocol = k.protocol;
        r.entry = k.entry;
        r.kernel_start = k.start;
        r.kernel_end = k.end;

        // Low memory and the BIOS area start clean, so that a reboot rebuilds the same state.
        write(0, std::vector<std::uint8_t>(kLinuxHighMemory, 0), "low memory");
        for (const Piece& p : k.pieces) {
            auto target = memory_.write_span(GuestPhysAddr{p.gpa}, p.memsz);
            if (!target) kernel_fail(fmt::format("segment at {:#x} does not fit", p.gpa));
            std::memcpy(target->data(), p.bytes.data(), p.bytes.size());
            std::memset(target->data() + p.bytes.size(), 0, p.memsz - p.bytes.size());
        }

        if (!spec_.initrd.empty()) place_initrd(k, initrd, r);

        // Command line: NUL-terminated, at most cmdline_size bytes without the NUL.
        const std::uint64_t cmdline_max =
            std::min<std::uint64_t>(k.cmdline_size, kLinuxCmdlineArea - 1);
        if (spec_.cmdline.size() > cmdline_max)
            fail(fmt::format("the kernel command line is {} bytes; kernel {} takes at most {}",
                             spec_.cmdline.size(), spec_.kernel, cmdline_max));
        std::vector<std::uint8_t> cmdline(spec_.cmdline.begin(), spec_.cmdline.end());
        cmdline.push_back(0);
        write(kLinuxCmdlineGpa, cmdline, "command line");
        r.cmdline_size = spec_.cmdline.size();

        r.acpi = build_acpi_tables(memory_, spec_.vcpus, spec_.lpar_name);
        r.e820 = linux_e820_map(storage);
        write_bios_data_area();
        write_zero_page(k, r);
        write_gdt();
        r.mapped_bytes = write_page_tables(storage);
        return r;
    }

  private:
    void place_initrd(const ParsedKernel& k, std::span<const std::uint8_t> initrd,
                      LinuxBootResult& r) const {
        if (initrd.empty()) fail(fmt::format("initrd {} is empty", spec_.initrd));
        const std::uint64_t storage = memory_.size();
        // As high as possible (the kernel's own early allocations come from the top too, but it
        // reserves the initrd first), below initrd_addr_max (the highest byte it may use).
        const std::uint64_t top =
            std::min<std::uint64_t>(storage, std::uint64_t{k.initrd_addr_max} + 1);
        const std::uint64_t floor = align_up(k.end, kPage);
        if (initrd.size() > top || align_down(top - initrd.size(), kPage) < floor)
            fail(fmt::format(
                "initrd {} ({}) does not fit between the kernel's end at {} and {} (the {}{})",
                spec_.initrd, mib(initrd.size()), mib(floor), mib(top),
                top == storage ? "end of the LPAR's storage" : "kernel's initrd_addr_max",
                top == storage ? "" : fmt::format(" {:#x}", k.initrd_addr_max)));
        r.initrd_start = align_down(top - initrd.size(), kPage);
        r.initrd_size = initrd.size();
        write(r.initrd_start, initrd, "initrd");
    }

    // A PC's BIOS data area says where the EBDA starts and how much base memory there is;
    // Linux reads both when it reserves the BIOS regions.
    void write_bios_data_area() const {
        const std::uint16_t ebda_segment = kLinuxEbdaGpa >> 4;
        const std::uint16_t base_kib = kLinuxEbdaGpa >> 10;
        write_object(0x40e, ebda_segment, "BIOS data area");
        write_object(0x413, base_kib, "BIOS data area");
    }

    void write_zero_page(const ParsedKernel& k, const LinuxBootResult& r) const {
        boot_params zp{};
        zp.hdr = k.hdr;
        zp.hdr.type_of_loader = kLoaderUndefined;
        zp.hdr.loadflags = static_cast<std::uint8_t>(
            (zp.hdr.loadflags | LOADED_HIGH | CAN_USE_HEAP) & ~(KEEP_SEGMENTS | KASLR_FLAG));
        zp.hdr.heap_end_ptr = kHeapEndPtr;
        zp.hdr.cmd_line_ptr = static_cast<std::uint32_t>(kLinuxCmdlineGpa);
        zp.ext_cmd_line_ptr = 0;
        zp.hdr.ramdisk_image = static_cast<std::uint32_t>(r.initrd_start);
        zp.hdr.ramdisk_size = static_cast<std::uint32_t>(r.initrd_size);
        zp.ext_ramdisk_image = static_cast<std::uint32_t>(r.initrd_start >> 32);
        zp.ext_ramdisk_size = static_cast<std::uint32_t>(r.initrd_size >> 32);
        zp.hdr.setup_data = 0;  // no setup_data list
        zp.acpi_rsdp_addr = r.acpi.rsdp;
        if (r.e820.size() > E820_MAX_ENTRIES_ZEROPAGE) fail("too many e820 entries");
        zp.e820_entries = static_cast<std::uint8_t>(r.e820.size());
        for (std::size_t i = 0; i < r.e820.size(); ++i) {
            zp.e820_table[i].addr = r.e820[i].addr;
            zp.e820_table[i].size = r.e820[i].size;
            zp.e820_table[i].type = r.e820[i].type;
        }
        write_object(kLinuxZeroPageGpa, zp, "zero page");
    }

    void write_gdt() const {
        // null, unused, 0x10 64-bit code (L, P, DPL0, execute/read), 0x18 data (read/write),
        // 0x20 a 64-bit busy TSS (16 bytes) that only exists so that TR is valid at entry.
        const std::uint64_t gdt[6] = {
            0, 0, 0x00af9b000000ffffull, 0x00cf93000000ffffull, 0x00008b0000000067ull, 0};
        write_object(kLinuxGdtGpa, gdt, "GDT");
    }

    // Identity map of the first 4 GiB (or all storage if more) with 2 MiB pages: the kernel's
    // image, zero page, command line and initrd are all inside, as the 64-bit protocol asks.
    std::uint64_t write_page_tables(std::uint64_t storage) const {
        const std::uint64_t mapped = std::max<std::uint64_t>(4 * kGiB, align_up(storage, kGiB));
        const std::uint64_t directories = mapped / kGiB;
        if (directories > 512 || kLinuxPageTableGpa + (2 + directories) * kPage > kLinuxCmdlineGpa)
            fail(fmt::format("{} of storage is more than the boot page tables map", mib(storage)));
        const std::uint64_t table = kPtePresent | kPteWritable;
        std::vector<std::uint64_t> t((2 + directories) * 512, 0);
        const std::uint64_t pdpt = kLinuxPageTableGpa + kPage, pd0 = pdpt + kPage;
        t[0] = pdpt | table;
        for (std::uint64_t d = 0; d < directories; ++d) t[512 + d] = (pd0 + d * kPage) | table;
        for (std::uint64_t i = 0; i < directories * 512; ++i)
            t[1024 + i] = (i << 21) | table | kPteLarge;
        // SAFETY: the vector's storage is t.size() * 8 contiguous bytes.
        write(kLinuxPageTableGpa, {reinterpret_cast<const std::uint8_t*>(t.data()), t.size() * 8},
              "page tables");
        return mapped;
    }

    const LinuxBootSpec& spec_;
    const GuestMemory& memory_;
};

kvm_segment flat_segment(std::uint16_t selector, bool code) {
    kvm_segment s{};
    s.base = 0;
    s.limit = 0xffffffff;
    s.selector = selector;
    s.type = code ? 0xb : 0x3;  // execute/read accessed : read/write accessed
    s.present = 1;
    s.dpl = 0;
    s.db = code ? 0 : 1;  // a 64-bit code segment has D = 0
    s.s = 1;
    s.l = code ? 1 : 0;
    s.g = 1;
    return s;
}

}  // namespace

std::vector<E820Entry> linux_e820_map(std::uint64_t storage_bytes) {
    return {{0, kLinuxEbdaGpa, kE820Ram},
            {kLinuxEbdaGpa, kLinuxHighMemory - kLinuxEbdaGpa, kE820Reserved},
            {kLinuxHighMemory, storage_bytes - kLinuxHighMemory, kE820Ram}};
}

LinuxBootResult load_linux_bytes(const LinuxBootSpec& spec, std::span<const std::uint8_t> kernel,
                                 std::span<const std::uint8_t> initrd, const GuestMemory& memory) {
    return Loader(spec, memory).run(kernel, initrd);
}

LinuxBootResult load_linux(const LinuxBootSpec& spec, const GuestMemory& memory) {
    // Check the storage before reading tens of MiB of files.
    if (memory.size() < kLinuxMinStorage)
        throw Error(ErrorKind::InvalidArgument,
                    fmt::format("{}: {} of storage is too little for Linux (at least {})",
                                spec.lpar_name, mib(memory.size()), mib(kLinuxMinStorage)));
    auto kernel = read_boot_file(spec.lpar_name, "kernel", spec.kernel, kMaxKernelBytes);
    std::vector<std::uint8_t> initrd;
    if (!spec.initrd.empty())
        initrd = read_boot_file(spec.lpar_name, "initrd", spec.initrd, kMaxInitrdBytes);
    return load_linux_bytes(spec, kernel, initrd, memory);
}

void apply_linux_entry(kvm_sregs& sregs, kvm_regs& regs, const LinuxBootResult& boot) {
    sregs.cs = flat_segment(kLinuxCodeSelector, true);
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = flat_segment(kLinuxDataSelector, false);
    sregs.tr = kvm_segment{};
    sregs.tr.selector = kLinuxTssSelector;
    sregs.tr.limit = 0x67;
    sregs.tr.type = 0xb;  // busy 64-bit TSS, as VMX requires at entry
    sregs.tr.present = 1;
    sregs.gdt.base = boot.gdt;
    sregs.gdt.limit = 6 * 8 - 1;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;  // Linux loads its own IDT before it enables interrupts
    sregs.cr0 = kCr0Pe | kCr0Et | kCr0Ne | kCr0Pg;
    sregs.cr3 = boot.page_tables;
    sregs.cr4 = kCr4Pae;
    sregs.efer = kEferLme | kEferLma;

    regs = kvm_regs{};
    regs.rip = boot.entry;
    regs.rsi = boot.zero_page;
    regs.rsp = kLinuxStackTop;
    regs.rbp = kLinuxStackTop;
    regs.rflags = 0x2;
}

}  // namespace lparvisor::boot
