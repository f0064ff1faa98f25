#include "devices/virtio/virtqueue.hpp"

#include <atomic>
#include <limits>

#include <fmt/format.h>

namespace lparvisor::virtio {

namespace {

// Ring field offsets (virtio 1.2, 2.7.6 and 2.7.8).
constexpr std::uint64_t kRingIdxOffset = 2;
constexpr std::uint64_t kRingEntriesOffset = 4;

GuestPhysAddr offset(GuestPhysAddr base, std::uint64_t bytes) {
    // Only called on addresses that activate() proved inside storage, so no wrap.
    return GuestPhysAddr{base.value + bytes};
}

}  // namespace

std::string_view to_string(QueueError error) {
    switch (error) {
        case QueueError::NotReady:
            return "queue not ready";
        case QueueError::BadSize:
            return "bad queue size";
        case QueueError::RingOutsideStorage:
            return "ring outside storage";
        case QueueError::RingMisaligned:
            return "ring misaligned";
        case QueueError::RingAccessFailed:
            return "ring access failed";
        case QueueError::AvailIndexTooFarAhead:
            return "avail index too far ahead";
        case QueueError::HeadOutOfRange:
            return "head index out of range";
        case QueueError::DescriptorOutOfStorage:
            return "descriptor outside storage";
        case QueueError::DescriptorOverflow:
            return "descriptor address + length overflows";
        case QueueError::NextOutOfRange:
            return "next index out of range";
        case QueueError::ChainTooLong:
            return "descriptor chain loops or is too long";
        case QueueError::ChainLengthOverflow:
            return "descriptor chain length overflows";
        case QueueError::IndirectNotNegotiated:
            return "indirect descriptor not negotiated";
        case QueueError::UsedHeadOutOfRange:
            return "used head out of range";
    }
    return "unknown queue error";
}

DriverError Queue::error(QueueError kind, const std::string& detail) const {
    return {kind, fmt::format("queue {}: {}: {}", index_, to_string(kind), detail)};
}

std::optional<DriverError> Queue::activate(const GuestMemory& memory, const QueueConfig& config) {
    reset();
    if (!config.ready) return std::nullopt;
    const std::uint16_t size = config.size;
    if (size == 0 || (size & (size - 1)) != 0 || size > max_size_)
        return error(QueueError::BadSize,
                     fmt::format("size {} (power of two up to {} required)", size, max_size_));
    struct Ring {
        const char* name;
        GuestPhysAddr addr;
        std::uint64_t bytes;
        std::uint64_t alignment;
    };
    const Ring rings[] = {
        {"descriptor table", config.desc_table, desc_table_bytes(size), 16},
        {"avail ring", config.avail_ring, avail_ring_bytes(size), 2},
        {"used ring", config.used_ring, used_ring_bytes(size), 4},
    };
    for (const Ring& ring : rings) {
        if (!memory.contains(ring.addr, ring.bytes))
            return error(QueueError::RingOutsideStorage,
                         fmt::format("{} {:#x}+{:#x} outside storage ({:#x} bytes)", ring.name,
                                     ring.addr.value, ring.bytes, memory.size()));
        if (ring.addr.value % ring.alignment != 0)
            return error(QueueError::RingMisaligned,
                         fmt::format("{} at {:#x} is not {}-byte aligned", ring.name,
                                     ring.addr.value, ring.alignment));
    }
    config_ = config;
    ready_ = true;
    return std::nullopt;
}

void Queue::reset() noexcept {
    ready_ = false;
    config_ = QueueConfig{};
    next_avail_ = 0;
    next_used_ = 0;
}

PopResult Queue::pop(const GuestMemory& memory) {
    if (!ready_) return NoneAvailable{};
    const std::uint16_t size = config_.size;

    // Acquire: pairs with the driver's write barrier (virtio_wmb) before its avail.idx update,
    // so the ring entries, descriptors and request bytes it published are read after it. This
    // load is what orders them (on hardware for a vCPU driver, and in the C++ model for a
    // driver thread, which TSan checks); a separate acquire fence would add nothing.
    auto avail_idx = memory.load_acquire<std::uint16_t>(offset(config_.avail_ring, kRingIdxOffset));
    if (!avail_idx) return error(QueueError::RingAccessFailed, "reading avail.idx");

    // Both indexes run freely mod 2^16; the driver can be at most a whole ring ahead.
    const std::uint16_t pending = static_cast<std::uint16_t>(*avail_idx - next_avail_);
    if (pending > size)
        return error(QueueError::AvailIndexTooFarAhead,
                     fmt::format("avail.idx {} but the device is at {} (size {})", *avail_idx,
                                 next_avail_, size));
    if (pending == 0) return NoneAvailable{};

    const std::uint64_t slot = next_avail_ % size;
    auto head = memory.read_object<std::uint16_t>(
        offset(config_.avail_ring, kRingEntriesOffset + 2 * slot));
    if (!head) return error(QueueError::RingAccessFailed, "reading avail.ring");
    if (*head >= size)
        return error(QueueError::HeadOutOfRange,
                     fmt::format("avail.ring[{}] = {} (size {})", slot, *head, size));

    DescriptorChain chain;
    chain.head = *head;
    std::uint64_t total_len = 0;
    std::uint16_t index = *head;
    for (;;) {
        // A chain cannot hold more descriptors than the table has without visiting one twice.
        if (chain.descriptors.size() >= size)
            return error(
                QueueError::ChainTooLong,
                fmt::format("chain from head {} has more than {} descriptors", *head, size));
        auto desc =
            memory.read_object<VirtqDesc>(offset(config_.desc_table, desc_table_bytes(index)));
        if (!desc) return error(QueueError::RingAccessFailed, "reading the descriptor table");
        if (desc->flags & kDescFlagIndirect)
            return error(QueueError::IndirectNotNegotiated, fmt::format("descriptor {}", index));
        if (desc->len > std::numeric_limits<std::uint64_t>::max() - desc->addr)
            return error(QueueError::DescriptorOverflow,
                         fmt::format("descriptor {}: {:#x}+{:#x}", index, desc->addr, desc->len));
        if (!memory.contains(GuestPhysAddr{desc->addr}, desc->len))
            return error(QueueError::DescriptorOutOfStorage,
                         fmt::format("descriptor {}: {:#x}+{:#x} outside storage ({:#x} bytes)",
                                     index, desc->addr, desc->len, memory.size()));
        total_len += desc->len;
        if (total_len > std::numeric_limits<std::uint32_t>::max())
            return error(QueueError::ChainLengthOverflow,
                         fmt::format("chain from head {} is over 4 GiB", *head));
        chain.descriptors.push_back(
            {GuestPhysAddr{desc->addr}, desc->len, (desc->flags & kDescFlagWrite) != 0});
        if (!(desc->flags & kDescFlagNext)) break;
        if (desc->next >= size)
            return error(
                QueueError::NextOutOfRange,
                fmt::format("descriptor {}: next = {} (size {})", index, desc->next, size));
        index = desc->next;
    }
    chain.total_len = static_cast<std::uint32_t>(total_len);
    ++next_avail_;
    return chain;
}

std::optional<DriverError> Queue::add_used(const GuestMemory& memory, std::uint16_t head,
                                           std::uint32_t written_len) {
    if (!ready_) return error(QueueError::NotReady, "add_used");
    const std::uint16_t size = config_.size;
    if (head >= size)
        return error(QueueError::UsedHeadOutOfRange, fmt::format("head {} (size {})", head, size));
    const std::uint64_t slot = next_used_ % size;
    const VirtqUsedElem elem{head, written_len};
    if (!memory.write_object(offset(config_.used_ring, kRingEntriesOffset + 8 * slot), elem))
        return error(QueueError::RingAccessFailed, "writing used.ring");
    // Release: the element (and the buffers the device filled) are visible before the index
    // that hands them to the driver, whose read barrier (virtio_rmb) after reading used.idx
    // pairs with it. The release store itself orders them, so no separate release fence.
    const std::uint16_t new_used = static_cast<std::uint16_t>(next_used_ + 1);
    if (!memory.store_release(offset(config_.used_ring, kRingIdxOffset), new_used))
        return error(QueueError::RingAccessFailed, "writing used.idx");
    next_used_ = new_used;
    return std::nullopt;
}

bool Queue::needs_interrupt(const GuestMemory& memory) const {
    if (!ready_) return false;
    // Our used.idx store must be ordered before the flags load (the driver does the mirror
    // image: clear the flag, full barrier, re-check used.idx), or both sides could miss work.
    // Release/acquire cannot order a store before a later load, so this full fence stays even
    // though both accesses are atomic; the flags load is atomic because the driver writes the
    // field while the device runs (acquire costs nothing more than a plain load on x86).
    std::atomic_thread_fence(std::memory_order_seq_cst);
    auto flags = memory.load_acquire<std::uint16_t>(config_.avail_ring);
    if (!flags) return true;
    return (*flags & kAvailFlagNoInterrupt) == 0;
}

}  // namespace lparvisor::virtio
