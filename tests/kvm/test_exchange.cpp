// EXCHANGE (claim 7) and growing an LPAR (claim 6: make room, then EXPAND) under real KVM,
// the firmware in every LPAR verifying its storage and keys throughout.
#include <catch2/catch.hpp>

#include <algorithm>
#include <regex>
#include <thread>

#include "support/guest_console.hpp"

#include "lpar/hypervisor.hpp"
#include "support/lpar_checks.hpp"
#include "util/error.hpp"

using namespace lparvisor;
using namespace std::chrono_literals;
using test::origin_mib_of;
using test::require_clean_rounds;
using test::require_plugged_and_verified;

TEST_CASE("EXCHANGE of equal and of unequal adjacent running LPARs", "[kvm][exchange]") {
    SystemConfig config{128,
                        {test::firmware_lpar("A", 0, 16, 1), test::firmware_lpar("B", 32, 16, 2),
                         test::firmware_lpar("C", 64, 8, 1), test::firmware_lpar("D", 72, 24, 1)}};
    Hypervisor hv(config, test::firmware_options());
    for (const char* name : {"A", "B", "C", "D"}) require_clean_rounds(hv, name, 1);

    auto equal = hv.exchange({"A", "B", 10s});
    CHECK(equal.a_new_origin_mib == 32);
    CHECK(equal.b_new_origin_mib == 0);
    CHECK(equal.bytes_moved == 32 * kMiB);
    CHECK(origin_mib_of(hv, "A") == 32);
    CHECK(origin_mib_of(hv, "B") == 0);

    auto neighbours = hv.exchange({"D", "C", 10s});  // C 64-72 and D 72-96 swap places
    CHECK(neighbours.a_new_origin_mib == 64);
    CHECK(neighbours.b_new_origin_mib == 88);
    CHECK(origin_mib_of(hv, "D") == 64);
    CHECK(origin_mib_of(hv, "C") == 88);

    for (const char* name : {"A", "B", "C", "D"}) require_clean_rounds(hv, name, 2);

    auto before = hv.storage_table();
    CHECK_THROWS_WITH(hv.exchange({"A", "C", 10s}), Catch::Contains("not neighbours"));
    CHECK_THROWS_WITH(hv.exchange({"A", "A", 10s}), Catch::Contains("with itself"));
    CHECK_THROWS_WITH(hv.exchange({"A", "Z", 10s}), Catch::Contains("unknown LPAR 'Z'"));
    auto after = hv.storage_table();
    REQUIRE(after.size() == before.size());
    for (std::size_t i = 0; i < after.size(); ++i) CHECK(after[i].origin == before[i].origin);
    require_clean_rounds(hv, "A", 1);
}

TEST_CASE("the patent's Fig. 3 -> Fig. 4 flow: svp grow LPAR1 64 moves LPAR2 and expands LPAR1",
          "[kvm][grow]") {
    Hypervisor hv(fig3a_config(), test::firmware_options());
    require_clean_rounds(hv, "LPAR1", 1);
    require_clean_rounds(hv, "LPAR2", 1);
    auto plan = hv.plan_grow("LPAR1", 64);
    REQUIRE(plan.possible);
    REQUIRE(plan.steps.size() == 1);
    CHECK(plan.steps[0].lpar == "LPAR2");
    CHECK(plan.steps[0].to_mib == 192);
    CHECK(origin_mib_of(hv, "LPAR2") == 128);  // planning changes nothing

    // EXPAND alone is refused while LPAR2 sits right above LPAR1, and changes nothing.
    CHECK_THROWS_WITH(hv.expand({"LPAR1", 64}), Catch::Contains("overlaps LPAR2"));
    CHECK(hv.storage_table()[0].size == 128 * kMiB);

    auto grown = hv.grow({"LPAR1", 64}, control::MvstorMode::Live);
    CHECK(grown.plan.carried_out);
    REQUIRE(grown.plan.moves.size() == 1);
    CHECK(grown.plan.moves[0].mode == "live");
    CHECK(grown.expansion.old_size_mib == 128);
    CHECK(grown.expansion.new_size_mib == 192);
    CHECK(grown.expansion.plugged_mib == 64);
    auto table = hv.storage_table();
    CHECK(table[0].size == 192 * kMiB);  // Fig. 4B: LPAR1 0-192
    CHECK(table[0].gap == 0);
    CHECK(table[1].origin == ArenaOffset{192 * kMiB});
    CHECK(table[1].gap == 61 * kMiB);
    // LPAR1's firmware fills and verifies the 64 MiB it plugged; LPAR2 never noticed.
    require_plugged_and_verified(hv, "LPAR1", 64);
    require_clean_rounds(hv, "LPAR1", 1);
    require_clean_rounds(hv, "LPAR2", 2);

    // Shrink gives the top back, scrubbed; an expand beyond the maximum is refused.
    auto shrunk = hv.shrink({"LPAR1", 32});
    CHECK(shrunk.new_size_mib == 160);
    CHECK(hv.storage_table()[0].gap == 32 * kMiB);
    auto freed = hv.arena().bytes({{160 * kMiB}, 32 * kMiB});
    CHECK(std::all_of(freed.begin(), freed.end(), [](std::uint8_t b) { return b == 0; }));
    require_plugged_and_verified(hv, "LPAR1", 32);
    CHECK_THROWS_WITH(hv.expand({"LPAR1", 128}), Catch::Contains("more than its maximum"));
    CHECK_THROWS_WITH(hv.expand({"LPAR2", 2}), Catch::Contains("no virtio-mem region"));
    // The expanded LPAR moves like any other, the plugged part with it.
    CHECK(hv.mvstor({"LPAR1", 2, 10s}).new_origin_mib == 2);
    require_plugged_and_verified(hv, "LPAR1", 32);
    require_clean_rounds(hv, "LPAR1", 1);

    auto impossible = hv.plan_grow("LPAR2", 200);
    CHECK_FALSE(impossible.possible);
    CHECK_THAT(impossible.reason, Catch::Contains("missing"));
}

TEST_CASE("storage.grow gathers the room from two moves in a four-LPAR layout", "[kvm][grow]") {
    // W 0-16, X 16-32, free 32-40, Y 40-56, free 56-64, Z 64-96, free 96-128.
    auto w = test::firmware_lpar("W", 0, 16, 1);
    w.max_size_mib = 64;
    SystemConfig config{128,
                        {w, test::firmware_lpar("X", 16, 16, 1),
                         test::firmware_lpar("Y", 40, 16, 1), test::firmware_lpar("Z", 64, 32, 1)}};
    Hypervisor hv(config, test::firmware_options());
    for (const char* name : {"W", "X", "Y", "Z"}) require_clean_rounds(hv, name, 1);
    auto done = hv.grow({"W", 32}, control::MvstorMode::StopAndCopy);
    CHECK(done.plan.moves.size() >= 2);
    CHECK(done.expansion.new_size_mib == 48);
    auto table = hv.storage_table();
    CHECK(table[0].lpar == "W");
    CHECK(table[0].size == 48 * kMiB);
    require_plugged_and_verified(hv, "W", 32);
    for (const char* name : {"W", "X", "Y", "Z"}) require_clean_rounds(hv, name, 2);
}
