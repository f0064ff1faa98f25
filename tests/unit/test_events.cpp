// The event hub: events go to every subscriber, stamped when published, and each is held to its
// description in control/protocol_schema.hpp (what system.describe promises clients); the one
// serializer of event data (control/event_json.hpp) makes every event as described.
#include <catch2/catch.hpp>

#include <set>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "control/api.hpp"
#include "control/event_json.hpp"
#include "control/json_rpc.hpp"
#include "control/protocol_schema.hpp"
#include "lpar/events.hpp"

using namespace lparvisor;
using nlohmann::json;

namespace {

std::vector<std::string> g_mismatches;

void record_mismatch(const std::string& type, const std::string& why) {
    g_mismatches.push_back(type + ": " + why);
}

}  // namespace

TEST_CASE("an event is checked against its schema: names, fields and their types", "[events]") {
    CHECK(control::event_schema_mismatch("lpar.state", {{"state", "running"}, {"reason", "x"}})
              .empty());
    CHECK(control::event_schema_mismatch("mvstor.progress", {{"copied", 1}, {"total", 2}}).empty());
    CHECK(control::event_schema_mismatch("lpar.stat", json::object()) ==
          "no event of this name is described");
    CHECK(control::event_schema_mismatch("lpar.state", json::array()) ==
          "its data is not an object");
    CHECK(control::event_schema_mismatch("lpar.state", {{"state", "running"}}) ==
          "reason is missing");
    CHECK(control::event_schema_mismatch("lpar.state", {{"state", 1}, {"reason", "x"}}) ==
          "state has the wrong type");
    CHECK(control::event_schema_mismatch("mvstor.progress",
                                         {{"copied", 1}, {"total", 2}, {"extra", true}}) ==
          "extra is not described");
    CHECK(control::event_schema_mismatch("mvstor.progress", {{"copied", "1"}, {"extra", 0}}) ==
          "copied has the wrong type; total is missing; extra is not described");
}

TEST_CASE("publish stamps each event, reaches every subscriber, and reports a mismatch",
          "[events]") {
    EventHub hub;
    std::vector<control::Event> seen;
    auto subscription = hub.subscribe([&](const control::Event& event) { seen.push_back(event); });
    EventHub::set_mismatch_handler(record_mismatch);
    g_mismatches.clear();

    const auto before_wall = control::now_wall_us();
    const auto before_monotonic = control::now_monotonic_us();
    hub.publish("mvstor.phase", "LPAR2", control::PhaseDone{"copy", 5});
    // Published under the wrong name: still sent, and reported.
    hub.publish("mvstor.progress", "LPAR2", control::PhaseDone{"copy", 6});
    REQUIRE(seen.size() == 2);
    CHECK(seen[0].type == "mvstor.phase");
    CHECK(seen[0].lpar == "LPAR2");
    CHECK(json::parse(seen[0].data_json) == json{{"phase", "copy"}, {"us", 5}});
    CHECK(seen[0].wall_us >= before_wall);
    CHECK(seen[0].monotonic_us >= before_monotonic);
    CHECK(seen[1].monotonic_us >= seen[0].monotonic_us);
    CHECK(g_mismatches ==
          std::vector<std::string>{"mvstor.progress: copied is missing; total is missing; phase "
                                   "is not described; us is not described"});

    subscription.reset();
    hub.publish("lpar.state", "LPAR2", control::StateChange{"running", "x"});
    CHECK(seen.size() == 2);  // unsubscribed: no more calls
    EventHub::set_mismatch_handler(nullptr);
}

TEST_CASE("every event the daemon publishes serializes as system.describe describes it",
          "[events]") {
    control::MvstorResult moved;
    moved.lpar = "LPAR2";
    moved.phases = {{"copy", 7}};
    moved.stops_us = {7};
    control::ExchangeResult exchanged;
    exchanged.a = "A";
    exchanged.b = "B";
    control::ResizeResult resized;
    resized.lpar = "LPAR2";
    // What lpar/ publishes under each name (hypervisor/lpar/*.cpp); events.dropped is the socket
    // server's own.
    const std::vector<std::pair<std::string, control::EventData>> published = {
        {"lpar.state", control::StateChange{"running", "activated"}},
        {"lpar.guest_event", control::GuestEventReport{"reboot", "restart", "reboot"}},
        {"lpar.restart", control::Restarted{"guest reboot", 64}},
        {"mvstor.started", control::MvstorStarted{0, 64, 32, "live"}},
        {"mvstor.phase", control::PhaseDone{"copy", 1}},
        {"mvstor.progress", control::CopyAdvanced{1, 2}},
        {"mvstor.done", moved},
        {"mvstor.failed", control::OperationFailed{"cancelled"}},
        {"exchange.phase", control::PhaseDone{"exchange", 1}},
        {"exchange.progress", control::CopyAdvanced{1, 2}},
        {"exchange.done", exchanged},
        {"exchange.failed", control::OperationFailed{"refused"}},
        {"expand.phase", control::PhaseDone{"plug", 1}},
        {"expand.progress", control::PlugAdvanced{64, 128}},
        {"storage.expanded", resized},
        {"expand.failed", control::OperationFailed{"timed out"}},
        {"shrink.phase", control::PhaseDone{"scrub", 1}},
        {"shrink.progress", control::UnplugAdvanced{64, 128}},
        {"storage.shrunk", resized},
        {"shrink.failed", control::OperationFailed{"timed out"}},
    };
    std::set<std::string> covered;
    for (const auto& [type, data] : published) {
        INFO(type);
        const auto serialized = control::serialize_event_data(type, data);
        CHECK(serialized.mismatch.empty());
        CHECK_FALSE(json::parse(serialized.json).contains("lpar"));  // the event's own field
        covered.insert(type);
    }
    std::set<std::string> described;
    for (const auto& event : control::kEventSchemas)
        if (event.name != "events.dropped") described.emplace(event.name);
    CHECK(covered == described);

    // An event that reports a result is the result: the same serializer as the method's answer.
    json answer = control::to_json(moved);
    answer.erase("lpar");
    CHECK(json::parse(control::serialize_event_data("mvstor.done", moved).json) == answer);
}
