// Live MVSTOR under real KVM: busy firmware LPARs moved while they run, overlapping
// (chunk by chunk) and disjoint, up and down; a move out of time for pre-copy falls back and is
// still correct; a cancelled live move changes nothing. The firmware verifies every word and key.
#include <catch2/catch.hpp>

#include <future>
#include <thread>

#include "lpar/hypervisor.hpp"
#include "support/lpar_checks.hpp"
#include "util/error.hpp"
#include "util/fault.hpp"

using namespace lparvisor;
using namespace std::chrono_literals;
using test::require_clean_rounds;

namespace {

control::MvstorRequest live(const std::string& lpar, std::uint64_t origin) {
    control::MvstorRequest request{lpar, origin, 10s};
    request.mode = control::MvstorMode::Live;
    return request;
}

}  // namespace

TEST_CASE("live MVSTOR of busy LPARs: overlapping in chunks and disjoint, up and down",
          "[kvm][live]") {
    // A rewrites an 8 MiB working set as fast as it can on 2 vCPUs; B is paced at 25 000 pages/s.
    SystemConfig config{
        192,
        {test::firmware_lpar("A", 0, 64, 2, 0, 8), test::firmware_lpar("B", 128, 32, 1, 25000, 8)}};
    Hypervisor hv(config, test::firmware_options());
    require_clean_rounds(hv, "A", 1);
    require_clean_rounds(hv, "B", 1);

    struct Case {
        std::string lpar;
        std::uint64_t origin;
    };
    // The expected number of stops is computed from the sizes below: one per chunk.
    for (const auto& c : std::vector<Case>{{"A", 16},      // up 16 MiB, overlapping: 4 chunks
                                           {"A", 6},       // down 10 MiB: 7 chunks
                                           {"B", 96},      // down 32 MiB: disjoint, 1 stop
                                           {"A", 30},      // up 24 MiB, overlapping: 3 chunks
                                           {"B", 130}}) {  // up 34 MiB: disjoint
        auto before = hv.list();
        std::uint64_t old_origin = 0, size = 0;
        for (const auto& l : before.lpars)
            if (l.name == c.lpar) old_origin = l.origin_mib, size = l.size_mib;
        INFO(c.lpar << ": " << old_origin << " -> " << c.origin);
        auto result = hv.mvstor(live(c.lpar, c.origin));
        CHECK(result.mode == "live");
        CHECK(result.new_origin_mib == c.origin);
        std::uint64_t delta = c.origin > old_origin ? c.origin - old_origin : old_origin - c.origin;
        std::uint64_t chunk = std::min(size, delta);
        CHECK(result.stops_us.size() == (size + chunk - 1) / chunk);
        CHECK(result.rounds >= result.stops_us.size());
        CHECK(result.bytes_copied > 0);
        CHECK_FALSE(result.policy_branch.empty());
        require_clean_rounds(hv, c.lpar, 2);
    }
    require_clean_rounds(hv, "A", 1);
    require_clean_rounds(hv, "B", 1);
    // Vacated storage is scrubbed.
    for (const auto& row : hv.storage_table()) {
        auto gap =
            hv.arena().bytes({row.origin + row.size,
                              std::min(row.gap, hv.arena().size() - row.origin.value - row.size)});
        CHECK(std::all_of(gap.begin(), gap.end(), [](std::uint8_t b) { return b == 0; }));
    }
}

TEST_CASE("a live move out of time for pre-copy falls back and is still correct", "[kvm][live]") {
    // The fallback is forced by the policy (no time at all for pre-copy), not hoped for from a
    // guest that dirties faster than this machine copies.
    SystemConfig config{96, {test::firmware_lpar("A", 0, 32, 1, 0, 16)}};
    Hypervisor hv(config, test::firmware_options());
    require_clean_rounds(hv, "A", 1);
    auto request = live("A", 40);  // disjoint: one chunk
    request.policy.max_total = std::chrono::milliseconds(0);
    auto result = hv.mvstor(request);
    INFO(result.policy_branch);
    CHECK(result.policy_branch.rfind("fallback: max_total (0 ms) reached before chunk 1 of 1", 0) ==
          0);
    CHECK(result.rounds == 0);
    CHECK(result.stops_us.size() == 1);
    CHECK(result.bytes_recopied == 0);
    require_clean_rounds(hv, "A", 2);
    // Overlapping, several chunks: each is copied whole in its own stop.
    request = live("A", 24);
    request.policy.max_total = std::chrono::milliseconds(0);
    result = hv.mvstor(request);
    CHECK(result.policy_branch.rfind("fallback", 0) == 0);
    CHECK(result.stops_us.size() == 2);  // 32 MiB in chunks of 16
    require_clean_rounds(hv, "A", 2);
}

TEST_CASE("a cancelled live move leaves everything as it was", "[kvm][live]") {
    SystemConfig config{1024, {test::firmware_lpar("BIG", 0, 512, 1, 0, 16)}};
    Hypervisor hv(config, test::firmware_options());
    require_clean_rounds(hv, "BIG", 1);
    // Held in its first pre-copy round, so the cancel lands before the stop on any machine.
    fault::arm("mvstor.precopy", fault::Action::Hold);
    auto move = std::async(std::launch::async, [&] { return hv.mvstor(live("BIG", 512)); });
    REQUIRE(fault::wait_until_held("mvstor.precopy", 120s));
    hv.cancel_mvstor("BIG");
    fault::release("mvstor.precopy");
    CHECK_THROWS_WITH(move.get(), Catch::Contains("cancelled by the operator"));
    fault::disarm_all();
    auto rows = hv.storage_table();
    REQUIRE(rows.size() == 1);
    CHECK(rows[0].origin == ArenaOffset{0});
    // Only shmem shows holes (hugetlbfs reports every page as data).
    if (!hv.arena().hugetlb()) CHECK_FALSE(hv.arena().is_populated(ArenaOffset{600 * kMiB}));
    require_clean_rounds(hv, "BIG", 2);
    // Dirty logging is off again: a later stop-and-copy move works as before.
    CHECK(hv.mvstor({"BIG", 2, 10s}).new_origin_mib == 2);
    require_clean_rounds(hv, "BIG", 1);
}
