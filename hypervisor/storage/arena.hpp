// Main storage: one memfd that every LPAR's guest RAM is a window onto. The hypervisor maps it
// whole once, for copying (MVSTOR) and scrubbing; nothing else holds pointers into it.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "storage/address.hpp"
#include "util/fd.hpp"
#include "util/mapping.hpp"

namespace lparvisor {

enum class HugePagePolicy { Auto, On, Off };

class Arena {
  public:
    // `bytes` is rounded up to 2 MiB for the allocation. With Auto, 2 MiB hugetlb backing is used
    // when enough free huge pages exist, else 4 KiB shmem (a warning says how to get huge pages).
    Arena(std::uint64_t bytes, HugePagePolicy policy);

    std::uint64_t size() const noexcept { return size_; }
    int fd() const noexcept { return fd_.get(); }
    bool hugetlb() const noexcept { return hugetlb_; }
    const char* backing() const noexcept { return hugetlb_ ? "2 MiB hugetlb" : "4 KiB shmem"; }

    // Bounds-checked view of [offset, offset + bytes); throws on a range outside the arena.
    std::span<std::uint8_t> bytes(ArenaRange range) const;

    // Allocates backing pages now so that a later copy or guest access does not fault them in.
    void populate(ArenaRange range);
    // Frees the pages: they read back as zeros (the scrub of vacated storage, MVSTOR's last step).
    void punch(ArenaRange range);
    // Whether the page holding `offset` currently has backing (for tests and "holes cost nothing").
    bool is_populated(ArenaOffset offset) const;
    // The first backed byte at or after `offset` (nullopt: none up to the end), and the first
    // hole at or after it (the arena's end if none): SEEK_DATA / SEEK_HOLE on the memfd.
    std::optional<ArenaOffset> next_data(ArenaOffset offset) const;
    ArenaOffset next_hole(ArenaOffset offset) const;

  private:
    void check(ArenaRange range, const char* what) const;

    Fd fd_;
    Mapping whole_;
    std::uint64_t size_ = 0;
    bool hugetlb_ = false;
};

}  // namespace lparvisor
