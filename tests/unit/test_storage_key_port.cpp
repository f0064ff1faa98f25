#include <catch2/catch.hpp>

#include <lparvisor/abi.h>

#include <cstring>

#include "devices/storage_key_port.hpp"
#include "storage/arena.hpp"

using namespace lparvisor;

namespace {

struct Fixture {
    Arena arena{16 * kMiB, HugePagePolicy::Off};
    StorageKeys keys{arena.size()};
    // LPAR A at 4 MiB (4 MiB), its neighbour B at 8 MiB (4 MiB).
    GuestWindow window{arena, {{4 * kMiB}, 4 * kMiB}};
    StorageKeyPort port{window.memory(), keys,
                        [this](GuestPhysAddr gpa) { return window.arena_offset_of(gpa); }};
    static constexpr std::uint64_t kRequest = 0x1000, kBuffer = 0x2000;

    lpv_skey_status send(lpv_skey_request request) {
        REQUIRE(window.memory().write_object(GuestPhysAddr{kRequest}, request));
        auto status = port.serve(GuestPhysAddr{kRequest});
        auto written = window.memory().read_object<lpv_skey_request>(GuestPhysAddr{kRequest});
        CHECK(written->status == status);
        return status;
    }
    std::uint8_t key_of_arena_page(std::uint64_t offset) {
        return keys.frames({{offset}, kPageSize})[0];
    }
};

}  // namespace

TEST_CASE("SET_RANGE sets the keys of the LPAR's own frames, through its origin",
          "[storage_keys]") {
    Fixture f;
    CHECK(f.send({LPV_SKEY_SET_RANGE, 0, 0x10000, 4, 0x38, 0}) == LPV_SKEY_OK);
    CHECK(f.key_of_arena_page(4 * kMiB + 0x10000) == 0x38);
    CHECK(f.key_of_arena_page(4 * kMiB + 0x13000) == 0x38);
    CHECK(f.key_of_arena_page(4 * kMiB + 0x14000) == 0);
    CHECK(f.key_of_arena_page(0x10000) ==
          0);  // not the frame at guest address, the one at origin + it
}

TEST_CASE("SET_EACH and GET_EACH round-trip per-page keys", "[storage_keys]") {
    Fixture f;
    std::uint8_t set[8] = {0x10, 0x20, 0x38, 0x44, 0xf6, 0x02, 0x00, 0xfe};
    REQUIRE(f.window.memory().write(GuestPhysAddr{Fixture::kBuffer}, set));
    CHECK(f.send({LPV_SKEY_SET_EACH, 0, 0x200000, 8, 0, Fixture::kBuffer}) == LPV_SKEY_OK);
    std::uint8_t zero[8] = {};
    REQUIRE(f.window.memory().write(GuestPhysAddr{Fixture::kBuffer}, zero));
    CHECK(f.send({LPV_SKEY_GET_EACH, 0, 0x200000, 8, 0, Fixture::kBuffer}) == LPV_SKEY_OK);
    std::uint8_t got[8];
    REQUIRE(f.window.memory().read(GuestPhysAddr{Fixture::kBuffer}, got));
    CHECK(std::memcmp(got, set, 8) == 0);
}

TEST_CASE("hostile requests are refused and touch no other LPAR's keys", "[storage_keys]") {
    Fixture f;
    auto neighbour = f.keys.frames({{8 * kMiB}, 4 * kMiB});
    std::fill(neighbour.begin(), neighbour.end(), std::uint8_t{0x70});
    CHECK(f.send({99, 0, 0, 1, 0, 0}) == LPV_SKEY_BAD_OP);
    CHECK(f.send({LPV_SKEY_SET_RANGE, 0, 0x123, 1, 0x10, 0}) == LPV_SKEY_BAD_RANGE);
    CHECK(f.send({LPV_SKEY_SET_RANGE, 0, 0, 0, 0x10, 0}) == LPV_SKEY_BAD_RANGE);
    // One page past the LPAR's end: would be the neighbour's first frame.
    CHECK(f.send({LPV_SKEY_SET_RANGE, 0, 4 * kMiB - kPageSize, 2, 0x10, 0}) == LPV_SKEY_BAD_RANGE);
    CHECK(f.send({LPV_SKEY_SET_RANGE, 0, 4 * kMiB, 1, 0x10, 0}) == LPV_SKEY_BAD_RANGE);
    // page_count * 4096 overflows 64 bits.
    CHECK(f.send({LPV_SKEY_SET_RANGE, 0, 0, 1ull << 52, 0x10, 0}) == LPV_SKEY_BAD_RANGE);
    CHECK(f.send({LPV_SKEY_SET_RANGE, 0, 0, 1, 0x11, 0}) == LPV_SKEY_BAD_KEY);
    CHECK(f.send({LPV_SKEY_GET_EACH, 0, 0, 16, 0, 4 * kMiB - 8}) == LPV_SKEY_BAD_BUFFER);
    CHECK(f.send({LPV_SKEY_GET_EACH, 0, 0, 1, 0, ~0ull}) == LPV_SKEY_BAD_BUFFER);
    // A request block that itself lies outside the LPAR: nothing read, nothing written.
    CHECK(f.port.serve(GuestPhysAddr{4 * kMiB - 4}) == LPV_SKEY_BAD_BUFFER);
    CHECK(
        std::all_of(neighbour.begin(), neighbour.end(), [](std::uint8_t k) { return k == 0x70; }));
}
