// The patent's EXCHANGE (claim 7): two LPARs trade their main storage areas. Both are stopped by
// the caller; their storage is exchanged page by page, each page with its storage key ("read
// one LPAR's page and key, store it in the other's, repeat"), through one bounded buffer: there
// is never a second copy of a whole LPAR, because in the situation the patent describes (the
// LPARs use all of main storage) there is no room for one.
//
// Two shapes:
//  - swap_equal_ranges: two disjoint areas of the same size change contents in place.
//  - rotate_adjacent_ranges: two adjacent areas of any sizes change places ("LPAR1 0-2 MiB,
//    LPAR2 2-256 MiB" becomes "LPAR2 0-254 MiB, LPAR1 254-256 MiB") with no spare memory.
//
// Both validate everything before touching a byte: a refused call changes nothing.
// Byte counts (return values and progress) count every byte of LPAR storage that ends up in a
// new place, both LPARs together: a swap of two 8 MiB areas reports 16 MiB. The memory traffic
// is higher (a swap reads and writes each byte twice, through the buffer).
#pragma once

#include <cstdint>

#include "storage/address.hpp"
#include "storage/arena.hpp"
#include "storage/page_mover.hpp"  // CopyProgress
#include "storage/storage_keys.hpp"

namespace lparvisor {

// Exchanges the contents and keys of `a` and `b`: same size, disjoint, 4 KiB aligned, inside
// the arena (throws InvalidArgument otherwise). Returns a.size + b.size (0 for empty ranges).
std::uint64_t swap_equal_ranges(Arena& arena, StorageKeys& keys, ArenaRange a, ArenaRange b,
                                const CopyProgress& progress = {});

// `lower` must end where `upper` starts (both 4 KiB aligned, inside the arena; throws
// InvalidArgument otherwise). Afterwards upper's pages and keys start at lower.start and lower's
// follow them. In place with one batch of extra memory (Gries-Mills block swaps: every swap
// puts at least one block in its final place, so the bytes moved are about twice the total, as
// with three reversals, but in large batches). Returns lower.size + upper.size, or 0 when either
// is empty (nothing moves).
std::uint64_t rotate_adjacent_ranges(Arena& arena, StorageKeys& keys, ArenaRange lower,
                                     ArenaRange upper, const CopyProgress& progress = {});

}  // namespace lparvisor
