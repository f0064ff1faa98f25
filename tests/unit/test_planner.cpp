#include <catch2/catch.hpp>

#include <map>
#include <optional>
#include <queue>
#include <random>
#include <set>

#include "storage/planner.hpp"
#include "storage/storage_map.hpp"
#include "util/error.hpp"

using namespace lparvisor;

namespace {

constexpr std::uint64_t MiB = kMiB;

StorageArea area(const std::string& name, std::uint64_t origin_mib, std::uint64_t size_mib) {
    return {name, {{origin_mib * MiB}, size_mib * MiB}};
}

// Replays the plan with StorageMap::move (which throws on any invalid step), then checks that
// the window above `lpar` is free, that the costs add up and that `lpar` never moved.
void check_replay(std::uint64_t main_storage, const std::vector<StorageArea>& areas,
                  const std::string& lpar, std::uint64_t extra, const GrowPlan& plan) {
    REQUIRE(plan.possible);
    StorageMap map(main_storage);
    for (const auto& a : areas) map.add(a.lpar, a.range);
    const ArenaRange grown = map.find(lpar).range;
    std::uint64_t copied = 0;
    for (const auto& step : plan.steps) {
        INFO("step " << step.lpar << " " << step.from.value / MiB << " -> " << step.to.value / MiB);
        CHECK(step.lpar != lpar);
        CHECK(map.find(step.lpar).range.start == step.from);
        CHECK(map.find(step.lpar).range.size == step.bytes);
        REQUIRE_NOTHROW(map.move(step.lpar, step.to));
        copied += step.bytes;
    }
    CHECK(copied == plan.bytes_copied);
    CHECK(map.find(lpar).range.start == grown.start);
    CHECK_FALSE(map.first_overlap({{grown.end()}, extra}, lpar).has_value());
}

// The true minimum: uniform-cost search over every layout reachable by valid single-LPAR moves
// to EVERY aligned origin (no candidate set), cost = bytes copied. Works in 2 MiB units.
std::optional<std::uint64_t> brute_force(std::uint64_t units, const std::vector<StorageArea>& areas,
                                         const std::string& lpar, std::uint64_t extra_units) {
    std::vector<std::uint64_t> size;
    std::vector<std::uint8_t> start;
    std::size_t grower = 0;
    for (const auto& a : areas) {
        if (a.lpar == lpar) grower = size.size();
        size.push_back(a.range.size / (2 * MiB));
        start.push_back(static_cast<std::uint8_t>(a.range.start.value / (2 * MiB)));
    }
    const std::uint64_t lo = start[grower] + size[grower];
    const std::uint64_t hi = lo + extra_units;
    if (hi > units) return std::nullopt;
    auto done = [&](const std::vector<std::uint8_t>& l) {
        for (std::size_t i = 0; i < l.size(); ++i)
            if (l[i] < hi && lo < l[i] + size[i]) return false;
        return true;
    };
    using Entry = std::pair<std::uint64_t, std::vector<std::uint8_t>>;
    std::priority_queue<Entry, std::vector<Entry>, std::greater<>> open;
    std::map<std::vector<std::uint8_t>, std::uint64_t> best;
    open.push({0, start});
    best[start] = 0;
    while (!open.empty()) {
        auto [cost, layout] = open.top();
        open.pop();
        if (best[layout] < cost) continue;
        if (done(layout)) return cost;
        for (std::size_t m = 0; m < layout.size(); ++m) {
            if (m == grower) continue;
            for (std::uint64_t o = 0; o + size[m] <= units; ++o) {
                if (o == layout[m]) continue;
                bool free = true;
                for (std::size_t i = 0; i < layout.size() && free; ++i)
                    if (i != m && o < layout[i] + size[i] && layout[i] < o + size[m]) free = false;
                if (!free) continue;
                auto next = layout;
                next[m] = static_cast<std::uint8_t>(o);
                std::uint64_t c = cost + size[m];
                auto it = best.find(next);
                if (it != best.end() && it->second <= c) continue;
                best[next] = c;
                open.push({c, next});
            }
        }
    }
    return std::nullopt;
}

}  // namespace

TEST_CASE("Fig. 3A: growing LPAR1 by 64 MiB moves LPAR2 to 192", "[planner]") {
    std::vector<StorageArea> fig3a{area("LPAR1", 0, 128), area("LPAR2", 128, 256)};
    auto plan = plan_grow(509 * MiB, fig3a, "LPAR1", 64 * MiB);
    REQUIRE(plan.possible);
    REQUIRE(plan.steps.size() == 1);
    CHECK(plan.steps[0].lpar == "LPAR2");
    CHECK(plan.steps[0].from == ArenaOffset{128 * MiB});
    CHECK(plan.steps[0].to == ArenaOffset{192 * MiB});
    CHECK(plan.steps[0].bytes == 256 * MiB);
    CHECK(plan.bytes_copied == 256 * MiB);
    check_replay(509 * MiB, fig3a, "LPAR1", 64 * MiB, plan);
}

TEST_CASE("storage already free above gives an empty plan", "[planner]") {
    std::vector<StorageArea> fig4a{area("LPAR1", 0, 128), area("LPAR2", 192, 256)};
    auto plan = plan_grow(509 * MiB, fig4a, "LPAR1", 64 * MiB);
    CHECK(plan.possible);
    CHECK(plan.steps.empty());
    CHECK(plan.bytes_copied == 0);
    // LPAR2 can take the 61 MiB above it (60 in 2 MiB units) without any move (Fig. 4B).
    plan = plan_grow(509 * MiB, fig4a, "LPAR2", 60 * MiB);
    CHECK(plan.possible);
    CHECK(plan.steps.empty());
}

TEST_CASE("a gap gathered from two moves", "[planner]") {
    SECTION("two 16 MiB gaps above: push the chain up") {
        // Free: 96-112 and 144-160; neither takes LPAR2 (32 MiB), so LPAR3 slides up 16 and
        // LPAR2 follows it by 32.
        std::vector<StorageArea> layout{area("LPAR4", 0, 16), area("LPAR1", 16, 48),
                                        area("LPAR2", 64, 32), area("LPAR3", 112, 32)};
        auto plan = plan_grow(160 * MiB, layout, "LPAR1", 32 * MiB);
        INFO(plan.reason);
        REQUIRE(plan.possible);
        REQUIRE(plan.steps.size() == 2);
        CHECK(plan.steps[0].lpar == "LPAR3");
        CHECK(plan.steps[0].to == ArenaOffset{128 * MiB});
        CHECK(plan.steps[1].lpar == "LPAR2");
        CHECK(plan.steps[1].to == ArenaOffset{96 * MiB});
        CHECK(plan.bytes_copied == 64 * MiB);
        check_replay(160 * MiB, layout, "LPAR1", 32 * MiB, plan);
    }
    SECTION("one LPAR far away, one pushed") {
        std::vector<StorageArea> layout{area("LPAR1", 0, 64), area("LPAR2", 64, 32),
                                        area("LPAR3", 112, 32), area("LPAR4", 160, 64)};
        // window 64-128: LPAR2 goes to 224-256, LPAR3 slides up to 128-160.
        auto plan = plan_grow(256 * MiB, layout, "LPAR1", 64 * MiB);
        INFO(plan.reason);
        REQUIRE(plan.possible);
        CHECK(plan.bytes_copied == 64 * MiB);
        CHECK(plan.steps.size() == 2);
        check_replay(256 * MiB, layout, "LPAR1", 64 * MiB, plan);
    }
    SECTION("moving a small LPAR below is cheaper than shifting a big chain") {
        std::vector<StorageArea> layout{area("LPAR3", 0, 16), area("LPAR1", 32, 64),
                                        area("LPAR2", 96, 16), area("LPAR4", 112, 128)};
        auto plan = plan_grow(256 * MiB, layout, "LPAR1", 16 * MiB);
        REQUIRE(plan.possible);
        REQUIRE(plan.steps.size() == 1);
        CHECK(plan.steps[0].lpar == "LPAR2");
        CHECK(plan.steps[0].to == ArenaOffset{16 * MiB});
        CHECK(plan.bytes_copied == 16 * MiB);
        check_replay(256 * MiB, layout, "LPAR1", 16 * MiB, plan);
    }
}

TEST_CASE("impossible plans say what is missing", "[planner]") {
    std::vector<StorageArea> fig3a{area("LPAR1", 0, 128), area("LPAR2", 128, 256)};
    auto plan = plan_grow(509 * MiB, fig3a, "LPAR1", 128 * MiB);
    CHECK_FALSE(plan.possible);
    CHECK(plan.steps.empty());
    CHECK_THAT(plan.reason, Catch::Contains("needs 128 MiB above LPAR1 (128-256 MiB)"));
    CHECK_THAT(plan.reason, Catch::Contains("only 125 MiB free (3 MiB missing)"));

    plan = plan_grow(509 * MiB, fig3a, "LPAR2", 128 * MiB);
    CHECK_FALSE(plan.possible);
    CHECK_THAT(plan.reason, Catch::Contains("main storage ends at 509 MiB (3 MiB missing)"));

    // 20 MiB free in total, but neither part of it can take LPAR2's 30 MiB.
    std::vector<StorageArea> split{area("LPAR3", 0, 30), area("LPAR1", 40, 20),
                                   area("LPAR2", 60, 30)};
    plan = plan_grow(100 * MiB, split, "LPAR1", 20 * MiB);
    CHECK_FALSE(plan.possible);
    CHECK_THAT(plan.reason, Catch::Contains("20 MiB is free in total"));
    CHECK_THAT(plan.reason, Catch::Contains("cannot be split between the 40 MiB below LPAR1"));
    CHECK_THAT(plan.reason, Catch::Contains("(10 MiB missing)"));
}

TEST_CASE("bad requests throw", "[planner]") {
    std::vector<StorageArea> fig3a{area("LPAR1", 0, 128), area("LPAR2", 128, 256)};
    CHECK_THROWS_MATCHES(
        plan_grow(509 * MiB, fig3a, "LPAR9", 64 * MiB), Error,
        Catch::Predicate<Error>([](const Error& e) { return e.kind() == ErrorKind::NotFound; }));
    CHECK_THROWS_WITH(plan_grow(509 * MiB, fig3a, "LPAR1", 0), Catch::Contains("must be > 0"));
    CHECK_THROWS_WITH(plan_grow(509 * MiB, fig3a, "LPAR1", 3 * MiB),
                      Catch::Contains("3 MiB is not a multiple of 2 MiB"));
    CHECK_THROWS_AS(plan_grow(509 * MiB, {area("A", 0, 64), area("B", 32, 64)}, "A", 2 * MiB),
                    Error);
}

TEST_CASE("sixteen LPARs plan quickly", "[planner]") {
    // 16 LPARs of 30-62 MiB with 2-6 MiB gaps: growing the first one needs a long chain pushed.
    std::vector<StorageArea> layout;
    std::uint64_t at = 0;
    for (int i = 0; i < 16; ++i) {
        std::uint64_t size = 30 + 2 * ((i * 7) % 17);
        layout.push_back(area("LPAR" + std::to_string(i + 1), at, size));
        at += size + 2 + 2 * (i % 3);
    }
    auto plan = plan_grow((at + 40) * MiB, layout, "LPAR1", 32 * MiB);
    INFO(plan.reason);
    REQUIRE(plan.possible);
    check_replay((at + 40) * MiB, layout, "LPAR1", 32 * MiB, plan);
}

TEST_CASE("plans are as cheap as an exhaustive search finds, on random small layouts",
          "[planner]") {
    std::mt19937 random(20240611);
    int compared = 0, impossible = 0;
    for (int round = 0; round < 400; ++round) {
        std::uint64_t units = std::uniform_int_distribution<std::uint64_t>(8, 20)(random);
        int count = std::uniform_int_distribution<int>(2, units <= 14 ? 5 : 4)(random);
        // Random disjoint placement: sizes 1-4 units at random free origins.
        std::vector<StorageArea> areas;
        std::vector<bool> used(units, false);
        for (int i = 0; i < count; ++i) {
            for (int attempt = 0; attempt < 20; ++attempt) {
                std::uint64_t size = std::uniform_int_distribution<std::uint64_t>(1, 4)(random);
                if (size > units) continue;
                std::uint64_t o =
                    std::uniform_int_distribution<std::uint64_t>(0, units - size)(random);
                bool free = true;
                for (std::uint64_t u = o; u < o + size; ++u) free = free && !used[u];
                if (!free) continue;
                for (std::uint64_t u = o; u < o + size; ++u) used[u] = true;
                areas.push_back(area("L" + std::to_string(i), o * 2, size * 2));
                break;
            }
        }
        if (areas.size() < 2) continue;
        auto grower =
            areas[std::uniform_int_distribution<std::size_t>(0, areas.size() - 1)(random)].lpar;
        std::uint64_t extra = std::uniform_int_distribution<std::uint64_t>(1, 4)(random);
        std::string layout_text;
        for (const auto& a : areas)
            layout_text += a.lpar + "@" + std::to_string(a.range.start.value / MiB) + "+" +
                           std::to_string(a.range.size / MiB) + " ";
        INFO("main storage " << units * 2 << " MiB, " << layout_text << "grow " << grower << " by "
                             << extra * 2 << " MiB");
        auto plan = plan_grow(units * 2 * MiB, areas, grower, extra * 2 * MiB);
        auto truth = brute_force(units, areas, grower, extra);
        INFO("planner: " << (plan.possible ? std::to_string(plan.bytes_copied / MiB) + " MiB"
                                           : plan.reason)
                         << ", exhaustive: "
                         << (truth ? std::to_string(*truth * 2) + " MiB" : "impossible"));
        REQUIRE(plan.possible == truth.has_value());
        if (!truth) {
            ++impossible;
            continue;
        }
        CHECK(plan.bytes_copied == *truth * 2 * MiB);
        check_replay(units * 2 * MiB, areas, grower, extra * 2 * MiB, plan);
        ++compared;
    }
    CHECK(compared > 200);
    WARN(compared << " plans compared with the exhaustive search, " << impossible
                  << " impossible cases agreed");
}
