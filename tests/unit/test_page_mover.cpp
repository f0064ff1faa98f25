#include <catch2/catch.hpp>

#include <algorithm>
#include <cstring>
#include <random>
#include <vector>

#include "storage/arena.hpp"
#include "storage/page_mover.hpp"
#include "util/error.hpp"

using namespace lparvisor;

namespace {

constexpr std::uint64_t MiB = kMiB;

// Each 8-byte word holds its own original offset: a word found anywhere else after a move tells
// exactly where it came from.
void fill_with_addresses(Arena& arena, ArenaRange range) {
    auto bytes = arena.bytes(range);
    for (std::uint64_t i = 0; i < range.size; i += 8) {
        std::uint64_t word = range.start.value + i + 1;
        std::memcpy(bytes.data() + i, &word, 8);
    }
}

std::uint64_t word_at(const Arena& arena, std::uint64_t offset) {
    std::uint64_t word;
    std::memcpy(&word, arena.bytes({{offset}, 8}).data(), 8);
    return word;
}

void set_keys(StorageKeys& keys, ArenaRange range) {
    auto k = keys.frames(range);
    for (std::size_t i = 0; i < k.size(); ++i)
        k[i] = static_cast<std::uint8_t>(((range.start.value / kPageSize + i) * 0x12) & 0xfe);
}

void check_moved(const Arena& arena, const StorageKeys& keys, ArenaRange from, ArenaOffset to) {
    for (std::uint64_t i = 0; i < from.size; i += 8) {
        std::uint64_t expected = from.start.value + i + 1;
        std::uint64_t got = word_at(arena, to.value + i);
        if (got != expected)
            FAIL("word " << i << " after the move: " << got << " expected " << expected);
    }
    auto k = keys.frames({to, from.size});
    for (std::size_t i = 0; i < k.size(); ++i) {
        auto expected =
            static_cast<std::uint8_t>(((from.start.value / kPageSize + i) * 0x12) & 0xfe);
        if (k[i] != expected)
            FAIL("key of page " << i << " is " << int(k[i]) << ", expected " << int(expected));
    }
}

void move_and_check(std::uint64_t from_mib, std::uint64_t size_mib, std::uint64_t to_mib) {
    Arena arena(64 * MiB, HugePagePolicy::Off);
    StorageKeys keys(arena.size());
    ArenaRange from{{from_mib * MiB}, size_mib * MiB};
    ArenaOffset to{to_mib * MiB};
    fill_with_addresses(arena, from);
    set_keys(keys, from);
    auto copied = move_pages(arena, keys, from, to);
    CHECK(copied == from.size);
    check_moved(arena, keys, from, to);

    auto vacated = vacated_range(from, to);
    scrub(arena, keys, vacated);
    auto bytes = arena.bytes(vacated);
    CHECK(std::all_of(bytes.begin(), bytes.end(), [](std::uint8_t b) { return b == 0; }));
    auto k = keys.frames(vacated);
    CHECK(std::all_of(k.begin(), k.end(), [](std::uint8_t b) { return b == 0; }));
    // The scrub must not touch the moved data.
    check_moved(arena, keys, from, to);
}

}  // namespace

TEST_CASE("moving up with overlap copies top-down and keeps every page and key", "[page_mover]") {
    move_and_check(8, 16, 12);  // overlap of 12 MiB, delta 4 MiB
    move_and_check(8, 16, 10);  // delta smaller than one batch (2 MiB)
}

TEST_CASE("moving down with overlap copies bottom-up", "[page_mover]") {
    move_and_check(12, 16, 8);
    move_and_check(12, 16, 10);
}

TEST_CASE("disjoint moves in both directions", "[page_mover]") {
    move_and_check(0, 16, 32);
    move_and_check(40, 16, 2);
}

TEST_CASE("vacated and newly occupied ranges", "[page_mover]") {
    ArenaRange from{{128 * MiB}, 256 * MiB};
    auto up = vacated_range(from, ArenaOffset{192 * MiB});
    CHECK(up.start.value == 128 * MiB);
    CHECK(up.size == 64 * MiB);
    auto grown = newly_occupied_range(from, ArenaOffset{192 * MiB});
    CHECK(grown.start.value == 384 * MiB);
    CHECK(grown.size == 64 * MiB);
    auto down = vacated_range(from, ArenaOffset{100 * MiB});
    CHECK(down.start.value == 356 * MiB);
    CHECK(down.size == 28 * MiB);
    auto disjoint = vacated_range(from, ArenaOffset{400 * MiB});
    CHECK(disjoint.start.value == 128 * MiB);
    CHECK(disjoint.size == 256 * MiB);
}

TEST_CASE("a move outside the arena is refused before anything is copied", "[page_mover]") {
    Arena arena(16 * MiB, HugePagePolicy::Off);
    StorageKeys keys(arena.size());
    ArenaRange from{{0}, 8 * MiB};
    fill_with_addresses(arena, from);
    CHECK_THROWS_AS(move_pages(arena, keys, from, ArenaOffset{10 * MiB}), Error);
    CHECK(word_at(arena, 0) == 1);
    CHECK(word_at(arena, 8 * MiB - 8) == 8 * MiB - 8 + 1);
    CHECK_THROWS_AS(move_pages(arena, keys, {{0}, 4097}, ArenaOffset{8 * MiB}), Error);
}

TEST_CASE("punched storage reads back as zeros and frees its pages", "[arena]") {
    Arena arena(8 * MiB, HugePagePolicy::Off);
    ArenaRange range{{2 * MiB}, 2 * MiB};
    arena.populate(range);
    CHECK(arena.is_populated(range.start));
    std::memset(arena.bytes(range).data(), 0xab, range.size);
    arena.punch(range);
    CHECK_FALSE(arena.is_populated(range.start));
    auto bytes = arena.bytes(range);
    CHECK(std::all_of(bytes.begin(), bytes.end(), [](std::uint8_t b) { return b == 0; }));
}

TEST_CASE("copy_populated copies backed pages and leaves holes as holes", "[page_mover]") {
    Arena arena(32 * MiB, HugePagePolicy::Off);
    // Source 0-8 MiB: only 2-3 MiB and the page at 6 MiB are backed.
    std::memset(arena.bytes({{2 * MiB}, MiB}).data(), 0x5a, MiB);
    std::memset(arena.bytes({{6 * MiB}, kPageSize}).data(), 0x6b, kPageSize);
    // The destination holds stale data that must not survive where the source is a hole.
    std::memset(arena.bytes({{16 * MiB}, 8 * MiB}).data(), 0xee, 8 * MiB);
    auto copied = copy_populated(arena, ArenaOffset{0}, ArenaOffset{16 * MiB}, 8 * MiB);
    CHECK(copied == MiB + kPageSize);
    CHECK_FALSE(arena.is_populated(ArenaOffset{16 * MiB}));  // punched: a hole costs nothing
    CHECK(arena.is_populated(ArenaOffset{18 * MiB}));
    auto dst = arena.bytes({{16 * MiB}, 8 * MiB});
    for (std::uint64_t i = 0; i < 8 * MiB; i += 512) {
        std::uint8_t expected = (i >= 2 * MiB && i < 3 * MiB)               ? 0x5a
                                : (i >= 6 * MiB && i < 6 * MiB + kPageSize) ? 0x6b
                                                                            : 0;
        if (dst[i] != expected)
            FAIL("byte " << i << " is " << int(dst[i]) << ", expected " << int(expected));
    }
    CHECK_THROWS(copy_populated(arena, ArenaOffset{0}, ArenaOffset{4 * MiB}, 8 * MiB));
}

TEST_CASE("copy_dirty_pages copies the dirty pages and nothing else", "[page_mover]") {
    Arena arena(32 * MiB, HugePagePolicy::Off);
    StorageKeys keys(arena.size());
    fill_with_addresses(arena, {{0}, 4 * MiB});
    std::memset(arena.bytes({{16 * MiB}, 4 * MiB}).data(), 0xee, 4 * MiB);
    // The chunk is guest pages 256-1279 (1-5 MiB of the guest) at arena 0; dirty: 256, 300-309
    // and 1279 (its last page), plus pages outside the chunk that must be ignored.
    DirtyBitmap dirty(8 * MiB);
    for (std::uint64_t page : {255, 256, 1279, 1280}) dirty.set(page);
    for (std::uint64_t page = 300; page < 310; ++page) dirty.set(page);
    auto copied =
        copy_dirty_pages(arena, dirty, 256, ArenaOffset{0}, ArenaOffset{16 * MiB}, 4 * MiB);
    CHECK(copied == 12 * kPageSize);
    for (std::uint64_t page = 0; page < 1024; ++page) {
        const std::uint64_t dst = 16 * MiB + page * kPageSize;
        const bool was_dirty = dirty.test(256 + page);
        const std::uint64_t expected = was_dirty ? page * kPageSize + 1 : 0xeeeeeeeeeeeeeeeeULL;
        if (word_at(arena, dst) != expected ||
            word_at(arena, dst + kPageSize - 8) !=
                (was_dirty ? page * kPageSize + kPageSize - 7 : 0xeeeeeeeeeeeeeeeeULL))
            FAIL("page " << page << " of the chunk: dirty " << was_dirty << ", word "
                         << word_at(arena, dst));
    }
    CHECK_THROWS(
        copy_dirty_pages(arena, dirty, 256, ArenaOffset{0}, ArenaOffset{2 * MiB}, 4 * MiB));
    CHECK_THROWS(
        copy_dirty_pages(arena, dirty, 2000, ArenaOffset{0}, ArenaOffset{16 * MiB}, 4 * MiB));
}

TEST_CASE("copy_chunk_with_keys brings every page's key with the pages", "[page_mover]") {
    Arena arena(32 * MiB, HugePagePolicy::Off);
    StorageKeys keys(arena.size());
    fill_with_addresses(arena, {{2 * MiB}, 2 * MiB});
    set_keys(keys, {{2 * MiB}, 2 * MiB});
    SECTION("dirty pages only: the keys of the clean pages move too") {
        DirtyBitmap dirty(2 * MiB);
        dirty.set(7);
        CHECK(copy_chunk_with_keys(arena, keys, ArenaOffset{2 * MiB}, ArenaOffset{20 * MiB},
                                   2 * MiB, &dirty, 0) == kPageSize);
        CHECK(word_at(arena, 20 * MiB + 7 * kPageSize) == 2 * MiB + 7 * kPageSize + 1);
        CHECK(word_at(arena, 20 * MiB + 6 * kPageSize) == 0);
    }
    SECTION("without a bitmap: every populated page") {
        CHECK(copy_chunk_with_keys(arena, keys, ArenaOffset{2 * MiB}, ArenaOffset{20 * MiB},
                                   2 * MiB) == 2 * MiB);
        CHECK(word_at(arena, 20 * MiB + 6 * kPageSize) == 2 * MiB + 6 * kPageSize + 1);
    }
    auto src = keys.frames({{2 * MiB}, 2 * MiB});
    auto dst = keys.frames({{20 * MiB}, 2 * MiB});
    CHECK(std::equal(src.begin(), src.end(), dst.begin(), dst.end()));
    // A key range outside main storage is refused before a byte moves.
    std::memset(arena.bytes({{30 * MiB}, kPageSize}).data(), 0x11, kPageSize);
    CHECK_THROWS(
        copy_chunk_with_keys(arena, keys, ArenaOffset{2 * MiB}, ArenaOffset{30 * MiB}, 4 * MiB));
    CHECK(arena.bytes({{30 * MiB}, kPageSize})[0] == 0x11);
}

TEST_CASE("a move that fails part-way is undone exactly by move_pages_back", "[page_mover]") {
    struct Case {
        std::uint64_t from_mib, size_mib, to_mib, stop_after_batches;
    };
    // Up and down, overlapping and disjoint, failing after the first batch and later.
    for (const auto& c : {Case{8, 16, 12, 1}, Case{8, 16, 12, 5}, Case{20, 16, 14, 3},
                          Case{4, 8, 40, 2}, Case{40, 8, 4, 3}}) {
        INFO(c.from_mib << " MiB (" << c.size_mib << ") -> " << c.to_mib << " MiB, failing after "
                        << c.stop_after_batches << " batch(es)");
        Arena arena(64 * MiB, HugePagePolicy::Off);
        StorageKeys keys(arena.size());
        ArenaRange from{{c.from_mib * MiB}, c.size_mib * MiB};
        ArenaOffset to{c.to_mib * MiB};
        fill_with_addresses(arena, from);
        set_keys(keys, from);
        struct Stop {};
        std::uint64_t reported = 0;
        unsigned batches = 0;
        CHECK_THROWS_AS(move_pages(arena, keys, from, to,
                                   [&](std::uint64_t copied, std::uint64_t) {
                                       reported = copied;
                                       if (++batches == c.stop_after_batches) throw Stop{};
                                   }),
                        Stop);
        REQUIRE(reported > 0);
        REQUIRE(reported < from.size);
        move_pages_back(arena, keys, from, to, reported);
        // Every word and key is where it started (check_moved with to == from).
        check_moved(arena, keys, from, from.start);
    }
}
