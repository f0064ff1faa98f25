// The LPAR lifecycle (define, activate, stop, start, MVSTOR with events, reset, deactivate,
// remove) and cancelling an MVSTOR, with the firmware guests as witnesses.
#include <catch2/catch.hpp>

#include <algorithm>
#include <filesystem>
#include <future>
#include <mutex>
#include <thread>

#include <nlohmann/json.hpp>

#include "lpar/hypervisor.hpp"
#include "support/guest_console.hpp"
#include "support/lpar_checks.hpp"
#include "util/error.hpp"
#include "util/fault.hpp"

using namespace lparvisor;
using namespace std::chrono_literals;

namespace {

struct Recorder {
    std::mutex mutex;
    std::vector<control::Event> events;
    control::EventSink sink() {
        return [this](const control::Event& e) {
            std::lock_guard lock(mutex);
            events.push_back(e);
        };
    }
    std::vector<control::Event> of(const std::string& type) {
        std::lock_guard lock(mutex);
        std::vector<control::Event> found;
        for (const auto& e : events)
            if (e.type == type) found.push_back(e);
        return found;
    }
};

unsigned long rounds_of(Hypervisor& hv, const std::string& name) {
    return test::parse_firmware_console(hv.console(name, 64 * 1024)).min_round(1);
}

control::LparStatus row(Hypervisor& hv, const std::string& name) {
    for (const auto& l : hv.list().lpars)
        if (l.name == name) return l;
    FAIL("no row " << name);
    throw 0;
}

}  // namespace

TEST_CASE("define, activate, stop, start, MVSTOR with events, reset, deactivate, remove",
          "[kvm][lifecycle]") {
    Hypervisor hv({64, {test::firmware_lpar("A", 0, 16, 1)}}, test::firmware_options());
    Recorder recorder;
    auto subscription = hv.subscribe(recorder.sink());

    auto defined = hv.define({"B", std::nullopt, 16, 1, {}, 0, 0, 0});
    CHECK(defined.state == "defined");
    CHECK_FALSE(defined.has_storage);
    CHECK(hv.list().free_mib == 48);
    CHECK_THROWS_WITH(hv.define({"B", std::nullopt, 16, 1, {}, 0, 0, 0}),
                      Catch::Contains("already exists"));
    CHECK_THROWS_WITH(hv.define({"bad name", std::nullopt, 16, 1, {}, 0, 0, 0}),
                      Catch::Contains("name"));
    CHECK_THROWS_WITH(hv.define(test::firmware_lpar("C", 3, 16, 1)),
                      Catch::Contains("C: origin_mib: expected a multiple of 2 (2 MiB units)"));
    CHECK_THROWS_WITH(hv.console("B", 100), Catch::Contains("not active"));

    auto active = hv.activate("B");
    CHECK(active.state == "running");
    CHECK(active.origin_mib == 16);  // first fit, right after A
    CHECK(hv.list().free_mib == 32);
    CHECK_THROWS_WITH(hv.activate("B"), Catch::Contains("already active"));
    test::require_clean_rounds(hv, "B", 1);

    auto stopped = hv.stop("B");
    CHECK(stopped.state == "stopped");
    CHECK(stopped.reason == "operator stop");
    auto frozen = rounds_of(hv, "B");
    std::this_thread::sleep_for(500ms);
    CHECK(rounds_of(hv, "B") == frozen);  // its vCPUs really are parked
    CHECK(hv.start("B").state == "running");
    test::require_clean_rounds(hv, "B", 1);

    auto moved = hv.mvstor({"B", 40, 10s});
    CHECK(moved.new_origin_mib == 40);
    CHECK(recorder.of("mvstor.phase").size() == moved.phases.size());
    auto progress = recorder.of("mvstor.progress");
    REQUIRE_FALSE(progress.empty());
    auto last = nlohmann::json::parse(progress.back().data_json);
    CHECK(last["copied"] == 16 * kMiB);
    CHECK(last["total"] == 16 * kMiB);
    REQUIRE(recorder.of("mvstor.done").size() == 1);
    CHECK(nlohmann::json::parse(recorder.of("mvstor.done")[0].data_json)["new_origin_mib"] == 40);
    test::require_clean_rounds(hv, "B", 2);

    auto reset = hv.reset("B");
    CHECK(reset.origin_mib == 40);  // re-IPL in place
    CHECK(reset.state == "running");
    test::require_clean_rounds(hv, "B", 1);  // a fresh console: rounds count from 1 again

    auto config = nlohmann::json::parse(hv.system_config());
    CHECK(config["main_storage_mib"] == 64);
    REQUIRE(config["lpars"].size() == 2);
    CHECK(config["lpars"][1]["name"] == "B");
    CHECK(config["lpars"][1]["origin_mib"] == 40);
    CHECK_NOTHROW(parse_config(config));

    auto inactive = hv.deactivate("B");
    CHECK(inactive.state == "defined");
    CHECK(hv.list().free_mib == 48);
    auto freed = hv.arena().bytes({{40 * kMiB}, 16 * kMiB});
    CHECK(std::all_of(freed.begin(), freed.end(), [](std::uint8_t b) { return b == 0; }));
    CHECK_THROWS_WITH(hv.remove("A"), Catch::Contains("deactivate it first"));
    hv.remove("B");
    CHECK_THROWS_AS(hv.activate("B"), Error);
    CHECK(hv.list().lpars.size() == 1);

    std::vector<std::string> changes;
    for (const auto& e : recorder.of("lpar.state")) {
        auto data = nlohmann::json::parse(e.data_json);
        if (e.lpar == "B")
            changes.push_back(data["state"].get<std::string>() + "/" +
                              data["reason"].get<std::string>());
    }
    CHECK(changes == std::vector<std::string>{"defined/defined", "running/activated",
                                              "stopped/operator stop", "running/", "running/reset",
                                              "defined/deactivated", "removed/removed"});
    test::require_clean_rounds(hv, "A", 1);  // the neighbour never noticed
}

TEST_CASE("an MVSTOR cancelled before its final stop changes nothing", "[kvm][lifecycle]") {
    // A disjoint move of 512 MiB spends a while populating its target before the stop.
    Hypervisor hv({1024, {test::firmware_lpar("BIG", 0, 512, 1)}}, test::firmware_options());
    test::require_clean_rounds(hv, "BIG", 1);
    CHECK_THROWS_WITH(hv.cancel_mvstor("BIG"), Catch::Contains("no MVSTOR of BIG is running"));

    // Held while it populates its target, so the cancel lands before the stop on any machine.
    fault::arm("mvstor.populate", fault::Action::Hold);
    auto move = std::async(std::launch::async, [&] { return hv.mvstor({"BIG", 512, 10s}); });
    REQUIRE(fault::wait_until_held("mvstor.populate", 120s));
    CHECK(row(hv, "BIG").state == "relocating");
    hv.cancel_mvstor("BIG");
    fault::release("mvstor.populate");
    CHECK_THROWS_WITH(move.get(), Catch::Contains("cancelled by the operator"));
    fault::disarm_all();

    auto after = row(hv, "BIG");
    CHECK(after.origin_mib == 0);
    CHECK(after.state == "running");
    // Only shmem shows holes (hugetlbfs reports every page as data).
    if (!hv.arena().hugetlb()) CHECK_FALSE(hv.arena().is_populated(ArenaOffset{512 * kMiB}));
    test::require_clean_rounds(hv, "BIG", 2);
}
