// The control plane end to end under real KVM: a real Hypervisor behind the real socket server,
// driven by JSON-RPC clients — the whole lifecycle, events seen by a second client, a conflicting
// request refused while an MVSTOR runs, a cancelled MVSTOR that changes nothing, and a shutdown
// (SIGTERM) that cancels a move before its first stop.
#include <catch2/catch.hpp>

#include <filesystem>
#include <future>
#include <thread>

#include "lpar/hypervisor.hpp"
#include "support/control_client.hpp"
#include "support/lpar_checks.hpp"
#include "support/temp_dir.hpp"
#include "util/fault.hpp"

using namespace lparvisor;
using namespace std::chrono_literals;
using nlohmann::json;

namespace {

json row_of(const json& list, const std::string& name) {
    for (const auto& row : list["result"]["lpars"])
        if (row["name"] == name) return row;
    return json();
}

}  // namespace

TEST_CASE(
    "lifecycle through the socket: define, IPL, MVSTOR with progress, stop, deactivate, remove",
    "[kvm][control]") {
    test::TempDir dir("ctl");
    Hypervisor hv({96, {test::firmware_lpar("A", 0, 16, 1)}}, test::firmware_options());
    test::SocketFixture socket(hv, dir.path / "control.sock");
    test::EventSubscriber watcher(socket.path());  // the second client

    auto defined = test::rpc_call(socket.path(), "lpar.define", {{"name", "B"}, {"size_mib", 32}});
    REQUIRE(defined.contains("result"));
    CHECK(defined["result"]["state"] == "defined");
    CHECK(defined["result"]["has_storage"] == false);
    auto ipl = test::rpc_call(socket.path(), "lpar.activate", {{"lpar", "B"}});
    CHECK(ipl["result"]["state"] == "running");
    CHECK(ipl["result"]["origin_mib"] == 16);
    test::require_clean_rounds(hv, "B", 1);

    // MVSTOR in the background while lpar.list keeps answering on other connections.
    auto move = std::async(std::launch::async, [&] {
        return test::rpc_call(socket.path(), "storage.mvstor", {{"lpar", "B"}, {"origin_mib", 60}});
    });
    while (move.wait_for(0ms) != std::future_status::ready)
        REQUIRE(test::rpc_call(socket.path(), "lpar.list").contains("result"));
    auto moved = move.get();
    REQUIRE(moved.contains("result"));
    CHECK(moved["result"]["new_origin_mib"] == 60);

    // mvstor.done follows every progress and phase event of the move on the watcher's connection.
    REQUIRE(watcher.wait_for("mvstor.done"));
    auto progress = watcher.events_of("mvstor.progress");
    REQUIRE_FALSE(progress.empty());
    CHECK(progress.back()["copied"] == progress.back()["total"]);
    CHECK(watcher.events_of("mvstor.done").size() == 1);
    CHECK(watcher.events_of("mvstor.phase").size() >= 5);
    test::require_clean_rounds(hv, "B", 2);

    CHECK(test::rpc_call(socket.path(), "lpar.stop", {{"lpar", "B"}})["result"]["state"] ==
          "stopped");
    CHECK(test::rpc_call(socket.path(), "lpar.start", {{"lpar", "B"}})["result"]["state"] ==
          "running");
    test::require_clean_rounds(hv, "B", 1);
    auto config = test::rpc_call(socket.path(), "system.config");
    CHECK(config["result"]["lpars"][1]["origin_mib"] == 60);
    CHECK(test::rpc_call(socket.path(), "lpar.deactivate", {{"lpar", "B"}})["result"]["state"] ==
          "defined");
    CHECK(test::rpc_call(socket.path(), "lpar.remove", {{"lpar", "B"}})["result"]["removed"] ==
          "B");
    CHECK(test::rpc_call(socket.path(), "lpar.list")["result"]["lpars"].size() == 1);

    REQUIRE(watcher.wait_for(
        "lpar.state", [](const json& e) { return e["lpar"] == "B" && e["state"] == "removed"; }));
    std::vector<std::string> states;
    for (const auto& e : watcher.events_of("lpar.state"))
        if (e["lpar"] == "B") states.push_back(e["state"]);
    CHECK(states == std::vector<std::string>{"defined", "running", "stopped", "running", "defined",
                                             "removed"});
    test::require_clean_rounds(hv, "A", 1);
}

TEST_CASE("while an MVSTOR runs a conflicting request is refused; cancelled, it changes nothing",
          "[kvm][control]") {
    test::TempDir dir("ctl");
    Hypervisor hv({1024, {test::firmware_lpar("BIG", 0, 512, 1)}}, test::firmware_options());
    test::SocketFixture socket(hv, dir.path / "control.sock");
    test::require_clean_rounds(hv, "BIG", 1);
    // Held while it populates its target: the move is still running, and holds BIG, on any
    // machine.
    fault::arm("mvstor.populate", fault::Action::Hold);
    auto move = std::async(std::launch::async, [&] {
        return test::rpc_call(socket.path(), "storage.mvstor",
                              {{"lpar", "BIG"}, {"origin_mib", 512}});
    });
    REQUIRE(fault::wait_until_held("mvstor.populate", 120s));
    CHECK(row_of(test::rpc_call(socket.path(), "lpar.list"), "BIG")["state"] == "relocating");
    auto conflict = test::rpc_call(socket.path(), "lpar.deactivate", {{"lpar", "BIG"}});
    REQUIRE(conflict.contains("error"));
    CHECK(conflict["error"]["code"] == -32004);
    CHECK_THAT(conflict["error"]["message"].get<std::string>(), Catch::Contains("MVSTOR of BIG"));
    auto cancelled = test::rpc_call(socket.path(), "storage.cancel", {{"lpar", "BIG"}});
    CHECK(cancelled["result"]["cancelled"] == "BIG");
    fault::release("mvstor.populate");
    auto refused = move.get();
    fault::disarm_all();
    REQUIRE(refused.contains("error"));
    CHECK(refused["error"]["code"] == -32004);
    CHECK_THAT(refused["error"]["message"].get<std::string>(), Catch::Contains("cancelled"));
    auto list = test::rpc_call(socket.path(), "lpar.list");
    CHECK(row_of(list, "BIG")["origin_mib"] == 0);
    CHECK(row_of(list, "BIG")["state"] == "running");
    test::require_clean_rounds(hv, "BIG", 2);
}

TEST_CASE("a shutdown cancels a move before its first stop and refuses new operations",
          "[kvm][control]") {
    test::TempDir dir("ctl");
    Hypervisor hv({256, {test::firmware_lpar("A", 0, 64, 1, 0, 16)}}, test::firmware_options());
    test::SocketFixture socket(hv, dir.path / "control.sock");
    test::require_clean_rounds(hv, "A", 1);
    // A live move held in its first pre-copy round when the shutdown (SIGTERM) comes.
    fault::arm("mvstor.precopy", fault::Action::Hold);
    auto move = std::async(std::launch::async, [&] {
        return test::rpc_call(socket.path(), "storage.mvstor",
                              {{"lpar", "A"}, {"origin_mib", 128}, {"mode", "live"}});
    });
    REQUIRE(fault::wait_until_held("mvstor.precopy", 120s));
    hv.request_shutdown();
    fault::release("mvstor.precopy");
    auto ended = move.get();
    fault::disarm_all();
    REQUIRE(ended.contains("error"));
    CHECK_THAT(ended["error"]["message"].get<std::string>(),
               Catch::Contains("cancelled because the daemon is shutting down") &&
                   Catch::Contains("runs on at its old origin 0 MiB"));
    auto list = test::rpc_call(socket.path(), "lpar.list");
    CHECK(row_of(list, "A")["origin_mib"] == 0);
    auto refused =
        test::rpc_call(socket.path(), "storage.mvstor", {{"lpar", "A"}, {"origin_mib", 128}});
    REQUIRE(refused.contains("error"));
    CHECK_THAT(refused["error"]["message"].get<std::string>(), Catch::Contains("shutting down"));
    test::require_clean_rounds(hv, "A", 2);
}
