#include "storage/guest_memory.hpp"

#include <sys/mman.h>

#include <algorithm>

#include "util/error.hpp"

namespace lparvisor {

GuestWindow::GuestWindow(const Arena& arena, ArenaRange range, std::uint64_t reserve_bytes)
    : arena_(arena),
      units_(std::max<std::uint64_t>(
          1, (std::max(range.size, reserve_bytes) + kOriginAlignment - 1) / kOriginAlignment)),
      dirty_(std::make_shared<DeviceDirtyLog>(std::max(range.size, reserve_bytes))),
      accessible_(std::make_shared<std::atomic<std::uint64_t>>(range.size)) {
    arena.bytes(range);  // bounds check: throws for a range outside main storage
    const std::uint64_t window = units_.size() * kOriginAlignment;
    // Reserve the address range first, aligned to 2 MiB so that huge pages (hugetlb or THP) and
    // KVM's large mappings line up, then map the arena into it. Above the storage the
    // reservation stays PROT_NONE until an EXPAND maps it.
    std::uint64_t reserve = window + kOriginAlignment;
    void* raw =
        ::mmap(nullptr, reserve, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (raw == MAP_FAILED) throw_errno("reserve guest window of " + format_mib(window));
    // SAFETY: the reservation's address as a number, only to align it; the pointers are made
    // from `raw` itself. head + window + tail == reserve, so the unaligned head and the tail
    // (given back) and the aligned window (kept) lie inside the `reserve` bytes just mapped.
    const auto start = reinterpret_cast<std::uintptr_t>(raw);
    const std::uint64_t head =
        (start + kOriginAlignment - 1) / kOriginAlignment * kOriginAlignment - start;
    const std::uint64_t tail = reserve - head - window;
    std::uint8_t* const aligned = static_cast<std::uint8_t*>(raw) + head;
    if (head > 0) ::munmap(raw, head);
    if (tail > 0) ::munmap(aligned + window, tail);
    mapping_ = Mapping(aligned, window);
    remap_part(GuestPhysAddr{0}, range.size, range.start);
}

void GuestWindow::remap(ArenaOffset new_origin) {
    remap_part(GuestPhysAddr{0}, storage_size(), new_origin);
}

void GuestWindow::grow(std::uint64_t bytes) {
    const std::uint64_t now = storage_size();
    if (bytes > size() - now)
        throw Error(ErrorKind::Refused, "guest window: " + format_mib(now + bytes) +
                                            " is more than the LPAR's maximum of " +
                                            format_mib(size()));
    const ArenaOffset above = arena_offset_of(GuestPhysAddr{now - 1}) + 1;
    remap_part(GuestPhysAddr{now}, bytes, above);
    accessible_->store(now + bytes, std::memory_order_release);
}

void GuestWindow::shrink(std::uint64_t bytes) {
    const std::uint64_t now = storage_size();
    if (bytes >= now || bytes % kOriginAlignment != 0)
        throw Error(ErrorKind::InvalidArgument,
                    "guest window: cannot shrink " + format_mib(now) + " by " + format_mib(bytes));
    accessible_->store(now - bytes, std::memory_order_release);
    void* at = mapping_.data() + (now - bytes);
    if (::mmap(at, bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1,
               0) == MAP_FAILED)
        throw_errno("guest window: unmap the top " + format_mib(bytes));
}

void GuestWindow::detach() {
    accessible_->store(0, std::memory_order_release);
    if (::mmap(mapping_.data(), mapping_.size(), PROT_NONE,
               MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0) == MAP_FAILED)
        throw_errno("guest window: detach " + format_mib(mapping_.size()));
}

void GuestWindow::remap_part(GuestPhysAddr gpa, std::uint64_t length, ArenaOffset arena_offset) {
    // The window starts at guest-physical 0, so the address is also the offset into it.
    const std::uint64_t guest_offset = gpa.value;
    if (guest_offset > size() || length > size() - guest_offset)
        throw Error(ErrorKind::InvalidArgument, "guest window: part outside the window");
    if (guest_offset % kOriginAlignment != 0 || arena_offset.value % kOriginAlignment != 0)
        throw Error(ErrorKind::InvalidArgument, "guest window: parts are re-mapped in 2 MiB units");
    arena_.bytes({arena_offset, length});  // bounds check against main storage
    void* at = mapping_.data() + guest_offset;
    void* got = ::mmap(at, length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, arena_.fd(),
                       static_cast<off_t>(arena_offset.value));
    if (got == MAP_FAILED)
        throw_errno("guest window: map arena " + format_range_mib(arena_offset.value, length));
    // Guests' storage stays out of core dumps (docs/threat-model.md), whichever view maps it.
    // A failure only means a dump could include it: not a reason to fail a move inside its stop.
    (void)::madvise(got, length, MADV_DONTDUMP);
    for (std::uint64_t unit = 0; unit * kOriginAlignment < length; ++unit)
        units_[guest_offset / kOriginAlignment + unit] = arena_offset + unit * kOriginAlignment;
}

}  // namespace lparvisor
