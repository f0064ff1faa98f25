// MVSTOR of running firmware LPARs under real KVM. The firmware is the witness: it keeps
// re-verifying its whole storage (pattern by address, storage keys per page) and would print
// FAIL for any word or key that did not survive a move.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "lpar/hypervisor.hpp"
#include "support/control_client.hpp"
#include "support/guest_console.hpp"
#include "support/lpar_checks.hpp"
#include "support/temp_dir.hpp"
#include "util/error.hpp"

using namespace lparvisor;
using namespace std::chrono_literals;

namespace {

constexpr auto kRoundTimeout = std::chrono::seconds(600);

std::string whole_file(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

// The whole serial log of every LPAR: no FAIL line, ever. (NAME.log.1, the rotated generation,
// is made empty at activation and stays so: these logs are far below the cap.)
void require_no_failure_logged(const test::TempDir& dir) {
    for (const auto& entry : std::filesystem::directory_iterator(dir.path)) {
        if (entry.path().extension() != ".log") continue;
        auto text = whole_file(entry.path());
        auto progress = test::parse_firmware_console(text);
        INFO(entry.path().filename().string());
        CHECK(progress.first_failure.empty());
        CHECK(text.find("lparvisor-firmware:") != std::string::npos);
    }
}

// Free storage (every gap in the map) must read back as zeros: nothing of a moved LPAR remains.
void require_gaps_scrubbed(Hypervisor& hv) {
    auto table = hv.storage_table();
    for (const auto& row : table) {
        const ArenaOffset start = row.origin + row.size;
        std::uint64_t size = std::min(row.gap, hv.arena().size() - start.value);
        auto bytes = hv.arena().bytes({start, size});
        auto dirty =
            std::find_if(bytes.begin(), bytes.end(), [](std::uint8_t b) { return b != 0; });
        INFO("gap after " << row.lpar << " at " << start.value / kMiB << " MiB");
        CHECK(dirty == bytes.end());
    }
}

const nlohmann::json& json_row(const nlohmann::json& list, const std::string& name) {
    for (const auto& row : list["result"]["lpars"])
        if (row["name"] == name) return row;
    FAIL("no row for " << name << " in " << list.dump());
    throw 0;
}

const control::LparStatus& row_of(const control::SystemStatus& status, const std::string& name) {
    for (const auto& l : status.lpars)
        if (l.name == name) return l;
    FAIL("no row for " << name);
    throw 0;
}

}  // namespace

TEST_CASE(
    "Fig. 3A -> MVSTOR LPAR2 192 -> Fig. 4A through the control socket, both guests verifying",
    "[kvm][mvstor]") {
    test::TempDir consoles("test");
    Hypervisor hv(fig3a_config(), test::firmware_options(consoles.path.string()));
    test::TempDir socket_dir("test");
    test::SocketFixture socket(hv, socket_dir.path / "control.sock");

    auto before = test::rpc(socket.path(), R"({"jsonrpc":"2.0","id":1,"method":"lpar.list"})");
    CHECK(before["id"] == 1);
    CHECK(before["result"]["main_storage_mib"] == 509);
    CHECK(before["result"]["free_mib"] == 125);
    CHECK(json_row(before, "LPAR1")["origin_mib"] == 0);
    CHECK(json_row(before, "LPAR1")["size_mib"] == 128);
    CHECK(json_row(before, "LPAR1")["gap_mib"] == 0);
    CHECK(json_row(before, "LPAR2")["origin_mib"] == 128);
    CHECK(json_row(before, "LPAR2")["size_mib"] == 256);
    CHECK(json_row(before, "LPAR2")["gap_mib"] == 125);
    CHECK(json_row(before, "LPAR2")["state"] == "running");

    test::require_clean_rounds(hv, "LPAR1", 2);
    test::require_clean_rounds(hv, "LPAR2", 2);

    // Bad requests get JSON-RPC errors and change nothing.
    CHECK(test::rpc(socket.path(), "{not json")["error"]["code"] == -32700);
    CHECK(
        test::rpc(
            socket.path(),
            R"({"jsonrpc":"2.0","id":2,"method":"storage.mvstor","params":{"lpar":"LPAR2","origin_mib":"192"}})")
            ["error"]["code"] == -32602);
    auto refused = test::rpc(
        socket.path(),
        R"({"jsonrpc":"2.0","id":3,"method":"storage.mvstor","params":{"lpar":"LPAR2","origin_mib":100}})");
    CHECK(refused["error"]["code"] == -32003);
    CHECK_THAT(refused["error"]["message"].get<std::string>(),
               Catch::Contains("overlaps LPAR1 at 0-128 MiB"));

    auto moved = test::rpc(
        socket.path(),
        R"({"jsonrpc":"2.0","id":4,"method":"storage.mvstor","params":{"lpar":"LPAR2","origin_mib":192}})");
    INFO(moved.dump());
    REQUIRE(moved.contains("result"));
    const auto& result = moved["result"];
    CHECK(result["old_origin_mib"] == 128);
    CHECK(result["new_origin_mib"] == 192);
    CHECK(result["bytes_copied"] == 256 * kMiB);
    CHECK(result["pause_us"].get<std::uint64_t>() > 0);
    CHECK(result["total_us"].get<std::uint64_t>() >= result["pause_us"].get<std::uint64_t>());
    std::vector<std::string> phases;
    for (const auto& p : result["phases"]) phases.push_back(p["phase"]);
    CHECK(phases == std::vector<std::string>{"check_target", "populate_target", "stop_vcpus",
                                             "drain_io", "copy", "remap", "resume", "scrub"});

    auto after = test::rpc(socket.path(), R"({"jsonrpc":"2.0","id":5,"method":"lpar.list"})");
    CHECK(json_row(after, "LPAR1")["gap_mib"] == 64);
    CHECK(json_row(after, "LPAR2")["origin_mib"] == 192);
    CHECK(json_row(after, "LPAR2")["gap_mib"] == 61);
    CHECK(json_row(after, "LPAR2")["state"] == "running");
    CHECK(after["result"]["free_mib"] == 125);

    test::require_clean_rounds(hv, "LPAR2", 2);
    test::require_clean_rounds(hv, "LPAR1", 1);
    auto console = test::rpc(
        socket.path(),
        R"({"jsonrpc":"2.0","id":6,"method":"lpar.console","params":{"lpar":"LPAR2","bytes":4096}})");
    CHECK_THAT(console["result"]["text"].get<std::string>(), Catch::Contains("verify ok round="));
    require_gaps_scrubbed(hv);
    require_no_failure_logged(consoles);
}

TEST_CASE("refused MVSTORs change nothing and do not disturb the guest", "[kvm][mvstor]") {
    test::TempDir consoles("test");
    SystemConfig config{64,
                        {test::firmware_lpar("A", 0, 16, 1), test::firmware_lpar("B", 32, 16, 1)}};
    Hypervisor hv(config, test::firmware_options(consoles.path.string()));
    test::require_clean_rounds(hv, "B", 1);
    auto table = hv.storage_table();
    CHECK_THROWS_WITH(hv.mvstor({"B", 8, 10s}), Catch::Contains("overlaps A at 0-16 MiB"));
    CHECK_THROWS_WITH(hv.mvstor({"B", 33, 10s}), Catch::Contains("not a multiple of 2 MiB"));
    CHECK_THROWS_WITH(hv.mvstor({"B", 50, 10s}), Catch::Contains("ends beyond main storage"));
    CHECK_THROWS_WITH(hv.mvstor({"B", 32, 10s}), Catch::Contains("already at origin"));
    CHECK_THROWS_WITH(hv.mvstor({"C", 40, 10s}), Catch::Contains("unknown LPAR 'C'"));
    auto same = hv.storage_table();
    REQUIRE(same.size() == table.size());
    for (std::size_t i = 0; i < same.size(); ++i) CHECK(same[i].origin == table[i].origin);
    test::require_clean_rounds(hv, "B", 2);
    require_no_failure_logged(consoles);
}

TEST_CASE("20+ random valid moves of running LPARs, up and down, overlapping and not",
          "[kvm][mvstor]") {
    test::TempDir consoles("test");
    SystemConfig config{96,
                        {test::firmware_lpar("A", 0, 16, 2), test::firmware_lpar("B", 32, 24, 1),
                         test::firmware_lpar("C", 64, 16, 1)}};
    Hypervisor hv(config, test::firmware_options(consoles.path.string()));
    for (const char* name : {"A", "B", "C"}) test::require_clean_rounds(hv, name, 1);

    auto seed = std::random_device{}();
    INFO("random seed " << seed);
    std::mt19937 random(seed);
    unsigned overlapping = 0, disjoint = 0, up = 0, down = 0;
    for (int move = 0; move < 22; ++move) {
        auto status = hv.list();
        const auto& lpar = status.lpars[random() % status.lpars.size()];
        // Every 2 MiB origin where the LPAR fits without touching another one.
        std::vector<std::uint64_t> origins;
        for (std::uint64_t o = 0; o + lpar.size_mib <= status.main_storage_mib; o += 2) {
            if (o == lpar.origin_mib) continue;
            bool clash =
                std::any_of(status.lpars.begin(), status.lpars.end(), [&](const auto& other) {
                    return other.name != lpar.name && o < other.origin_mib + other.size_mib &&
                           other.origin_mib < o + lpar.size_mib;
                });
            if (!clash) origins.push_back(o);
        }
        if (origins.empty()) continue;
        auto origin = origins[random() % origins.size()];
        INFO("move " << move << ": " << lpar.name << " " << lpar.origin_mib << " -> " << origin);
        auto result = hv.mvstor({lpar.name, origin, 10s});
        CHECK(result.new_origin_mib == origin);
        bool overlaps =
            origin < lpar.origin_mib + lpar.size_mib && lpar.origin_mib < origin + lpar.size_mib;
        (overlaps ? overlapping : disjoint)++;
        (origin > lpar.origin_mib ? up : down)++;
        test::require_clean_rounds(hv, lpar.name, 2);
    }
    std::printf("moves: %u overlapping, %u disjoint, %u up, %u down\n", overlapping, disjoint, up,
                down);
    CHECK(overlapping + disjoint >= 20);
    for (const char* name : {"A", "B", "C"}) test::require_clean_rounds(hv, name, 1);
    require_gaps_scrubbed(hv);
    require_no_failure_logged(consoles);
}

TEST_CASE("a guest fault stops that LPAR with a reason; the others run on", "[kvm][lpar]") {
    test::TempDir consoles("test");
    SystemConfig config{64, {test::firmware_lpar("A", 0, 16, 1), {"B", 32, 16, 1, {}, 0, 0, 2}}};
    Hypervisor hv(config, test::firmware_options(consoles.path.string()));
    // B's firmware ends itself after 2 rounds through the debug-exit port.
    auto deadline = std::chrono::steady_clock::now() + kRoundTimeout;
    while (hv.lpar("B").state() == LparState::Running &&
           std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(20ms);
    auto status = hv.list();
    CHECK(row_of(status, "B").state == "stopped");
    CHECK(row_of(status, "B").reason == "guest exit 0");
    CHECK(row_of(status, "A").state == "running");
    test::require_clean_rounds(hv, "A", 2);
    // A stopped LPAR can still be moved; its storage goes with it.
    auto result = hv.mvstor({"B", 40, 10s});
    CHECK(result.new_origin_mib == 40);
    CHECK(row_of(hv.list(), "B").state == "stopped");
}
