// The event hub: events go to every subscriber, stamped when published, and each is held to its
// description in control/protocol_schema.hpp (what system.describe promises clients).
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "control/api.hpp"
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
    CHECK(EventHub::schema_mismatch("lpar.state", {{"state", "running"}, {"reason", "x"}}).empty());
    CHECK(EventHub::schema_mismatch("mvstor.progress", {{"copied", 1}, {"total", 2}}).empty());
    CHECK(EventHub::schema_mismatch("lpar.stat", json::object()) ==
          "no event of this name is described");
    CHECK(EventHub::schema_mismatch("lpar.state", json::array()) == "its data is not an object");
    CHECK(EventHub::schema_mismatch("lpar.state", {{"state", "running"}}) == "reason is missing");
    CHECK(EventHub::schema_mismatch("lpar.state", {{"state", 1}, {"reason", "x"}}) ==
          "state has the wrong type");
    CHECK(EventHub::schema_mismatch("mvstor.progress",
                                    {{"copied", 1}, {"total", 2}, {"extra", true}}) ==
          "extra is not described");
    CHECK(EventHub::schema_mismatch("mvstor.progress", {{"copied", "1"}, {"extra", 0}}) ==
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
    hub.publish("mvstor.phase", "LPAR2", {{"phase", "copy"}, {"us", 5}});
    hub.publish("mvstor.phase", "LPAR2", {{"phase", "copy"}});  // still sent, and reported
    REQUIRE(seen.size() == 2);
    CHECK(seen[0].type == "mvstor.phase");
    CHECK(seen[0].lpar == "LPAR2");
    CHECK(json::parse(seen[0].data_json) == json{{"phase", "copy"}, {"us", 5}});
    CHECK(seen[0].wall_us >= before_wall);
    CHECK(seen[0].monotonic_us >= before_monotonic);
    CHECK(seen[1].monotonic_us >= seen[0].monotonic_us);
    CHECK(g_mismatches == std::vector<std::string>{"mvstor.phase: us is missing"});

    subscription.reset();
    hub.publish("lpar.state", "LPAR2", {{"state", "running"}, {"reason", "x"}});
    CHECK(seen.size() == 2);  // unsubscribed: no more calls
    EventHub::set_mismatch_handler(nullptr);
}
