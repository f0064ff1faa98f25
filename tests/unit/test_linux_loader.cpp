#include <catch2/catch.hpp>

#include <asm/bootparam.h>
#include <elf.h>
#include <sys/mman.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "boot/acpi.hpp"
#include "boot/linux_loader.hpp"
#include "support/skip.hpp"
#include "util/error.hpp"

using namespace lparvisor;
using namespace lparvisor::boot;

namespace {

constexpr std::uint64_t MiB = 1ull << 20;

// Guest storage over an anonymous mapping: untouched pages cost nothing, so a 1 GiB LPAR is
// cheap in a unit test.
class AnonMemory {
  public:
    explicit AnonMemory(std::uint64_t size) : size_(size) {
        void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        REQUIRE(p != MAP_FAILED);
        base_ = static_cast<std::uint8_t*>(p);
    }
    ~AnonMemory() { munmap(base_, size_); }
    AnonMemory(const AnonMemory&) = delete;
    AnonMemory& operator=(const AnonMemory&) = delete;

    GuestMemory memory() const { return {base_, size_}; }
    void fill(std::uint64_t gpa, std::uint64_t n, std::uint8_t v) {
        std::memset(base_ + gpa, v, n);
    }
    std::vector<std::uint8_t> read(std::uint64_t gpa, std::uint64_t n) const {
        std::vector<std::uint8_t> out(n);
        REQUIRE(memory().read(GuestPhysAddr{gpa}, out));
        return out;
    }
    template <typename T>
    T object(std::uint64_t gpa) const {
        auto v = memory().read_object<T>(GuestPhysAddr{gpa});
        REQUIRE(v);
        return *v;
    }

  private:
    std::uint8_t* base_ = nullptr;
    std::uint64_t size_ = 0;
};

std::vector<std::uint8_t> pattern(std::size_t n, std::uint8_t seed) {
    std::vector<std::uint8_t> v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<std::uint8_t>(seed + i * 7 + (i >> 9));
    return v;
}

// A bzImage as far as the loader sees one: 4 setup sectors + the boot sector, a 2.15 setup
// header, then the "protected-mode" payload.
struct FakeBzImage {
    setup_header hdr{};
    std::vector<std::uint8_t> payload = pattern(64 * 1024, 3);

    FakeBzImage() {
        hdr.setup_sects = 4;
        hdr.boot_flag = 0xaa55;
        hdr.jump = 0x66eb;  // jmp over the header, which then ends at 0x202 + 0x66 = 0x268
        hdr.header = 0x53726448;
        hdr.version = 0x020f;
        hdr.loadflags = LOADED_HIGH;
        hdr.kernel_alignment = 0x200000;
        hdr.relocatable_kernel = 1;
        hdr.min_alignment = 21;
        hdr.xloadflags = XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G;
        hdr.cmdline_size = 0x7ff;
        hdr.initrd_addr_max = 0x7fffffff;
        hdr.pref_address = 0x1000000;
        hdr.init_size = 32 * MiB;
    }
    std::vector<std::uint8_t> bytes() const {
        std::vector<std::uint8_t> file(5 * 512, 0);
        // SAFETY: setup_header is a packed POD; the file has room for it from 0x1f1.
        std::memcpy(file.data() + 0x1f1, &hdr, sizeof hdr);
        file.insert(file.end(), payload.begin(), payload.end());
        return file;
    }
};

// An ELF vmlinux with a text segment (with bss) linked high and loaded at 16 MiB, and data.
struct FakeVmlinux {
    std::uint64_t entry = 0x1000000;
    std::vector<std::uint8_t> text = pattern(0x3000, 11), data = pattern(0x1000, 77);
    std::uint64_t text_paddr = 0x1000000, text_memsz = 0x5000, data_paddr = 0x1200000;

    std::vector<std::uint8_t> bytes() const {
        Elf64_Ehdr eh{};
        std::memcpy(eh.e_ident, ELFMAG, SELFMAG);
        eh.e_ident[EI_CLASS] = ELFCLASS64;
        eh.e_ident[EI_DATA] = ELFDATA2LSB;
        eh.e_ident[EI_VERSION] = EV_CURRENT;
        eh.e_type = ET_EXEC;
        eh.e_machine = EM_X86_64;
        eh.e_version = EV_CURRENT;
        eh.e_entry = entry;
        eh.e_phoff = sizeof eh;
        eh.e_ehsize = sizeof eh;
        eh.e_phentsize = sizeof(Elf64_Phdr);
        eh.e_phnum = 3;
        Elf64_Phdr ph[3]{};
        const std::uint64_t text_off = 0x1000, data_off = text_off + text.size();
        ph[0] = {PT_LOAD,    PF_R | PF_X, text_off,   0xffffffff80000000ull + text_paddr,
                 text_paddr, text.size(), text_memsz, 0x200000};
        ph[1] = {PT_NOTE, PF_R, 0, 0, 0, 0, 0, 4};
        ph[2] = {PT_LOAD,    PF_R | PF_W, data_off,    0xffffffff80000000ull + data_paddr,
                 data_paddr, data.size(), data.size(), 0x200000};
        std::vector<std::uint8_t> file(text_off, 0);
        std::memcpy(file.data(), &eh, sizeof eh);
        std::memcpy(file.data() + sizeof eh, ph, sizeof ph);
        file.insert(file.end(), text.begin(), text.end());
        file.insert(file.end(), data.begin(), data.end());
        return file;
    }
};

LinuxBootSpec spec_for(std::string initrd = {}, std::string cmdline = "console=ttyS0") {
    LinuxBootSpec spec;
    spec.lpar_name = "LPAR2";
    spec.kernel = "/k/bzImage";
    spec.initrd = std::move(initrd);
    spec.cmdline = std::move(cmdline);
    spec.vcpus = 2;
    return spec;
}

std::vector<E820Entry> zero_page_e820(const boot_params& zp) {
    std::vector<E820Entry> out;
    for (unsigned i = 0; i < zp.e820_entries; ++i)
        out.push_back({zp.e820_table[i].addr, zp.e820_table[i].size, zp.e820_table[i].type});
    return out;
}

std::string cmdline_at(const AnonMemory& mem, std::uint64_t gpa) {
    auto bytes = mem.read(gpa, 4096);
    // SAFETY: the 4096 bytes read, as chars, up to the first NUL or their end (never past it).
    const char* text = reinterpret_cast<const char*>(bytes.data());
    return std::string(text, ::strnlen(text, bytes.size()));
}

// Walks the boot page tables: the physical address `va` maps to, or ~0 if unmapped.
std::uint64_t translate(const AnonMemory& mem, std::uint64_t cr3, std::uint64_t va) {
    const std::uint64_t addr_mask = 0x000ffffffffff000ull;
    auto pml4e = mem.object<std::uint64_t>(cr3 + ((va >> 39) & 511) * 8);
    if (!(pml4e & 1)) return ~0ull;
    auto pdpte = mem.object<std::uint64_t>((pml4e & addr_mask) + ((va >> 30) & 511) * 8);
    if (!(pdpte & 1)) return ~0ull;
    if (pdpte & 0x80) return (pdpte & addr_mask & ~((1ull << 30) - 1)) | (va & ((1ull << 30) - 1));
    auto pde = mem.object<std::uint64_t>((pdpte & addr_mask) + ((va >> 21) & 511) * 8);
    if (!(pde & 1) || !(pde & 0x80)) return ~0ull;
    return (pde & addr_mask & ~((1ull << 21) - 1)) | (va & ((1ull << 21) - 1));
}

std::map<std::string, std::string> read_env_file(const std::string& path) {
    std::map<std::string, std::string> env;
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
        auto eq = line.find('=');
        if (eq != std::string::npos) env[line.substr(0, eq)] = line.substr(eq + 1);
    }
    return env;
}

std::vector<std::uint8_t> read_whole(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), {}};
}

}  // namespace

TEST_CASE("the e820 map is the LPAR's storage with the EBDA/BIOS hole", "[linux-boot]") {
    for (std::uint64_t storage : {32 * MiB, 256 * MiB, 1000 * MiB, 3584 * MiB}) {
        INFO(storage / MiB << " MiB");
        auto map = linux_e820_map(storage);
        REQUIRE(map.size() == 3);
        CHECK(map[0] == E820Entry{0, 0x9fc00, kE820Ram});
        CHECK(map[1] == E820Entry{0x9fc00, 0x100000 - 0x9fc00, kE820Reserved});
        CHECK(map[2] == E820Entry{0x100000, storage - 0x100000, kE820Ram});
        std::uint64_t end = 0, ram = 0;
        for (const auto& e : map) {
            CHECK(e.addr == end);  // contiguous, no overlap
            end = e.addr + e.size;
            if (e.type == kE820Ram) ram += e.size;
        }
        CHECK(end == storage);
        CHECK(ram == storage - (0x100000 - 0x9fc00));
    }
}

TEST_CASE("a bzImage loads at its preferred address with a complete zero page", "[linux-boot]") {
    AnonMemory mem(64 * MiB);
    mem.fill(0, 2 * MiB, 0xcc);  // stale bytes the loader must clear
    FakeBzImage bz;
    auto file = bz.bytes();
    auto initrd = pattern(1 * MiB + 123, 5);
    auto r = load_linux_bytes(spec_for("/i/initrd.gz"), file, initrd, mem.memory());

    CHECK(r.kind == "bzImage");
    CHECK(r.protocol == 0x020f);
    CHECK(r.kernel_start == 16 * MiB);
    CHECK(r.entry == 16 * MiB + 0x200);  // the 64-bit entry
    CHECK(r.kernel_end == 48 * MiB);     // pref_address + init_size
    CHECK(mem.read(16 * MiB, bz.payload.size()) == bz.payload);

    // The initrd goes as high as it can, page-aligned, above the kernel.
    CHECK(r.initrd_size == initrd.size());
    CHECK(r.initrd_start == (64 * MiB - initrd.size()) / 4096 * 4096);
    CHECK(r.initrd_start >= r.kernel_end);
    CHECK(mem.read(r.initrd_start, initrd.size()) == initrd);

    auto zp = mem.object<boot_params>(r.zero_page);
    CHECK(r.zero_page == 0x7000);
    CHECK(zp.hdr.header == 0x53726448);
    CHECK(zp.hdr.version == 0x020f);
    CHECK(zp.hdr.boot_flag == 0xaa55);
    CHECK(zp.hdr.init_size == 32 * MiB);  // the rest of the setup header is the kernel's
    CHECK(zp.hdr.type_of_loader == 0xff);
    CHECK((zp.hdr.loadflags & LOADED_HIGH) != 0);
    CHECK((zp.hdr.loadflags & CAN_USE_HEAP) != 0);
    CHECK(zp.hdr.heap_end_ptr == 0xfe00);
    CHECK(zp.hdr.cmd_line_ptr == 0x20000);
    CHECK(zp.ext_cmd_line_ptr == 0);
    CHECK(zp.hdr.ramdisk_image == r.initrd_start);
    CHECK(zp.hdr.ramdisk_size == initrd.size());
    CHECK(zp.acpi_rsdp_addr == kAcpiRsdpGpa);
    CHECK(zp.sentinel == 0);
    CHECK(zero_page_e820(zp) == linux_e820_map(64 * MiB));
    CHECK(cmdline_at(mem, zp.hdr.cmd_line_ptr) == "console=ttyS0");
    CHECK(r.cmdline_size == 13);

    // The ACPI tables are there for the MADT's two vCPUs, and the BDA points at the EBDA.
    auto rsdp = mem.read(kAcpiRsdpGpa, 36);
    CHECK(std::string(rsdp.begin(), rsdp.begin() + 8) == "RSD PTR ");
    CHECK(acpi_sum_is_zero(rsdp));
    CHECK(r.acpi.rsdp == kAcpiRsdpGpa);
    CHECK(mem.object<std::uint16_t>(0x40e) == 0x9fc0);
    CHECK(mem.object<std::uint16_t>(0x413) == 639);
    CHECK(mem.read(0x1000, 16) == std::vector<std::uint8_t>(16, 0));  // stale bytes gone
}

TEST_CASE("a fixed-address bzImage loads at 1 MiB and keeps its decompression area",
          "[linux-boot]") {
    AnonMemory mem(64 * MiB);
    FakeBzImage bz;
    bz.hdr.relocatable_kernel = 0;
    auto r = load_linux_bytes(spec_for(), bz.bytes(), {}, mem.memory());
    CHECK(r.kernel_start == 1 * MiB);
    CHECK(r.entry == 1 * MiB + 0x200);
    CHECK(r.kernel_end == 48 * MiB);  // it still decompresses to pref_address
    CHECK(r.initrd_size == 0);
    auto zp = mem.object<boot_params>(r.zero_page);
    CHECK(zp.hdr.ramdisk_image == 0);
    CHECK(zp.hdr.ramdisk_size == 0);
}

TEST_CASE("the initrd respects initrd_addr_max", "[linux-boot]") {
    AnonMemory mem(1024 * MiB);
    FakeBzImage bz;
    bz.hdr.initrd_addr_max = 0x37ffffff;  // the old default: below 896 MiB
    auto initrd = pattern(3 * MiB, 9);
    auto r = load_linux_bytes(spec_for("/i/x"), bz.bytes(), initrd, mem.memory());
    CHECK(r.initrd_start == 0x38000000 - 3 * MiB);
    CHECK(r.initrd_start + r.initrd_size <= 0x38000000);
    auto zp = mem.object<boot_params>(r.zero_page);
    CHECK(zero_page_e820(zp) == linux_e820_map(1024 * MiB));
}

TEST_CASE("an ELF vmlinux loads by physical address with a made-up setup header", "[linux-boot]") {
    AnonMemory mem(64 * MiB);
    mem.fill(16 * MiB, 1 * MiB, 0xcc);
    FakeVmlinux elf;
    auto spec = spec_for("", "console=ttyS0 noxsave");
    spec.kernel = "/k/vmlinux";
    auto r = load_linux_bytes(spec, elf.bytes(), {}, mem.memory());
    CHECK(r.kind == "vmlinux");
    CHECK(r.entry == 0x1000000);
    CHECK(r.kernel_start == 0x1000000);
    CHECK(r.kernel_end == 0x1201000);
    CHECK(mem.read(0x1000000, elf.text.size()) == elf.text);
    CHECK(mem.read(0x1003000, 0x2000) == std::vector<std::uint8_t>(0x2000, 0));  // bss
    CHECK(mem.read(0x1200000, elf.data.size()) == elf.data);

    auto zp = mem.object<boot_params>(r.zero_page);
    CHECK(zp.hdr.boot_flag == 0xaa55);
    CHECK(zp.hdr.header == 0x53726448);
    CHECK(zp.hdr.version == 0x020f);
    CHECK(zp.hdr.type_of_loader == 0xff);
    CHECK(zp.hdr.loadflags == (LOADED_HIGH | CAN_USE_HEAP));
    CHECK(zp.hdr.cmdline_size == 2047);
    CHECK(zp.acpi_rsdp_addr == kAcpiRsdpGpa);
    CHECK(zero_page_e820(zp) == linux_e820_map(64 * MiB));
    CHECK(cmdline_at(mem, 0x20000) == "console=ttyS0 noxsave");

    SECTION("a virtual e_entry is translated to its physical address") {
        elf.entry = 0xffffffff81000040ull;
        auto r2 = load_linux_bytes(spec, elf.bytes(), {}, mem.memory());
        CHECK(r2.entry == 0x1000040);
    }
}

TEST_CASE("the entry state is long mode at CPL0 on identity page tables", "[linux-boot]") {
    AnonMemory mem(64 * MiB);
    FakeBzImage bz;
    auto r = load_linux_bytes(spec_for(), bz.bytes(), {}, mem.memory());
    kvm_sregs sregs{};
    sregs.apic_base = 0xfee00900;  // whatever KVM_GET_SREGS said stays
    sregs.ldt.selector = 0;
    sregs.ldt.type = 2;
    sregs.ldt.present = 1;
    kvm_regs regs{};
    regs.rax = 1234;
    apply_linux_entry(sregs, regs, r);

    CHECK(sregs.cs.selector == 0x10);
    CHECK(sregs.cs.l == 1);
    CHECK(sregs.cs.db == 0);
    CHECK(sregs.cs.dpl == 0);
    CHECK(sregs.cs.present == 1);
    CHECK(sregs.cs.type == 0xb);
    for (const kvm_segment* s : {&sregs.ds, &sregs.es, &sregs.ss, &sregs.fs, &sregs.gs}) {
        CHECK(s->selector == 0x18);
        CHECK(s->type == 0x3);
        CHECK(s->present == 1);
        CHECK(s->base == 0);
        CHECK(s->limit == 0xffffffff);
    }
    CHECK(sregs.tr.present == 1);
    CHECK(sregs.tr.type == 0xb);
    CHECK((sregs.cr0 & 0x80000031) == 0x80000031);  // PG, NE, ET, PE
    CHECK((sregs.cr0 & 0x60000000) == 0);           // caches on
    CHECK(sregs.cr4 == 0x20);
    CHECK(sregs.efer == 0x500);
    CHECK(sregs.cr3 == 0x9000);
    CHECK(sregs.gdt.base == 0x500);
    CHECK(sregs.gdt.limit == 47);
    CHECK(sregs.apic_base == 0xfee00900);
    CHECK(sregs.ldt.type == 2);
    CHECK(regs.rip == r.entry);
    CHECK(regs.rsi == 0x7000);
    CHECK(regs.rflags == 0x2);
    CHECK(regs.rax == 0);
    CHECK(regs.rsp == kLinuxStackTop);

    // The GDT in memory matches the selectors: 0x10 is 64-bit code, 0x18 flat data.
    auto code = mem.object<std::uint64_t>(0x500 + 0x10);
    auto data = mem.object<std::uint64_t>(0x500 + 0x18);
    CHECK(((code >> 53) & 1) == 1);  // L
    CHECK(((code >> 47) & 1) == 1);  // P
    CHECK(((code >> 43) & 1) == 1);  // code
    CHECK(((data >> 43) & 1) == 0);  // data
    CHECK(((data >> 41) & 1) == 1);  // writable
    CHECK(((data >> 54) & 1) == 1);  // 32-bit (D/B)

    // Identity-mapped: the zero page, the command line, the kernel and the first 4 GiB.
    CHECK(r.mapped_bytes == 4ull << 30);
    for (std::uint64_t va : std::initializer_list<std::uint64_t>{
             0x7000, 0x20000, r.entry, 63 * MiB + 5, 0xfee00000, (4ull << 30) - 1})
        CHECK(translate(mem, sregs.cr3, va) == va);
    CHECK(translate(mem, sregs.cr3, 4ull << 30) == ~0ull);
}

TEST_CASE("the Linux loader refuses what cannot boot, with the facts", "[linux-boot]") {
    FakeBzImage bz;
    auto matches = [](const std::string& s) { return Catch::Contains(s); };

    SECTION("too little storage") {
        AnonMemory mem(16 * MiB);
        CHECK_THROWS_WITH(load_linux_bytes(spec_for(), bz.bytes(), {}, mem.memory()),
                          matches("LPAR2: 16 MiB of storage is too little") && matches("32 MiB"));
    }
    SECTION("not a kernel") {
        AnonMemory mem(64 * MiB);
        CHECK_THROWS_WITH(
            load_linux_bytes(spec_for(), pattern(8192, 1), {}, mem.memory()),
            matches("LPAR2: kernel /k/bzImage: neither an ELF vmlinux nor a bzImage"));
    }
    SECTION("an old boot protocol") {
        AnonMemory mem(64 * MiB);
        bz.hdr.version = 0x020b;
        CHECK_THROWS_WITH(load_linux_bytes(spec_for(), bz.bytes(), {}, mem.memory()),
                          matches("boot protocol 2.11 is too old"));
    }
    SECTION("no 64-bit entry") {
        AnonMemory mem(64 * MiB);
        bz.hdr.xloadflags = 0;
        CHECK_THROWS_WITH(load_linux_bytes(spec_for(), bz.bytes(), {}, mem.memory()),
                          matches("XLF_KERNEL_64"));
    }
    SECTION("a kernel that does not fit") {
        AnonMemory mem(40 * MiB);
        CHECK_THROWS_WITH(load_linux_bytes(spec_for(), bz.bytes(), {}, mem.memory()),
                          matches("needs 0x1000000-0x3000000 (16 MiB to 48 MiB)") &&
                              matches("the LPAR has 40 MiB"));
    }
    SECTION("a pref_address beyond any storage, or an alignment that is not a power of two") {
        // Found by fuzz_linux_loader: pref_address 2^64-1 once aligned up to 0, and the kernel
        // was accepted at address 0, over the zero page (fuzz/corpus/linux_loader/ keeps it).
        AnonMemory mem(64 * MiB);
        bz.hdr.pref_address = ~std::uint64_t{0};
        CHECK_THROWS_WITH(load_linux_bytes(spec_for(), bz.bytes(), {}, mem.memory()),
                          matches("asks to run at 0xffffffffffffffff (pref_address), beyond any "
                                  "LPAR's storage"));
        bz.hdr.relocatable_kernel = 0;
        CHECK_THROWS_WITH(load_linux_bytes(spec_for(), bz.bytes(), {}, mem.memory()),
                          matches("(pref_address)"));
        bz.hdr.pref_address = 0x1000000;
        bz.hdr.relocatable_kernel = 1;
        bz.hdr.kernel_alignment = 0x300000;
        CHECK_THROWS_WITH(load_linux_bytes(spec_for(), bz.bytes(), {}, mem.memory()),
                          matches("kernel_alignment 0x300000 is not a power of two"));
    }
    SECTION("an initrd that does not fit above the kernel") {
        AnonMemory mem(64 * MiB);
        auto initrd = pattern(20 * MiB, 2);
        try {
            (void)load_linux_bytes(spec_for("/x/initrd"), bz.bytes(), initrd, mem.memory());
            FAIL("no error");
        } catch (const Error& e) {
            CHECK(e.kind() == ErrorKind::InvalidArgument);
            CHECK_THAT(e.what(), matches("LPAR2: initrd /x/initrd (20 MiB) does not fit") &&
                                     matches("48 MiB") && matches("64 MiB"));
        }
    }
    SECTION("a command line longer than cmdline_size") {
        AnonMemory mem(64 * MiB);
        CHECK_NOTHROW(
            load_linux_bytes(spec_for("", std::string(2047, 'x')), bz.bytes(), {}, mem.memory()));
        CHECK_THROWS_WITH(
            load_linux_bytes(spec_for("", std::string(2048, 'x')), bz.bytes(), {}, mem.memory()),
            matches("command line is 2048 bytes") && matches("at most 2047"));
    }
    SECTION("an empty initrd") {
        AnonMemory mem(64 * MiB);
        CHECK_THROWS_WITH(load_linux_bytes(spec_for("/x/empty"), bz.bytes(), {}, mem.memory()),
                          matches("initrd /x/empty is empty"));
    }
    SECTION("ELF segments below 1 MiB, or an entry outside them") {
        AnonMemory mem(64 * MiB);
        FakeVmlinux elf;
        elf.data_paddr = 0x80000;
        CHECK_THROWS_WITH(load_linux_bytes(spec_for(), elf.bytes(), {}, mem.memory()),
                          matches("below 1 MiB"));
        FakeVmlinux far;
        far.entry = 0x5000000;
        CHECK_THROWS_WITH(load_linux_bytes(spec_for(), far.bytes(), {}, mem.memory()),
                          matches("entry point 0x5000000 is in no loadable segment"));
    }
    SECTION("files that cannot be read") {
        AnonMemory mem(64 * MiB);
        auto spec = spec_for();
        spec.kernel = "/nonexistent/vmlinuz";
        CHECK_THROWS_WITH(load_linux(spec, mem.memory()),
                          matches("LPAR2: kernel /nonexistent/vmlinuz cannot be opened"));
    }
}

namespace {

// The files scripts/fetch-debian-kernel.sh caches: KERNEL_VMLINUZ and KERNEL_VMLINUX.
std::map<std::string, std::string> cached_debian_kernel() {
    const char* cache_env = std::getenv("LPARVISOR_CACHE");
    const char* home = std::getenv("HOME");
    std::string cache =
        cache_env ? cache_env : std::string(home ? home : "/root") + "/.cache/lparvisor";
    return read_env_file(cache + "/kernel/cloud/kernel.env");
}

}  // namespace

// The two Debian kernel tests run alone, each as its own ctest entry (hidden tags): without the
// cached kernel they end the run with the skip code, which ctest reports as Skipped.
TEST_CASE("the cached Debian cloud kernel loads as a bzImage", "[linux-boot][.debian-bzimage]") {
    const std::string vmlinuz = cached_debian_kernel()["KERNEL_VMLINUZ"];
    if (vmlinuz.empty() || !std::ifstream(vmlinuz))
        lparvisor::test::skip_run("no cached Debian kernel (run scripts/fetch-debian-kernel.sh)");
    AnonMemory mem(256 * MiB);
    auto initrd = pattern(5 * MiB + 17, 4);
    const std::string initrd_path = "/tmp/fake-initrd";  // named only, the bytes are given
    LinuxBootSpec spec = spec_for(initrd_path, "console=ttyS0 noxsave");
    spec.kernel = vmlinuz;
    auto file = read_whole(vmlinuz);
    auto r = load_linux_bytes(spec, file, initrd, mem.memory());
    CHECK(r.kind == "bzImage");
    CHECK(r.protocol >= 0x020f);
    CHECK(r.kernel_start == 16 * MiB);  // its pref_address (LOAD_PHYSICAL_ADDR)
    CHECK(r.entry == 16 * MiB + 0x200);
    CHECK(r.kernel_end > 48 * MiB);  // init_size: tens of MiB
    CHECK(r.kernel_end < 128 * MiB);
    CHECK(r.initrd_start == (256 * MiB - initrd.size()) / 4096 * 4096);
    const std::uint64_t setup = (file[0x1f1] ? file[0x1f1] : 4) + 1;
    CHECK(mem.read(r.kernel_start, 4096) ==
          std::vector<std::uint8_t>(file.begin() + setup * 512, file.begin() + setup * 512 + 4096));
    auto zp = mem.object<boot_params>(r.zero_page);
    CHECK(zp.hdr.header == 0x53726448);
    CHECK((zp.hdr.xloadflags & XLF_KERNEL_64) != 0);
    CHECK(zp.hdr.type_of_loader == 0xff);
    CHECK(zp.hdr.ramdisk_image == r.initrd_start);
    CHECK(zp.hdr.kernel_version != 0);  // copied from the file's header
    CHECK(zp.acpi_rsdp_addr == kAcpiRsdpGpa);
    CHECK(zero_page_e820(zp) == linux_e820_map(256 * MiB));
}

TEST_CASE("the cached Debian cloud kernel loads as an ELF vmlinux",
          "[linux-boot][.debian-vmlinux]") {
    const std::string vmlinux = cached_debian_kernel()["KERNEL_VMLINUX"];
    if (vmlinux.empty() || !std::ifstream(vmlinux))
        lparvisor::test::skip_run(
            "the cached Debian kernel has no extracted vmlinux "
            "(run scripts/fetch-debian-kernel.sh)");
    AnonMemory mem(256 * MiB);
    LinuxBootSpec spec = spec_for("/tmp/fake-initrd", "console=ttyS0 noxsave");
    auto r = load_linux(LinuxBootSpec{spec.lpar_name, vmlinux, "", spec.cmdline, 2}, mem.memory());
    CHECK(r.kind == "vmlinux");
    CHECK(r.entry == 0x1000000);  // e_entry: the physical startup_64
    CHECK(r.kernel_start == 0x1000000);
    CHECK(r.kernel_end < 128 * MiB);
    auto file = read_whole(vmlinux);
    Elf64_Ehdr eh;
    std::memcpy(&eh, file.data(), sizeof eh);
    Elf64_Phdr ph;
    std::memcpy(&ph, file.data() + eh.e_phoff, sizeof ph);
    CHECK(mem.read(ph.p_paddr, 4096) ==
          std::vector<std::uint8_t>(file.begin() + ph.p_offset, file.begin() + ph.p_offset + 4096));
    auto zp = mem.object<boot_params>(r.zero_page);
    CHECK(zp.hdr.header == 0x53726448);
    CHECK(zp.hdr.ramdisk_size == 0);
    CHECK(zero_page_e820(zp) == linux_e820_map(256 * MiB));
}
