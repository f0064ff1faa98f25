#include <catch2/catch.hpp>

#include <cstring>
#include <vector>

#include "storage/arena.hpp"
#include "storage/page_swapper.hpp"
#include "util/error.hpp"

using namespace lparvisor;

namespace {

constexpr std::uint64_t MiB = kMiB;

std::uint8_t key_of_page(std::uint64_t page) {
    return static_cast<std::uint8_t>((page * 0x12 + 7) & 0xfe);
}

// Each 8-byte word holds its own original offset + 1 and each page's key a value derived from
// its original page number: after an exchange, every word and key tells where it came from.
void tag_everything(Arena& arena, StorageKeys& keys) {
    auto bytes = arena.bytes({{0}, arena.size()});
    for (std::uint64_t i = 0; i < arena.size(); i += 8) {
        std::uint64_t word = i + 1;
        std::memcpy(bytes.data() + i, &word, 8);
    }
    auto k = keys.frames({{0}, arena.size()});
    for (std::size_t page = 0; page < k.size(); ++page) k[page] = key_of_page(page);
}

// `source(offset)` is where the byte now at `offset` came from; checks every word and key of
// the arena (also that nothing outside the exchanged ranges changed).
template <typename Source>
void check_all(const Arena& arena, const StorageKeys& keys, Source source) {
    auto bytes = arena.bytes({{0}, arena.size()});
    for (std::uint64_t offset = 0; offset < arena.size(); offset += 8) {
        std::uint64_t expected = source(offset) + 1;
        std::uint64_t got;
        std::memcpy(&got, bytes.data() + offset, 8);
        if (got != expected)
            FAIL("word at " << offset << " is " << got - 1 << "'s, expected " << expected - 1
                            << "'s");
    }
    auto k = keys.frames({{0}, arena.size()});
    for (std::uint64_t page = 0; page < k.size(); ++page) {
        std::uint64_t from_page = source(page * kPageSize) / kPageSize;
        if (k[page] != key_of_page(from_page))
            FAIL("key of page " << page << " is " << int(k[page]) << ", expected page " << from_page
                                << "'s " << int(key_of_page(from_page)));
    }
}

void check_unchanged(const Arena& arena, const StorageKeys& keys) {
    check_all(arena, keys, [](std::uint64_t offset) { return offset; });
}

void swap_and_check(std::uint64_t a_mib, std::uint64_t b_mib, std::uint64_t size_mib) {
    INFO("swap " << a_mib << " and " << b_mib << ", " << size_mib << " MiB");
    Arena arena(40 * MiB, HugePagePolicy::Off);
    StorageKeys keys(arena.size());
    tag_everything(arena, keys);
    ArenaRange a{{a_mib * MiB}, size_mib * MiB};
    ArenaRange b{{b_mib * MiB}, size_mib * MiB};
    std::uint64_t last = 0;
    auto moved = swap_equal_ranges(arena, keys, a, b, [&](std::uint64_t done, std::uint64_t total) {
        CHECK(done > last);
        CHECK(total == 2 * size_mib * MiB);
        last = done;
    });
    CHECK(moved == 2 * size_mib * MiB);
    CHECK(last == moved);
    check_all(arena, keys, [&](std::uint64_t offset) {
        if (a.start.value <= offset && offset < a.end())
            return offset - a.start.value + b.start.value;
        if (b.start.value <= offset && offset < b.end())
            return offset - b.start.value + a.start.value;
        return offset;
    });
}

void rotate_and_check(std::uint64_t start, std::uint64_t lower_size, std::uint64_t upper_size,
                      std::uint64_t arena_size = 40 * MiB) {
    INFO("rotate at " << start << ": lower " << lower_size << " bytes, upper " << upper_size);
    Arena arena(arena_size, HugePagePolicy::Off);
    StorageKeys keys(arena.size());
    tag_everything(arena, keys);
    ArenaRange lower{{start}, lower_size};
    ArenaRange upper{{start + lower_size}, upper_size};
    std::uint64_t last = 0;
    auto moved = rotate_adjacent_ranges(arena, keys, lower, upper,
                                        [&](std::uint64_t done, std::uint64_t total) {
                                            CHECK(done > last);
                                            CHECK(total == lower_size + upper_size);
                                            last = done;
                                        });
    CHECK(moved == lower_size + upper_size);
    CHECK(last == moved);
    // upper's content now starts at `start`, lower's follows it.
    check_all(arena, keys, [&](std::uint64_t offset) {
        if (offset < start || offset >= upper.end()) return offset;
        std::uint64_t rel = offset - start;
        return rel < upper_size ? upper.start.value + rel : lower.start.value + rel - upper_size;
    });
}

template <typename Call>
void require_refused_unchanged(Call call, const std::string& message_part) {
    Arena arena(16 * MiB, HugePagePolicy::Off);
    StorageKeys keys(arena.size());
    tag_everything(arena, keys);
    try {
        call(arena, keys);
        FAIL("accepted");
    } catch (const Error& e) {
        INFO(e.what());
        CHECK(e.kind() == ErrorKind::InvalidArgument);
        CHECK_THAT(e.what(), Catch::Contains(message_part));
    }
    check_unchanged(arena, keys);
}

}  // namespace

TEST_CASE("equal areas exchange every page and key", "[page_swapper]") {
    swap_and_check(0, 16, 16);  // the two LPARs fill 32 of 40 MiB
    swap_and_check(20, 2, 8);   // b below a
    swap_and_check(4, 6, 2);    // adjacent, exactly one batch
    swap_and_check(0, 38, 2);
    swap_and_check(1, 21, 19);  // not a batch multiple, odd MiB origins
}

TEST_CASE("adjacent areas of any sizes change places in place", "[page_swapper]") {
    const std::uint64_t pairs[][2] = {{2, 30}, {30, 2},  {16, 16}, {2, 2},  {6, 10},
                                      {10, 6}, {12, 20}, {14, 4},  {2, 36}, {36, 2}};
    for (auto [lower, upper] : pairs) rotate_and_check(0, lower * MiB, upper * MiB);
    rotate_and_check(4 * MiB, 8 * MiB, 22 * MiB);  // not at the arena's start
    rotate_and_check(2 * MiB, 22 * MiB, 8 * MiB);
    // Page granularity, sizes that are not batch multiples and have small common divisors.
    rotate_and_check(kPageSize, 3 * kPageSize, 5 * MiB + kPageSize);
    rotate_and_check(0, 7 * MiB + 3 * kPageSize, kPageSize);
    rotate_and_check(0, kPageSize, 7 * MiB + 3 * kPageSize);
}

TEST_CASE("very unequal rotation: 2 MiB vs 254 MiB", "[page_swapper]") {
    rotate_and_check(0, 2 * MiB, 254 * MiB, 256 * MiB);
    rotate_and_check(0, 254 * MiB, 2 * MiB, 256 * MiB);
}

TEST_CASE("empty ranges move nothing", "[page_swapper]") {
    Arena arena(8 * MiB, HugePagePolicy::Off);
    StorageKeys keys(arena.size());
    tag_everything(arena, keys);
    CHECK(swap_equal_ranges(arena, keys, {{0}, 0}, {{2 * MiB}, 0}) == 0);
    CHECK(rotate_adjacent_ranges(arena, keys, {{0}, 0}, {{0}, 4 * MiB}) == 0);
    CHECK(rotate_adjacent_ranges(arena, keys, {{0}, 4 * MiB}, {{4 * MiB}, 0}) == 0);
    check_unchanged(arena, keys);
}

TEST_CASE("refused exchanges change nothing", "[page_swapper]") {
    using R = ArenaRange;
    SECTION("different sizes") {
        require_refused_unchanged(
            [](Arena& a, StorageKeys& k) {
                swap_equal_ranges(a, k, R{{0}, 4 * MiB}, R{{8 * MiB}, 2 * MiB});
            },
            "0-4 MiB and 8-10 MiB differ in size (4 MiB vs 2 MiB)");
    }
    SECTION("overlapping") {
        require_refused_unchanged(
            [](Arena& a, StorageKeys& k) {
                swap_equal_ranges(a, k, R{{0}, 4 * MiB}, R{{2 * MiB}, 4 * MiB});
            },
            "0-4 MiB and 2-6 MiB overlap");
    }
    SECTION("outside main storage") {
        require_refused_unchanged(
            [](Arena& a, StorageKeys& k) {
                swap_equal_ranges(a, k, R{{0}, 4 * MiB}, R{{14 * MiB}, 4 * MiB});
            },
            "14-18 MiB is outside main storage (16 MiB)");
        require_refused_unchanged(
            [](Arena& a, StorageKeys& k) {
                rotate_adjacent_ranges(a, k, R{{8 * MiB}, 4 * MiB}, R{{12 * MiB}, 6 * MiB});
            },
            "upper range 12-18 MiB is outside main storage");
    }
    SECTION("misaligned") {
        require_refused_unchanged(
            [](Arena& a, StorageKeys& k) {
                swap_equal_ranges(a, k, R{{100}, 4096}, R{{8 * MiB}, 4096});
            },
            "is not 4 KiB aligned");
        require_refused_unchanged(
            [](Arena& a, StorageKeys& k) {
                rotate_adjacent_ranges(a, k, R{{0}, 6000}, R{{6000}, 4096});
            },
            "is not 4 KiB aligned");
    }
    SECTION("not adjacent") {
        require_refused_unchanged(
            [](Arena& a, StorageKeys& k) {
                rotate_adjacent_ranges(a, k, R{{0}, 4 * MiB}, R{{6 * MiB}, 4 * MiB});
            },
            "lower range 0-4 MiB must end where upper range 6-10 MiB starts");
        require_refused_unchanged(
            [](Arena& a, StorageKeys& k) {  // given in the wrong order
                rotate_adjacent_ranges(a, k, R{{4 * MiB}, 4 * MiB}, R{{0}, 4 * MiB});
            },
            "must end where");
    }
}
