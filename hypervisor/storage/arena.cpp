#include "storage/arena.hpp"

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/memfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>

#include <spdlog/spdlog.h>

#include "util/error.hpp"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

namespace lparvisor {

namespace {

std::uint64_t free_huge_pages() {
    std::ifstream meminfo("/proc/meminfo");
    std::string key;
    std::uint64_t value = 0;
    while (meminfo >> key >> value) {
        if (key == "HugePages_Free:") return value;
        meminfo.ignore(256, '\n');
    }
    return 0;
}

}  // namespace

Arena::Arena(std::uint64_t bytes, HugePagePolicy policy) {
    if (bytes == 0) throw Error(ErrorKind::InvalidArgument, "main storage size must be > 0");
    size_ = (bytes + kOriginAlignment - 1) / kOriginAlignment * kOriginAlignment;

    bool want_huge =
        policy == HugePagePolicy::On ||
        (policy == HugePagePolicy::Auto && free_huge_pages() * kOriginAlignment >= size_);
    if (want_huge) {
        fd_.reset(
            ::memfd_create("lparvisor-main-storage", MFD_CLOEXEC | MFD_HUGETLB | MFD_HUGE_2MB));
        if (fd_.valid() && ::ftruncate(fd_.get(), static_cast<off_t>(size_)) == 0) {
            hugetlb_ = true;
        } else {
            if (policy == HugePagePolicy::On)
                throw_errno("main storage: 2 MiB hugetlb memfd of " + format_mib(size_) +
                            " (raise /proc/sys/vm/nr_hugepages)");
            fd_.reset();
        }
    }
    if (!hugetlb_) {
        if (policy == HugePagePolicy::Auto)
            spdlog::warn(
                "main storage: {} of 4 KiB shmem; {} free 2 MiB huge pages are needed for "
                "hugetlb backing (echo {} > /proc/sys/vm/nr_hugepages) which makes MVSTOR's "
                "remap and scrub almost free",
                format_mib(size_), size_ / kOriginAlignment, size_ / kOriginAlignment);
        fd_.reset(::memfd_create("lparvisor-main-storage", MFD_CLOEXEC));
        if (!fd_.valid()) throw_errno("memfd_create for main storage");
        if (::ftruncate(fd_.get(), static_cast<off_t>(size_)) != 0)
            throw_errno("main storage: ftruncate to " + format_mib(size_));
    }
    void* base = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_SHARED, fd_.get(), 0);
    if (base == MAP_FAILED) throw_errno("main storage: mmap of " + format_mib(size_));
    whole_ = Mapping(base, size_);
    // Every guest's storage stays out of core dumps of the daemon (docs/threat-model.md).
    if (::madvise(base, size_, MADV_DONTDUMP) != 0) throw_errno("main storage: MADV_DONTDUMP");
}

void Arena::check(ArenaRange range, const char* what) const {
    if (range.start.value > size_ || range.size > size_ - range.start.value)
        throw Error(ErrorKind::InvalidArgument,
                    std::string(what) + ": " + format_range_mib(range.start.value, range.size) +
                        " is outside main storage (" + format_mib(size_) + ")");
}

std::span<std::uint8_t> Arena::bytes(ArenaRange range) const {
    check(range, "arena access");
    // SAFETY: [start, start + size) was checked to lie inside the whole-arena mapping.
    return {whole_.data() + range.start.value, range.size};
}

void Arena::populate(ArenaRange range) {
    check(range, "populate");
    if (range.size == 0) return;
    auto span = bytes(range);
    if (::madvise(span.data(), span.size(), MADV_POPULATE_WRITE) == 0) return;
    // Older kernels: touch one byte per page; a read-modify-write keeps the contents.
    std::uint64_t step = hugetlb_ ? kOriginAlignment : kPageSize;
    for (std::uint64_t i = 0; i < span.size(); i += step) {
        volatile std::uint8_t* p = span.data() + i;
        *p = *p;
    }
}

void Arena::punch(ArenaRange range) {
    check(range, "punch");
    if (range.size == 0) return;
    if (::fallocate(fd_.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                    static_cast<off_t>(range.start.value), static_cast<off_t>(range.size)) != 0)
        throw_errno("main storage: punch " + format_range_mib(range.start.value, range.size));
}

std::optional<ArenaOffset> Arena::next_data(ArenaOffset offset) const {
    check({offset, 0}, "next_data");
    off_t data = ::lseek(fd_.get(), static_cast<off_t>(offset.value), SEEK_DATA);
    if (data < 0) return std::nullopt;  // ENXIO: no data up to the end
    return ArenaOffset{static_cast<std::uint64_t>(data)};
}

ArenaOffset Arena::next_hole(ArenaOffset offset) const {
    check({offset, 0}, "next_hole");
    off_t hole = ::lseek(fd_.get(), static_cast<off_t>(offset.value), SEEK_HOLE);
    return ArenaOffset{hole < 0 ? size_ : static_cast<std::uint64_t>(hole)};
}

bool Arena::is_populated(ArenaOffset offset) const {
    check({offset, 1}, "is_populated");
    off_t data = ::lseek(fd_.get(), static_cast<off_t>(offset.value), SEEK_DATA);
    return data >= 0 && static_cast<std::uint64_t>(data) <= offset.value;
}

}  // namespace lparvisor
