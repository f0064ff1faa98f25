#include "storage/page_swapper.hpp"

#include <algorithm>
#include <cstring>
#include <vector>

#include "util/error.hpp"
#include "util/tsan.hpp"

namespace lparvisor {

namespace {

// One batch of pages goes through the buffer at a time: 2 MiB, the unit of origins, so a swap
// of 2 MiB-aligned LPARs is a handful of large memcpys instead of thousands of small ones.
constexpr std::uint64_t kBatchBytes = 512 * kPageSize;

void check_range(const Arena& arena, const StorageKeys& keys, ArenaRange range, const char* op,
                 const char* which) {
    std::string where =
        std::string(op) + ": " + which + " " + format_range_mib(range.start.value, range.size);
    if (range.start.value % kPageSize != 0 || range.size % kPageSize != 0)
        throw Error(ErrorKind::InvalidArgument, where + " is not 4 KiB aligned");
    if (range.start.value > arena.size() || range.size > arena.size() - range.start.value)
        throw Error(ErrorKind::InvalidArgument,
                    where + " is outside main storage (" + format_mib(arena.size()) + ")");
    if (range.end() > keys.frame_count() * kPageSize)
        throw Error(ErrorKind::InvalidArgument, where + " is outside the storage keys (" +
                                                    format_mib(keys.frame_count() * kPageSize) +
                                                    ")");
}

// Exchanges two disjoint equal blocks batch by batch; reports `credit(batch)` bytes per batch.
class BlockSwapper {
  public:
    BlockSwapper(Arena& arena, StorageKeys& keys, std::uint64_t largest_block)
        : arena_(arena), keys_(keys), buffer_(std::min(kBatchBytes, largest_block)) {}

    template <typename Credit>
    void swap(std::uint64_t a, std::uint64_t b, std::uint64_t size, Credit credit) {
        for (std::uint64_t done = 0; done < size;) {
            std::uint64_t batch = std::min<std::uint64_t>(buffer_.size(), size - done);
            ArenaRange ra{{a + done}, batch};
            ArenaRange rb{{b + done}, batch};
            auto pa = arena_.bytes(ra);
            auto pb = arena_.bytes(rb);
            {
                TsanIgnoreGuestStorage guest_storage;
                std::memcpy(buffer_.data(), pa.data(), batch);  // read LPAR A's pages
                std::memcpy(pa.data(), pb.data(), batch);       // store B's pages in A's place
                std::memcpy(pb.data(), buffer_.data(), batch);  // and A's in B's
            }
            auto ka = keys_.frames(ra);
            auto kb = keys_.frames(rb);
            std::swap_ranges(ka.begin(), ka.end(), kb.begin());  // each key goes with its page
            done += batch;
            credit(batch);
        }
    }

  private:
    Arena& arena_;
    StorageKeys& keys_;
    std::vector<std::uint8_t> buffer_;
};

}  // namespace

std::uint64_t swap_equal_ranges(Arena& arena, StorageKeys& keys, ArenaRange a, ArenaRange b,
                                const CopyProgress& progress) {
    const char* op = "swap_equal_ranges";
    check_range(arena, keys, a, op, "range");
    check_range(arena, keys, b, op, "range");
    if (a.size != b.size)
        throw Error(ErrorKind::InvalidArgument,
                    std::string(op) + ": " + format_range_mib(a.start.value, a.size) + " and " +
                        format_range_mib(b.start.value, b.size) + " differ in size (" +
                        format_mib(a.size) + " vs " + format_mib(b.size) + ")");
    if (a.overlaps(b))
        throw Error(ErrorKind::InvalidArgument,
                    std::string(op) + ": " + format_range_mib(a.start.value, a.size) + " and " +
                        format_range_mib(b.start.value, b.size) + " overlap");
    if (a.size == 0) return 0;

    const std::uint64_t total = a.size + b.size;
    std::uint64_t done = 0;
    BlockSwapper swapper(arena, keys, a.size);
    swapper.swap(a.start.value, b.start.value, a.size, [&](std::uint64_t batch) {
        done += 2 * batch;  // both LPARs' pages of this batch are now in place
        if (progress) progress(done, total);
    });
    return total;
}

std::uint64_t rotate_adjacent_ranges(Arena& arena, StorageKeys& keys, ArenaRange lower,
                                     ArenaRange upper, const CopyProgress& progress) {
    const char* op = "rotate_adjacent_ranges";
    check_range(arena, keys, lower, op, "lower range");
    check_range(arena, keys, upper, op, "upper range");
    if (lower.end() != upper.start.value)
        throw Error(ErrorKind::InvalidArgument,
                    std::string(op) + ": lower range " +
                        format_range_mib(lower.start.value, lower.size) +
                        " must end where upper range " +
                        format_range_mib(upper.start.value, upper.size) + " starts");
    if (lower.size == 0 || upper.size == 0) return 0;

    // Gries-Mills rotation. The invariant: [start, start + a) holds the still-unplaced part of
    // "A" (lower's content) and [start + a, start + a + b) the unplaced part of "B"; everything
    // outside is final. Each step swaps the smaller block with the equal-sized far end of the
    // other, which puts that many bytes in their final place (Euclid on the sizes), so the loop
    // ends after at most total / 4 KiB steps and every swap is between disjoint blocks.
    const std::uint64_t total = lower.size + upper.size;
    std::uint64_t done = 0;
    BlockSwapper swapper(arena, keys, std::min(lower.size, upper.size));
    std::uint64_t start = lower.start.value;
    std::uint64_t a = lower.size;
    std::uint64_t b = upper.size;
    while (a != 0 && b != 0) {
        if (a == b) {  // A B -> B A: both blocks final
            swapper.swap(start, start + a, a, [&](std::uint64_t batch) {
                done += 2 * batch;
                if (progress) progress(done, total);
            });
            break;
        }
        auto credit = [&](std::uint64_t batch) {
            done += batch;
            if (progress) progress(done, total);
        };
        if (a < b) {
            // A B1 B2 with |B1| = |A|  ->  B1 A B2: B1 is final; go on with (A, B2).
            swapper.swap(start, start + a, a, credit);
            start += a;
            b -= a;
        } else {
            // A1 A2 B with |A2| = |B|  ->  A1 B A2: A2 is final; go on with (A1, B).
            swapper.swap(start + a - b, start + a, b, credit);
            a -= b;
        }
    }
    return total;
}

}  // namespace lparvisor
