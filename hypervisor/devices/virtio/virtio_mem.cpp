#include "devices/virtio/virtio_mem.hpp"

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "util/error.hpp"

namespace lparvisor::virtio {

namespace {

static_assert(std::endian::native == std::endian::little,
              "virtio 1.x structures are little-endian; this host code copies them as they are");

std::string bytes_text(std::uint64_t bytes) {
    if (bytes != 0 && bytes % (std::uint64_t{1024} * 1024) == 0)
        return fmt::format("{} MiB", bytes >> 20);
    return fmt::format("{:#x} bytes", bytes);
}

template <typename T>
void put(std::array<std::uint8_t, kMemConfigBytes>& config, std::uint32_t offset, T value) {
    std::memcpy(config.data() + offset, &value, sizeof value);
}

}  // namespace

VirtioMem::VirtioMem(std::string name, GuestMemory memory, VirtioMemRegion region)
    : VirtioDeviceBase(std::move(name), std::move(memory), 1, kMemQueueMaxSize),
      region_(region),
      block_count_(region.block_size == 0 ? 0 : region.region_size / region.block_size),
      usable_region_size_(region.region_size) {
    auto invalid = [&](const std::string& what) {
        return Error(ErrorKind::InvalidArgument, fmt::format("{}: {}", this->name(), what));
    };
    if (region_.block_size < kMemMinBlockSize || !std::has_single_bit(region_.block_size))
        throw invalid(fmt::format("block size {} is not a power of two of at least 4 KiB",
                                  bytes_text(region_.block_size)));
    if (region_.region_size == 0) throw invalid("empty region");
    if (region_.addr.value % region_.block_size != 0 ||
        region_.region_size % region_.block_size != 0)
        throw invalid(fmt::format("region {:#x}+{} is not aligned to the block size {}",
                                  region_.addr.value, bytes_text(region_.region_size),
                                  bytes_text(region_.block_size)));
    if (region_.region_size - 1 > UINT64_MAX - region_.addr.value)
        throw invalid(fmt::format("region {:#x}+{} wraps around", region_.addr.value,
                                  bytes_text(region_.region_size)));
    bitmap_.assign((block_count_ + 63) / 64, 0);
}

VirtioMem::~VirtioMem() {
    stop_worker();
}

// --- configuration space ---

void VirtioMem::read_config(std::uint32_t offset, std::span<std::uint8_t> data) {
    std::array<std::uint8_t, kMemConfigBytes> config{};
    put(config, kMemConfigBlockSize, region_.block_size);
    put(config, kMemConfigNodeId, region_.node_id);
    put(config, kMemConfigAddr, region_.addr.value);
    put(config, kMemConfigRegionSize, region_.region_size);
    {
        std::lock_guard lock(mutex_);
        put(config, kMemConfigUsableRegionSize, usable_region_size_);
        put(config, kMemConfigPluggedSize, plugged_blocks_ * region_.block_size);
        put(config, kMemConfigRequestedSize, requested_size_);
    }
    for (std::size_t i = 0; i < data.size(); ++i) {
        const std::uint64_t at = std::uint64_t{offset} + i;
        data[i] = at < config.size() ? config[at] : 0;
    }
}

void VirtioMem::write_config(std::uint32_t, std::span<const std::uint8_t>) {
}

// --- lifecycle ---

bool VirtioMem::activate(std::uint64_t driver_features, std::vector<QueueConfig> queues,
                         InterruptSink sink) {
    // Kept before the base starts the worker, so that a resize racing with DRIVER_OK is not lost
    // (an extra config change is allowed: the driver re-reads the configuration).
    {
        std::lock_guard lock(mutex_);
        config_change_ = sink.config_change
                             ? std::make_shared<const std::function<void()>>(sink.config_change)
                             : nullptr;
    }
    if (VirtioDeviceBase::activate(driver_features, std::move(queues), std::move(sink)))
        return true;
    std::lock_guard lock(mutex_);
    config_change_ = nullptr;
    return false;
}

void VirtioMem::reset() {
    VirtioDeviceBase::reset();
    std::lock_guard lock(mutex_);
    config_change_ = nullptr;
}

void VirtioMem::system_reset() {
    reset();
    unplug_all();
}

// --- the hypervisor's side ---

void VirtioMem::signal_config_change() {
    std::shared_ptr<const std::function<void()>> callback;
    {
        std::lock_guard lock(mutex_);
        callback = config_change_;
    }
    if (callback && *callback) (*callback)();
}

void VirtioMem::set_requested_size(std::uint64_t bytes) {
    {
        std::lock_guard lock(mutex_);
        if (bytes % region_.block_size != 0)
            throw Error(ErrorKind::InvalidArgument,
                        fmt::format("{}: requested size {} is not a multiple of the block size {}",
                                    name(), bytes_text(bytes), bytes_text(region_.block_size)));
        if (bytes > usable_region_size_)
            throw Error(ErrorKind::InvalidArgument,
                        fmt::format("{}: requested size {} exceeds the usable region ({} of {})",
                                    name(), bytes_text(bytes), bytes_text(usable_region_size_),
                                    bytes_text(region_.region_size)));
        requested_size_ = bytes;
        changed();
    }
    signal_config_change();
}

void VirtioMem::set_usable_region_size(std::uint64_t bytes) {
    {
        std::lock_guard lock(mutex_);
        if (bytes % region_.block_size != 0 || bytes > region_.region_size)
            throw Error(ErrorKind::InvalidArgument,
                        fmt::format("{}: usable region size {} is not a multiple of the block "
                                    "size {} up to the region size {}",
                                    name(), bytes_text(bytes), bytes_text(region_.block_size),
                                    bytes_text(region_.region_size)));
        if (bytes < requested_size_)
            throw Error(ErrorKind::Refused,
                        fmt::format("{}: usable region size {} is below the requested size {}",
                                    name(), bytes_text(bytes), bytes_text(requested_size_)));
        if (auto end = highest_plugged_block_end(); end && bytes < *end * region_.block_size)
            throw Error(
                ErrorKind::Refused,
                fmt::format("{}: usable region size {} would cut off plugged blocks (the "
                            "highest ends at {})",
                            name(), bytes_text(bytes), bytes_text(*end * region_.block_size)));
        usable_region_size_ = bytes;
        changed();
    }
    signal_config_change();
}

std::uint64_t VirtioMem::plugged_size() const {
    std::lock_guard lock(mutex_);
    return plugged_blocks_ * region_.block_size;
}

std::uint64_t VirtioMem::requested_size() const {
    std::lock_guard lock(mutex_);
    return requested_size_;
}

std::uint64_t VirtioMem::usable_region_size() const {
    std::lock_guard lock(mutex_);
    return usable_region_size_;
}

std::optional<std::uint64_t> VirtioMem::highest_plugged_end() const {
    std::lock_guard lock(mutex_);
    auto end = highest_plugged_block_end();
    if (!end) return std::nullopt;
    return *end * region_.block_size;
}

bool VirtioMem::plugged_range_is_prefix() const {
    std::lock_guard lock(mutex_);
    // plugged_blocks_ bits set, none at or above plugged_blocks_: exactly [0, plugged_blocks_).
    return highest_plugged_block_end().value_or(0) == plugged_blocks_;
}

std::uint32_t VirtioMem::config_generation() const {
    std::lock_guard lock(mutex_);
    return generation_;
}

void VirtioMem::set_on_unplugged(UnpluggedHook hook) {
    std::lock_guard lock(mutex_);
    on_unplugged_ = std::move(hook);
}

void VirtioMem::set_before_plug(BeforePlugHook hook) {
    std::lock_guard lock(mutex_);
    before_plug_ = std::move(hook);
}

bool VirtioMem::wait_for_plugged(std::uint64_t target_bytes, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    return plugged_cv_.wait_for(
        lock, timeout, [&] { return plugged_blocks_ * region_.block_size == target_bytes; });
}

// --- the bitmap (all under mutex_) ---

void VirtioMem::changed() {
    ++generation_;
    plugged_cv_.notify_all();
}

bool VirtioMem::is_plugged(std::uint64_t block) const {
    return (bitmap_[block / 64] >> (block % 64)) & 1;
}

void VirtioMem::set_blocks(BlockRange range, bool plugged) {
    for (std::uint64_t block = range.first; block < range.first + range.count; ++block) {
        const std::uint64_t bit = std::uint64_t{1} << (block % 64);
        if (is_plugged(block) == plugged) continue;
        if (plugged) {
            bitmap_[block / 64] |= bit;
            ++plugged_blocks_;
        } else {
            bitmap_[block / 64] &= ~bit;
            --plugged_blocks_;
        }
    }
    changed();
}

std::uint64_t VirtioMem::count_plugged(BlockRange range) const {
    std::uint64_t count = 0;
    for (std::uint64_t block = range.first; block < range.first + range.count; ++block)
        count += is_plugged(block) ? 1 : 0;
    return count;
}

std::vector<VirtioMem::Run> VirtioMem::plugged_runs() const {
    std::vector<Run> runs;
    for (std::uint64_t block = 0; block < block_count_; ++block) {
        if (!is_plugged(block)) continue;
        if (!runs.empty() && runs.back().first + runs.back().count == block)
            ++runs.back().count;
        else
            runs.push_back({block, 1});
    }
    return runs;
}

std::optional<std::uint64_t> VirtioMem::highest_plugged_block_end() const {
    for (std::size_t word = bitmap_.size(); word-- > 0;)
        if (bitmap_[word] != 0)
            return word * 64 + (64 - static_cast<std::uint64_t>(std::countl_zero(bitmap_[word])));
    return std::nullopt;
}

// The checks every PLUG, UNPLUG and STATE request shares (5.15.6.x): addr aligned to the block
// size, at least one block, every block inside the usable region, no wrap-around.
std::optional<VirtioMem::BlockRange> VirtioMem::checked_range(GuestPhysAddr addr,
                                                              std::uint16_t nb_blocks) const {
    if (nb_blocks == 0 || addr < region_.addr || addr.value % region_.block_size != 0)
        return std::nullopt;
    const std::uint64_t first = (addr - region_.addr) / region_.block_size;
    const std::uint64_t usable_blocks = usable_region_size_ / region_.block_size;
    // first < usable_blocks <= 2^52 and nb_blocks < 2^16: no overflow in the comparison.
    if (first >= usable_blocks || nb_blocks > usable_blocks - first) return std::nullopt;
    return BlockRange{first, nb_blocks};
}

// --- requests ---

std::uint16_t VirtioMem::plug(GuestPhysAddr addr, std::uint16_t nb_blocks) {
    // Checked twice: before asking the hypervisor, and again after it answered (it ran without
    // the lock; the requested or usable size may have changed meanwhile). Only the worker
    // plugs and unplugs, so the blocks' state itself cannot change in between.
    auto check = [&]() -> std::pair<std::uint16_t, BlockRange> {
        auto range = checked_range(addr, nb_blocks);
        if (!range) return {kMemRespError, {}};
        if (count_plugged(*range) != 0) return {kMemRespError, {}};
        if ((plugged_blocks_ + range->count) * region_.block_size > requested_size_)
            return {kMemRespNack, {}};
        return {kMemRespAck, *range};
    };
    BeforePlugHook before_plug;
    BlockRange range;
    {
        std::lock_guard lock(mutex_);
        auto [answer, checked] = check();
        if (answer != kMemRespAck) return answer;
        range = checked;
        before_plug = before_plug_;
    }
    if (before_plug &&
        !before_plug(range.first * region_.block_size, range.count * region_.block_size))
        return kMemRespBusy;
    // A reset while the hypervisor was deciding: the request is dropped unanswered (the base
    // returns no used entry), so it must not take effect either.
    if (stopping()) return kMemRespBusy;
    std::lock_guard lock(mutex_);
    auto [answer, checked] = check();
    if (answer != kMemRespAck) return answer;
    set_blocks(checked, true);
    return kMemRespAck;
}

std::uint16_t VirtioMem::unplug(GuestPhysAddr addr, std::uint16_t nb_blocks) {
    UnpluggedHook hook;
    BlockRange range;
    {
        std::lock_guard lock(mutex_);
        auto checked = checked_range(addr, nb_blocks);
        if (!checked || count_plugged(*checked) != checked->count) return kMemRespError;
        range = *checked;
        hook = on_unplugged_;
    }
    unplug_runs({{range.first, range.count}}, hook);
    return kMemRespAck;
}

std::uint16_t VirtioMem::unplug_all() {
    std::vector<Run> runs;
    UnpluggedHook hook;
    {
        std::lock_guard lock(mutex_);
        runs = plugged_runs();
        hook = on_unplugged_;
    }
    // usable_region_size stays: the hypervisor, not the guest, decides how far it reaches.
    unplug_runs(runs, hook);
    return kMemRespAck;
}

void VirtioMem::unplug_runs(const std::vector<Run>& runs, const UnpluggedHook& hook) {
    for (const Run& run : runs) {
        // The hook first: once plugged_size() shows the drop, the backing has been released.
        if (hook) hook(run.first * region_.block_size, run.count * region_.block_size);
        std::lock_guard lock(mutex_);
        set_blocks({run.first, run.count}, false);
    }
}

std::uint16_t VirtioMem::state(GuestPhysAddr addr, std::uint16_t nb_blocks,
                               std::uint16_t& state_out) {
    std::lock_guard lock(mutex_);
    auto range = checked_range(addr, nb_blocks);
    if (!range) return kMemRespError;
    const std::uint64_t plugged = count_plugged(*range);
    state_out = plugged == range->count ? kMemStatePlugged
                : plugged == 0          ? kMemStateUnplugged
                                        : kMemStateMixed;
    return kMemRespAck;
}

VirtioDeviceBase::ChainResult VirtioMem::handle_chain(std::uint16_t, Queue&,
                                                      DescriptorChain& chain) {
    return {serve_request(chain)};
}

std::uint32_t VirtioMem::serve_request(const DescriptorChain& chain) {
    // Device-readable buffers first, then device-writable ones (2.7.4.2); the request and the
    // response may be split across descriptors in any way (VERSION_1 implies ANY_LAYOUT).
    std::array<std::uint8_t, sizeof(VirtioMemReq)> request_bytes{};
    std::size_t have = 0;
    std::uint64_t writable_len = 0;
    bool seen_writable = false;
    for (const Descriptor& descriptor : chain.descriptors) {
        if (descriptor.device_writable) {
            seen_writable = true;
            writable_len += descriptor.len;
            continue;
        }
        if (seen_writable) return 0;  // a readable buffer after a writable one
        const std::size_t take = std::min<std::size_t>(descriptor.len, request_bytes.size() - have);
        if (take > 0 && !memory().read(descriptor.addr,
                                       std::span<std::uint8_t>(request_bytes.data() + have, take)))
            return 0;  // pop() checked the range; cannot happen
        have += take;
    }
    if (have < request_bytes.size() || writable_len < sizeof(VirtioMemResp)) return 0;
    VirtioMemReq request;
    std::memcpy(&request, request_bytes.data(), sizeof request);

    VirtioMemResp response{};
    switch (request.type) {
        case kMemReqPlug:
            response.type = plug(GuestPhysAddr{request.addr}, request.nb_blocks);
            break;
        case kMemReqUnplug:
            response.type = unplug(GuestPhysAddr{request.addr}, request.nb_blocks);
            break;
        case kMemReqUnplugAll:
            response.type = unplug_all();
            break;
        case kMemReqState:
            response.type = state(GuestPhysAddr{request.addr}, request.nb_blocks, response.state);
            break;
        default:
            log_limiter().log(spdlog::level::debug, "{}: unknown request type {}", name(),
                              request.type);
            response.type = kMemRespError;
            break;
    }

    std::array<std::uint8_t, sizeof(VirtioMemResp)> response_bytes{};
    std::memcpy(response_bytes.data(), &response, sizeof response);
    std::size_t written = 0;
    for (const Descriptor& descriptor : chain.descriptors) {
        if (written == response_bytes.size()) break;
        if (!descriptor.device_writable) continue;
        const std::size_t put_len =
            std::min<std::size_t>(descriptor.len, response_bytes.size() - written);
        if (put_len == 0) continue;  // an empty buffer: the response goes on in the next one
        if (!memory().write(descriptor.addr, std::span<const std::uint8_t>(
                                                 response_bytes.data() + written, put_len)))
            break;  // pop() checked the range; cannot happen
        written += put_len;
    }
    return static_cast<std::uint32_t>(written);
}

}  // namespace lparvisor::virtio
