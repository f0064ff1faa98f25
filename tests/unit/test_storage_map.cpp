#include <catch2/catch.hpp>

#include "storage/storage_map.hpp"
#include "util/error.hpp"

using namespace lparvisor;

namespace {

constexpr std::uint64_t MiB = kMiB;

StorageMap fig3a() {
    StorageMap map(509 * MiB);
    map.add("LPAR1", {{0}, 128 * MiB});
    map.add("LPAR2", {{128 * MiB}, 256 * MiB});
    return map;
}

// Every refused request must leave the map exactly as it was.
void require_refused(StorageMap& map, const std::string& lpar, std::uint64_t origin_mib,
                     ErrorKind kind, const std::string& message_part) {
    auto before = map.rows();
    try {
        map.move(lpar, ArenaOffset{origin_mib * MiB});
        FAIL("move of " << lpar << " to " << origin_mib << " MiB was accepted");
    } catch (const Error& e) {
        INFO(e.what());
        CHECK(e.kind() == kind);
        CHECK_THAT(e.what(), Catch::Contains(message_part));
    }
    auto after = map.rows();
    REQUIRE(after.size() == before.size());
    for (std::size_t i = 0; i < after.size(); ++i) {
        CHECK(after[i].lpar == before[i].lpar);
        CHECK(after[i].origin == before[i].origin);
        CHECK(after[i].size == before[i].size);
    }
}

}  // namespace

TEST_CASE("Fig. 3A table: origins, sizes, gaps and free storage", "[storage_map]") {
    auto map = fig3a();
    auto rows = map.rows();
    REQUIRE(rows.size() == 2);
    CHECK(rows[0].lpar == "LPAR1");
    CHECK(rows[0].origin == ArenaOffset{0});
    CHECK(rows[0].size == 128 * MiB);
    CHECK(rows[0].gap == 0);
    CHECK(rows[1].lpar == "LPAR2");
    CHECK(rows[1].origin == ArenaOffset{128 * MiB});
    CHECK(rows[1].gap == 125 * MiB);
    CHECK(map.free_bytes() == 125 * MiB);
}

TEST_CASE("MVSTOR LPAR2 192 gives Fig. 4A", "[storage_map]") {
    auto map = fig3a();
    map.move("LPAR2", ArenaOffset{192 * MiB});
    auto rows = map.rows();
    CHECK(rows[0].gap == 64 * MiB);
    CHECK(rows[1].origin == ArenaOffset{192 * MiB});
    CHECK(rows[1].gap == 61 * MiB);
    CHECK(map.free_bytes() == 125 * MiB);
}

TEST_CASE("moves down and overlapping its own old range are allowed", "[storage_map]") {
    auto map = fig3a();
    map.move("LPAR2", ArenaOffset{250 * MiB});
    map.move("LPAR2", ArenaOffset{130 * MiB});
    CHECK(map.find("LPAR2").range.start.value == 130 * MiB);
    map.move("LPAR1", ArenaOffset{2 * MiB});  // overlaps its own range only
    CHECK(map.rows()[0].origin == ArenaOffset{2 * MiB});
}

TEST_CASE("refused requests name the problem and change nothing", "[storage_map]") {
    auto map = fig3a();
    SECTION("unknown LPAR") {
        require_refused(map, "LPAR9", 0, ErrorKind::NotFound,
                        "unknown LPAR 'LPAR9' (defined: LPAR1, LPAR2)");
    }
    SECTION("outside main storage") {
        require_refused(map, "LPAR2", 300, ErrorKind::Refused,
                        "LPAR2: target 300-556 MiB ends beyond main storage (509 MiB)");
    }
    SECTION("origin past the end") {
        require_refused(map, "LPAR1", 510, ErrorKind::Refused, "beyond main storage");
    }
    SECTION("misaligned") {
        require_refused(map, "LPAR2", 193, ErrorKind::InvalidArgument,
                        "origin 193 MiB is not a multiple of 2 MiB");
    }
    SECTION("overlapping another LPAR") {
        require_refused(map, "LPAR2", 100, ErrorKind::Refused,
                        "LPAR2: target 100-356 MiB overlaps LPAR1 at 0-128 MiB");
    }
    SECTION("overlap from below") {
        require_refused(map, "LPAR1", 200, ErrorKind::Refused, "overlaps LPAR2 at 128-384 MiB");
    }
    SECTION("same origin") {
        require_refused(map, "LPAR2", 128, ErrorKind::InvalidArgument, "already at origin 128 MiB");
    }
}

TEST_CASE("adding areas: size 0, misaligned size, overlap and duplicates are refused",
          "[storage_map]") {
    auto map = fig3a();
    CHECK_THROWS_WITH(map.add("LPAR3", {{400 * MiB}, 0}),
                      Catch::Contains("LPAR3: size must be > 0"));
    CHECK_THROWS_WITH(map.add("LPAR3", {{400 * MiB}, 3 * MiB}),
                      Catch::Contains("size 3 MiB is not a multiple of 2 MiB"));
    CHECK_THROWS_WITH(map.add("LPAR3", {{380 * MiB}, 16 * MiB}), Catch::Contains("overlaps LPAR2"));
    CHECK_THROWS_WITH(map.add("LPAR2", {{400 * MiB}, 16 * MiB}), Catch::Contains("already exists"));
    CHECK(map.rows().size() == 2);
    map.add("LPAR3", {{400 * MiB}, 108 * MiB});
    CHECK(map.rows()[1].gap == 16 * MiB);
    CHECK(map.rows()[2].gap == 1 * MiB);
    CHECK(map.free_bytes() == 17 * MiB);
}

TEST_CASE("EXPAND grows an LPAR into the gap above it, and only there (Fig. 4A -> 4B)",
          "[storage_map]") {
    auto map = fig3a();
    // Fig. 3A: LPAR1 has no room above it; the refusal names LPAR2 and changes nothing.
    CHECK_THROWS_WITH(map.resize("LPAR1", 192 * MiB), Catch::Contains("overlaps LPAR2 at 128-384"));
    CHECK(map.find("LPAR1").range.size == 128 * MiB);
    map.move("LPAR2", ArenaOffset{192 * MiB});
    map.resize("LPAR1", 192 * MiB);
    auto rows = map.rows();
    CHECK(rows[0].size == 192 * MiB);
    CHECK(rows[0].gap == 0);
    CHECK(map.free_bytes() == 61 * MiB);
    // LPAR2 cannot grow past the end of main storage (61 MiB free above it: 62 is too much).
    CHECK_THROWS_WITH(map.resize("LPAR2", 318 * MiB), Catch::Contains("ends beyond main storage"));
    CHECK_THROWS_WITH(map.resize("LPAR2", 257 * MiB), Catch::Contains("not a multiple of 2 MiB"));
    // Shrinking gives the top back.
    map.resize("LPAR1", 128 * MiB);
    CHECK(map.rows()[0].gap == 64 * MiB);
    CHECK(map.free_bytes() == 125 * MiB);
}

TEST_CASE("a fenced LPAR holds every range it may occupy until it is removed", "[storage_map]") {
    auto map = fig3a();  // LPAR1 0-128, LPAR2 128-384, 125 MiB free above
    // Half-moved up by 64 MiB (overlapping): the holding becomes the hull 128-448.
    map.hold("LPAR2", {{384 * MiB}, 64 * MiB});
    REQUIRE(map.ranges_of("LPAR2").size() == 1);
    CHECK(map.ranges_of("LPAR2")[0].start.value == 128 * MiB);
    CHECK(map.ranges_of("LPAR2")[0].size == 320 * MiB);
    CHECK(map.free_bytes() == 61 * MiB);
    // Nothing else may be placed there, and a hold may not reach another LPAR.
    CHECK_THROWS_WITH(map.add("LPAR3", {{400 * MiB}, 16 * MiB}), Catch::Contains("overlaps LPAR2"));
    CHECK_THROWS_WITH(map.hold("LPAR1", {{120 * MiB}, 16 * MiB}),
                      Catch::Contains("overlaps LPAR2"));
    CHECK(map.ranges_of("LPAR1").size() == 1);

    // A disjoint half-move: a second area of the same name, shown as its own row.
    StorageMap disjoint(512 * MiB);
    disjoint.add("A", {{0}, 64 * MiB});
    disjoint.add("B", {{64 * MiB}, 64 * MiB});
    disjoint.hold("A", {{256 * MiB}, 64 * MiB});
    CHECK(disjoint.ranges_of("A").size() == 2);
    CHECK(disjoint.rows().size() == 3);
    CHECK(disjoint.free_bytes() == 320 * MiB);
    disjoint.remove("A");
    CHECK_FALSE(disjoint.contains("A"));
    CHECK(disjoint.free_bytes() == 448 * MiB);
}
