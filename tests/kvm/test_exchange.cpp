// EXCHANGE (claim 7) and making room for a growing LPAR (claim 6's first half) under real KVM,
// the firmware in every LPAR verifying its storage and keys throughout.
#include <catch2/catch.hpp>

#include <thread>

#include "lpar/hypervisor.hpp"
#include "support/lpar_checks.hpp"
#include "util/error.hpp"

using namespace lparvisor;
using namespace std::chrono_literals;
using test::origin_mib_of;
using test::require_clean_rounds;

TEST_CASE("EXCHANGE of equal and of unequal adjacent running LPARs", "[kvm][exchange]") {
    SystemConfig config{128,
                        {test::firmware_lpar("A", 0, 16, 1),
                         test::firmware_lpar("B", 32, 16, 2),
                         test::firmware_lpar("C", 64, 8, 1),
                         test::firmware_lpar("D", 72, 24, 1)}};
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

TEST_CASE("the patent's Fig. 3 -> Fig. 4 flow: room for LPAR1 to grow by 64 MiB", "[kvm][grow]") {
    Hypervisor hv(fig3a_config(), test::firmware_options());
    require_clean_rounds(hv, "LPAR1", 1);
    require_clean_rounds(hv, "LPAR2", 1);
    auto plan = hv.plan_grow("LPAR1", 64);
    REQUIRE(plan.possible);
    REQUIRE(plan.steps.size() == 1);
    CHECK(plan.steps[0].lpar == "LPAR2");
    CHECK(plan.steps[0].to_mib == 192);
    CHECK(origin_mib_of(hv, "LPAR2") == 128);  // planning changes nothing

    auto done = hv.make_room("LPAR1", 64, control::MvstorMode::Live);
    CHECK(done.carried_out);
    REQUIRE(done.moves.size() == 1);
    CHECK(done.moves[0].mode == "live");
    auto table = hv.storage_table();
    CHECK(table[0].gap == 64 * kMiB);  // Fig. 4A
    CHECK(table[1].origin == 192 * kMiB);
    CHECK(table[1].gap == 61 * kMiB);
    require_clean_rounds(hv, "LPAR2", 2);
    require_clean_rounds(hv, "LPAR1", 1);

    auto impossible = hv.plan_grow("LPAR1", 200);
    CHECK_FALSE(impossible.possible);
    CHECK_THAT(impossible.reason, Catch::Contains("missing"));
    CHECK_THROWS_WITH(hv.make_room("LPAR1", 200, control::MvstorMode::StopAndCopy),
                      Catch::Contains("no way to free 200 MiB"));
}

TEST_CASE("room gathered from two moves in a four-LPAR layout", "[kvm][grow]") {
    // W 0-16, X 16-32, free 32-40, Y 40-56, free 56-64, Z 64-96, free 96-128.
    SystemConfig config{128,
                        {test::firmware_lpar("W", 0, 16, 1),
                         test::firmware_lpar("X", 16, 16, 1),
                         test::firmware_lpar("Y", 40, 16, 1),
                         test::firmware_lpar("Z", 64, 32, 1)}};
    Hypervisor hv(config, test::firmware_options());
    for (const char* name : {"W", "X", "Y", "Z"}) require_clean_rounds(hv, name, 1);
    auto done = hv.make_room("W", 32, control::MvstorMode::StopAndCopy);
    CHECK(done.moves.size() >= 2);
    auto table = hv.storage_table();
    CHECK(table[0].lpar == "W");
    CHECK(table[0].gap >= 32 * kMiB);
    for (const char* name : {"W", "X", "Y", "Z"}) require_clean_rounds(hv, name, 2);
}
