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
        // One stop per chunk, or fewer where small chunks were batched into one stop.
        std::uint64_t chunks_moved = 0;
        for (const auto& stop : result.stops) chunks_moved += stop.chunks;
        CHECK(chunks_moved == (size + chunk - 1) / chunk);
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

namespace {

// What Lpar::dirty_log_method() must say on this KVM without the fault: asked of a fresh VM.
std::string offered_dirty_log() {
    kvm::System system;
    kvm::Vm vm(system);
    return kvm::Vm::name_of(vm.enable_manual_dirty_log());
}

// Every stop's phases fit inside its pause (each is truncated to whole microseconds).
void check_stop_timings(const control::MvstorResult& result) {
    REQUIRE(result.stops.size() == result.stops_us.size());
    for (std::size_t i = 0; i < result.stops.size(); ++i) {
        const auto& s = result.stops[i];
        INFO("stop " << i);
        CHECK(s.pause_us == result.stops_us[i]);
        CHECK(s.stop_vcpus_us + s.drain_us + s.harvest_us + s.copy_us + s.keys_us + s.remap_us +
                  s.resume_us <=
              s.pause_us + 7);
    }
}

}  // namespace

TEST_CASE("live MVSTOR on KVM's manual dirty-log protection and on the legacy log", "[kvm][live]") {
    // Both logs must lose no write: A rewrites an 8 MiB working set as fast as it can while it
    // moves up in chunks, then to a disjoint target; the firmware verifies every word and key.
    const std::string offered = offered_dirty_log();
    for (const bool force_legacy : {false, true}) {
        const std::string expected = force_legacy ? "legacy" : offered;
        INFO("dirty log " << expected);
        if (force_legacy) fault::arm("kvm.manual_dirty_log");
        SystemConfig config{160, {test::firmware_lpar("A", 0, 48, 2, 0, 8)}};
        Hypervisor hv(config, test::firmware_options());
        fault::disarm_all();
        require_clean_rounds(hv, "A", 1);
        for (const std::uint64_t origin : {16, 100}) {  // 3 chunks of 16 MiB; then disjoint
            auto result = hv.mvstor(live("A", origin));
            CHECK(result.dirty_log == expected);
            CHECK(result.stops.size() == (origin == 16 ? 3 : 1));
            check_stop_timings(result);
            require_clean_rounds(hv, "A", 2);
        }
        // The dirty log is off after each move: stop-and-copy reports no dirty log.
        auto plain = hv.mvstor({"A", 0, 10s});
        CHECK(plain.dirty_log.empty());
        check_stop_timings(plain);
        REQUIRE(plain.stops.size() == 1);
        CHECK(plain.stops[0].bytes == plain.bytes_copied);
        require_clean_rounds(hv, "A", 1);
    }
}

TEST_CASE("a live stop without pre-copy copies its whole chunk, and its timings say so",
          "[kvm][live]") {
    SystemConfig config{96, {test::firmware_lpar("A", 0, 32, 1, 0, 16)}};
    Hypervisor hv(config, test::firmware_options());
    require_clean_rounds(hv, "A", 1);
    auto request = live("A", 16);  // 2 chunks of 16 MiB, no time for pre-copy
    request.policy.max_total = std::chrono::milliseconds(0);
    auto result = hv.mvstor(request);
    check_stop_timings(result);
    std::uint64_t in_stops = 0;
    for (const auto& stop : result.stops) {
        CHECK(stop.harvest_us == 0);  // nothing was pre-copied: no log to read
        in_stops += stop.bytes;
    }
    CHECK(in_stops == result.bytes_copied);
    CHECK(result.bytes_recopied == 0);
    require_clean_rounds(hv, "A", 2);
}

TEST_CASE("the dirty log sees every guest write after a harvest, on both logs", "[kvm][live]") {
    // The firmware rewrites an 8 MiB working set after each verification, so a harvest two
    // verified rounds after the previous one must find at least those pages, whether that one
    // re-protected just the range (manual protection) or the whole slot (legacy). A log that
    // missed writes would find fewer.
    constexpr std::uint64_t kPages = 32 * kMiB / kPageSize;
    const std::uint64_t working_set_pages = 8 * kMiB / kPageSize;
    for (const bool force_legacy : {false, true}) {
        INFO((force_legacy ? "legacy" : "manual protection where offered"));
        if (force_legacy) fault::arm("kvm.manual_dirty_log");
        SystemConfig config{64, {test::firmware_lpar("A", 0, 32, 1, 0, 8)}};
        Hypervisor hv(config, test::firmware_options());
        fault::disarm_all();
        require_clean_rounds(hv, "A", 1);
        Lpar& lpar = hv.lpar("A");
        DirtyBitmap dirty(lpar.window().size());
        lpar.set_dirty_tracking(true);
        lpar.harvest_dirty(dirty, 0, kPages);  // everything re-protected from here
        // Two more verified rounds: the working set was rewritten in between (the firmware
        // rewrites it after each verification).
        require_clean_rounds(hv, "A", 2);
        lpar.harvest_dirty(dirty, 0, kPages);
        CHECK(dirty.count(0, kPages) >= working_set_pages);
        lpar.set_dirty_tracking(false);
    }
}

TEST_CASE("a small slide batches whole chunks into the stops the target pause allows",
          "[kvm][live]") {
    // 32 MiB up by 4 MiB: 8 chunks. The batch is sized by the target pause and the measured
    // bandwidth; the two ends are forced by the setting, not by this machine's speed.
    SystemConfig config{64, {test::firmware_lpar("A", 0, 32, 1, 25000, 4)}};
    Hypervisor hv(config, test::firmware_options());
    require_clean_rounds(hv, "A", 1);
    // A target of an hour: the first chunk is pre-copied, the seven after it go in its stop.
    auto request = live("A", 4);
    request.policy.target_pause = std::chrono::hours(1);
    auto result = hv.mvstor(request);
    check_stop_timings(result);
    REQUIRE(result.stops.size() == 1);
    CHECK(result.stops[0].chunks == 8);
    // Six of the whole chunks lie in the firmware's test area, filled at boot (the lowest may
    // have holes on shmem, which are punched, not copied).
    CHECK(result.stops[0].bytes >= 24 * kMiB);
    require_clean_rounds(hv, "A", 2);
    // A target of a microsecond: no room for a whole chunk, one stop each; back down.
    request = live("A", 0);
    request.policy.target_pause = std::chrono::microseconds(1);
    result = hv.mvstor(request);
    check_stop_timings(result);
    CHECK(result.stops.size() == 8);
    for (const auto& stop : result.stops) CHECK(stop.chunks == 1);
    require_clean_rounds(hv, "A", 2);
}
