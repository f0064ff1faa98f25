// virtio-pci devices of firmware LPARs under real KVM. The firmware drives its virtio-blk disk
// (write a pass, flush, read back and compare) and its virtio-rng while it verifies its memory;
// the disk image itself is the second witness: after the moves it must hold exactly what the
// guest wrote (lpv_disk_word of abi.h, block by block).
#include <catch2/catch.hpp>

#include <chrono>
#include <filesystem>
#include <regex>
#include <thread>

#include "lpar/hypervisor.hpp"
#include "support/disk_image_check.hpp"
#include "support/guest_console.hpp"
#include "support/lpar_checks.hpp"
#include "support/temp_dir.hpp"
#include "util/error.hpp"

using namespace lparvisor;
using namespace std::chrono_literals;

namespace {

constexpr std::uint64_t kDiskBytes = 4 * kMiB;

// A scratch directory with the consoles/ folder the LPARs' consoles are mirrored into.
struct VirtioTestDir : test::TempDir {
    VirtioTestDir() : TempDir("virtio") { std::filesystem::create_directories(consoles()); }
    std::string consoles() const { return (path / "consoles").string(); }
};

LparConfig lpar_with_disk(const std::string& name, std::uint64_t origin, std::uint64_t size,
                          const std::string& disk, std::uint32_t latency_ms = 0) {
    auto lpar = test::firmware_lpar(name, origin, size);
    lpar.disks.push_back({disk, false, latency_ms});
    return lpar;
}

// The highest "DISK <name> pass <P> ok" the firmware has printed (0: none yet).
std::uint64_t last_disk_pass(const std::string& console, const std::string& name) {
    static const std::regex line("DISK (\\S+) pass (\\d+) ok");
    std::uint64_t last = 0;
    for (std::sregex_iterator it(console.begin(), console.end(), line), end; it != end; ++it)
        if ((*it)[1] == name) last = std::max<std::uint64_t>(last, std::stoull((*it)[2]));
    return last;
}

// Waits until the firmware has finished `more` disk passes beyond what it reported so far.
void require_disk_passes(Hypervisor& hv, const std::string& name, std::uint64_t more) {
    Lpar& lpar = hv.lpar(name);
    auto target = last_disk_pass(lpar.console().tail(256 * 1024), name) + more;
    auto deadline = std::chrono::steady_clock::now() + 600s;
    std::string text;
    while (std::chrono::steady_clock::now() < deadline) {
        text = lpar.console().tail(256 * 1024);
        if (last_disk_pass(text, name) >= target) break;
        if (!test::parse_firmware_console(text).first_failure.empty()) break;
        std::this_thread::sleep_for(50ms);
    }
    INFO(name << " console tail:\n" << lpar.console().tail(3000));
    REQUIRE(test::parse_firmware_console(text).first_failure.empty());
    REQUIRE(last_disk_pass(text, name) >= target);
}

}  // namespace

TEST_CASE("two firmware LPARs use their virtio-blk disks while MVSTOR moves them up and down",
          "[kvm][virtio][mvstor]") {
    VirtioTestDir dir;
    auto disk_a = test::make_disk(dir, "A", kDiskBytes);
    auto disk_b = test::make_disk(dir, "B", kDiskBytes);
    SystemConfig config{160,
                        {lpar_with_disk("A", 0, 32, disk_a), lpar_with_disk("B", 64, 32, disk_b)}};
    Hypervisor hv(config, test::firmware_options(dir.consoles()));
    for (const char* name : {"A", "B"}) {
        require_disk_passes(hv, name, 1);
        auto console = hv.lpar(name).console().tail(256 * 1024);
        CHECK_THAT(console, Catch::Contains(std::string("RNG ") + name + " ok"));
    }

    // Up and down, overlapping and disjoint, stop-and-copy and live: after each, both guests
    // finish another disk pass (write, flush, read back, compare) and verify their memory.
    struct Step {
        const char* lpar;
        std::uint64_t origin;
        control::MvstorMode mode;
    };
    const Step steps[] = {
        {"B", 96, control::MvstorMode::StopAndCopy}, {"A", 10, control::MvstorMode::Live},
        {"B", 70, control::MvstorMode::Live},        {"A", 0, control::MvstorMode::StopAndCopy},
        {"B", 120, control::MvstorMode::Live},       {"B", 64, control::MvstorMode::StopAndCopy}};
    for (const auto& step : steps) {
        INFO("MVSTOR " << step.lpar << " -> " << step.origin << " MiB");
        control::MvstorRequest request{step.lpar, step.origin, 10s, step.mode};
        auto result = hv.mvstor(request);
        CHECK(result.new_origin_mib == step.origin);
        CHECK(test::origin_mib_of(hv, step.lpar) == step.origin);
        for (const char* name : {"A", "B"}) {
            require_disk_passes(hv, name, 1);
            test::require_clean_rounds(hv, name, 1);
        }
    }

    // Stop both, let the devices finish what they hold, and read the images.
    for (const char* name : {"A", "B"}) {
        hv.stop(name);
        auto devices = hv.lpar(name).devices();
        REQUIRE(drain_devices(devices, 10s).empty());
        resume_devices(devices);
        auto console = hv.lpar(name).console().tail(256 * 1024);
        test::require_firmware_disk_after_stop(name == std::string("A") ? disk_a : disk_b, name,
                                               last_disk_pass(console, name), kDiskBytes);
    }
}

TEST_CASE("a device busy past the drain timeout fails the MVSTOR, naming it; nothing moves",
          "[kvm][virtio][mvstor]") {
    VirtioTestDir dir;
    // A small disk (8 blocks: a pass is ten requests), each request taking 1.5 s (the firmware
    // reads 8 at once: 12 s, under its 30 s timeout).
    auto disk = test::make_disk(dir, "SLOW", 32 * 1024);
    SystemConfig config{96, {lpar_with_disk("SLOW", 0, 32, disk, 1500)}};
    Hypervisor hv(config, test::firmware_options(dir.consoles()));
    test::require_clean_rounds(hv, "SLOW", 1);
    auto before = test::origin_mib_of(hv, "SLOW");

    // Catch a request as it starts (the device goes from idle to busy), so nearly all of its
    // 1.5 s are still to come when the drain's 300 ms run out.
    std::shared_ptr<Quiescable> blk;
    for (auto& d : hv.lpar("SLOW").devices())
        if (d->name() == "virtio-blk0") blk = d;
    REQUIRE(blk);
    auto deadline = std::chrono::steady_clock::now() + 120s;
    while (!blk->idle() && std::chrono::steady_clock::now() < deadline) {
    }
    while (blk->idle() && std::chrono::steady_clock::now() < deadline) {
    }
    REQUIRE_FALSE(blk->idle());

    control::MvstorRequest request{"SLOW", 40, 300ms};
    try {
        hv.mvstor(request);
        FAIL("the MVSTOR should have failed on the busy disk");
    } catch (const Error& e) {
        CHECK(e.kind() == ErrorKind::Busy);
        CHECK_THAT(e.what(), Catch::Contains("virtio-blk0"));
    }
    CHECK(test::origin_mib_of(hv, "SLOW") == before);
    // The guest runs on at its old origin, its memory intact, and its disk keeps working.
    test::require_clean_rounds(hv, "SLOW", 2);
    auto console = hv.lpar("SLOW").console().tail(256 * 1024);
    CHECK(test::parse_firmware_console(console).first_failure.empty());

    // With a timeout longer than a request, the same move succeeds.
    control::MvstorRequest patient{"SLOW", 40, 10s};
    CHECK(hv.mvstor(patient).new_origin_mib == 40);
    test::require_clean_rounds(hv, "SLOW", 1);
}
