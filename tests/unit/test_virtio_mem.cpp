// virtio-mem driven the way Linux's virtio_mem driver drives it: a 24-byte request and a 10-byte
// response per chain on the one request queue, the hypervisor moving requested_size and
// usable_region_size underneath. The region (64 MiB of 2 MiB blocks at 1 GiB) lies outside the
// test LPAR's 1 MiB of storage: the device never touches it, only the request buffers.
#include <catch2/catch.hpp>

#include <array>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "devices/virtio/virtio_mem.hpp"
#include "util/error.hpp"
#include "virtio_test_driver.hpp"

using namespace lparvisor;
using namespace lparvisor::virtio;
using namespace lparvisor::virtio::testing;
using namespace std::chrono_literals;

namespace {

constexpr std::uint64_t kBlock = 2 * 1024 * 1024;
constexpr std::uint64_t kRegionAddr = 1024ull * 1024 * 1024;
constexpr std::uint64_t kRegionSize = 32 * kBlock;
constexpr std::uint64_t kRequests = 0x3000;   // 32 bytes per request slot
constexpr std::uint64_t kResponses = 0x5000;  // 16 bytes per response slot
constexpr std::uint8_t kUntouched = 0xee;     // what a response slot holds before the device

std::uint64_t block_addr(std::uint64_t block) {
    return kRegionAddr + block * kBlock;
}

struct Answer {
    std::uint32_t used_len = 0;
    VirtioMemResp resp{};
};

// The device with its driver, activated on a fresh LPAR, recording hook calls.
struct Rig {
    explicit Rig(VirtioMemRegion region = {GuestPhysAddr{kRegionAddr}, kRegionSize})
        : device(std::make_unique<VirtioMem>("virtio-mem0", storage.memory, region)),
          driver(storage.memory) {
        device->set_on_unplugged([this](std::uint64_t offset, std::uint64_t bytes) {
            std::lock_guard lock(mutex);
            unplugged.emplace_back(offset, bytes);
        });
    }
    bool activate() {
        return device->activate(device->device_features(), {driver.config()}, recorder.sink());
    }
    std::vector<std::pair<std::uint64_t, std::uint64_t>> unplug_calls() {
        std::lock_guard lock(mutex);
        return unplugged;
    }

    // Puts a request and a pre-filled response slot into guest memory; returns their addresses.
    std::pair<std::uint64_t, std::uint64_t> place(std::uint16_t type, std::uint64_t addr,
                                                  std::uint16_t nb_blocks) {
        const std::uint64_t slot = next_slot++ % 64;
        const std::uint64_t request = kRequests + 32 * slot, response = kResponses + 16 * slot;
        VirtioMemReq req{};
        req.type = type;
        req.addr = addr;
        req.nb_blocks = nb_blocks;
        REQUIRE(storage.memory.write_object(GuestPhysAddr{request}, req));
        std::array<std::uint8_t, 16> fill;
        fill.fill(kUntouched);
        REQUIRE(storage.memory.write_object(GuestPhysAddr{response}, fill));
        return {request, response};
    }
    // Submits the chain, notifies and waits for its used entry.
    Answer run_chain(const std::vector<TestBuffer>& chain, std::uint64_t response) {
        const std::uint16_t before = driver.used_idx();
        const std::uint16_t head = driver.submit(chain);
        device->notify(0);
        REQUIRE(wait_for([&] { return driver.used_idx() != before; }));
        const VirtqUsedElem used = driver.used_elem(before);
        CHECK(used.id == head);
        Answer answer{used.len, {}};
        answer.resp = storage.memory.read_object<VirtioMemResp>(GuestPhysAddr{response}).value();
        return answer;
    }
    // One well-formed request: 24 readable bytes, 10 writable ones. Returns the response type.
    std::uint16_t request(std::uint16_t type, std::uint64_t addr = 0, std::uint16_t nb_blocks = 0,
                          std::uint16_t* state = nullptr) {
        auto [req, resp] = place(type, addr, nb_blocks);
        const Answer answer = run_chain({{req, 24, false}, {resp, 10, true}}, resp);
        CHECK(answer.used_len == 10);
        if (state) *state = answer.resp.state;
        return answer.resp.type;
    }
    std::uint16_t plug(std::uint64_t first_block, std::uint16_t nb_blocks) {
        return request(kMemReqPlug, block_addr(first_block), nb_blocks);
    }
    std::uint16_t unplug(std::uint64_t first_block, std::uint16_t nb_blocks) {
        return request(kMemReqUnplug, block_addr(first_block), nb_blocks);
    }
    std::uint16_t state(std::uint64_t first_block, std::uint16_t nb_blocks) {
        std::uint16_t state = 0xffff;
        REQUIRE(request(kMemReqState, block_addr(first_block), nb_blocks, &state) == kMemRespAck);
        return state;
    }
    std::uint64_t config_u64(std::uint32_t offset) {
        std::array<std::uint8_t, 8> bytes{};
        device->read_config(offset, bytes);
        std::uint64_t value = 0;
        std::memcpy(&value, bytes.data(), sizeof value);
        return value;
    }

    // What the device's hooks and interrupts reach is declared before it, so destroyed after it.
    TestStorage storage;
    InterruptRecorder recorder;
    std::mutex mutex;
    std::vector<std::pair<std::uint64_t, std::uint64_t>> unplugged;
    std::unique_ptr<VirtioMem> device;
    QueueDriver driver;
    std::uint64_t next_slot = 0;
};

ErrorKind error_kind(const std::function<void()>& action) {
    try {
        action();
    } catch (const Error& error) {
        return error.kind();
    }
    FAIL("no lparvisor::Error thrown");
    return ErrorKind::System;
}

}  // namespace

TEST_CASE("virtio-mem refuses a malformed region", "[virtio_mem]") {
    TestStorage storage;
    auto make = [&](VirtioMemRegion region) {
        return error_kind([&] { VirtioMem("virtio-mem0", storage.memory, region); });
    };
    const GuestPhysAddr at{kRegionAddr};
    CHECK(make({at, 0}) == ErrorKind::InvalidArgument);              // empty
    CHECK(make({GuestPhysAddr{kRegionAddr + 4096}, kRegionSize}) ==  // misaligned
          ErrorKind::InvalidArgument);
    CHECK(make({at, kRegionSize + 4096}) == ErrorKind::InvalidArgument);            // ragged size
    CHECK(make({at, kRegionSize, 3 * 1024 * 1024}) == ErrorKind::InvalidArgument);  // not 2^n
    CHECK(make({at, kRegionSize, 2048}) == ErrorKind::InvalidArgument);             // below 4 KiB
    CHECK(make({at, kRegionSize, 0}) == ErrorKind::InvalidArgument);
    CHECK(make({GuestPhysAddr{std::numeric_limits<std::uint64_t>::max() - kBlock + 1},
                2 * kBlock}) == ErrorKind::InvalidArgument);  // wraps around
    // The smallest legal block size and a region ending exactly at 2^64 are fine.
    VirtioMem small("virtio-mem1", storage.memory, {GuestPhysAddr{0x4000}, 0x4000, 4096});
    VirtioMem top("virtio-mem2", storage.memory,
                  {GuestPhysAddr{std::numeric_limits<std::uint64_t>::max() - kBlock + 1}, kBlock});
}

TEST_CASE("virtio-mem identity, features and configuration space", "[virtio_mem]") {
    Rig rig({GuestPhysAddr{kRegionAddr}, kRegionSize, kBlock, 3});
    VirtioMem& device = *rig.device;
    CHECK(device.device_type() == DeviceType::Mem);
    CHECK(static_cast<int>(device.device_type()) == 24);
    CHECK(device.device_features() == (kFeatureVersion1 | kMemFeatureUnpluggedInaccessible));
    CHECK((device.device_features() & kMemFeatureAcpiPxm) == 0);
    CHECK(device.queue_count() == 1);
    CHECK(device.queue_max_size() == 128);

    device.set_requested_size(6 * kBlock);
    device.set_usable_region_size(20 * kBlock);
    std::array<std::uint8_t, kMemConfigBytes> config{};
    device.read_config(0, config);
    std::array<std::uint8_t, kMemConfigBytes> expected{};
    auto put = [&](std::uint32_t offset, auto value) {
        std::memcpy(expected.data() + offset, &value, sizeof value);
    };
    put(0, kBlock);             // block_size
    put(8, std::uint16_t{3});   // node_id, then 6 bytes of padding
    put(16, kRegionAddr);       // addr
    put(24, kRegionSize);       // region_size
    put(32, 20 * kBlock);       // usable_region_size
    put(40, std::uint64_t{0});  // plugged_size
    put(48, 6 * kBlock);        // requested_size
    CHECK(config == expected);

    // Pieces, out-of-range bytes (zeros), and writes (ignored).
    std::array<std::uint8_t, 4> high{};
    device.read_config(52, high);
    CHECK(high == std::array<std::uint8_t, 4>{0, 0, 0, 0});
    device.read_config(48, high);
    CHECK(high == std::array<std::uint8_t, 4>{0, 0, 0xc0, 0});  // 12 MiB
    std::array<std::uint8_t, 8> beyond;
    beyond.fill(0x55);
    device.read_config(kMemConfigBytes - 4, beyond);
    CHECK(beyond == std::array<std::uint8_t, 8>{0, 0, 0, 0, 0, 0, 0, 0});
    const std::array<std::uint8_t, 8> ones{1, 1, 1, 1, 1, 1, 1, 1};
    for (std::uint32_t offset = 0; offset < kMemConfigBytes; offset += 8)
        device.write_config(offset, ones);
    device.read_config(0, config);
    CHECK(config == expected);

    REQUIRE(rig.activate());
    REQUIRE(rig.plug(0, 2) == kMemRespAck);
    CHECK(rig.config_u64(kMemConfigPluggedSize) == 2 * kBlock);
}

TEST_CASE("virtio-mem plugs up to requested_size and NACKs beyond", "[virtio_mem]") {
    Rig rig;
    REQUIRE(rig.activate());
    VirtioMem& device = *rig.device;
    CHECK(device.requested_size() == 0);
    CHECK(device.usable_region_size() == kRegionSize);

    // Nothing requested yet: even one block is too much.
    CHECK(rig.plug(0, 1) == kMemRespNack);
    device.set_requested_size(8 * kBlock);
    CHECK(rig.recorder.config_change == 1);

    CHECK(rig.plug(0, 2) == kMemRespAck);
    CHECK(device.plugged_size() == 2 * kBlock);
    CHECK(rig.plug(2, 7) == kMemRespNack);  // 2 + 7 > 8
    CHECK(device.plugged_size() == 2 * kBlock);
    CHECK(rig.plug(2, 6) == kMemRespAck);  // exactly 8
    CHECK(device.plugged_size() == 8 * kBlock);
    CHECK(rig.plug(8, 1) == kMemRespNack);
    CHECK(rig.config_u64(kMemConfigPluggedSize) == 8 * kBlock);
    CHECK(rig.recorder.used_buffer >= 1);
    // plugged_size changes are not announced (5.15.4.2: SHOULD NOT).
    CHECK(rig.recorder.config_change == 1);
    CHECK_FALSE(device.needs_reset());
}

TEST_CASE("virtio-mem answers ERROR for bad ranges and wrong states", "[virtio_mem]") {
    Rig rig;
    REQUIRE(rig.activate());
    VirtioMem& device = *rig.device;
    device.set_usable_region_size(16 * kBlock);
    device.set_requested_size(16 * kBlock);
    REQUIRE(rig.plug(4, 2) == kMemRespAck);

    const std::uint64_t max = std::numeric_limits<std::uint64_t>::max();
    struct Bad {
        const char* what;
        std::uint16_t type;
        std::uint64_t addr;
        std::uint16_t nb_blocks;
    };
    const std::vector<Bad> cases = {
        {"misaligned", kMemReqPlug, block_addr(0) + 4096, 1},
        {"zero blocks", kMemReqPlug, block_addr(0), 0},
        {"below the region", kMemReqPlug, kRegionAddr - kBlock, 1},
        {"beyond the usable region", kMemReqPlug, block_addr(16), 1},
        {"straddling the usable end", kMemReqPlug, block_addr(15), 2},
        {"beyond the whole region", kMemReqPlug, block_addr(40), 1},
        {"overflowing 2^64", kMemReqPlug, max - kBlock + 1, 0xffff},
        {"overlapping plugged blocks", kMemReqPlug, block_addr(3), 2},
        {"unplug of unplugged blocks", kMemReqUnplug, block_addr(0), 1},
        {"unplug partly unplugged", kMemReqUnplug, block_addr(5), 2},
        {"unplug zero blocks", kMemReqUnplug, block_addr(4), 0},
        {"unplug misaligned", kMemReqUnplug, block_addr(4) + kBlock / 2, 1},
        {"state beyond the usable region", kMemReqState, block_addr(16), 1},
        {"state zero blocks", kMemReqState, block_addr(4), 0},
        {"unknown request type", 7, block_addr(0), 1},
    };
    for (const Bad& bad : cases) {
        INFO(bad.what);
        CHECK(rig.request(bad.type, bad.addr, bad.nb_blocks) == kMemRespError);
    }
    CHECK(device.plugged_size() == 2 * kBlock);
    CHECK(rig.state(0, 16) == kMemStateMixed);
    CHECK(rig.unplug_calls().empty());
    CHECK_FALSE(device.needs_reset());
}

TEST_CASE("virtio-mem unplugs, reports state and unplugs all", "[virtio_mem]") {
    Rig rig;
    REQUIRE(rig.activate());
    VirtioMem& device = *rig.device;
    device.set_requested_size(12 * kBlock);
    REQUIRE(rig.plug(0, 4) == kMemRespAck);
    REQUIRE(rig.plug(6, 4) == kMemRespAck);

    CHECK(rig.state(0, 4) == kMemStatePlugged);
    CHECK(rig.state(4, 2) == kMemStateUnplugged);
    CHECK(rig.state(3, 4) == kMemStateMixed);
    CHECK(rig.state(0, 32) == kMemStateMixed);
    CHECK(rig.state(10, 22) == kMemStateUnplugged);

    CHECK(rig.unplug(1, 2) == kMemRespAck);
    CHECK(device.plugged_size() == 6 * kBlock);
    using Calls = std::vector<std::pair<std::uint64_t, std::uint64_t>>;
    CHECK(rig.unplug_calls() == Calls{{1 * kBlock, 2 * kBlock}});
    CHECK(rig.state(0, 1) == kMemStatePlugged);
    CHECK(rig.state(1, 2) == kMemStateUnplugged);
    CHECK(rig.unplug(1, 1) == kMemRespError);  // already unplugged

    // UNPLUG_ALL: one hook call per plugged run, usable region untouched, no config change.
    const int changes = rig.recorder.config_change;
    CHECK(rig.request(kMemReqUnplugAll) == kMemRespAck);
    CHECK(device.plugged_size() == 0);
    CHECK(rig.unplug_calls() == Calls{{1 * kBlock, 2 * kBlock},
                                      {0, kBlock},
                                      {3 * kBlock, kBlock},
                                      {6 * kBlock, 4 * kBlock}});
    CHECK(rig.state(0, 32) == kMemStateUnplugged);
    CHECK(device.usable_region_size() == kRegionSize);
    CHECK(rig.recorder.config_change == changes);
    // With nothing plugged, UNPLUG_ALL still succeeds and calls nothing.
    CHECK(rig.request(kMemReqUnplugAll) == kMemRespAck);
    CHECK(rig.unplug_calls().size() == 4);
    CHECK(rig.plug(0, 12) == kMemRespAck);
}

TEST_CASE("virtio-mem answers BUSY while the hypervisor has not backed a range", "[virtio_mem]") {
    std::mutex mutex;  // before the rig: the hook below uses these
    std::vector<std::pair<std::uint64_t, std::uint64_t>> asked;
    bool allow = false;
    Rig rig;
    REQUIRE(rig.activate());
    VirtioMem& device = *rig.device;
    device.set_requested_size(8 * kBlock);
    device.set_before_plug([&](std::uint64_t offset, std::uint64_t bytes) {
        std::lock_guard lock(mutex);
        asked.emplace_back(offset, bytes);
        return allow;
    });
    CHECK(rig.plug(2, 3) == kMemRespBusy);
    CHECK(device.plugged_size() == 0);
    CHECK(rig.state(2, 3) == kMemStateUnplugged);
    {
        std::lock_guard lock(mutex);
        CHECK(asked ==
              std::vector<std::pair<std::uint64_t, std::uint64_t>>{{2 * kBlock, 3 * kBlock}});
        allow = true;
    }
    CHECK(rig.plug(2, 3) == kMemRespAck);
    CHECK(device.plugged_size() == 3 * kBlock);
    // The hook is not asked about requests that fail anyway.
    CHECK(rig.plug(2, 1) == kMemRespError);
    CHECK(rig.plug(5, 6) == kMemRespNack);
    std::lock_guard lock(mutex);
    CHECK(asked.size() == 2);
}

TEST_CASE("virtio-mem resizing from the hypervisor side", "[virtio_mem]") {
    Rig rig;
    VirtioMem& device = *rig.device;
    // Before activation: accepted, no interrupt (no driver to tell).
    device.set_requested_size(4 * kBlock);
    CHECK(rig.recorder.config_change == 0);
    REQUIRE(rig.activate());

    CHECK(error_kind([&] { device.set_requested_size(4 * kBlock + 4096); }) ==
          ErrorKind::InvalidArgument);
    CHECK(error_kind([&] { device.set_requested_size(kRegionSize + kBlock); }) ==
          ErrorKind::InvalidArgument);
    CHECK(device.requested_size() == 4 * kBlock);
    CHECK(rig.recorder.config_change == 0);
    device.set_requested_size(10 * kBlock);
    CHECK(rig.recorder.config_change == 1);
    CHECK(rig.config_u64(kMemConfigRequestedSize) == 10 * kBlock);

    REQUIRE(rig.plug(0, 2) == kMemRespAck);
    REQUIRE(rig.plug(11, 1) == kMemRespAck);
    CHECK(device.highest_plugged_end() == 12 * kBlock);
    // Not below the highest plugged block, nor below requested_size, nor malformed.
    CHECK(error_kind([&] { device.set_usable_region_size(11 * kBlock); }) == ErrorKind::Refused);
    device.set_requested_size(2 * kBlock);
    CHECK(rig.recorder.config_change == 2);
    CHECK(error_kind([&] { device.set_usable_region_size(kRegionSize + kBlock); }) ==
          ErrorKind::InvalidArgument);
    CHECK(error_kind([&] { device.set_usable_region_size(12 * kBlock + 4096); }) ==
          ErrorKind::InvalidArgument);
    device.set_usable_region_size(12 * kBlock);
    CHECK(rig.recorder.config_change == 3);
    CHECK(device.usable_region_size() == 12 * kBlock);
    CHECK(rig.config_u64(kMemConfigUsableRegionSize) == 12 * kBlock);
    CHECK(error_kind([&] { device.set_requested_size(13 * kBlock); }) ==
          ErrorKind::InvalidArgument);

    REQUIRE(rig.unplug(11, 1) == kMemRespAck);
    device.set_usable_region_size(4 * kBlock);
    CHECK(error_kind([&] { device.set_usable_region_size(kBlock); }) == ErrorKind::Refused);
    device.set_requested_size(4 * kBlock);
    CHECK(rig.plug(4, 1) == kMemRespError);  // outside the usable region now
    CHECK(rig.plug(2, 2) == kMemRespAck);
    CHECK(device.plugged_size() == 4 * kBlock);

    // After a reset the hypervisor's changes are no longer signalled.
    device.reset();
    const int changes = rig.recorder.config_change;
    device.set_requested_size(0);
    CHECK(rig.recorder.config_change == changes);
}

TEST_CASE("virtio-mem wait_for_plugged follows the worker and times out", "[virtio_mem]") {
    Rig rig;
    REQUIRE(rig.activate());
    VirtioMem& device = *rig.device;
    device.set_requested_size(6 * kBlock);
    CHECK(device.wait_for_plugged(0, 0ms));

    // The guest plugs in the background a little later.
    auto [req, resp] = rig.place(kMemReqPlug, block_addr(0), 6);
    rig.driver.stage({{req, 24, false}, {resp, 10, true}});
    std::thread guest([&] {
        std::this_thread::sleep_for(50ms);
        if (rig.driver.publish()) device.notify(0);
    });
    const auto start = std::chrono::steady_clock::now();
    const bool reached = device.wait_for_plugged(6 * kBlock, 5s);
    const auto waited = std::chrono::steady_clock::now() - start;
    guest.join();
    CHECK(reached);
    CHECK(waited >= 40ms);
    CHECK(waited < 4s);

    const auto before_timeout = std::chrono::steady_clock::now();
    CHECK_FALSE(device.wait_for_plugged(2 * kBlock, 100ms));
    CHECK(std::chrono::steady_clock::now() - before_timeout >= 100ms);

    // Shrinking: once the wait returns, the unplug hook has already run.
    device.set_requested_size(2 * kBlock);
    auto [req2, resp2] = rig.place(kMemReqUnplug, block_addr(2), 4);
    rig.driver.submit({{req2, 24, false}, {resp2, 10, true}});
    device.notify(0);
    REQUIRE(device.wait_for_plugged(2 * kBlock, 5s));
    CHECK(rig.unplug_calls() ==
          std::vector<std::pair<std::uint64_t, std::uint64_t>>{{2 * kBlock, 4 * kBlock}});
}

TEST_CASE("virtio-mem tells whether the plugged blocks form a prefix", "[virtio_mem]") {
    Rig rig;
    REQUIRE(rig.activate());
    VirtioMem& device = *rig.device;
    device.set_requested_size(8 * kBlock);
    CHECK(device.plugged_range_is_prefix());
    CHECK(device.highest_plugged_end() == std::nullopt);
    REQUIRE(rig.plug(0, 2) == kMemRespAck);
    CHECK(device.plugged_range_is_prefix());
    CHECK(device.highest_plugged_end() == 2 * kBlock);
    REQUIRE(rig.plug(3, 1) == kMemRespAck);
    CHECK_FALSE(device.plugged_range_is_prefix());
    CHECK(device.highest_plugged_end() == 4 * kBlock);
    REQUIRE(rig.plug(2, 1) == kMemRespAck);
    CHECK(device.plugged_range_is_prefix());
    REQUIRE(rig.unplug(0, 1) == kMemRespAck);
    CHECK_FALSE(device.plugged_range_is_prefix());  // a hole at the start
    CHECK(device.highest_plugged_end() == 4 * kBlock);
    // Blocks in the last bitmap word, and past the first word (a 128-block region).
    Rig big({GuestPhysAddr{kRegionAddr}, 128 * kBlock});
    REQUIRE(big.activate());
    big.device->set_requested_size(128 * kBlock);
    REQUIRE(big.plug(0, 100) == kMemRespAck);
    CHECK(big.device->plugged_range_is_prefix());
    CHECK(big.device->highest_plugged_end() == 100 * kBlock);
    REQUIRE(big.plug(127, 1) == kMemRespAck);
    CHECK_FALSE(big.device->plugged_range_is_prefix());
    CHECK(big.device->highest_plugged_end() == 128 * kBlock);
    CHECK(big.state(64, 36) == kMemStatePlugged);
}

TEST_CASE("virtio-mem takes requests and responses split across descriptors", "[virtio_mem]") {
    Rig rig;
    REQUIRE(rig.activate());
    rig.device->set_requested_size(4 * kBlock);
    auto [req, resp] = rig.place(kMemReqPlug, block_addr(1), 3);
    const Answer answer = rig.run_chain(
        {{req, 8, false}, {req + 8, 16, false}, {resp, 4, true}, {resp + 4, 6, true}}, resp);
    CHECK(answer.used_len == 10);
    CHECK(answer.resp.type == kMemRespAck);
    CHECK(answer.resp.state == 0);
    CHECK(rig.device->plugged_size() == 3 * kBlock);
    // A larger response buffer gets exactly 10 bytes.
    auto [req2, resp2] = rig.place(kMemReqState, block_addr(0), 4);
    const Answer state = rig.run_chain({{req2, 24, false}, {resp2, 16, true}}, resp2);
    CHECK(state.used_len == 10);
    CHECK(state.resp.state == kMemStateMixed);
    CHECK(rig.storage.host[resp2 + 10] == kUntouched);
}

TEST_CASE("virtio-mem leaves malformed requests unanswered", "[virtio_mem]") {
    Rig rig;
    REQUIRE(rig.activate());
    rig.device->set_requested_size(4 * kBlock);
    struct Malformed {
        const char* what;
        std::function<std::vector<TestBuffer>(std::uint64_t req, std::uint64_t resp)> chain;
    };
    const std::vector<Malformed> cases = {
        {"request too short",
         [](auto req, auto resp) {
             return std::vector<TestBuffer>{{req, 16, false}, {resp, 10, true}};
         }},
        {"response too short",
         [](auto req, auto resp) {
             return std::vector<TestBuffer>{{req, 24, false}, {resp, 8, true}};
         }},
        {"no response buffer",
         [](auto req, auto) {
             return std::vector<TestBuffer>{{req, 24, false}};
         }},
        {"writable before readable",
         [](auto req, auto resp) {
             return std::vector<TestBuffer>{{resp, 10, true}, {req, 24, false}};
         }},
        {"request in a writable buffer",
         [](auto req, auto resp) {
             return std::vector<TestBuffer>{{req, 24, true}, {resp, 10, true}};
         }},
    };
    for (const Malformed& bad : cases) {
        INFO(bad.what);
        auto [req, resp] = rig.place(kMemReqPlug, block_addr(0), 1);
        const Answer answer = rig.run_chain(bad.chain(req, resp), resp);
        CHECK(answer.used_len == 0);
        CHECK(rig.storage.host[resp] == kUntouched);
        CHECK(rig.storage.host[resp + 9] == kUntouched);
    }
    CHECK(rig.device->plugged_size() == 0);
    CHECK_FALSE(rig.device->needs_reset());
    CHECK(rig.plug(0, 1) == kMemRespAck);  // still serving
}

TEST_CASE("virtio-mem survives a hostile chain, touching nothing outside storage", "[virtio_mem]") {
    const std::uint64_t lpar = TestStorage().lpar;
    const std::vector<std::pair<const char*, std::uint64_t>> responses = {
        {"response in the neighbour LPAR", lpar},
        {"response straddling the end of storage", lpar - 4},
        {"response far outside storage", 1ull << 40},
        {"response wrapping around 2^64", std::numeric_limits<std::uint64_t>::max() - 3},
    };
    for (const auto& [what, response] : responses) {
        INFO(what);
        Rig rig;
        REQUIRE(rig.activate());
        rig.device->set_requested_size(4 * kBlock);
        const int changes = rig.recorder.config_change;
        const std::uint64_t req = rig.place(kMemReqPlug, block_addr(0), 1).first;
        rig.driver.submit({{req, 24, false}, {response, 10, true}});
        rig.device->notify(0);
        CHECK(wait_for([&] {
            return rig.device->needs_reset() && rig.recorder.config_change > changes &&
                   rig.device->idle();
        }));
        CHECK(rig.driver.used_idx() == 0);
        CHECK(rig.device->plugged_size() == 0);  // never reached the device model
        CHECK(rig.storage.neighbour_intact());

        // After a reset the device works again.
        rig.device->reset();
        rig.driver.restart();
        REQUIRE(rig.activate());
        CHECK(rig.plug(0, 1) == kMemRespAck);
        CHECK(rig.storage.neighbour_intact());
    }
}

TEST_CASE("virtio-mem keeps blocks over a device reset and drops them on a system reset",
          "[virtio_mem]") {
    Rig rig;
    REQUIRE(rig.activate());
    VirtioMem& device = *rig.device;
    device.set_requested_size(8 * kBlock);
    REQUIRE(rig.plug(0, 3) == kMemRespAck);
    REQUIRE(rig.plug(5, 2) == kMemRespAck);

    device.reset();
    CHECK(device.plugged_size() == 5 * kBlock);
    CHECK(rig.unplug_calls().empty());
    // A new driver (a kdump kernel) finds the blocks with STATE.
    rig.driver.restart();
    REQUIRE(rig.activate());
    CHECK(rig.config_u64(kMemConfigPluggedSize) == 5 * kBlock);
    CHECK(rig.state(0, 3) == kMemStatePlugged);
    CHECK(rig.state(3, 2) == kMemStateUnplugged);

    device.system_reset();
    CHECK(device.plugged_size() == 0);
    CHECK(device.wait_for_plugged(0, 0ms));
    CHECK(rig.unplug_calls() == std::vector<std::pair<std::uint64_t, std::uint64_t>>{
                                    {0, 3 * kBlock}, {5 * kBlock, 2 * kBlock}});
    CHECK(device.requested_size() == 8 * kBlock);
    rig.driver.restart();
    REQUIRE(rig.activate());
    CHECK(rig.state(0, 32) == kMemStateUnplugged);
}
