// The two address types that the KVM layer and storage/ both need. Here, in util/, so that kvm/
// need not include storage/; storage/address.hpp includes this and says what each one means.
#pragma once

#include <compare>
#include <cstdint>

namespace lparvisor {

// An address the guest sees (never changes when the LPAR moves).
struct GuestPhysAddr {
    std::uint64_t value = 0;
    auto operator<=>(const GuestPhysAddr&) const = default;
};

// A byte offset in main storage (the arena); an LPAR's origin is one.
struct ArenaOffset {
    std::uint64_t value = 0;
    auto operator<=>(const ArenaOffset&) const = default;
};

// Arithmetic that keeps the type: address + byte count is an address, and the distance between
// two addresses is a byte count. Unchecked, like the integer sums they replace: callers check
// bounds (GuestMemory, the planner) before they add. No conversion to or from an integer.
constexpr GuestPhysAddr operator+(GuestPhysAddr address, std::uint64_t bytes) noexcept {
    return GuestPhysAddr{address.value + bytes};
}
// `to - from`, with from <= to.
constexpr std::uint64_t operator-(GuestPhysAddr to, GuestPhysAddr from) noexcept {
    return to.value - from.value;
}
constexpr ArenaOffset operator+(ArenaOffset offset, std::uint64_t bytes) noexcept {
    return ArenaOffset{offset.value + bytes};
}
// `to - from`, with from <= to.
constexpr std::uint64_t operator-(ArenaOffset to, ArenaOffset from) noexcept {
    return to.value - from.value;
}

}  // namespace lparvisor
