#include "storage/page_mover.hpp"

#include <algorithm>
#include <cstring>

#include "util/error.hpp"
#include "util/tsan.hpp"

namespace lparvisor {

namespace {

// Pages are moved in batches of this size: each batch is one memmove (which is itself
// overlap-safe), walked in the overlap-safe order, so the result is the patent's page-by-page
// transfer at memmove speed.
constexpr std::uint64_t kBatchBytes = 512 * kPageSize;

void move_batch(Arena& arena, StorageKeys& keys, std::uint64_t src, std::uint64_t dst,
                std::uint64_t bytes) {
    ArenaRange src_range{{src}, bytes};
    ArenaRange dst_range{{dst}, bytes};
    auto src_keys = keys.frames(src_range);  // step 205: read the keys of the source pages
    auto dst_keys = keys.frames(dst_range);
    auto src_bytes = arena.bytes(src_range);
    auto dst_bytes = arena.bytes(dst_range);
    {
        TsanIgnoreGuestStorage guest_storage;
        std::memmove(dst_bytes.data(), src_bytes.data(), bytes);  // step 206: the pages
    }
    std::memmove(dst_keys.data(), src_keys.data(), src_keys.size());  // step 207: their keys
}

}  // namespace

std::uint64_t move_pages(Arena& arena, StorageKeys& keys, ArenaRange from, ArenaOffset to,
                         const CopyProgress& progress) {
    if (from.start.value % kPageSize != 0 || from.size % kPageSize != 0 ||
        to.value % kPageSize != 0)
        throw Error(ErrorKind::InvalidArgument, "move_pages: ranges must be 4 KiB aligned");
    // Validate both ends up front so that a bad request changes nothing.
    arena.bytes(from);
    arena.bytes({to, from.size});
    keys.frames(from);
    keys.frames({to, from.size});
    if (to == from.start || from.size == 0) return 0;

    const bool moving_up = to.value > from.start.value;
    std::uint64_t copied = 0;
    // Step 204: start at the top when moving up (the patent's 384 -> 448 MiB example), at the
    // bottom when moving down; step 208 steps one batch at a time until step 209.
    while (copied < from.size) {
        std::uint64_t batch = std::min(kBatchBytes, from.size - copied);
        std::uint64_t offset = moving_up ? from.size - copied - batch : copied;
        move_batch(arena, keys, from.start.value + offset, to.value + offset, batch);
        copied += batch;
        if (progress) progress(copied, from.size);
    }
    return copied;
}

void move_pages_back(Arena& arena, StorageKeys& keys, ArenaRange from, ArenaOffset to,
                     std::uint64_t copied) {
    copied = std::min(copied, from.size);
    if (copied == 0 || to == from.start) return;
    // move_pages copied the top `copied` bytes when moving up, the bottom ones when moving down.
    const std::uint64_t offset = to.value > from.start.value ? from.size - copied : 0;
    move_pages(arena, keys, {{to.value + offset}, copied}, ArenaOffset{from.start.value + offset});
}

std::uint64_t copy_populated(Arena& arena, ArenaOffset src, ArenaOffset dst, std::uint64_t bytes) {
    auto source = arena.bytes({src, bytes});
    auto target = arena.bytes({dst, bytes});
    if (ArenaRange{src, bytes}.overlaps({dst, bytes}))
        throw Error(ErrorKind::InvalidArgument, "copy_populated: ranges overlap");
    const std::uint64_t granule = arena.hugetlb() ? kOriginAlignment : kPageSize;
    TsanIgnoreGuestStorage guest_storage;
    std::uint64_t copied = 0;
    for (std::uint64_t offset = 0; offset < bytes;) {
        auto data = arena.next_data(ArenaOffset{src.value + offset});
        std::uint64_t data_start = std::min(bytes, data ? data->value - src.value : bytes);
        if (data_start > offset) {  // a hole: the destination must read as zeros too
            std::uint64_t hole_end = data_start / granule * granule;
            std::uint64_t hole_start = (offset + granule - 1) / granule * granule;
            if (hole_end > hole_start)
                arena.punch({{dst.value + hole_start}, hole_end - hole_start});
            // Partial granules at the edges are zeroed by hand.
            std::memset(target.data() + offset, 0, std::min(hole_start, data_start) - offset);
            if (hole_end >= hole_start && data_start > hole_end)
                std::memset(target.data() + hole_end, 0, data_start - hole_end);
            offset = data_start;
            continue;
        }
        auto hole = arena.next_hole(ArenaOffset{src.value + offset});
        std::uint64_t data_end = std::min(bytes, hole.value - src.value);
        std::memcpy(target.data() + offset, source.data() + offset, data_end - offset);
        copied += data_end - offset;
        offset = data_end;
    }
    return copied;
}

std::uint64_t copy_dirty_pages(Arena& arena, const DirtyBitmap& dirty, std::uint64_t first_page,
                               ArenaOffset src, ArenaOffset dst, std::uint64_t bytes) {
    if (bytes % kPageSize != 0)
        throw Error(ErrorKind::InvalidArgument, "copy_dirty_pages: not whole pages");
    if (ArenaRange{src, bytes}.overlaps({dst, bytes}))
        throw Error(ErrorKind::InvalidArgument, "copy_dirty_pages: ranges overlap");
    auto source = arena.bytes({src, bytes});
    auto target = arena.bytes({dst, bytes});
    TsanIgnoreGuestStorage guest_storage;
    std::uint64_t copied = 0;
    dirty.for_each_run(first_page, bytes / kPageSize, [&](std::uint64_t page, std::uint64_t run) {
        const std::uint64_t offset = (page - first_page) * kPageSize;
        std::memcpy(target.data() + offset, source.data() + offset, run * kPageSize);
        copied += run * kPageSize;
    });
    return copied;
}

std::uint64_t copy_chunk_with_keys(Arena& arena, StorageKeys& keys, ArenaOffset src,
                                   ArenaOffset dst, std::uint64_t bytes, const DirtyBitmap* dirty,
                                   std::uint64_t first_page,
                                   std::chrono::steady_clock::time_point* copied_at) {
    // Both key ranges are checked before a byte moves.
    auto src_keys = keys.frames({src, bytes});
    auto dst_keys = keys.frames({dst, bytes});
    const std::uint64_t copied = dirty
                                     ? copy_dirty_pages(arena, *dirty, first_page, src, dst, bytes)
                                     : copy_populated(arena, src, dst, bytes);
    if (copied_at) *copied_at = std::chrono::steady_clock::now();
    std::memcpy(dst_keys.data(), src_keys.data(), src_keys.size());  // the ranges are disjoint
    return copied;
}

ArenaRange vacated_range(ArenaRange from, ArenaOffset to) {
    ArenaRange target{to, from.size};
    if (!from.overlaps(target)) return from;
    if (to.value > from.start.value) return {from.start, to.value - from.start.value};
    return {{target.end()}, from.end() - target.end()};
}

ArenaRange newly_occupied_range(ArenaRange from, ArenaOffset to) {
    ArenaRange target{to, from.size};
    if (!from.overlaps(target)) return target;
    if (to.value > from.start.value) return {{from.end()}, target.end() - from.end()};
    return {to, from.start.value - to.value};
}

void scrub(Arena& arena, StorageKeys& keys, ArenaRange range) {
    if (range.size == 0) return;
    arena.punch(range);
    keys.clear(range);
}

}  // namespace lparvisor
