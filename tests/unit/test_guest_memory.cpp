#include <catch2/catch.hpp>

#include <cstring>
#include <optional>
#include <utility>
#include <vector>

#include "storage/arena.hpp"
#include "storage/guest_memory.hpp"

using namespace lparvisor;

TEST_CASE("GuestMemory checks address + length, including overflow", "[guest_memory]") {
    Arena arena(8 * kMiB, HugePagePolicy::Off);
    GuestWindow window(arena, {{2 * kMiB}, 4 * kMiB});
    GuestMemory memory = window.memory();
    CHECK(memory.size() == 4 * kMiB);
    CHECK(memory.write_span(GuestPhysAddr{0}, 4 * kMiB).has_value());
    CHECK(memory.write_span(GuestPhysAddr{4 * kMiB - 1}, 1).has_value());
    CHECK(memory.write_span(GuestPhysAddr{4 * kMiB}, 0).has_value());
    CHECK_FALSE(memory.write_span(GuestPhysAddr{4 * kMiB}, 1).has_value());
    CHECK_FALSE(memory.write_span(GuestPhysAddr{4 * kMiB - 4}, 8).has_value());
    // address + length wraps
    CHECK_FALSE(memory.write_span(GuestPhysAddr{~0ull - 3}, 8).has_value());
    CHECK_FALSE(memory.write_span(GuestPhysAddr{8}, ~0ull).has_value());
    CHECK(memory.read_slice(GuestPhysAddr{4 * kMiB - 1}, 1).has_value());
    CHECK_FALSE(memory.read_slice(GuestPhysAddr{4 * kMiB - 4}, 8).has_value());
    CHECK_FALSE(memory.read_slice(GuestPhysAddr{~0ull - 3}, 8).has_value());
    std::uint32_t value = 0x11223344;
    CHECK_FALSE(memory.write_object(GuestPhysAddr{4 * kMiB - 2}, value));
    CHECK(memory.write_object(GuestPhysAddr{4 * kMiB - 4}, value));
    CHECK(memory.read_object<std::uint32_t>(GuestPhysAddr{4 * kMiB - 4}) == value);
}

TEST_CASE("a guest window shows its own range of the arena and follows a remap", "[guest_memory]") {
    Arena arena(16 * kMiB, HugePagePolicy::Off);
    std::memset(arena.bytes({{4 * kMiB}, 2 * kMiB}).data(), 0x44, 2 * kMiB);
    std::memset(arena.bytes({{10 * kMiB}, 2 * kMiB}).data(), 0xaa, 2 * kMiB);
    GuestWindow window(arena, {{4 * kMiB}, 2 * kMiB});
    auto* host = window.host_base();
    // SAFETY: the address as a number, for its alignment only.
    CHECK(reinterpret_cast<std::uintptr_t>(host) % (2 * kMiB) == 0);
    CHECK(window.memory().read_object<std::uint8_t>(GuestPhysAddr{100}) == 0x44);

    // Writes through the window land in the arena at the origin.
    REQUIRE(window.memory().write_object<std::uint8_t>(GuestPhysAddr{5}, 0x55));
    CHECK(arena.bytes({{4 * kMiB + 5}, 1})[0] == 0x55);

    window.remap(ArenaOffset{10 * kMiB});
    CHECK(window.host_base() == host);  // devices and the memslot keep the same pointer
    CHECK(window.origin().value == 10 * kMiB);
    CHECK(window.memory().read_object<std::uint8_t>(GuestPhysAddr{100}) == 0xaa);
    CHECK_THROWS(window.remap(ArenaOffset{15 * kMiB}));  // would run past the arena
    CHECK(window.memory().read_object<std::uint8_t>(GuestPhysAddr{100}) == 0xaa);
}

namespace {

// One pre-copy round's view of the device dirty log: the pages marked since the last harvest.
DirtyBitmap harvest(DeviceDirtyLog& log, std::uint64_t bytes) {
    DirtyBitmap bitmap(bytes);
    log.harvest_into(bitmap);
    return bitmap;
}
bool page_dirty(const DirtyBitmap& bitmap, std::uint64_t gpa) {
    return bitmap.test(gpa / kPageSize);
}
std::uint64_t dirty_pages(const DirtyBitmap& bitmap) {
    return bitmap.count();
}

}  // namespace

TEST_CASE("a device write is dirty in the harvest after the one taken while it was under way",
          "[guest_memory][dirty]") {
    Arena arena(8 * kMiB, HugePagePolicy::Off);
    GuestWindow window(arena, {{2 * kMiB}, 4 * kMiB});
    GuestMemory memory = window.memory();
    DeviceDirtyLog& log = window.device_dirty_log();
    log.set_tracking(true);

    // A buffer over three pages; a pre-copy round harvests while the device still holds it.
    const GuestPhysAddr gpa{3 * kPageSize + 100};
    std::optional<DirtyBitmap> precopy;
    {
        auto buffer = memory.write_span(gpa, 2 * kPageSize);
        REQUIRE(buffer);
        precopy = harvest(log, window.size());
        std::memset(buffer->data(), 0x5a, buffer->size());
    }
    CHECK(dirty_pages(*precopy) == 0);  // nothing had landed yet
    // The final stop must see every page the device wrote.
    const auto final_stop = harvest(log, window.size());
    CHECK(page_dirty(final_stop, 3 * kPageSize));
    CHECK(page_dirty(final_stop, 4 * kPageSize));
    CHECK(page_dirty(final_stop, 5 * kPageSize));
    CHECK(dirty_pages(final_stop) == 3);
}

TEST_CASE("GuestMemory::write() marks its pages after the copy, not before",
          "[guest_memory][dirty]") {
    Arena arena(8 * kMiB, HugePagePolicy::Off);
    GuestWindow window(arena, {{2 * kMiB}, 4 * kMiB});
    GuestMemory memory = window.memory();
    DeviceDirtyLog& log = window.device_dirty_log();
    log.set_tracking(true);

    // The seam runs between the hand-out and the copy: what a concurrent harvest sees there.
    const GuestPhysAddr gpa{7 * kPageSize + 16};
    const std::uint32_t value = 0xfeedf00d;
    std::optional<DirtyBitmap> precopy;
    bool seam_ran = false, landed_at_seam = true;
    log.set_hand_out_hook_for_testing([&](GuestPhysAddr address, std::uint64_t length) {
        seam_ran = address == gpa && length == sizeof value;
        landed_at_seam = memory.read_object<std::uint32_t>(gpa) == value;
        precopy = harvest(log, window.size());
    });
    REQUIRE(memory.write_object(gpa, value));
    CHECK(seam_ran);
    CHECK_FALSE(landed_at_seam);
    CHECK(dirty_pages(*precopy) == 0);
    const auto final_stop = harvest(log, window.size());
    CHECK(page_dirty(final_stop, gpa.value));
    CHECK(dirty_pages(final_stop) == 1);
    CHECK(memory.read_object<std::uint32_t>(gpa) == value);
}

TEST_CASE("a write span marks once, when its last owner releases it", "[guest_memory][dirty]") {
    Arena arena(8 * kMiB, HugePagePolicy::Off);
    GuestWindow window(arena, {{2 * kMiB}, 4 * kMiB});
    GuestMemory memory = window.memory();
    DeviceDirtyLog& log = window.device_dirty_log();
    log.set_tracking(true);

    // Outside the LPAR: no span, nothing marked.
    CHECK_FALSE(memory.write_span(GuestPhysAddr{4 * kMiB - 8}, 16).has_value());
    CHECK(dirty_pages(harvest(log, window.size())) == 0);

    // Moved: the moved-from span is empty and marks nothing; the new owner marks when it goes.
    std::optional<GuestWriteSpan> moved;
    {
        auto first = memory.write_span(GuestPhysAddr{10 * kPageSize}, 8);
        REQUIRE(first);
        moved.emplace(std::move(*first));
        CHECK(first->size() == 0);
        CHECK(first->data() == nullptr);
    }
    CHECK(dirty_pages(harvest(log, window.size())) == 0);  // not written yet
    REQUIRE(moved->size() == 8);
    std::memset(moved->data(), 0x77, moved->size());
    moved.reset();
    auto bitmap = harvest(log, window.size());
    CHECK(page_dirty(bitmap, 10 * kPageSize));
    CHECK(dirty_pages(bitmap) == 1);
    CHECK(dirty_pages(harvest(log, window.size())) == 0);  // and only once

    // Move-assigned over a live span: the span it replaces is released (marked) there and then.
    auto a = memory.write_span(GuestPhysAddr{20 * kPageSize}, 8);
    auto b = memory.write_span(GuestPhysAddr{30 * kPageSize}, 8);
    REQUIRE(a);
    REQUIRE(b);
    *a = std::move(*b);
    bitmap = harvest(log, window.size());
    CHECK(page_dirty(bitmap, 20 * kPageSize));
    CHECK(dirty_pages(bitmap) == 1);
    a.reset();
    b.reset();  // moved-from
    bitmap = harvest(log, window.size());
    CHECK(page_dirty(bitmap, 30 * kPageSize));
    CHECK(dirty_pages(bitmap) == 1);

    // With tracking off nothing is marked (and nothing is remembered for later).
    log.set_tracking(false);
    REQUIRE(memory.write_object(GuestPhysAddr{40 * kPageSize}, std::uint64_t{1}));
    log.set_tracking(true);
    CHECK(dirty_pages(harvest(log, window.size())) == 0);
}

TEST_CASE("a GuestMemory without a dirty log writes through spans too", "[guest_memory]") {
    std::vector<std::uint8_t> host(64 * 1024, 0);
    GuestMemory memory(host.data(), host.size());
    {
        auto span = memory.write_span(GuestPhysAddr{100}, 4);
        REQUIRE(span);
        CHECK(span->bytes().data() == host.data() + 100);
        std::memset(span->data(), 0xab, span->size());
    }
    CHECK(host[100] == 0xab);
    CHECK(host[103] == 0xab);
    CHECK(host[104] == 0);
    CHECK_FALSE(memory.write_span(GuestPhysAddr{64 * 1024 - 3}, 4).has_value());
}
