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

    // I/O bitmap: the firmware's ports open, others (e.g. 0x80, 0x3f7, 0x402) closed.
    auto bitmap = *memory.slice(GuestPhysAddr{LPV_TSS_GPA + 104}, 8193);
    auto open = [&](unsigned port) { return (bitmap[port / 8] & (1u << (port % 8))) == 0; };
    for (unsigned port = 0x3f8; port < 0x400; ++port) CHECK(open(port));
    CHECK(open(0x501));
    CHECK(open(0x510));
    CHECK(open(0x513));
    CHECK_FALSE(open(0x80));
    CHECK_FALSE(open(0x3f7));
    CHECK_FALSE(open(0x514));
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

    boot::FirmwareParams too_many{"X", 9, 0, 0, 0, 0, true};
    CHECK_THROWS_WITH(boot::build_system_area(memory, too_many), Catch::Contains("1 to 8 vCPUs"));
    GuestWindow small(arena, {{8 * kMiB}, 2 * kMiB});
    CHECK_THROWS_WITH(boot::build_system_area(small.memory(), params),
                      Catch::Contains("at least 4 MiB"));
}
