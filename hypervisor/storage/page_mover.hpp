// The patent's steps 204-209: transfer an LPAR's storage page by page, each page with its
// storage key, in the order that never overwrites a page not yet copied (top down when moving
// up, bottom up when moving down). Works inside one arena; the caller has stopped the LPAR.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>

#include "storage/address.hpp"
#include "storage/arena.hpp"
#include "storage/dirty_bitmap.hpp"
#include "storage/storage_keys.hpp"

namespace lparvisor {

// Called after each batch: bytes copied so far of the total.
using CopyProgress = std::function<void(std::uint64_t copied, std::uint64_t total)>;

// Moves `from` (4 KiB aligned) to start at `to`; both ranges inside the arena. Returns bytes
// copied.
std::uint64_t move_pages(Arena& arena, StorageKeys& keys, ArenaRange from, ArenaOffset to,
                         const CopyProgress& progress = {});

// Undoes the first `copied` bytes of move_pages(from, to) (what its progress had reported when
// it stopped): moves exactly that part back, pages with their keys, in the overlap-safe order.
// What move_pages had not reached yet is still intact at `from`, so `from` is whole again.
void move_pages_back(Arena& arena, StorageKeys& keys, ArenaRange from, ArenaOffset to,
                     std::uint64_t copied);

// Copies [src, +bytes) to [dst, +bytes) (disjoint) where the source has backing, and punches the
// destination where the source is a hole (never-touched storage reads as zeros: moving it costs
// nothing). Returns the bytes actually copied. Keys are not touched. On hugetlb backing the
// kernel reports every page as data (no SEEK_HOLE there), so everything is copied.
std::uint64_t copy_populated(Arena& arena, ArenaOffset src, ArenaOffset dst, std::uint64_t bytes);

// Copies the pages of [src, +bytes) that `dirty` marks, bit `first_page` being the page at src,
// to the same place under dst (disjoint), one memcpy per run of dirty pages. Keys are not
// touched: this is the pre-copy's re-copy while the guest runs. Returns the bytes copied.
std::uint64_t copy_dirty_pages(Arena& arena, const DirtyBitmap& dirty, std::uint64_t first_page,
                               ArenaOffset src, ArenaOffset dst, std::uint64_t bytes);

// A stopped chunk of a live move reaches its new place (or an undone one its old place): its
// pages, then the storage key of every page, so a page never arrives without its key. `dirty`
// given (bit `first_page` is the page at src): only the pages written since the pre-copy's last
// harvest, the rest being there already; null: every populated page (copy_populated). The
// ranges must not overlap. Returns the bytes of pages copied; `copied_at` given, it receives the
// moment the pages were done and the keys began (a stop's phase timings).
std::uint64_t copy_chunk_with_keys(Arena& arena, StorageKeys& keys, ArenaOffset src,
                                   ArenaOffset dst, std::uint64_t bytes,
                                   const DirtyBitmap* dirty = nullptr, std::uint64_t first_page = 0,
                                   std::chrono::steady_clock::time_point* copied_at = nullptr);

// The part of `from` that the LPAR no longer occupies once it starts at `to` (one range, since
// both have the same size); empty when nothing is vacated.
ArenaRange vacated_range(ArenaRange from, ArenaOffset to);

// The part of the target that the LPAR does not occupy yet (what must be populated first).
ArenaRange newly_occupied_range(ArenaRange from, ArenaOffset to);

// MVSTOR's last step: zero the vacated storage (punch: it reads back as zeros and frees the
// memory) and reset its keys, so no later owner sees this LPAR's data.
void scrub(Arena& arena, StorageKeys& keys, ArenaRange range);

}  // namespace lparvisor
