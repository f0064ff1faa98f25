// Distinct types for the three kinds of address, so that one is never passed as another (the
// first two are defined in util/address.hpp, for kvm/):
//  GuestPhysAddr  an address the guest sees (never changes when the LPAR moves)
//  ArenaOffset    a byte offset in main storage (the arena); an LPAR's origin is one
//  host pointers  only inside Arena and GuestMemory, never stored by devices
#pragma once

#include <cstdint>
#include <string>

#include "util/address.hpp"  // GuestPhysAddr, ArenaOffset

namespace lparvisor {

inline constexpr std::uint64_t kPageSize = 4096;  // a storage-key frame
inline constexpr std::uint64_t kMiB = std::uint64_t{1024} * 1024;
inline constexpr std::uint64_t kOriginAlignment = 2 * kMiB;  // origins, sizes, chunks

// A half-open byte range of main storage.
struct ArenaRange {
    ArenaOffset start;
    std::uint64_t size = 0;
    std::uint64_t end() const { return start.value + size; }
    bool overlaps(const ArenaRange& other) const {
        return start.value < other.end() && other.start.value < end();
    }
    bool contains(const ArenaRange& other) const {
        return start.value <= other.start.value && other.end() <= end();
    }
};

// "400-656 MiB", "0.5 MiB": how ranges appear in messages.
std::string format_mib(std::uint64_t bytes);
std::string format_range_mib(std::uint64_t start, std::uint64_t size);

}  // namespace lparvisor
