// The guest driver's side of one split virtqueue, for device-model unit tests: an LPAR's storage
// carved out of a larger host buffer (the bytes after it stand for the next LPAR and must never
// change), descriptors and the avail ring written into it, a notify, then a wait for the used
// ring. Header-only; each test includes it once.
#pragma once

#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

#include "devices/virtio/virtio_device.hpp"
#include "devices/virtio/virtqueue.hpp"
#include "storage/guest_memory.hpp"

namespace lparvisor::virtio::testing {

// An LPAR of `lpar_bytes` followed by `neighbour_bytes` of a recognisable pattern.
struct TestStorage {
    explicit TestStorage(std::uint64_t lpar_bytes = 1024 * 1024,
                         std::uint64_t neighbour_bytes = 64 * 1024)
        : lpar(lpar_bytes),
          neighbour(neighbour_bytes),
          host(lpar_bytes + neighbour_bytes),
          memory(host.data(), lpar_bytes) {
        for (std::size_t i = 0; i < neighbour; ++i) host[lpar + i] = pattern(i);
    }
    static std::uint8_t pattern(std::size_t i) { return static_cast<std::uint8_t>(i * 7 + 3); }
    bool neighbour_intact() const {
        for (std::size_t i = 0; i < neighbour; ++i)
            if (host[lpar + i] != pattern(i)) return false;
        return true;
    }
    std::uint64_t lpar;
    std::uint64_t neighbour;
    std::vector<std::uint8_t> host;
    GuestMemory memory;
};

// Counts what the device signals.
struct InterruptRecorder {
    std::atomic<int> used_buffer{0};
    std::atomic<int> config_change{0};
    InterruptSink sink() {
        return {[this](std::uint16_t) { used_buffer.fetch_add(1); },
                [this] { config_change.fetch_add(1); }};
    }
};

inline bool wait_for(const std::function<bool()>& condition,
                     std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!condition()) {
        if (std::chrono::steady_clock::now() > deadline) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return true;
}

struct TestBuffer {
    std::uint64_t addr;
    std::uint32_t len;
    bool device_writable;
};

// Rings at fixed guest addresses; descriptors handed out round-robin.
struct QueueDriver {
    QueueDriver(const GuestMemory& guest, std::uint16_t queue_size = 16,
                GuestPhysAddr desc_table = GuestPhysAddr{0x0},
                GuestPhysAddr avail_ring = GuestPhysAddr{0x1000},
                GuestPhysAddr used_ring = GuestPhysAddr{0x2000})
        : memory(guest), size(queue_size), desc(desc_table), avail(avail_ring), used(used_ring) {}

    QueueConfig config() const { return {size, true, desc, avail, used}; }
    void set_desc(std::uint16_t index, std::uint64_t addr, std::uint32_t len, std::uint16_t flags,
                  std::uint16_t next = 0) {
        REQUIRE(memory.write_object(GuestPhysAddr{desc.value + 16ull * index},
                                    VirtqDesc{addr, len, flags, next}));
    }
    // The index fields the device reads while it runs are stored with release and loaded with
    // acquire, as a real driver's barriers do (virtio_wmb before publishing avail.idx, virtio_rmb
    // after reading used.idx): what was written before a publish is visible to the device, and
    // what the test reads after seeing used.idx move (used element, status, buffers) is the
    // device's. Never change a descriptor or ring entry after publishing it.
    void set_avail_idx(std::uint16_t idx) {
        REQUIRE(memory.store_release(GuestPhysAddr{avail.value + 2}, idx));
    }
    void set_avail_flags(std::uint16_t flags) { REQUIRE(memory.store_release(avail, flags)); }
    // Puts `head` in the next avail slot and publishes it.
    void push(std::uint16_t head) {
        REQUIRE(
            memory.write_object(GuestPhysAddr{avail.value + 4 + 2ull * (avail_idx % size)}, head));
        set_avail_idx(++avail_idx);
    }
    std::uint16_t used_idx() const {
        return memory.load_acquire<std::uint16_t>(GuestPhysAddr{used.value + 2}).value();
    }
    VirtqUsedElem used_elem(std::uint16_t n) const {
        return memory.read_object<VirtqUsedElem>(GuestPhysAddr{used.value + 4 + 8ull * (n % size)})
            .value();
    }
    // Chains the buffers into fresh descriptors and makes the chain available; returns its head.
    std::uint16_t submit(const std::vector<TestBuffer>& chain) {
        const std::uint16_t head = stage(chain);
        REQUIRE(publish());
        return head;
    }
    // submit() in two steps, for a chain made available from another thread (where Catch2's
    // assertions must not run): stage() writes the descriptors and the ring entry, publish()
    // only the avail index.
    std::uint16_t stage(const std::vector<TestBuffer>& chain) {
        const std::uint16_t head = next_desc;
        for (std::size_t i = 0; i < chain.size(); ++i) {
            const std::uint16_t index = next_desc;
            next_desc = static_cast<std::uint16_t>((next_desc + 1) % size);
            const bool last = i + 1 == chain.size();
            set_desc(index, chain[i].addr, chain[i].len,
                     static_cast<std::uint16_t>((last ? 0 : kDescFlagNext) |
                                                (chain[i].device_writable ? kDescFlagWrite : 0)),
                     next_desc);
        }
        REQUIRE(
            memory.write_object(GuestPhysAddr{avail.value + 4 + 2ull * (avail_idx % size)}, head));
        return head;
    }
    [[nodiscard]] bool publish() {
        return memory.store_release(GuestPhysAddr{avail.value + 2}, ++avail_idx);
    }
    // Back to the state after a device reset (the driver re-initialises its rings).
    void restart() {
        avail_idx = 0;
        next_desc = 0;
        set_avail_idx(0);
        REQUIRE(memory.store_release(GuestPhysAddr{used.value + 2}, std::uint16_t{0}));
    }

    GuestMemory memory;
    std::uint16_t size;
    GuestPhysAddr desc, avail, used;
    std::uint16_t avail_idx = 0;
    std::uint16_t next_desc = 0;
};

}  // namespace lparvisor::virtio::testing
