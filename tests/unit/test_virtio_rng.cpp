// virtio-rng fills the device-writable buffers of a chain, up to its per-request limit, and
// nothing else.
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <future>
#include <memory>
#include <thread>
#include <vector>

#include "devices/virtio/virtio_rng.hpp"
#include "precopy_seam.hpp"

using namespace lparvisor;
using namespace lparvisor::virtio;
using lparvisor::virtio::testing::page_dirty;
using lparvisor::virtio::testing::PrecopySeam;
using namespace std::chrono_literals;

namespace {

constexpr std::uint64_t kLparBytes = 1024 * 1024;
constexpr std::uint16_t kQueueSize = 8;
constexpr GuestPhysAddr kDescTable{0x0};
constexpr GuestPhysAddr kAvailRing{0x1000};
constexpr GuestPhysAddr kUsedRing{0x2000};

}  // namespace

TEST_CASE("virtio-rng fills device-writable buffers up to its limit", "[virtio_rng]") {
    std::vector<std::uint8_t> host(kLparBytes + 4096, 0);
    GuestMemory memory(host.data(), kLparBytes);
    VirtioRng device("virtio-rng0", memory);
    CHECK(device.device_type() == DeviceType::Rng);
    CHECK(device.device_features() == kFeatureVersion1);

    std::atomic<int> interrupts{0};
    InterruptSink sink{[&](std::uint16_t) { interrupts.fetch_add(1); }, [] {}};
    REQUIRE(device.activate(kFeatureVersion1,
                            {{kQueueSize, true, kDescTable, kAvailRing, kUsedRing}}, sink));

    // A readable 64-byte buffer (left alone), a writable 256-byte one and a writable 128 KiB one
    // of which only the first 64 KiB - 256 bytes may be filled.
    const std::uint64_t readable = 0x10000, small = 0x11000, large = 0x20000;
    REQUIRE(memory.write_object(GuestPhysAddr{0}, VirtqDesc{readable, 64, kDescFlagNext, 1}));
    REQUIRE(memory.write_object(GuestPhysAddr{16},
                                VirtqDesc{small, 256, kDescFlagNext | kDescFlagWrite, 2}));
    REQUIRE(
        memory.write_object(GuestPhysAddr{32}, VirtqDesc{large, 128 * 1024, kDescFlagWrite, 0}));
    REQUIRE(memory.write_object(GuestPhysAddr{kAvailRing.value + 4}, std::uint16_t{0}));
    // Release: publishes the descriptors and the ring entry above (the worker may be polling).
    REQUIRE(memory.store_release(GuestPhysAddr{kAvailRing.value + 2}, std::uint16_t{1}));
    device.notify(0);

    const auto deadline = std::chrono::steady_clock::now() + 5s;
    // Acquire: the used element and the filled buffers are read after it.
    while (memory.load_acquire<std::uint16_t>(GuestPhysAddr{kUsedRing.value + 2}).value() != 1) {
        REQUIRE(std::chrono::steady_clock::now() < deadline);
        std::this_thread::sleep_for(1ms);
    }
    const auto used = memory.read_object<VirtqUsedElem>(GuestPhysAddr{kUsedRing.value + 4}).value();
    CHECK(used.id == 0);
    CHECK(used.len == kRngMaxBytesPerRequest);
    CHECK(device.bytes_served() == kRngMaxBytesPerRequest);
    CHECK(interrupts == 1);

    auto zeros = [&](std::uint64_t gpa, std::size_t len) {
        return static_cast<std::size_t>(
            std::count(host.begin() + static_cast<std::ptrdiff_t>(gpa),
                       host.begin() + static_cast<std::ptrdiff_t>(gpa + len), 0));
    };
    CHECK(zeros(readable, 64) == 64);
    // Random bytes: a 256-byte run of zeros (or more than a few) would be a failure to fill.
    CHECK(zeros(small, 256) < 16);
    const std::size_t filled_large = kRngMaxBytesPerRequest - 256;
    CHECK(zeros(large, filled_large) < filled_large / 64);
    CHECK(zeros(large + filled_large, 128 * 1024 - filled_large) == 128 * 1024 - filled_large);
}

TEST_CASE("a pre-copy harvest in the middle of a virtio-rng request does not lose its write",
          "[virtio_rng][dirty]") {
    std::vector<std::uint8_t> host(kLparBytes, 0);
    // One writable buffer across a page boundary, held at the seam before it is filled.
    const std::uint64_t buffer = 0x30000 - 64;
    auto log = std::make_shared<DeviceDirtyLog>(kLparBytes);
    PrecopySeam seam(log, kLparBytes, GuestPhysAddr{buffer});
    GuestMemory memory(host.data(), kLparBytes, log);
    VirtioRng device("virtio-rng0", memory);
    REQUIRE(device.activate(kFeatureVersion1,
                            {{kQueueSize, true, kDescTable, kAvailRing, kUsedRing}}, seam.sink()));
    REQUIRE(memory.write_object(GuestPhysAddr{0}, VirtqDesc{buffer, 128, kDescFlagWrite, 0}));
    REQUIRE(memory.write_object(GuestPhysAddr{kAvailRing.value + 4}, std::uint16_t{0}));
    REQUIRE(memory.store_release(GuestPhysAddr{kAvailRing.value + 2}, std::uint16_t{1}));
    (void)seam.harvest();  // the relocation starts: what the driver wrote is copied in round 1

    device.notify(0);
    const auto precopy = seam.harvest_while_buffer_held();
    seam.wait_for_completion();
    CHECK(memory.read_object<VirtqUsedElem>(GuestPhysAddr{kUsedRing.value + 4})->len == 128);

    // The final stop: both pages of the buffer must be there to be copied again.
    const auto final_stop = seam.harvest();
    CHECK_FALSE(page_dirty(precopy, buffer));  // nothing had landed when the round ran
    CHECK(page_dirty(final_stop, buffer));
    CHECK(page_dirty(final_stop, buffer + 127));
    CHECK(page_dirty(final_stop, kUsedRing.value));
    CHECK(std::count(host.begin() + buffer, host.begin() + buffer + 128, 0) < 16);
}
