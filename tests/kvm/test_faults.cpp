// Nothing lost, under injected faults (util/fault.hpp) and real KVM: each step of MVSTOR (both
// modes), EXCHANGE, EXPAND and shrink is made to fail in turn. After each, the storage invariant
// holds (test::require_storage_invariant), and every LPAR either runs clean at its old or new
// origin, its firmware verifying every word and key, or is fenced, holding what it may occupy,
// until it is deactivated and its storage given to another LPAR. Cancels are forced with a
// held step, not hoped for with a sleep.
#include <catch2/catch.hpp>

#include <future>
#include <regex>
#include <thread>

#include "devices/virtio/virtio_mem.hpp"
#include "lpar/hypervisor.hpp"
#include "support/guest_console.hpp"
#include "support/lpar_checks.hpp"
#include "support/storage_invariant.hpp"
#include "util/error.hpp"
#include "util/fault.hpp"

using namespace lparvisor;
using namespace std::chrono_literals;
using test::origin_mib_of;
using test::require_clean_rounds;
using test::require_plugged_and_verified;
using test::require_storage_invariant;

namespace {

// Disarms every point when a test case ends, even a failing one.
struct Faults {
    Faults() { fault::disarm_all(); }
    ~Faults() { fault::disarm_all(); }
};

control::MvstorRequest request(const std::string& lpar, std::uint64_t origin, bool live) {
    control::MvstorRequest r{lpar, origin, 10s};
    if (live) r.mode = control::MvstorMode::Live;
    return r;
}

control::LparStatus row(Hypervisor& hv, const std::string& name) {
    for (auto& l : hv.list().lpars)
        if (l.name == name) return l;
    FAIL("no LPAR " << name);
    return {};
}

// Arms `point` (its nth hit), runs the move, and requires it to fail with `expect` in the message
// and to leave the LPAR clean at its old origin.
void require_move_undone(Hypervisor& hv, const std::string& lpar, std::uint64_t origin, bool live,
                         const char* point, unsigned nth, const char* expect) {
    INFO((live ? "live" : "stop-and-copy")
         << " MVSTOR " << lpar << " -> " << origin << " MiB, fault at " << point << "@" << nth);
    const auto before = origin_mib_of(hv, lpar);
    fault::arm(point, fault::Action::Fail, nth);
    CHECK_THROWS_WITH(hv.mvstor(request(lpar, origin, live)),
                      Catch::Contains(expect) && Catch::Contains("runs on at its old origin"));
    CHECK(fault::fired(point) == 1);
    fault::disarm(point);
    require_storage_invariant(hv);
    CHECK(origin_mib_of(hv, lpar) == before);
    CHECK(row(hv, lpar).state == "running");
    require_clean_rounds(hv, lpar, 2);
}

}  // namespace

TEST_CASE("a failed step of an MVSTOR is undone: the LPAR runs on at its old origin",
          "[kvm][faults]") {
    Faults faults;
    // A rewrites 8 MiB as fast as it can; B sits above the gap A slides into.
    SystemConfig config{
        160,
        {test::firmware_lpar("A", 0, 32, 2, 0, 8), test::firmware_lpar("B", 96, 32, 1, 25000, 4)}};
    Hypervisor hv(config, test::firmware_options());
    require_clean_rounds(hv, "A", 1);
    require_clean_rounds(hv, "B", 1);
    require_storage_invariant(hv);

    // Stop-and-copy, overlapping: the copy fails after its first batch (part of the old range is
    // already overwritten), or the re-map fails after the whole copy; both are undone in the
    // same stop.
    require_move_undone(hv, "A", 8, false, "mvstor.copy", 1, "the copy was undone");
    require_move_undone(hv, "A", 8, false, "mvstor.remap", 1, "the copy was undone");
    // Devices that do not drain: abandoned before anything is copied.
    require_move_undone(hv, "A", 8, false, "drain", 1, "still busy");

    // Live, up 8 MiB in 4 chunks of 8 MiB: a failure before the first stop changes nothing; one
    // after chunks have moved moves them back.
    require_move_undone(hv, "A", 8, true, "mvstor.precopy", 1, "injected fault");
    require_move_undone(hv, "A", 8, true, "mvstor.remap", 1, "MVSTOR failed in its first stop");
    require_move_undone(hv, "A", 8, true, "mvstor.remap", 3, "they were moved back");
    require_move_undone(hv, "A", 8, true, "mvstor.copy", 2, "they were moved back");
    require_move_undone(hv, "A", 8, true, "mvstor.harvest", 1, "injected fault");

    // A chunk's stop whose devices stay busy once is retried; the move completes.
    fault::arm("drain", fault::Action::Fail, 2);
    auto retried = hv.mvstor(request("A", 8, true));
    CHECK(fault::fired("drain") == 1);
    CHECK(retried.new_origin_mib == 8);
    fault::disarm("drain");
    require_storage_invariant(hv);
    require_clean_rounds(hv, "A", 2);

    // And after all that, both still move normally, both ways.
    CHECK(hv.mvstor(request("A", 0, false)).new_origin_mib == 0);
    CHECK(hv.mvstor(request("B", 40, true)).new_origin_mib == 40);
    require_storage_invariant(hv);
    require_clean_rounds(hv, "A", 2);
    require_clean_rounds(hv, "B", 2);
}

TEST_CASE("a cancel in every phase before the first stop changes nothing", "[kvm][faults]") {
    Faults faults;
    SystemConfig config{160, {test::firmware_lpar("A", 0, 32, 1, 0, 8)}};
    Hypervisor hv(config, test::firmware_options());
    require_clean_rounds(hv, "A", 1);
    struct Phase {
        const char* point;
        unsigned nth;
        bool live;
    };
    // Populating the target (stop-and-copy), the first pre-copy round, a later round.
    for (const auto& p : {Phase{"mvstor.populate", 1, false}, Phase{"mvstor.precopy", 1, true},
                          Phase{"mvstor.precopy", 2, true}}) {
        INFO("cancel held at " << p.point << "@" << p.nth);
        fault::arm(p.point, fault::Action::Hold, p.nth);
        auto move =
            std::async(std::launch::async, [&] { return hv.mvstor(request("A", 64, p.live)); });
        REQUIRE(fault::wait_until_held(p.point, 120s));
        CHECK(row(hv, "A").state == "relocating");
        hv.cancel_mvstor("A");
        fault::release(p.point);
        CHECK_THROWS_WITH(move.get(), Catch::Contains("cancelled by the operator") &&
                                          Catch::Contains("runs on at its old origin 0 MiB"));
        fault::disarm(p.point);
        CHECK(origin_mib_of(hv, "A") == 0);
        require_storage_invariant(hv);
        if (!hv.arena().hugetlb()) CHECK_FALSE(hv.arena().is_populated(ArenaOffset{64 * kMiB}));
        require_clean_rounds(hv, "A", 2);
    }
    // Too late once the final stop has begun: refused, and the move completes.
    CHECK(hv.mvstor(request("A", 64, true)).new_origin_mib == 64);
    CHECK_THROWS_WITH(hv.cancel_mvstor("A"), Catch::Contains("no MVSTOR of A is running"));
    require_clean_rounds(hv, "A", 2);
}

TEST_CASE(
    "when undoing fails too, the LPAR is fenced, holds its storage, and only deactivation "
    "frees it",
    "[kvm][faults]") {
    Faults faults;
    SystemConfig config{
        256,
        {test::firmware_lpar("A", 0, 32, 1, 0, 8), test::firmware_lpar("B", 128, 32, 1, 25000, 4)}};
    Hypervisor hv(config, test::firmware_options());
    require_clean_rounds(hv, "A", 1);
    require_clean_rounds(hv, "B", 1);

    // A live move up by 16 MiB (two chunks) fails at its second re-map, and moving the first
    // chunk back fails as well.
    fault::arm("mvstor.remap", fault::Action::Fail, 2);
    fault::arm("mvstor.rollback");
    CHECK_THROWS_WITH(hv.mvstor(request("A", 16, true)),
                      Catch::Contains("moving them back failed too") && Catch::Contains("fenced"));
    fault::disarm_all();
    auto fenced = row(hv, "A");
    CHECK(fenced.state == "failed");
    CHECK_THAT(fenced.reason, Catch::Contains("MVSTOR"));
    CHECK(test::failed_lpars(hv) == std::vector<std::string>{"A"});
    require_storage_invariant(hv);  // its window lies inside what it holds: 0-48 MiB
    auto rows = hv.storage_table();
    REQUIRE(rows.front().lpar == "A");
    CHECK(rows.front().origin == ArenaOffset{0});
    CHECK(rows.front().size == 48 * kMiB);

    // Nothing more may be done with it, and nothing may be placed on what it holds.
    CHECK_THROWS_WITH(hv.start("A"), Catch::Contains("fenced"));
    CHECK_THROWS_WITH(hv.mvstor(request("A", 64, false)), Catch::Contains("fenced"));
    CHECK_THROWS_WITH(hv.reset("A"), Catch::Contains("fenced"));
    hv.define(test::firmware_lpar("C", 32, 16));
    CHECK_THROWS_WITH(hv.activate("C"), Catch::Contains("overlaps A"));
    require_clean_rounds(hv, "B", 2);  // the neighbour never noticed

    // Deactivation scrubs and frees all of it; the storage goes to another LPAR, which runs.
    hv.deactivate("A");
    require_storage_invariant(hv);
    hv.activate("C");
    require_storage_invariant(hv);
    require_clean_rounds(hv, "C", 2);
    hv.activate("A");  // at its defined origin 0 again, freshly IPLed
    require_clean_rounds(hv, "A", 2);

    // EXCHANGE: a failed second re-map is undone; when undoing fails, both are fenced.
    fault::arm("exchange.second_remap");
    CHECK_THROWS_WITH(hv.exchange({"A", "B"}), Catch::Contains("undone"));
    fault::disarm_all();
    require_storage_invariant(hv);
    CHECK(origin_mib_of(hv, "A") == 0);
    CHECK(origin_mib_of(hv, "B") == 128);
    require_clean_rounds(hv, "A", 2);
    require_clean_rounds(hv, "B", 2);
    for (const char* point : {"exchange.copy", "exchange.first_remap"}) {
        INFO(point);
        fault::arm(point);
        CHECK_THROWS_WITH(hv.exchange({"A", "B"}), Catch::Contains("undone"));
        fault::disarm_all();
        require_storage_invariant(hv);
        require_clean_rounds(hv, "A", 1);
        require_clean_rounds(hv, "B", 1);
    }
    fault::arm("exchange.first_remap");
    fault::arm("exchange.rollback");
    CHECK_THROWS_WITH(hv.exchange({"A", "B"}), Catch::Contains("both are fenced"));
    fault::disarm_all();
    CHECK(row(hv, "A").state == "failed");
    CHECK(row(hv, "B").state == "failed");
    require_storage_invariant(hv);
    hv.deactivate("A");
    hv.deactivate("B");
    require_storage_invariant(hv);
    CHECK(hv.storage_table().size() == 1);  // C alone
    require_clean_rounds(hv, "C", 1);
}

TEST_CASE("a fault serving one LPAR's vCPU fences that LPAR and nothing else", "[kvm][faults]") {
    Faults faults;
    SystemConfig config{128, {test::firmware_lpar("A", 0, 16), test::firmware_lpar("B", 32, 16)}};
    Hypervisor hv(config, test::firmware_options());
    require_clean_rounds(hv, "A", 1);
    require_clean_rounds(hv, "B", 1);
    // B's vCPU is held out of the way, so the next exit served is one of A's.
    hv.stop("B");
    fault::arm("vcpu.exit");
    auto deadline = std::chrono::steady_clock::now() + 120s;
    while (row(hv, "A").state != "failed" && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(10ms);
    fault::disarm_all();
    auto a = row(hv, "A");
    CHECK(a.state == "failed");
    CHECK_THAT(a.reason, Catch::Contains("internal error serving vCPU 0") &&
                             Catch::Contains("injected fault at vcpu.exit"));
    hv.start("B");
    require_clean_rounds(hv, "B", 2);
    require_storage_invariant(hv);
    hv.deactivate("A");
    hv.activate("A");
    require_clean_rounds(hv, "A", 2);
}

TEST_CASE("EXPAND and shrink that fail change nothing", "[kvm][faults]") {
    Faults faults;
    auto w = test::firmware_lpar("W", 0, 32);
    w.max_size_mib = 96;
    SystemConfig config{192, {w}};
    Hypervisor hv(config, test::firmware_options());
    require_clean_rounds(hv, "W", 1);

    // The guest seems not to plug: everything goes back as it was.
    fault::arm("expand.plug");
    CHECK_THROWS_WITH(hv.expand({"W", 32, 10s}), Catch::Contains("nothing changed"));
    fault::disarm_all();
    require_storage_invariant(hv);
    CHECK(hv.storage_table()[0].size == 32 * kMiB);
    require_clean_rounds(hv, "W", 1);

    auto grown = hv.expand({"W", 32, 120s});
    CHECK(grown.new_size_mib == 64);
    require_plugged_and_verified(hv, "W", 32);
    require_storage_invariant(hv);

    // Unmapping the top fails: the LPAR keeps its storage, and the guest plugs it back.
    fault::arm("shrink.unmap");
    CHECK_THROWS_WITH(hv.shrink({"W", 32, 120s}), Catch::Contains("its storage stays 64 MiB"));
    fault::disarm_all();
    require_storage_invariant(hv);
    CHECK(hv.storage_table()[0].size == 64 * kMiB);
    CHECK(hv.lpar("W").memory_device()->wait_for_plugged(32 * kMiB, 120s));
    require_clean_rounds(hv, "W", 2);

    auto shrunk = hv.shrink({"W", 32, 120s});
    CHECK(shrunk.new_size_mib == 32);
    require_storage_invariant(hv);
    require_clean_rounds(hv, "W", 2);
}
