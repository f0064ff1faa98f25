// A split virtqueue (virtio 1.2, 2.7) as the device sees it, over an LPAR's GuestMemory.
//
// Everything in the rings is written by the guest and so is hostile: ring placement and size are
// checked once on activation, and every avail index, head, descriptor and chain is checked on
// each pop(). A violation is a driver error (the device then needs a reset), never a crash and
// never an access outside the LPAR's storage. Modelled on rust-vmm virtio-queue: the queue keeps
// only guest addresses and indexes, and each operation takes the memory view to use.
//
// Not offered: VIRTIO_F_INDIRECT_DESC, VIRTIO_F_EVENT_IDX (an indirect descriptor is a driver
// error; the device interrupts unless the driver set VIRTQ_AVAIL_F_NO_INTERRUPT).
//
// Threads: one thread at a time (the device's worker; activation happens while it is stopped).
// The fields the driver shares with the device while both run are accessed atomically through
// GuestMemory::load_acquire / store_release: avail.idx (acquire), used.idx (release) and
// avail.flags; everything else in the rings and buffers is ordered by those accesses.
// activate() refuses rings that are not aligned as virtio requires, which keeps these fields
// naturally aligned.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "devices/virtio/virtio_device.hpp"
#include "storage/address.hpp"
#include "storage/guest_memory.hpp"

namespace lparvisor::virtio {

// struct virtq_desc flags.
inline constexpr std::uint16_t kDescFlagNext = 1;
inline constexpr std::uint16_t kDescFlagWrite = 2;
inline constexpr std::uint16_t kDescFlagIndirect = 4;
// struct virtq_avail flags.
inline constexpr std::uint16_t kAvailFlagNoInterrupt = 1;

// The ring layouts, for drivers written in tests and fuzzers as much as for the queue.
struct VirtqDesc {
    std::uint64_t addr;
    std::uint32_t len;
    std::uint16_t flags;
    std::uint16_t next;
};
static_assert(sizeof(VirtqDesc) == 16);
struct VirtqUsedElem {
    std::uint32_t id;
    std::uint32_t len;
};
static_assert(sizeof(VirtqUsedElem) == 8);

// Bytes each part of a queue of `size` entries occupies (used_event / avail_event included,
// although EVENT_IDX is not offered, so that a driver that lays them out is always covered).
constexpr std::uint64_t desc_table_bytes(std::uint16_t size) {
    return 16ull * size;
}
constexpr std::uint64_t avail_ring_bytes(std::uint16_t size) {
    return 6 + 2ull * size;
}
constexpr std::uint64_t used_ring_bytes(std::uint16_t size) {
    return 6 + 8ull * size;
}

// One buffer of a chain, already checked to lie inside the LPAR's storage.
struct Descriptor {
    GuestPhysAddr addr;
    std::uint32_t len = 0;
    bool device_writable = false;
};

struct DescriptorChain {
    std::uint16_t head = 0;  // what add_used() gets back
    std::vector<Descriptor> descriptors;
    std::uint32_t total_len = 0;  // sum of all lengths (checked not to overflow)
};

// What a broken or hostile driver did to a queue.
enum class QueueError {
    NotReady,                // pop/add_used on a queue that was not activated
    BadSize,                 // zero, not a power of two, or above the device's maximum
    RingOutsideStorage,      // a ring (or part of it) outside the LPAR's storage
    RingMisaligned,          // desc table not 16-, avail not 2-, used not 4-byte aligned
    RingAccessFailed,        // reading or writing a ring failed after activation
    AvailIndexTooFarAhead,   // avail.idx more than `size` ahead of what the device consumed
    HeadOutOfRange,          // an avail ring entry >= size
    DescriptorOutOfStorage,  // addr + len outside the LPAR's storage
    DescriptorOverflow,      // addr + len wraps around 2^64
    NextOutOfRange,          // a next index >= size
    ChainTooLong,            // a loop, or more descriptors than the queue has
    ChainLengthOverflow,     // the chain's total length does not fit in 32 bits
    IndirectNotNegotiated,   // VIRTQ_DESC_F_INDIRECT without VIRTIO_F_INDIRECT_DESC
    UsedHeadOutOfRange,      // add_used() with a head >= size (a device bug)
};

std::string_view to_string(QueueError error);

struct DriverError {
    QueueError kind;
    std::string message;  // "queue 0: descriptor 3: 0x1000+0x2000 outside storage (1 MiB)"
};

struct NoneAvailable {};

using PopResult = std::variant<NoneAvailable, DescriptorChain, DriverError>;

class Queue {
  public:
    Queue(std::uint16_t index, std::uint16_t max_size) : index_(index), max_size_(max_size) {}

    std::uint16_t index() const noexcept { return index_; }
    std::uint16_t max_size() const noexcept { return max_size_; }
    bool ready() const noexcept { return ready_; }
    std::uint16_t size() const noexcept { return config_.size; }
    std::uint16_t next_avail() const noexcept { return next_avail_; }
    std::uint16_t next_used() const noexcept { return next_used_; }

    // Takes the driver's configuration after checking size and ring placement against `memory`.
    // A config with ready == false leaves the queue unused (pop() then finds nothing).
    [[nodiscard]] std::optional<DriverError> activate(const GuestMemory& memory,
                                                      const QueueConfig& config);
    // Back to the state after construction (a device reset).
    void reset() noexcept;

    // The next chain the driver made available, nothing, or what is wrong with the queue. After
    // an error the queue's position is unchanged; the device is expected to stop using it.
    [[nodiscard]] PopResult pop(const GuestMemory& memory);

    // Returns a chain to the driver: the used element, then (release) the used index.
    [[nodiscard]] std::optional<DriverError> add_used(const GuestMemory& memory, std::uint16_t head,
                                                      std::uint32_t written_len);

    // Whether the driver wants an interrupt for new used entries (no VIRTQ_AVAIL_F_NO_INTERRUPT).
    // Call after add_used(); full fence so that the driver's flag update and our index update
    // cannot both be missed.
    bool needs_interrupt(const GuestMemory& memory) const;

  private:
    DriverError error(QueueError kind, const std::string& detail) const;

    std::uint16_t index_;
    std::uint16_t max_size_;
    bool ready_ = false;
    QueueConfig config_;
    std::uint16_t next_avail_ = 0;
    std::uint16_t next_used_ = 0;
};

}  // namespace lparvisor::virtio
