#include "devices/virtio/virtio_pci.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <exception>

#include "util/error.hpp"
#include "util/fd.hpp"

namespace lparvisor::virtio {

namespace {

constexpr std::uint16_t kCapStart = 0x40;
constexpr std::uint8_t kVirtioCapLength = 16;    // struct virtio_pci_cap
constexpr std::uint8_t kNotifyCapLength = 20;    // struct virtio_pci_notify_cap
constexpr std::uint16_t kMsixEnable = 1u << 15;  // MSI-X message control
constexpr std::uint16_t kMsixFunctionMask = 1u << 14;
constexpr std::uint64_t kPage = 0x1000;
// Transport features this transport does not implement, whatever the device offers:
// SR_IOV (37), NOTIFICATION_DATA (38), NOTIF_CONFIG_DATA (39), RING_RESET (40), ADMIN_VQ (41).
constexpr std::uint64_t kTransportUnsupported = 0x1full << 37;

std::uint64_t round_up(std::uint64_t value, std::uint64_t to) {
    return (value + to - 1) / to * to;
}

std::uint64_t load_le(std::span<const std::uint8_t> data) {
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < data.size() && i < 8; ++i) v |= std::uint64_t{data[i]} << (8 * i);
    return v;
}

void store_le(std::uint64_t value, std::span<std::uint8_t> data) {
    for (std::size_t i = 0; i < data.size() && i < 8; ++i)
        data[i] = static_cast<std::uint8_t>(value >> (8 * i));
}

bool valid_size(std::size_t size) {
    return size == 1 || size == 2 || size == 4 || size == 8;
}

// The width of the common-configuration field at `offset`, 0 if no field starts there.
unsigned common_field_width(std::uint64_t offset) {
    if (offset < 0x10) return offset % 4 == 0 ? 4 : 0;
    if (offset == 0x14 || offset == 0x15) return 1;
    if (offset < 0x20) return offset % 2 == 0 ? 2 : 0;
    if (offset < 0x38) return offset % 4 == 0 ? 4 : 0;
    if (offset < VirtioPciDevice::kCommonCfgLength) return offset % 2 == 0 ? 2 : 0;
    return 0;
}

// A 64-bit queue address written whole or as its low or high half.
void merge64(std::uint64_t& field, std::uint64_t at, std::uint64_t offset, std::size_t size,
             std::uint64_t value) {
    if (size == 8)
        field = value;
    else if (offset == at)
        field = (field & ~0xffffffffull) | (value & 0xffffffffull);
    else
        field = (field & 0xffffffffull) | (value << 32);
}

std::uint64_t read64(std::uint64_t field, std::uint64_t at, std::uint64_t offset,
                     std::size_t size) {
    if (size == 8) return field;
    return offset == at ? field & 0xffffffffull : field >> 32;
}

}  // namespace

// --- MSI-X state shared with the device's InterruptSink ---
//
// Its mutex is taken by the sink on the device's worker thread, and by the transport with
// mutex_ held; it is never held while the device is called. Platform calls (routes) are made
// with it held so that no interrupt can slip between "unmasked" and "routed".
class VirtioPciDevice::Interrupts {
  public:
    Interrupts(std::shared_ptr<pci::PciPlatform> platform, std::uint16_t vectors,
               std::uint16_t queues, std::string name)
        : platform_(std::move(platform)),
          queue_vectors_(queues, kNoVector),
          name_(std::move(name)) {
        vectors_.reserve(vectors);
        try {
            for (std::uint16_t v = 0; v < vectors; ++v) {
                Vector vec;
                vec.eventfd.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
                if (!vec.eventfd.valid())
                    throw_errno(fmt::format("{}: eventfd for MSI-X vector {}", name_, v));
                vec.gsi = platform_->allocate_gsi();
                vectors_.push_back(std::move(vec));
                platform_->attach_irqfd(vectors_.back().gsi, vectors_.back().eventfd.get());
                vectors_.back().attached = true;
            }
        } catch (...) {
            release();
            throw;
        }
    }
    ~Interrupts() { release(); }
    Interrupts(const Interrupts&) = delete;
    Interrupts& operator=(const Interrupts&) = delete;

    std::uint16_t count() const noexcept { return static_cast<std::uint16_t>(vectors_.size()); }
    std::uint32_t gsi(std::uint16_t v) const { return vectors_.at(v).gsi; }
    void set_log_limiter(std::shared_ptr<LogRateLimiter> limiter) {
        std::lock_guard lock(mutex_);
        log_limiter_ = std::move(limiter);
    }
    int eventfd(std::uint16_t v) const { return vectors_.at(v).eventfd.get(); }

    // --- the sink's side (device worker thread) ---
    void used_buffer(std::uint16_t queue) {
        isr_.fetch_or(1);
        std::lock_guard lock(mutex_);
        if (queue < queue_vectors_.size()) signal_locked(queue_vectors_[queue]);
    }
    void config_change() {
        isr_.fetch_or(2);
        generation_.fetch_add(1);
        std::lock_guard lock(mutex_);
        signal_locked(config_vector_);
    }

    // --- the transport's side (mutex_ held) ---
    std::uint8_t take_isr() { return isr_.exchange(0); }
    std::uint8_t generation() const { return generation_.load(); }
    std::uint16_t config_vector() {
        std::lock_guard lock(mutex_);
        return config_vector_;
    }
    std::uint16_t queue_vector(std::uint16_t queue) {
        std::lock_guard lock(mutex_);
        return queue < queue_vectors_.size() ? queue_vectors_[queue] : kNoVector;
    }
    // A vector number the driver wrote: kept if the table has it, else NO_VECTOR (the driver
    // reads it back to see that the assignment failed).
    std::uint16_t checked(std::uint16_t vector) const {
        return vector < vectors_.size() ? vector : kNoVector;
    }
    void set_config_vector(std::uint16_t vector) {
        std::lock_guard lock(mutex_);
        config_vector_ = checked(vector);
    }
    void set_queue_vector(std::uint16_t queue, std::uint16_t vector) {
        std::lock_guard lock(mutex_);
        if (queue < queue_vectors_.size()) queue_vectors_[queue] = checked(vector);
    }
    // Virtio reset: vector assignments, pending interrupts and the ISR go; the MSI-X table
    // and its control bits are PCI state and stay.
    void reset_virtio_state() {
        std::lock_guard lock(mutex_);
        config_vector_ = kNoVector;
        std::fill(queue_vectors_.begin(), queue_vectors_.end(), kNoVector);
        for (auto& v : vectors_) v.pending = false;
        isr_.store(0);
    }
    void set_control(bool enabled, bool function_mask) {
        std::lock_guard lock(mutex_);
        enabled_ = enabled;
        function_mask_ = function_mask;
        sync_locked();
    }

    // MSI-X table and PBA: dword (or aligned qword, as two dwords) accesses.
    void table_read(std::uint64_t offset, std::span<std::uint8_t> data) {
        std::lock_guard lock(mutex_);
        for (std::size_t done = 0; done < data.size(); done += 4)
            store_le(table_dword_locked(offset + done), data.subspan(done, 4));
    }
    void table_write(std::uint64_t offset, std::span<const std::uint8_t> data) {
        std::lock_guard lock(mutex_);
        for (std::size_t done = 0; done < data.size(); done += 4) {
            std::uint64_t at = offset + done;
            std::size_t entry = at / 16;
            if (entry >= vectors_.size()) continue;
            auto value = static_cast<std::uint32_t>(load_le(data.subspan(done, 4)));
            Vector& v = vectors_[entry];
            switch (at % 16) {
                case 0:
                    v.address_lo = value & ~3u;  // bits 1:0 are reserved
                    break;
                case 4:
                    v.address_hi = value;
                    break;
                case 8:
                    v.data = value;
                    break;
                default:
                    v.masked = (value & 1) != 0;
                    break;
            }
        }
        sync_locked();
    }
    void pba_read(std::uint64_t offset, std::span<std::uint8_t> data) {
        std::lock_guard lock(mutex_);
        std::uint64_t bits = 0;
        for (std::size_t bit = 0; bit < data.size() * 8; ++bit) {
            std::size_t v = offset * 8 + bit;
            if (v < vectors_.size() && vectors_[v].pending) bits |= 1ull << bit;
        }
        store_le(bits, data);
    }

  private:
    struct Vector {
        Fd eventfd;
        std::uint32_t gsi = 0;
        bool attached = false;
        std::uint32_t address_lo = 0;
        std::uint32_t address_hi = 0;
        std::uint32_t data = 0;
        bool masked = true;  // entries start masked (PCI 3.0, 6.8.2.9)
        bool pending = false;
        std::optional<std::pair<std::uint64_t, std::uint32_t>> routed;
        std::uint64_t address() const { return std::uint64_t{address_hi} << 32 | address_lo; }
    };

    bool deliverable_locked(const Vector& v) const {
        return enabled_ && !function_mask_ && !v.masked;
    }
    void fire(const Vector& v) {
        std::uint64_t one = 1;
        // EAGAIN only when the counter is saturated: the interrupt is pending anyway.
        ssize_t written = ::write(v.eventfd.get(), &one, sizeof one);
        (void)written;
    }
    void signal_locked(std::uint16_t vector) {
        // MSI-X off: no INTx here, the driver sees the ISR only.
        if (vector >= vectors_.size() || !enabled_) return;
        Vector& v = vectors_[vector];
        if (deliverable_locked(v))
            fire(v);
        else
            v.pending = true;
    }
    // Routes follow the table: a route exactly for the vectors that may deliver now, then
    // what was pending on them goes out.
    void sync_locked() {
        for (std::size_t i = 0; i < vectors_.size(); ++i) {
            Vector& v = vectors_[i];
            std::optional<std::pair<std::uint64_t, std::uint32_t>> want;
            if (deliverable_locked(v)) want = std::make_pair(v.address(), v.data);
            if (want != v.routed) {
                if (want) {
                    if (platform_->set_msi_route(v.gsi, want->first, want->second))
                        v.routed = want;
                    else
                        log_limiter_->log(spdlog::level::warn,
                                          "{}: no MSI route for vector {} (GSI {})", name_, i,
                                          v.gsi);
                } else {
                    platform_->clear_msi_route(v.gsi);
                    v.routed.reset();
                }
            }
            if (want && v.pending) {
                v.pending = false;
                fire(v);
            }
        }
    }
    std::uint32_t table_dword_locked(std::uint64_t at) const {
        std::size_t entry = at / 16;
        if (entry >= vectors_.size()) return 0;
        const Vector& v = vectors_[entry];
        switch (at % 16) {
            case 0:
                return v.address_lo;
            case 4:
                return v.address_hi;
            case 8:
                return v.data;
            default:
                return v.masked ? 1 : 0;
        }
    }
    void release() noexcept {
        for (auto& v : vectors_) {
            if (v.routed) platform_->clear_msi_route(v.gsi);
            if (v.attached) platform_->detach_irqfd(v.gsi, v.eventfd.get());
            platform_->release_gsi(v.gsi);
        }
        vectors_.clear();
    }

    const std::shared_ptr<pci::PciPlatform> platform_;
    std::mutex mutex_;
    std::vector<Vector> vectors_;  // fixed after construction
    bool enabled_ = false;
    bool function_mask_ = false;
    std::uint16_t config_vector_ = kNoVector;
    std::vector<std::uint16_t> queue_vectors_;
    std::atomic<std::uint8_t> isr_{0};
    std::atomic<std::uint8_t> generation_{0};
    const std::string name_;
    std::shared_ptr<LogRateLimiter> log_limiter_ = own_log_limiter(nullptr, name_);
};

// --- VirtioPciDevice ---

namespace {

std::uint16_t checked_queue_count(const std::shared_ptr<VirtioDevice>& device) {
    if (!device) throw Error(ErrorKind::InvalidArgument, "virtio-pci: no device given");
    std::uint16_t n = device->queue_count();
    if (n == 0 || n > VirtioPciDevice::kMaxQueues)
        throw Error(ErrorKind::InvalidArgument,
                    fmt::format("virtio-pci: {} has {} queues (1-{} supported)", device->name(), n,
                                VirtioPciDevice::kMaxQueues));
    return n;
}

std::uint64_t pba_offset_for(std::uint16_t vectors) {
    return VirtioPciDevice::kMsixTableOffset + round_up(std::uint64_t{vectors} * 16, kPage);
}

std::uint64_t bar_size_for(std::uint16_t vectors) {
    std::uint64_t pba_bytes = round_up((std::uint64_t{vectors} + 63) / 64 * 8, kPage);
    return std::bit_ceil(pba_offset_for(vectors) + pba_bytes);
}

}  // namespace

VirtioPciDevice::VirtioPciDevice(std::shared_ptr<VirtioDevice> device,
                                 std::shared_ptr<pci::PciPlatform> platform)
    : device_(std::move(device)),
      platform_(std::move(platform)),
      queue_count_(checked_queue_count(device_)),
      pba_offset_(pba_offset_for(static_cast<std::uint16_t>(queue_count_ + 1))),
      bar_size_(bar_size_for(static_cast<std::uint16_t>(queue_count_ + 1))),
      msix_cap_(kCapStart + 3 * kVirtioCapLength + kNotifyCapLength) {
    if (!platform_) throw Error(ErrorKind::InvalidArgument, "virtio-pci: no platform given");
    const std::uint16_t vectors = static_cast<std::uint16_t>(queue_count_ + 1);
    interrupts_ = std::make_shared<Interrupts>(platform_, vectors, queue_count_, device_->name());
    log_limiter_ = own_log_limiter(nullptr, device_->name());
    queues_.assign(queue_count_, QueueState{device_->queue_max_size()});

    using namespace pci::reg;
    auto type = device_->device_type();
    config_.set16(kVendorId, kPciVendorId);
    config_.set16(kDeviceId, static_cast<std::uint16_t>(0x1040 + static_cast<unsigned>(type)));
    config_.set16(kStatus, kStatusCapabilities);
    config_.set8(kRevision, 1);  // modern-only device (4.1.2.1)
    bool storage = type == DeviceType::Block;
    config_.set8(kClass, storage ? 0x01 : 0xff);
    config_.set8(kSubclass, storage ? 0x80 : 0x00);
    config_.set8(kHeaderType, 0);
    config_.set16(kSubsystemVendorId, kSubsystemVendor);
    config_.set16(kSubsystemId, kSubsystemDevice);
    config_.set8(kCapabilitiesPointer, static_cast<std::uint8_t>(kCapStart));
    config_.set8(kInterruptPin, 0);  // no INTx
    // Memory decode, bus master, parity and SERR response, INTx disable: no I/O BARs.
    config_.set_writable16(kCommand, 0x0546);
    config_.set_writable8(0x0c, 0xff);  // cache line size
    config_.set_writable8(0x0d, 0xff);  // latency timer
    config_.set_writable8(kInterruptLine, 0xff);
    // 32-bit non-prefetchable memory BAR (flag bits 0): only the address bits take writes,
    // so sizing with all ones reads back ~(size - 1).
    config_.set_writable32(kBar0, static_cast<std::uint32_t>(~(bar_size_ - 1)) & ~0xfu);

    auto virtio_cap = [&](std::uint16_t at, std::uint16_t next, std::uint8_t cfg_type,
                          std::uint64_t offset, std::uint64_t length, std::uint8_t cap_len) {
        config_.set8(at, kCapabilityVendor);
        config_.set8(at + 1, static_cast<std::uint8_t>(next));
        config_.set8(at + 2, cap_len);
        config_.set8(at + 3, cfg_type);
        config_.set8(at + 4, 0);  // bar
        config_.set32(at + 8, static_cast<std::uint32_t>(offset));
        config_.set32(at + 12, static_cast<std::uint32_t>(length));
    };
    std::uint16_t at = kCapStart;
    virtio_cap(at, at + kVirtioCapLength, kPciCapCommonCfg, kCommonCfgOffset, kCommonCfgLength,
               kVirtioCapLength);
    at += kVirtioCapLength;
    virtio_cap(at, at + kVirtioCapLength, kPciCapIsrCfg, kIsrOffset, kIsrLength, kVirtioCapLength);
    at += kVirtioCapLength;
    virtio_cap(at, at + kVirtioCapLength, kPciCapDeviceCfg, kDeviceCfgOffset, kDeviceCfgLength,
               kVirtioCapLength);
    at += kVirtioCapLength;
    virtio_cap(at, msix_cap_, kPciCapNotifyCfg, kNotifyOffset,
               std::uint64_t{queue_count_} * kNotifyOffMultiplier, kNotifyCapLength);
    config_.set32(at + 16, kNotifyOffMultiplier);
    config_.set8(msix_cap_, kCapabilityMsix);
    config_.set8(msix_cap_ + 1, 0);  // end of the list
    config_.set16(msix_cap_ + 2, static_cast<std::uint16_t>(vectors - 1));
    config_.set_writable16(msix_cap_ + 2, kMsixEnable | kMsixFunctionMask);
    config_.set32(msix_cap_ + 4, static_cast<std::uint32_t>(kMsixTableOffset));  // BIR 0
    config_.set32(msix_cap_ + 8, static_cast<std::uint32_t>(pba_offset_));       // BIR 0
}

VirtioPciDevice::~VirtioPciDevice() {
    std::lock_guard lock(mutex_);
    unregister_ioeventfds_locked();
    // Stop the device using our interrupt state (it keeps the sink until reset).
    try {
        if (status_ != 0) device_->reset();
    } catch (const std::exception& e) {
        spdlog::warn("{}: reset on removal: {}", device_->name(), e.what());
    }
}

std::uint16_t VirtioPciDevice::msix_vectors() const noexcept {
    return interrupts_->count();
}

std::uint32_t VirtioPciDevice::vector_gsi(std::uint16_t vector) const {
    if (vector >= interrupts_->count())
        throw Error(ErrorKind::InvalidArgument,
                    fmt::format("{}: no MSI-X vector {}", device_->name(), vector));
    return interrupts_->gsi(vector);
}

int VirtioPciDevice::vector_eventfd(std::uint16_t vector) const {
    if (vector >= interrupts_->count())
        throw Error(ErrorKind::InvalidArgument,
                    fmt::format("{}: no MSI-X vector {}", device_->name(), vector));
    return interrupts_->eventfd(vector);
}

std::string VirtioPciDevice::name() const {
    return device_->name();
}

void VirtioPciDevice::set_log_limiter(std::shared_ptr<LogRateLimiter> limiter) {
    if (!limiter) return;
    {
        std::lock_guard lock(mutex_);
        log_limiter_ = limiter;
    }
    interrupts_->set_log_limiter(limiter);
    device_->set_log_limiter(std::move(limiter));
}

void VirtioPciDevice::ignore(const char* what, std::uint64_t offset, std::size_t size) const {
    log_limiter_->log(spdlog::level::debug, "{}: {} of {} byte(s) at BAR0+{:#x} ignored",
                      device_->name(), what, size, offset);
}

// --- configuration space ---

void VirtioPciDevice::config_read(std::uint16_t offset, std::span<std::uint8_t> data) {
    std::lock_guard lock(mutex_);
    config_.read(offset, data);
}

void VirtioPciDevice::config_write(std::uint16_t offset, std::span<const std::uint8_t> data) {
    std::lock_guard lock(mutex_);
    config_.write(offset, data);
    if (pci::touches(offset, data.size(), pci::reg::kCommand, 2) ||
        pci::touches(offset, data.size(), pci::reg::kBar0, 4))
        sync_ioeventfds_locked();
    if (pci::touches(offset, data.size(), msix_cap_ + 2, 2)) msix_control_changed_locked();
}

void VirtioPciDevice::msix_control_changed_locked() {
    std::uint16_t control = config_.get16(static_cast<std::uint16_t>(msix_cap_ + 2));
    interrupts_->set_control((control & kMsixEnable) != 0, (control & kMsixFunctionMask) != 0);
}

std::optional<GuestPhysAddr> VirtioPciDevice::bar0_locked() const {
    if ((config_.get16(pci::reg::kCommand) & pci::reg::kCommandMemory) == 0) return std::nullopt;
    std::uint64_t address = config_.get32(pci::reg::kBar0) & ~0xfu;
    if (address == 0) return std::nullopt;
    return GuestPhysAddr{address};
}

void VirtioPciDevice::assign_bar(unsigned bar, GuestPhysAddr gpa) {
    if (bar != 0) return;
    std::lock_guard lock(mutex_);
    config_.set32(pci::reg::kBar0, static_cast<std::uint32_t>(gpa.value) & ~0xfu);
    config_.set16(pci::reg::kCommand, config_.get16(pci::reg::kCommand) | pci::reg::kCommandMemory);
    sync_ioeventfds_locked();
}

std::optional<GuestPhysAddr> VirtioPciDevice::bar_address(unsigned bar) const {
    if (bar != 0) return std::nullopt;
    std::lock_guard lock(mutex_);
    return bar0_locked();
}

// --- ioeventfds on the notify addresses ---

void VirtioPciDevice::unregister_ioeventfds_locked() {
    for (const auto& [gpa, fd] : ioeventfds_)
        platform_->unregister_ioeventfd(gpa, kNotifyWidth, fd);
    ioeventfds_.clear();
    ioeventfd_base_.reset();
}

void VirtioPciDevice::sync_ioeventfds_locked() {
    std::optional<GuestPhysAddr> want;
    if (activated_ && (status_ & kStatusDriverOk) != 0)
        if (auto base = bar0_locked()) want = *base + kNotifyOffset;
    if (want == ioeventfd_base_) return;
    unregister_ioeventfds_locked();
    if (!want) return;
    for (std::uint16_t q = 0; q < queue_count_; ++q) {
        int fd = device_->queue_event_fd(q);
        if (fd < 0) continue;
        const GuestPhysAddr gpa = *want + std::uint64_t{q} * kNotifyOffMultiplier;
        if (platform_->register_ioeventfd(gpa, kNotifyWidth, fd))
            ioeventfds_.emplace_back(gpa, fd);
        else  // the notify still works, through an MMIO exit
            log_limiter_->log(spdlog::level::warn, "{}: queue {} notifies at {:#x} will exit",
                              device_->name(), q, gpa.value);
    }
    ioeventfd_base_ = want;
}

// --- common configuration ---

std::uint64_t VirtioPciDevice::offered_features() const {
    return device_->device_features() & ~kTransportUnsupported;
}

VirtioPciDevice::QueueState* VirtioPciDevice::selected_queue_locked() {
    return queue_select_ < queues_.size() ? &queues_[queue_select_] : nullptr;
}

std::uint8_t VirtioPciDevice::status_locked() const {
    std::uint8_t status = status_;
    if (activated_ && device_->needs_reset()) status |= kStatusNeedsReset;
    return status;
}

std::uint64_t VirtioPciDevice::common_read_locked(std::uint64_t offset, std::size_t size) {
    using namespace common;
    QueueState* q = selected_queue_locked();
    switch (offset) {
        case kDeviceFeatureSelect:
            return device_feature_select_;
        case kDeviceFeature:
            if (device_feature_select_ > 1) return 0;
            return (offered_features() >> (32 * device_feature_select_)) & 0xffffffffull;
        case kDriverFeatureSelect:
            return driver_feature_select_;
        case kDriverFeature:
            if (driver_feature_select_ > 1) return 0;
            return (driver_features_ >> (32 * driver_feature_select_)) & 0xffffffffull;
        case kMsixConfig:
            return interrupts_->config_vector();
        case kNumQueues:
            return queue_count_;
        case kDeviceStatus:
            return status_locked();
        case kConfigGeneration:
            return interrupts_->generation();
        case kQueueSelect:
            return queue_select_;
        case kQueueSize:
            return q ? q->size : 0;
        case kQueueMsixVector:
            return q ? interrupts_->queue_vector(queue_select_) : kNoVector;
        case kQueueEnable:
            return q && q->enabled ? 1 : 0;
        case kQueueNotifyOff:
            return q ? queue_select_ : 0;
        case kQueueDesc:
        case kQueueDesc + 4:
            return q ? read64(q->desc, kQueueDesc, offset, size) : 0;
        case kQueueDriver:
        case kQueueDriver + 4:
            return q ? read64(q->driver, kQueueDriver, offset, size) : 0;
        case kQueueDevice:
        case kQueueDevice + 4:
            return q ? read64(q->device, kQueueDevice, offset, size) : 0;
        default:
            return 0;  // queue_notify_data, queue_reset: features not offered
    }
}

void VirtioPciDevice::common_write_locked(std::uint64_t offset, std::size_t size,
                                          std::uint64_t value) {
    using namespace common;
    QueueState* q = selected_queue_locked();
    // Queue set-up is frozen once the queue is enabled or the device is live.
    bool queue_writable = q && !q->enabled && (status_ & kStatusDriverOk) == 0;
    switch (offset) {
        case kDeviceFeatureSelect:
            device_feature_select_ = static_cast<std::uint32_t>(value);
            return;
        case kDriverFeatureSelect:
            driver_feature_select_ = static_cast<std::uint32_t>(value);
            return;
        case kDriverFeature: {
            if ((status_ & kStatusFeaturesOk) != 0 || driver_feature_select_ > 1)
                return ignore("driver_feature write", offset, size);
            // The driver can only accept what was offered.
            unsigned shift = 32 * driver_feature_select_;
            std::uint64_t mask = 0xffffffffull << shift;
            driver_features_ = (driver_features_ & ~mask) |
                               ((value & 0xffffffffull) << shift & offered_features());
            return;
        }
        case kMsixConfig:
            interrupts_->set_config_vector(static_cast<std::uint16_t>(value));
            return;
        case kDeviceStatus:
            write_status_locked(static_cast<std::uint8_t>(value));
            return;
        case kQueueSelect:
            queue_select_ = static_cast<std::uint16_t>(value);
            return;
        case kQueueSize: {
            auto v = static_cast<std::uint16_t>(value);
            if (!queue_writable || v == 0 || v > device_->queue_max_size())
                return ignore("queue_size write", offset, size);
            q->size = v;  // the device checks the power of two at activate()
            return;
        }
        case kQueueMsixVector:
            if (q) interrupts_->set_queue_vector(queue_select_, static_cast<std::uint16_t>(value));
            return;
        case kQueueEnable:
            // 1.2 forbids writing 0 (that is queue_reset's job, not offered).
            if (queue_writable && value == 1) q->enabled = true;
            return;
        case kQueueDesc:
        case kQueueDesc + 4:
            if (queue_writable) merge64(q->desc, kQueueDesc, offset, size, value);
            return;
        case kQueueDriver:
        case kQueueDriver + 4:
            if (queue_writable) merge64(q->driver, kQueueDriver, offset, size, value);
            return;
        case kQueueDevice:
        case kQueueDevice + 4:
            if (queue_writable) merge64(q->device, kQueueDevice, offset, size, value);
            return;
        default:  // device_feature, num_queues, config_generation, queue_notify_off, ...
            return ignore("write to a read-only field", offset, size);
    }
}

void VirtioPciDevice::write_status_locked(std::uint8_t value) {
    if (value == 0) return reset_locked();
    // Bits only accumulate until a reset; NEEDS_RESET is the device's to set.
    std::uint8_t added = static_cast<std::uint8_t>(value & ~status_ & ~kStatusNeedsReset);
    std::uint8_t status = status_ | added;
    if ((added & kStatusFeaturesOk) != 0 && (driver_features_ & kFeatureVersion1) == 0) {
        log_limiter_->log(spdlog::level::debug,
                          "{}: FEATURES_OK refused: the driver did not accept VERSION_1",
                          device_->name());
        status &= static_cast<std::uint8_t>(~kStatusFeaturesOk);
    }
    if ((added & kStatusDriverOk) != 0 && (status & kStatusFeaturesOk) == 0) {
        log_limiter_->log(spdlog::level::debug, "{}: DRIVER_OK without FEATURES_OK ignored",
                          device_->name());
        status &= static_cast<std::uint8_t>(~kStatusDriverOk);
        added &= static_cast<std::uint8_t>(~kStatusDriverOk);
    }
    status_ = status;
    if ((added & kStatusDriverOk) == 0) return;

    std::vector<QueueConfig> queues;
    queues.reserve(queues_.size());
    for (const auto& q : queues_)
        queues.push_back(QueueConfig{q.size, q.enabled, GuestPhysAddr{q.desc},
                                     GuestPhysAddr{q.driver}, GuestPhysAddr{q.device}});
    InterruptSink sink;
    auto irq = interrupts_;
    sink.used_buffer = [irq](std::uint16_t queue) { irq->used_buffer(queue); };
    sink.config_change = [irq] { irq->config_change(); };
    bool ok = false;
    try {
        ok = device_->activate(driver_features_, std::move(queues), std::move(sink));
    } catch (const std::exception& e) {  // a guest-triggered path: never let it through
        log_limiter_->log(spdlog::level::warn, "{}: activate failed: {}", device_->name(),
                          e.what());
    }
    if (!ok) {
        log_limiter_->log(spdlog::level::info,
                          "{}: the driver's configuration was refused: NEEDS_RESET",
                          device_->name());
        status_ |= kStatusNeedsReset;
        return;
    }
    activated_ = true;
    sync_ioeventfds_locked();
}

void VirtioPciDevice::reset_locked() {
    unregister_ioeventfds_locked();
    try {
        device_->reset();
    } catch (const std::exception& e) {
        log_limiter_->log(spdlog::level::warn, "{}: reset: {}", device_->name(), e.what());
    }
    interrupts_->reset_virtio_state();
    device_feature_select_ = 0;
    driver_feature_select_ = 0;
    driver_features_ = 0;
    status_ = 0;
    activated_ = false;
    queue_select_ = 0;
    queues_.assign(queue_count_, QueueState{device_->queue_max_size()});
}

// --- BAR0 ---

void VirtioPciDevice::bar_read(unsigned bar, std::uint64_t offset, std::span<std::uint8_t> data) {
    std::fill(data.begin(), data.end(), 0);
    std::size_t size = data.size();
    if (bar != 0 || !valid_size(size) || offset >= bar_size_ || size > bar_size_ - offset)
        return ignore("read", offset, size);
    std::lock_guard lock(mutex_);
    auto inside = [&](std::uint64_t start, std::uint64_t length) {
        return offset >= start && offset - start + size <= length;
    };
    if (inside(kCommonCfgOffset, kCommonCfgLength)) {
        std::uint64_t at = offset - kCommonCfgOffset;
        unsigned width = common_field_width(at);
        bool wide = size == 8 && (at == common::kQueueDesc || at == common::kQueueDriver ||
                                  at == common::kQueueDevice);
        if (width != size && !wide) return ignore("common cfg read", offset, size);
        store_le(common_read_locked(at, size), data);
    } else if (inside(kIsrOffset, kIsrLength)) {
        if (offset == kIsrOffset) data[0] = interrupts_->take_isr();
    } else if (inside(kDeviceCfgOffset, kDeviceCfgLength)) {
        if (offset % size != 0) return ignore("misaligned device cfg read", offset, size);
        device_->read_config(static_cast<std::uint32_t>(offset - kDeviceCfgOffset), data);
    } else if (inside(kMsixTableOffset, std::uint64_t{interrupts_->count()} * 16) ||
               inside(pba_offset_, (std::uint64_t{interrupts_->count()} + 63) / 64 * 8)) {
        if (size < 4 || offset % size != 0) return ignore("MSI-X read", offset, size);
        if (offset >= pba_offset_)
            interrupts_->pba_read(offset - pba_offset_, data);
        else
            interrupts_->table_read(offset - kMsixTableOffset, data);
    } else {
        ignore("read", offset, size);  // the notify area and the gaps read as zeros
    }
}

void VirtioPciDevice::bar_write(unsigned bar, std::uint64_t offset,
                                std::span<const std::uint8_t> data) {
    std::size_t size = data.size();
    if (bar != 0 || !valid_size(size) || offset >= bar_size_ || size > bar_size_ - offset)
        return ignore("write", offset, size);
    std::lock_guard lock(mutex_);
    auto inside = [&](std::uint64_t start, std::uint64_t length) {
        return offset >= start && offset - start + size <= length;
    };
    std::uint64_t value = load_le(data);
    if (inside(kCommonCfgOffset, kCommonCfgLength)) {
        std::uint64_t at = offset - kCommonCfgOffset;
        unsigned width = common_field_width(at);
        bool wide = size == 8 && (at == common::kQueueDesc || at == common::kQueueDriver ||
                                  at == common::kQueueDevice);
        if (width != size && !wide) return ignore("common cfg write", offset, size);
        common_write_locked(at, size, value);
    } else if (inside(kDeviceCfgOffset, kDeviceCfgLength)) {
        if (offset % size != 0) return ignore("misaligned device cfg write", offset, size);
        device_->write_config(static_cast<std::uint32_t>(offset - kDeviceCfgOffset), data);
    } else if (inside(kNotifyOffset, std::uint64_t{queue_count_} * kNotifyOffMultiplier)) {
        std::uint64_t at = offset - kNotifyOffset;
        if (at % kNotifyOffMultiplier != 0 || size > 4) return ignore("notify", offset, size);
        if (!activated_) return ignore("notify before DRIVER_OK", offset, size);
        device_->notify(static_cast<std::uint16_t>(at / kNotifyOffMultiplier));
    } else if (inside(kMsixTableOffset, std::uint64_t{interrupts_->count()} * 16)) {
        if (size < 4 || offset % size != 0) return ignore("MSI-X table write", offset, size);
        interrupts_->table_write(offset - kMsixTableOffset, data);
    } else {
        ignore("write", offset, size);  // ISR, PBA (read-only) and the gaps
    }
}

}  // namespace lparvisor::virtio
