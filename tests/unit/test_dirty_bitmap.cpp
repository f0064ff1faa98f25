#include <catch2/catch.hpp>

#include <random>
#include <utility>
#include <vector>

#include "storage/address.hpp"
#include "storage/dirty_bitmap.hpp"
#include "util/error.hpp"

using namespace lparvisor;

namespace {

std::vector<std::pair<std::uint64_t, std::uint64_t>> runs(const DirtyBitmap& bitmap,
                                                          std::uint64_t first,
                                                          std::uint64_t count) {
    std::vector<std::pair<std::uint64_t, std::uint64_t>> found;
    bitmap.for_each_run(first, count, [&](std::uint64_t page, std::uint64_t length) {
        found.emplace_back(page, length);
    });
    return found;
}

}  // namespace

TEST_CASE("a dirty bitmap finds its runs across word edges", "[dirty_bitmap]") {
    DirtyBitmap bitmap(200 * kPageSize);
    CHECK(bitmap.pages() == 200);
    CHECK(bitmap.count() == 0);
    CHECK(runs(bitmap, 0, 200).empty());
    // A run inside one word, one across the 64/128 edges, and the very last page.
    for (std::uint64_t page : {3, 4, 5, 60, 61, 62, 63, 64, 65, 127, 128, 199}) bitmap.set(page);
    using Runs = std::vector<std::pair<std::uint64_t, std::uint64_t>>;
    CHECK(runs(bitmap, 0, 200) == Runs{{3, 3}, {60, 6}, {127, 2}, {199, 1}});
    CHECK(bitmap.count() == 12);
    // A window cuts runs at its edges.
    CHECK(runs(bitmap, 4, 58) == Runs{{4, 2}, {60, 2}});
    CHECK(bitmap.count(4, 58) == 4);
    CHECK(runs(bitmap, 128, 72) == Runs{{128, 1}, {199, 1}});
    CHECK(bitmap.test(199));
    CHECK_FALSE(bitmap.test(198));
}

TEST_CASE("a dirty bitmap refuses a window past its end", "[dirty_bitmap]") {
    DirtyBitmap bitmap(10 * kPageSize + 1);  // rounded up to 11 pages
    CHECK(bitmap.pages() == 11);
    CHECK(bitmap.count(0, 11) == 0);
    CHECK_THROWS_AS(bitmap.count(5, 7), Error);
    CHECK_THROWS_AS(bitmap.count(12, 0), Error);
    CHECK_THROWS_AS(runs(bitmap, 0, ~std::uint64_t{0}), Error);
}

TEST_CASE("dirty bitmap runs match a page-by-page walk (seeded)", "[dirty_bitmap]") {
    const auto seed = Catch::rngSeed();
    INFO("seed " << seed << " (replay: --rng-seed " << seed << ")");
    std::mt19937_64 random(seed);
    for (int round = 0; round < 50; ++round) {
        const std::uint64_t pages = 1 + random() % 700;
        DirtyBitmap bitmap(pages * kPageSize);
        std::vector<bool> expected(pages, false);
        const unsigned density = 1 + random() % 99;  // percent
        for (std::uint64_t page = 0; page < pages; ++page)
            if (random() % 100 < density) bitmap.set(page), expected[page] = true;
        const std::uint64_t first = random() % pages;
        const std::uint64_t count = random() % (pages - first + 1);
        std::vector<bool> seen(pages, false);
        std::uint64_t previous_end = 0;
        bool first_run = true;
        bitmap.for_each_run(first, count, [&](std::uint64_t page, std::uint64_t length) {
            REQUIRE(length > 0);
            REQUIRE(page >= first);
            REQUIRE(page + length <= first + count);
            // Maximal: a run never starts right where the previous one ended.
            if (!first_run) REQUIRE(page > previous_end);
            first_run = false;
            previous_end = page + length;
            for (std::uint64_t p = page; p < page + length; ++p) seen[p] = true;
        });
        std::uint64_t dirty = 0;
        for (std::uint64_t page = first; page < first + count; ++page) {
            REQUIRE(seen[page] == expected[page]);
            dirty += expected[page];
        }
        REQUIRE(bitmap.count(first, count) == dirty);
    }
}
