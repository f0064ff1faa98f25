#include <catch2/catch.hpp>

#include <elf.h>
#include <lparvisor/abi.h>

#include <cstring>
#include <fstream>
#include <iterator>

#include "boot/firmware_loader.hpp"
#include "storage/arena.hpp"
#include "util/error.hpp"

using namespace lparvisor;

namespace {
std::vector<std::uint8_t> firmware_file() {
    std::ifstream in(LPARVISOR_TEST_FIRMWARE, std::ios::binary);
    REQUIRE(in);
    return {std::istreambuf_iterator<char>(in), {}};
}
}  // namespace

TEST_CASE("the built firmware loads into [1 MiB, 1.5 MiB) with its entry inside", "[boot]") {
    Arena arena(8 * kMiB, HugePagePolicy::Off);
    GuestWindow window(arena, {{0}, 4 * kMiB});
    auto image = boot::load_firmware_elf(LPARVISOR_TEST_FIRMWARE, window.memory());
    CHECK(image.lowest >= LPV_IMAGE_GPA);
    CHECK(image.highest <= LPV_IMAGE_END);
    CHECK(image.entry >= image.lowest);
    CHECK(image.entry < image.highest);
}

TEST_CASE("malformed firmware images are refused with the reason", "[boot]") {
    Arena arena(8 * kMiB, HugePagePolicy::Off);
    GuestWindow window(arena, {{0}, 4 * kMiB});
    auto file = firmware_file();
    CHECK_THROWS_WITH(boot::load_firmware_elf_bytes({1, 2, 3}, "x", window.memory()),
                      Catch::Contains("too short"));
    auto bad = file;
    bad[0] = 'X';
    CHECK_THROWS_WITH(boot::load_firmware_elf_bytes(bad, "x", window.memory()),
                      Catch::Contains("not an ELF"));

    Elf64_Ehdr header;
    std::memcpy(&header, file.data(), sizeof header);
    Elf64_Phdr ph;
    std::memcpy(&ph, file.data() + header.e_phoff, sizeof ph);
    auto with_phdr = [&](auto change) {
        auto copy = file;
        Elf64_Phdr p = ph;
        change(p);
        std::memcpy(copy.data() + header.e_phoff, &p, sizeof p);
        return copy;
    };
    REQUIRE(ph.p_type == PT_LOAD);
    CHECK_THROWS_WITH(
        boot::load_firmware_elf_bytes(with_phdr([](Elf64_Phdr& p) { p.p_paddr = 0x1000; }), "x",
                                      window.memory()),
        Catch::Contains("outside the image area"));
    CHECK_THROWS_WITH(
        boot::load_firmware_elf_bytes(with_phdr([](Elf64_Phdr& p) { p.p_memsz = ~0ull - 10; }), "x",
                                      window.memory()),
        Catch::Contains("outside the image area"));
    CHECK_THROWS_WITH(
        boot::load_firmware_elf_bytes(with_phdr([](Elf64_Phdr& p) { p.p_offset = ~0ull - 10; }),
                                      "x", window.memory()),
        Catch::Contains("beyond the end of the file"));
    CHECK_THROWS_WITH(
        boot::load_firmware_elf_bytes(with_phdr([&](Elf64_Phdr& p) { p.p_filesz = p.p_memsz + 1; }),
                                      "x", window.memory()),
        Catch::Contains("filesz > memsz"));
}

TEST_CASE("the system area: GDT, TSS I/O bitmap, user page tables and boot info", "[boot]") {
    Arena arena(16 * kMiB, HugePagePolicy::Off);
    GuestWindow window(arena, {{0}, 8 * kMiB});
    auto memory = window.memory();
    boot::FirmwareParams params{"LPARX", 2, 2000000, 25000, 2 * kMiB, 7, true};
    boot::build_system_area(memory, params);

    auto info = memory.read_object<lpv_boot_info>(GuestPhysAddr{LPV_BOOT_INFO_GPA});
    REQUIRE(info);
    CHECK(info->magic == LPV_BOOT_MAGIC);
    CHECK(info->storage_bytes == 8 * kMiB);
    CHECK(info->vcpu_count == 2);
    CHECK(info->round_limit == 7);
    CHECK(std::string(info->name) == "LPARX");
    CHECK(info->flags == LPV_BOOT_FLAG_STORAGE_KEYS);
    CHECK(info->max_storage_bytes == 0);  // max_storage defaults to the storage size

    // I/O bitmap: the firmware's ports open, others (e.g. 0x80, 0x3f7, 0x402) closed.
    auto bitmap = *memory.read_slice(GuestPhysAddr{LPV_TSS_GPA + 104}, 8193);
    auto open = [&](unsigned port) { return (bitmap[port / 8] & (1u << (port % 8))) == 0; };
    for (unsigned port = 0x3f8; port < 0x400; ++port) CHECK(open(port));
    CHECK(open(0x501));
    CHECK(open(0x510));
    CHECK(open(0x513));
    CHECK_FALSE(open(0x80));
    CHECK_FALSE(open(0x3f7));
    CHECK_FALSE(open(0x514));
    for (unsigned port = 0xcf8; port < 0xd00; ++port) CHECK(open(port));  // PCI config #1
    CHECK_FALSE(open(0xcf7));
    CHECK_FALSE(open(0xd00));
    CHECK(bitmap[8192] == 0xff);

    // Page tables: 4 user 2 MiB pages mapping 0..8 MiB identically, nothing beyond.
    auto pml4 = *memory.read_object<std::uint64_t>(GuestPhysAddr{LPV_PAGE_TABLE_GPA});
    CHECK((pml4 & 7) == 7);
    auto pd = (*memory.read_object<std::uint64_t>(GuestPhysAddr{pml4 & ~0xfffull})) & ~0xfffull;
    for (unsigned i = 0; i < 4; ++i) {
        auto pde = *memory.read_object<std::uint64_t>(GuestPhysAddr{pd + i * 8});
        CHECK((pde & ~0x1fffffull) == i * 2 * kMiB);
        CHECK((pde & 0x87) == 0x87);
    }
    CHECK(*memory.read_object<std::uint64_t>(GuestPhysAddr{pd + 4 * 8}) == 0);
    CHECK((info->flags & LPV_BOOT_FLAG_PCI) == 0);  // pci_bus defaults to off

    // The PCI window [3.5 GiB, 3.75 GiB): PDPT[3] -> a PD whose entries 256..383 map it
    // identically with 2 MiB pages, user, writable, uncached (PCD|PWT); nothing around it.
    auto pdpt = pml4 & ~0xfffull;
    for (unsigned g = 1; g < 4; ++g) {
        auto pdpte = *memory.read_object<std::uint64_t>(GuestPhysAddr{pdpt + g * 8});
        CHECK((pdpte & 7) == 7);
    }
    CHECK(*memory.read_object<std::uint64_t>(GuestPhysAddr{pdpt + 4 * 8}) == 0);
    auto pd3 = (*memory.read_object<std::uint64_t>(GuestPhysAddr{pdpt + 3 * 8})) & ~0xfffull;
    const std::uint64_t first = (LPV_PCI_MMIO_GPA - 3ull * 1024 * kMiB) / (2 * kMiB);
    const std::uint64_t count = LPV_PCI_MMIO_SIZE / (2 * kMiB);
    REQUIRE(first == 256);
    REQUIRE(count == 128);
    for (std::uint64_t i = 0; i < 512; ++i) {
        auto pde = *memory.read_object<std::uint64_t>(GuestPhysAddr{pd3 + i * 8});
        if (i < first || i >= first + count) {
            CHECK(pde == 0);
            continue;
        }
        CHECK((pde & ~0x1fffffull) == LPV_PCI_MMIO_GPA + (i - first) * 2 * kMiB);
        CHECK((pde & 0x9f) == 0x9f);  // P, RW, US, PWT, PCD, PS
    }
    // GiB 1 and 2 hold nothing for an 8 MiB LPAR.
    for (unsigned g = 1; g < 3; ++g) {
        auto pdg = (*memory.read_object<std::uint64_t>(GuestPhysAddr{pdpt + g * 8})) & ~0xfffull;
        for (unsigned i = 0; i < 512; ++i)
            CHECK(*memory.read_object<std::uint64_t>(GuestPhysAddr{pdg + i * 8}) == 0);
    }
    // The storage pages stay write-back.
    for (unsigned i = 0; i < 4; ++i)
        CHECK((*memory.read_object<std::uint64_t>(GuestPhysAddr{pd + i * 8}) & 0x18) == 0);

    boot::FirmwareParams with_pci = params;
    with_pci.pci_bus = true;
    boot::build_system_area(memory, with_pci);
    CHECK(memory.read_object<lpv_boot_info>(GuestPhysAddr{LPV_BOOT_INFO_GPA})->flags ==
          (LPV_BOOT_FLAG_STORAGE_KEYS | LPV_BOOT_FLAG_PCI));

    boot::FirmwareParams too_many{"X", 9, 0, 0, 0, 0, true};
    CHECK_THROWS_WITH(boot::build_system_area(memory, too_many), Catch::Contains("1 to 8 vCPUs"));
    GuestWindow small(arena, {{8 * kMiB}, 2 * kMiB});
    CHECK_THROWS_WITH(boot::build_system_area(small.memory(), params),
                      Catch::Contains("at least 4 MiB"));
}

TEST_CASE("max_storage: the page tables also map the memory EXPAND may plug", "[boot]") {
    Arena arena(16 * kMiB, HugePagePolicy::Off);
    GuestWindow window(arena, {{0}, 8 * kMiB});
    auto memory = window.memory();
    auto pde = [&](std::uint64_t gpa) {
        auto pml4 = *memory.read_object<std::uint64_t>(GuestPhysAddr{LPV_PAGE_TABLE_GPA});
        auto pdpte =
            *memory.read_object<std::uint64_t>(GuestPhysAddr{(pml4 & ~0xfffull) + (gpa >> 30) * 8});
        REQUIRE((pdpte & 7) == 7);
        return *memory.read_object<std::uint64_t>(
            GuestPhysAddr{(pdpte & ~0xfffull) + ((gpa >> 21) & 511) * 8});
    };
    auto boot_info = [&] {
        return *memory.read_object<lpv_boot_info>(GuestPhysAddr{LPV_BOOT_INFO_GPA});
    };
    boot::FirmwareParams params{"EXP", 1, 0, 0, 0, 0, true};

    SECTION("an expandable LPAR: [0, max_storage) write-back, user, nothing above") {
        params.max_storage = 1536 * kMiB;  // crosses a GiB boundary
        boot::build_system_area(memory, params);
        for (std::uint64_t gpa = 0; gpa < params.max_storage; gpa += 2 * kMiB) {
            const auto e = pde(gpa);
            CHECK((e & ~0x1fffffull) == gpa);
            CHECK((e & 0x87) == 0x87);  // P, RW, US, PS
            CHECK((e & 0x18) == 0);     // write-back
        }
        CHECK(pde(params.max_storage) == 0);
        CHECK(pde(3ull * 1024 * kMiB - 2 * kMiB) == 0);
        CHECK((pde(LPV_PCI_MMIO_GPA) & 0x9f) == 0x9f);  // the window stays uncached
        const auto info = boot_info();
        CHECK(info.storage_bytes == 8 * kMiB);
        CHECK(info.max_storage_bytes == 1536 * kMiB);
    }
    SECTION("up to the PCI window") {
        params.max_storage = LPV_MAX_STORAGE;
        boot::build_system_area(memory, params);
        CHECK((pde(LPV_MAX_STORAGE - 2 * kMiB) & 0x9f) == 0x87);
        CHECK((pde(LPV_PCI_MMIO_GPA) & 0x9f) == 0x9f);
        CHECK(boot_info().max_storage_bytes == LPV_MAX_STORAGE);
    }
    SECTION("max_storage at or below the storage maps the storage alone") {
        params.max_storage = 4 * kMiB;
        boot::build_system_area(memory, params);
        CHECK((pde(6 * kMiB) & 0x87) == 0x87);
        CHECK(pde(8 * kMiB) == 0);
        CHECK(boot_info().max_storage_bytes == 0);
        params.max_storage = 8 * kMiB;
        boot::build_system_area(memory, params);
        CHECK(pde(8 * kMiB) == 0);
        CHECK(boot_info().max_storage_bytes == 0);
    }
    SECTION("refused: not in 2 MiB units, or reaching the PCI window") {
        params.max_storage = 64 * kMiB + 4096;
        CHECK_THROWS_WITH(boot::build_system_area(memory, params),
                          Catch::Contains("not a multiple of 2 MiB"));
        params.max_storage = LPV_MAX_STORAGE + 2 * kMiB;
        CHECK_THROWS_WITH(boot::build_system_area(memory, params),
                          Catch::Contains("reaches the PCI window"));
    }
}

TEST_CASE("the firmware's memory pattern (abi.h) is the one the firmware always used", "[boot]") {
    // The seed the firmware printed for "MEMT" before the pattern moved into abi.h.
    CHECK(lpv_pattern_seed("MEMT") == 0x629d5757b12ddc39ull);
    CHECK(lpv_pattern_seed("MEMT") != lpv_pattern_seed("MEMU"));
    const std::uint64_t seed = lpv_pattern_seed("LPAR1");
    CHECK(lpv_pattern_word(0x200000, 0, seed) == ((0x200000ull * LPV_PATTERN_MUL) ^ seed));
    CHECK(lpv_pattern_word(0x200000, 3, seed) ==
          ((0x200000ull * LPV_PATTERN_MUL) ^ (3ull << 48) ^ seed));
    CHECK(lpv_pattern_word(0x200008, 0, seed) != lpv_pattern_word(0x200000, 0, seed));
}

TEST_CASE("the firmware's DMA area lies between the image and the stacks", "[boot]") {
    STATIC_REQUIRE(LPV_FW_DMA_GPA >= LPV_IMAGE_END);
    STATIC_REQUIRE(LPV_FW_DMA_GPA + LPV_FW_DMA_SIZE <=
                   LPV_STACK_TOP - LPV_MAX_VCPUS * LPV_STACK_SIZE);
    STATIC_REQUIRE(LPV_MAX_STORAGE <= LPV_PCI_MMIO_GPA);
}

TEST_CASE("lpv_disk_word is deterministic and depends on name, block, pass and word", "[boot]") {
    const auto w = lpv_disk_word("LPAR1", 5, 2, 7);
    CHECK(w == lpv_disk_word("LPAR1", 5, 2, 7));
    CHECK(w != lpv_disk_word("LPAR2", 5, 2, 7));
    CHECK(w != lpv_disk_word("LPAR1", 6, 2, 7));
    CHECK(w != lpv_disk_word("LPAR1", 5, 3, 7));
    CHECK(w != lpv_disk_word("LPAR1", 5, 2, 8));
    CHECK(lpv_disk_word_seeded(lpv_disk_block_seed(lpv_disk_name_hash("LPAR1"), 5, 2), 7) == w);
}
