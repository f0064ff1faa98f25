// virtio-mem (device type 24, virtio 1.2 section 5.15): a region of guest-physical address space,
// [region.addr, region.addr + region_size), split into blocks that the guest driver plugs and
// unplugs on request. The hypervisor raises requested_size to EXPAND an LPAR and lowers it to
// shrink it; the guest then plugs or unplugs blocks until plugged_size matches. The region lies
// directly above the LPAR's boot storage; the hypervisor keeps unplugged blocks unbacked, which is
// why VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE is offered (the guest must not even read them).
//
// The device never touches the region's memory itself: it keeps one bit per block and tells the
// hypervisor through two hooks (before_plug: may the guest have these blocks now?; on_unplugged:
// the guest gave these blocks back). Request buffers are read and written only through the
// LPAR's GuestMemory.
//
// Resets: a device reset (the driver writing 0 to device_status) keeps the plugged blocks, as the
// spec requires ("The device MUST NOT change the state of memory blocks during device reset"):
// a kdump kernel finds the old kernel's memory with STATE requests, and a new driver sends
// UNPLUG_ALL itself. system_reset() is the LPAR-wide reset that unplugs everything.
//
// Deviation: set_usable_region_size() may shrink the usable region while the driver runs (the
// spec lets it shrink only on UNPLUG_ALL); it refuses to cut off plugged blocks or to go below
// requested_size. Linux re-reads usable_region_size on every config change and only stops
// plugging beyond it, so shrinking an unplugged tail is safe for it.
//
// Threads: the worker serves requests; the hypervisor's control thread calls the set_/wait_
// functions and the hooks' setters; vCPU threads read the configuration. All state is under one
// mutex; the hooks and config_change are called without it. Lock order: the transport's lock,
// then the base's lifecycle mutex, then this device's mutex.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "devices/virtio/virtio_device_base.hpp"

namespace lparvisor::virtio {

// Feature bits (5.15.3). ACPI_PXM is not offered: node_id means nothing to the guest.
inline constexpr std::uint64_t kMemFeatureAcpiPxm = 1ull << 0;
inline constexpr std::uint64_t kMemFeatureUnpluggedInaccessible = 1ull << 1;

// Request types, response types and block states (5.15.6).
inline constexpr std::uint16_t kMemReqPlug = 0;
inline constexpr std::uint16_t kMemReqUnplug = 1;
inline constexpr std::uint16_t kMemReqUnplugAll = 2;
inline constexpr std::uint16_t kMemReqState = 3;
inline constexpr std::uint16_t kMemRespAck = 0;
inline constexpr std::uint16_t kMemRespNack = 1;
inline constexpr std::uint16_t kMemRespBusy = 2;
inline constexpr std::uint16_t kMemRespError = 3;
inline constexpr std::uint16_t kMemStatePlugged = 0;
inline constexpr std::uint16_t kMemStateUnplugged = 1;
inline constexpr std::uint16_t kMemStateMixed = 2;

inline constexpr std::uint16_t kMemQueueMaxSize = 128;
inline constexpr std::uint64_t kMemMinBlockSize = 4096;

// struct virtio_mem_req: all requests are 24 bytes (UNPLUG_ALL uses only the type).
struct VirtioMemReq {
    std::uint16_t type;
    std::uint16_t padding[3];
    std::uint64_t addr;
    std::uint16_t nb_blocks;
    std::uint16_t padding2[3];
};
static_assert(sizeof(VirtioMemReq) == 24);

// struct virtio_mem_resp: all responses are 10 bytes (state is meaningful for STATE only).
struct VirtioMemResp {
    std::uint16_t type;
    std::uint16_t padding[3];
    std::uint16_t state;
};
static_assert(sizeof(VirtioMemResp) == 10);

// Offsets in struct virtio_mem_config (all fields little-endian, read-only for the driver).
inline constexpr std::uint32_t kMemConfigBlockSize = 0;          // le64
inline constexpr std::uint32_t kMemConfigNodeId = 8;             // le16, then 6 bytes padding
inline constexpr std::uint32_t kMemConfigAddr = 16;              // le64
inline constexpr std::uint32_t kMemConfigRegionSize = 24;        // le64
inline constexpr std::uint32_t kMemConfigUsableRegionSize = 32;  // le64
inline constexpr std::uint32_t kMemConfigPluggedSize = 40;       // le64
inline constexpr std::uint32_t kMemConfigRequestedSize = 48;     // le64
inline constexpr std::uint32_t kMemConfigBytes = 56;

struct VirtioMemRegion {
    GuestPhysAddr addr;
    std::uint64_t region_size = 0;
    std::uint64_t block_size = std::uint64_t{2} * 1024 * 1024;
    std::uint16_t node_id = 0;
};

class VirtioMem final : public VirtioDeviceBase {
  public:
    // region_offset: bytes from region.addr; bytes: a multiple of the block size.
    using UnpluggedHook = std::function<void(std::uint64_t region_offset, std::uint64_t bytes)>;
    using BeforePlugHook = std::function<bool(std::uint64_t region_offset, std::uint64_t bytes)>;

    // Throws lparvisor::Error(InvalidArgument) for an empty region, a block size that is not a
    // power of two >= 4 KiB, a region address or size that is not a multiple of the block size,
    // or a region that wraps around 2^64. The usable region starts as the whole region; the
    // requested size starts at 0 and nothing is plugged.
    VirtioMem(std::string name, GuestMemory memory, VirtioMemRegion region);
    ~VirtioMem() override;

    DeviceType device_type() const override { return DeviceType::Mem; }
    std::uint64_t device_features() const override {
        return kFeatureVersion1 | kMemFeatureUnpluggedInaccessible;
    }
    void read_config(std::uint32_t offset, std::span<std::uint8_t> data) override;
    // The whole configuration space is read-only: writes are ignored.
    void write_config(std::uint32_t offset, std::span<const std::uint8_t> data) override;

    [[nodiscard]] bool activate(std::uint64_t driver_features, std::vector<QueueConfig> queues,
                                InterruptSink sink) override;
    // A device reset: stops serving; the plugged blocks stay plugged (see above).
    void reset() override;
    // An LPAR reset: reset() plus unplugging every block (on_unplugged for each plugged run).
    void system_reset();

    // --- the hypervisor's side (thread-safe) ---

    // A multiple of the block size and <= usable_region_size(), else Error(InvalidArgument)
    // naming the numbers. Signals a configuration change when the device is active.
    void set_requested_size(std::uint64_t bytes);
    // A multiple of the block size and <= region_size (else Error(InvalidArgument)); not below
    // highest_plugged_end() nor requested_size() (else Error(Refused)). Signals a configuration
    // change when the device is active.
    void set_usable_region_size(std::uint64_t bytes);

    std::uint64_t plugged_size() const;
    std::uint64_t requested_size() const;
    std::uint64_t usable_region_size() const;
    const VirtioMemRegion& region() const noexcept { return region_; }
    // One past the highest plugged block, as an offset from the region start; nullopt if none.
    std::optional<std::uint64_t> highest_plugged_end() const;
    // The plugged blocks are exactly [0, plugged_size()) of the region (true when none is).
    bool plugged_range_is_prefix() const;
    // Bumped on every change of usable_region_size, plugged_size or requested_size: a
    // transport's config_generation.
    std::uint32_t config_generation() const;

    // Called on the worker thread without the device's lock, for each run of blocks the guest
    // gave back (UNPLUG, UNPLUG_ALL, system_reset), before plugged_size() drops and before the
    // guest sees the answer: once wait_for_plugged() returns true the hook has run. Default: none.
    void set_on_unplugged(UnpluggedHook hook);
    // Called on the worker thread without the device's lock before a PLUG that passed every other
    // check is committed; false answers the guest BUSY (it retries later). Default: allow.
    void set_before_plug(BeforePlugHook hook);

    // True as soon as plugged_size() == target_bytes (signalled by the worker), false once
    // `timeout` has passed without that.
    bool wait_for_plugged(std::uint64_t target_bytes, std::chrono::milliseconds timeout);

    // What the worker runs per chain; public for a fuzzer. Returns the bytes written (0 for a
    // malformed chain, whose response is not written).
    std::uint32_t serve_request(const DescriptorChain& chain);

  protected:
    ChainResult handle_chain(std::uint16_t queue_index, Queue& queue,
                             DescriptorChain& chain) override;

  private:
    // The validated block range of a PLUG/UNPLUG/STATE request.
    struct BlockRange {
        std::uint64_t first = 0;
        std::uint64_t count = 0;
    };
    struct Run {
        std::uint64_t first = 0;
        std::uint64_t count = 0;
    };

    std::uint16_t plug(GuestPhysAddr addr, std::uint16_t nb_blocks);
    std::uint16_t unplug(GuestPhysAddr addr, std::uint16_t nb_blocks);
    std::uint16_t unplug_all();
    std::uint16_t state(GuestPhysAddr addr, std::uint16_t nb_blocks, std::uint16_t& state_out);

    // All under mutex_.
    std::optional<BlockRange> checked_range(GuestPhysAddr addr, std::uint16_t nb_blocks) const;
    bool is_plugged(std::uint64_t block) const;
    void set_blocks(BlockRange range, bool plugged);
    std::uint64_t count_plugged(BlockRange range) const;
    std::vector<Run> plugged_runs() const;
    std::optional<std::uint64_t> highest_plugged_block_end() const;
    void changed();  // bumps the generation and wakes wait_for_plugged()

    // Calls the driver's config_change if the device is active (never under mutex_).
    void signal_config_change();
    // Unplugs every run (hook first, then the bitmap).
    void unplug_runs(const std::vector<Run>& runs, const UnpluggedHook& hook);

    const VirtioMemRegion region_;
    const std::uint64_t block_count_;

    mutable std::mutex mutex_;
    std::condition_variable plugged_cv_;
    std::vector<std::uint64_t> bitmap_;  // one bit per block, 1 = plugged
    std::uint64_t plugged_blocks_ = 0;
    std::uint64_t requested_size_ = 0;
    std::uint64_t usable_region_size_;
    std::uint32_t generation_ = 0;
    UnpluggedHook on_unplugged_;
    BeforePlugHook before_plug_;
    // The active driver's config_change, shared so that a caller can run it outside the lock.
    std::shared_ptr<const std::function<void()>> config_change_;
};

}  // namespace lparvisor::virtio
