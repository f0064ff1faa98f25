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
    std::vector<control::Event> of(const std::string& type, const std::string& lpar = {}) {
        std::lock_guard lock(mutex);
        std::vector<control::Event> found;
        for (const auto& e : events)
            if (e.type == type && (lpar.empty() || e.lpar == lpar)) found.push_back(e);
        return found;
    }
    // Waits until `lpar` has had `count` events of `type` (the bound only catches a hang: a
    // nested guest boots slowly), and returns their data.
    std::vector<nlohmann::json> wait_for(const std::string& type, const std::string& lpar,
                                         std::size_t count = 1) {
        const auto deadline = std::chrono::steady_clock::now() + 600s;
        while (of(type, lpar).size() < count && std::chrono::steady_clock::now() < deadline)
            std::this_thread::sleep_for(20ms);
        std::vector<nlohmann::json> data;
        for (const auto& e : of(type, lpar)) data.push_back(nlohmann::json::parse(e.data_json));
        REQUIRE(data.size() >= count);
        return data;
    }
    // `lpar`'s state changes as "state/reason".
    std::vector<std::string> states_of(const std::string& lpar) {
        std::vector<std::string> changes;
        for (const auto& e : of("lpar.state", lpar)) {
            auto data = nlohmann::json::parse(e.data_json);
            changes.push_back(data["state"].get<std::string>() + "/" +
                              data["reason"].get<std::string>());
        }
        return changes;
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
    REQUIRE(recorder.of("mvstor.started", "B").size() == 1);
    CHECK(nlohmann::json::parse(recorder.of("mvstor.started", "B")[0].data_json) ==
          nlohmann::json{{"old_origin_mib", 16},
                         {"new_origin_mib", 40},
                         {"size_mib", 16},
                         {"mode", "stop-and-copy"}});
    test::require_clean_rounds(hv, "B", 2);

    // A refused EXPAND says so in an event too (a watching page ends the operation on it), and
    // system.stats counts it under its error's kind.
    CHECK_THROWS_WITH(hv.expand({"B", 2}), Catch::Contains("no virtio-mem region"));
    REQUIRE(recorder.of("expand.failed", "B").size() == 1);
    CHECK_THAT(nlohmann::json::parse(recorder.of("expand.failed", "B")[0].data_json)["message"]
                   .get<std::string>(),
               Catch::Contains("no virtio-mem region"));
    const auto stats = hv.stats();
    for (const auto& operation : stats.operations) {
        for (const auto& outcome : operation.outcomes) {
            INFO(operation.kind << " " << outcome.outcome);
            const bool counted = (operation.kind == "mvstor" && outcome.outcome == "ok") ||
                                 (operation.kind == "expand" && outcome.outcome == "refused");
            CHECK(outcome.count == (counted ? 1u : 0u));
        }
    }
    CHECK(stats.pauses.count == 1);

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
                                              "stopped/operator stop", "running/",
                                              "running/operator reset", "defined/deactivated",
                                              "removed/removed"});
    const auto restarts = recorder.of("lpar.restart");
    REQUIRE(restarts.size() == 1);
    CHECK(nlohmann::json::parse(restarts[0].data_json) ==
          nlohmann::json{{"cause", "operator reset"}, {"origin_mib", 40}});
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

TEST_CASE("a guest's reboot, power-off and crash take the LPAR's on_reboot, on_poweroff, on_crash",
          "[kvm][lifecycle][actions]") {
    // The test firmware ends after one round: with the debug exit (a power-off), or, when a
    // test arms firmware.reboot or firmware.triple_fault for its next IPL, with an i8042 reset
    // or a triple fault. Each seam fires once: an LPAR re-IPLed after it just powers off.
    fault::disarm_all();
    Hypervisor hv({64, {}}, test::firmware_options());
    Recorder recorder;
    auto subscription = hv.subscribe(recorder.sink());
    auto one_round = [](const std::string& name, std::uint64_t origin_mib) {
        LparConfig d = test::firmware_lpar(name, origin_mib, 8, 1);
        d.round_limit = 1;
        return d;
    };

    SECTION("on_reboot restart (the default): re-IPLed in place, storage scrubbed") {
        hv.define(one_round("R", 8));
        fault::arm("firmware.reboot");
        hv.activate("R");
        const auto guest_events = recorder.wait_for("lpar.guest_event", "R", 2);
        CHECK(guest_events[0]["guest_event"] == "reboot");
        CHECK(guest_events[0]["action"] == "restart");
        CHECK(guest_events[0]["reason"] == "guest reboot");
        CHECK(guest_events[1]["guest_event"] == "poweroff");  // the second IPL's debug exit
        CHECK(guest_events[1]["action"] == "stop");
        const auto restarts = recorder.wait_for("lpar.restart", "R");
        CHECK(restarts ==
              std::vector<nlohmann::json>{{{"cause", "guest reboot"}, {"origin_mib", 8}}});
        CHECK(recorder.states_of("R") ==
              std::vector<std::string>{"defined/defined", "running/activated",
                                       "stopped/guest reboot", "running/guest reboot",
                                       "stopped/guest exit 0"});
        CHECK(test::origin_mib_of(hv, "R") == 8);
        // The new IPL's console: it ran its round cleanly and did not reboot again.
        const std::string console = hv.console("R", 64 * 1024);
        CHECK_THAT(console, Catch::Contains("done rounds=1 failures=0"));
        CHECK_THAT(console, !Catch::Contains("rebooting"));
        CHECK(fault::fired("firmware.reboot") == 1);
    }
    SECTION("on_reboot stop: the LPAR stops, its reason the guest's") {
        LparConfig d = one_round("S", 8);
        d.on_reboot = control::GuestAction::Stop;
        hv.define(d);
        fault::arm("firmware.reboot");
        hv.activate("S");
        const auto guest_events = recorder.wait_for("lpar.guest_event", "S");
        CHECK(guest_events[0]["action"] == "stop");
        CHECK(recorder.states_of("S").back() == "stopped/guest reboot");
        CHECK(recorder.of("lpar.restart", "S").empty());
        const auto row = hv.list().lpars;
        CHECK(std::any_of(row.begin(), row.end(),
                          [](const auto& l) { return l.name == "S" && l.state == "stopped"; }));
    }
    SECTION("on_crash stop (the default): a triple fault keeps the registers in the reason") {
        hv.define(one_round("C", 8));
        fault::arm("firmware.triple_fault");
        hv.activate("C");
        const auto guest_events = recorder.wait_for("lpar.guest_event", "C");
        CHECK(guest_events[0]["guest_event"] == "crash");
        CHECK(guest_events[0]["action"] == "stop");
        const std::string reason = hv.lpar("C").stop_reason();
        CHECK_THAT(reason, Catch::StartsWith("triple fault (vCPU 0, rip=0x"));
        CHECK_THAT(reason, Catch::Contains("rflags=0x"));
        CHECK_THAT(reason, Catch::Contains("cr3=0x"));
        CHECK(guest_events[0]["reason"] == reason);
        CHECK_THAT(hv.console("C", 64 * 1024),
                   Catch::Contains("triple fault (UD2 without an IDT)"));
    }
    SECTION("on_poweroff deactivate: storage scrubbed and freed, the definition kept") {
        LparConfig d = one_round("D", 8);
        d.on_poweroff = control::GuestAction::Deactivate;
        hv.define(d);
        hv.activate("D");
        recorder.wait_for("lpar.guest_event", "D");
        const auto deadline = std::chrono::steady_clock::now() + 600s;
        while (recorder.states_of("D").back() != "defined/deactivated after guest poweroff" &&
               std::chrono::steady_clock::now() < deadline)
            std::this_thread::sleep_for(20ms);
        CHECK(recorder.states_of("D").back() == "defined/deactivated after guest poweroff");
        CHECK(hv.list().free_mib == 64);
        auto freed = hv.arena().bytes({{8 * kMiB}, 8 * kMiB});
        CHECK(std::all_of(freed.begin(), freed.end(), [](std::uint8_t b) { return b == 0; }));
        CHECK_NOTHROW(hv.activate("D"));  // still defined: it can be activated again
    }
    fault::disarm_all();
}
