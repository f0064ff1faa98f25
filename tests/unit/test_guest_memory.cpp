#include <catch2/catch.hpp>

#include <cstring>

#include "storage/arena.hpp"
#include "storage/guest_memory.hpp"

using namespace lparvisor;

TEST_CASE("GuestMemory checks address + length, including overflow", "[guest_memory]") {
    Arena arena(8 * kMiB, HugePagePolicy::Off);
    GuestWindow window(arena, {{2 * kMiB}, 4 * kMiB});
    GuestMemory memory = window.memory();
    CHECK(memory.size() == 4 * kMiB);
    CHECK(memory.slice(GuestPhysAddr{0}, 4 * kMiB));
    CHECK(memory.slice(GuestPhysAddr{4 * kMiB - 1}, 1));
    CHECK(memory.slice(GuestPhysAddr{4 * kMiB}, 0));
    CHECK_FALSE(memory.slice(GuestPhysAddr{4 * kMiB}, 1));
    CHECK_FALSE(memory.slice(GuestPhysAddr{4 * kMiB - 4}, 8));
    CHECK_FALSE(memory.slice(GuestPhysAddr{~0ull - 3}, 8));  // address + length wraps
    CHECK_FALSE(memory.slice(GuestPhysAddr{8}, ~0ull));
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
