// The guest driver's side of one split virtqueue (virtio 1.2 section 2.7), laid out by hand in
// guest memory at fixed addresses: what the device unit tests play to drive a device, or to hand
// it rings a real driver never would.
#pragma once

#include <catch2/catch.hpp>

#include <cstdint>

#include "devices/virtio/virtqueue.hpp"

namespace lparvisor::virtio::test {

struct SplitQueueDriver {
    // The rings used by every device test: descriptor table at 0, avail at 4 KiB, used at 8 KiB.
    static constexpr GuestPhysAddr kDescTable{0x0};
    static constexpr GuestPhysAddr kAvailRing{0x1000};
    static constexpr GuestPhysAddr kUsedRing{0x2000};

    SplitQueueDriver(const GuestMemory& guest, std::uint16_t queue_size)
        : memory(guest), size(queue_size) {}

    QueueConfig config() const { return {size, true, kDescTable, kAvailRing, kUsedRing}; }
    void set_desc(std::uint16_t index, std::uint64_t addr, std::uint32_t len, std::uint16_t flags,
                  std::uint16_t next = 0) {
        REQUIRE(memory.write_object(GuestPhysAddr{kDescTable.value + 16ull * index},
                                    VirtqDesc{addr, len, flags, next}));
    }
    void set_avail_idx(std::uint16_t idx) {
        REQUIRE(memory.write_object(GuestPhysAddr{kAvailRing.value + 2}, idx));
    }
    void set_avail_flags(std::uint16_t flags) { REQUIRE(memory.write_object(kAvailRing, flags)); }
    // Puts `head` in the next avail slot and publishes it.
    void push(std::uint16_t head) {
        REQUIRE(memory.write_object(GuestPhysAddr{kAvailRing.value + 4 + 2ull * (avail_idx % size)},
                                    head));
        set_avail_idx(++avail_idx);
    }
    std::uint16_t used_idx() const {
        return memory.read_object<std::uint16_t>(GuestPhysAddr{kUsedRing.value + 2}).value();
    }
    // The used element the device wrote for its n-th completion (the ring wraps).
    VirtqUsedElem used(std::uint16_t n) const {
        return memory
            .read_object<VirtqUsedElem>(GuestPhysAddr{kUsedRing.value + 4 + 8ull * (n % size)})
            .value();
    }

    GuestMemory memory;
    std::uint16_t size;
    std::uint16_t avail_idx = 0;
};

}  // namespace lparvisor::virtio::test
