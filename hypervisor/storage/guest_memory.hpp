// The only way hypervisor code touches an LPAR's RAM. Every access is checked for bounds and
// overflow (address + length) against that LPAR's storage size, so no guest-supplied address
// can reach host memory or another LPAR's storage.
//
// The view points at the LPAR's guest window (see GuestWindow), whose host address never
// changes when the LPAR moves: MVSTOR re-maps the window onto the new origin underneath. Devices
// still take a fresh view per request rather than caching spans.
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <type_traits>

#include "storage/address.hpp"
#include "storage/arena.hpp"
#include "util/mapping.hpp"

namespace lparvisor {

class GuestMemory {
public:
    GuestMemory() = default;
    GuestMemory(std::uint8_t* base, std::uint64_t size) : base_(base), size_(size) {}

    std::uint64_t size() const noexcept { return size_; }
    bool contains(GuestPhysAddr address, std::uint64_t length) const noexcept {
        return address.value <= size_ && length <= size_ - address.value;
    }

    // [address, address + length) or nullopt if any byte is outside the LPAR's storage.
    [[nodiscard]] std::optional<std::span<std::uint8_t>> slice(GuestPhysAddr address,
                                                               std::uint64_t length) const {
        if (!contains(address, length)) return std::nullopt;
        // SAFETY: contains() proved address + length <= size_ without overflow.
        return std::span<std::uint8_t>(base_ + address.value, length);
    }

    [[nodiscard]] bool read(GuestPhysAddr address, std::span<std::uint8_t> out) const {
        auto src = slice(address, out.size());
        if (!src) return false;
        std::memcpy(out.data(), src->data(), out.size());
        return true;
    }
    [[nodiscard]] bool write(GuestPhysAddr address, std::span<const std::uint8_t> in) const {
        auto dst = slice(address, in.size());
        if (!dst) return false;
        std::memcpy(dst->data(), in.data(), in.size());
        return true;
    }

    template <typename T>
    [[nodiscard]] std::optional<T> read_object(GuestPhysAddr address) const {
        static_assert(std::is_trivially_copyable_v<T>);
        T value;
        // SAFETY: T is trivially copyable; read() checks the guest range.
        if (!read(address, {reinterpret_cast<std::uint8_t*>(&value), sizeof(T)})) return std::nullopt;
        return value;
    }
    template <typename T>
    [[nodiscard]] bool write_object(GuestPhysAddr address, const T& value) const {
        static_assert(std::is_trivially_copyable_v<T>);
        return write(address, {reinterpret_cast<const std::uint8_t*>(&value), sizeof(T)});
    }

private:
    std::uint8_t* base_ = nullptr;
    std::uint64_t size_ = 0;
};

// An LPAR's guest RAM as one fixed host-virtual window, MAP_SHARED|MAP_FIXED onto its range of
// the arena. The KVM memslot and the devices point at the window; relocation re-maps it onto the
// new origin (KVM follows through its MMU notifier), so neither ever sees a new host address.
class GuestWindow {
public:
    GuestWindow(const Arena& arena, ArenaRange range);

    std::uint8_t* host_base() const noexcept { return mapping_.data(); }
    std::uint64_t size() const noexcept { return mapping_.size(); }
    ArenaOffset origin() const noexcept { return origin_; }
    GuestMemory memory() const noexcept { return {mapping_.data(), mapping_.size()}; }

    // Points [guest_offset, +length) of the window at the arena from `arena_offset` on.
    // The whole window is re-mapped when guest_offset == 0 and length == size().
    void remap(ArenaOffset new_origin);
    void remap_part(std::uint64_t guest_offset, std::uint64_t length, ArenaOffset arena_offset);

private:
    const Arena& arena_;
    Mapping mapping_;
    ArenaOffset origin_;
};

}  // namespace lparvisor
