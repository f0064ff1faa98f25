// The modern virtio-pci transport (virtio 1.2, 4.1) around one VirtioDevice: a PCI function
// with vendor 0x1af4, device 0x1040 + type, and one 32-bit memory BAR0 holding
//
//   0x0000 common configuration (virtio_pci_common_cfg)      cfg_type 1
//   0x1000 ISR status (byte 0; a read clears it)              cfg_type 3
//   0x2000 device configuration (the device's read_config)    cfg_type 4
//   0x3000 notifications: queue i at 0x3000 + 4 * i           cfg_type 2, multiplier 4
//   0x4000 MSI-X table (queues + 1 vectors), then the PBA on the next 4 KiB page
//
// found through the capability list at config offset 0x40 (the four virtio_pci_cap structures
// and an MSI-X capability). There is no INTx: interrupts are MSI-X only (with MSI-X off the
// driver sees the ISR and can poll it).
//
// Interrupts: every MSI-X vector has an eventfd attached as an irqfd to a GSI of its own from
// the PciPlatform; the vector's MSI route is set while MSI-X is on and the vector unmasked,
// otherwise an interrupt sets its PBA bit and is sent when the vector is unmasked. Queue
// notifies: once DRIVER_OK is set, each queue's notify address is a KVM ioeventfd on the
// device's queue_event_fd (moved with the BAR, removed on reset or when memory decoding goes
// off); a notify write that still reaches the transport calls device->notify().
//
// Threads and locks: vCPU threads call in concurrently; mutex_ serialises them and is held
// while the transport calls the device (transport, then device, as virtio_device.hpp says).
// The InterruptSink given to the device takes only the interrupt mutex (innermost but the
// platform's), never mutex_. A guest access never throws: misaligned or odd-sized accesses,
// offsets outside a structure and writes to read-only fields read zeros / change nothing.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "devices/pci/pci_bus.hpp"
#include "devices/pci/pci_platform.hpp"
#include "devices/virtio/virtio_device.hpp"

namespace lparvisor::virtio {

inline constexpr std::uint16_t kNoVector = 0xffff;  // VIRTIO_MSI_NO_VECTOR

// virtio_pci_cap cfg_type values.
inline constexpr std::uint8_t kPciCapCommonCfg = 1;
inline constexpr std::uint8_t kPciCapNotifyCfg = 2;
inline constexpr std::uint8_t kPciCapIsrCfg = 3;
inline constexpr std::uint8_t kPciCapDeviceCfg = 4;

// Offsets in virtio_pci_common_cfg.
namespace common {
inline constexpr std::uint16_t kDeviceFeatureSelect = 0x00;
inline constexpr std::uint16_t kDeviceFeature = 0x04;
inline constexpr std::uint16_t kDriverFeatureSelect = 0x08;
inline constexpr std::uint16_t kDriverFeature = 0x0c;
inline constexpr std::uint16_t kMsixConfig = 0x10;
inline constexpr std::uint16_t kNumQueues = 0x12;
inline constexpr std::uint16_t kDeviceStatus = 0x14;
inline constexpr std::uint16_t kConfigGeneration = 0x15;
inline constexpr std::uint16_t kQueueSelect = 0x16;
inline constexpr std::uint16_t kQueueSize = 0x18;
inline constexpr std::uint16_t kQueueMsixVector = 0x1a;
inline constexpr std::uint16_t kQueueEnable = 0x1c;
inline constexpr std::uint16_t kQueueNotifyOff = 0x1e;
inline constexpr std::uint16_t kQueueDesc = 0x20;
inline constexpr std::uint16_t kQueueDriver = 0x28;
inline constexpr std::uint16_t kQueueDevice = 0x30;
}  // namespace common

class VirtioPciDevice final : public pci::PciDevice {
  public:
    static constexpr std::uint64_t kCommonCfgOffset = 0x0000;
    static constexpr std::uint64_t kCommonCfgLength = 0x40;  // through 1.2's queue_reset
    static constexpr std::uint64_t kIsrOffset = 0x1000;
    static constexpr std::uint64_t kIsrLength = 4;
    static constexpr std::uint64_t kDeviceCfgOffset = 0x2000;
    static constexpr std::uint64_t kDeviceCfgLength = 0x1000;
    static constexpr std::uint64_t kNotifyOffset = 0x3000;
    static constexpr std::uint32_t kNotifyOffMultiplier = 4;
    static constexpr std::uint64_t kMsixTableOffset = 0x4000;
    // The ioeventfd width: drivers notify with a 16-bit write of the queue index (4.1.5.2).
    static constexpr std::uint32_t kNotifyWidth = 2;
    static constexpr std::uint16_t kMaxQueues = 1024;  // the notify area is one 4 KiB page
    static constexpr std::uint16_t kSubsystemVendor = kPciVendorId;
    static constexpr std::uint16_t kSubsystemDevice = 0x1100;  // as QEMU's virtio devices

    // Allocates one GSI and eventfd per MSI-X vector (queue_count() + 1) and attaches them as
    // irqfds. `platform` must stay usable while this object lives. Throws lparvisor::Error
    // for a device with no queues or more than kMaxQueues, or when the platform refuses.
    VirtioPciDevice(std::shared_ptr<VirtioDevice> device,
                    std::shared_ptr<pci::PciPlatform> platform);
    ~VirtioPciDevice() override;
    VirtioPciDevice(const VirtioPciDevice&) = delete;
    VirtioPciDevice& operator=(const VirtioPciDevice&) = delete;

    // Layout facts (for tests, logs and the firmware's expectations).
    std::uint16_t msix_vectors() const noexcept;
    std::uint64_t msix_pba_offset() const noexcept { return pba_offset_; }
    std::uint64_t bar0_size() const noexcept { return bar_size_; }
    std::uint32_t vector_gsi(std::uint16_t vector) const;  // throws for a bad vector
    int vector_eventfd(std::uint16_t vector) const;        // throws for a bad vector

    // The LPAR's limiter for the log lines a guest can cause, for this transport and its
    // device (util/rate_limit.hpp). Set before the guest runs.
    void set_log_limiter(std::shared_ptr<LogRateLimiter> limiter);

    // PciDevice
    std::string name() const override;
    void config_read(std::uint16_t offset, std::span<std::uint8_t> data) override;
    void config_write(std::uint16_t offset, std::span<const std::uint8_t> data) override;
    std::uint64_t bar_size(unsigned bar) const override { return bar == 0 ? bar_size_ : 0; }
    void assign_bar(unsigned bar, GuestPhysAddr gpa) override;
    std::optional<GuestPhysAddr> bar_address(unsigned bar) const override;
    void bar_read(unsigned bar, std::uint64_t offset, std::span<std::uint8_t> data) override;
    void bar_write(unsigned bar, std::uint64_t offset, std::span<const std::uint8_t> data) override;
    void stop_accepting() override { device_->stop_accepting(); }
    void resume_accepting() override { device_->resume_accepting(); }
    bool idle() const override { return device_->idle(); }

    class Interrupts;  // MSI-X state the InterruptSink shares (defined in the .cpp)

  private:
    struct QueueState {
        std::uint16_t size = 0;
        bool enabled = false;
        std::uint64_t desc = 0;
        std::uint64_t driver = 0;
        std::uint64_t device = 0;
    };

    // Each *_locked function runs with mutex_ held.
    std::optional<GuestPhysAddr> bar0_locked() const;
    std::uint64_t common_read_locked(std::uint64_t offset, std::size_t size);
    void common_write_locked(std::uint64_t offset, std::size_t size, std::uint64_t value);
    void write_status_locked(std::uint8_t value);
    void reset_locked();
    std::uint8_t status_locked() const;
    QueueState* selected_queue_locked();
    std::uint64_t offered_features() const;
    void sync_ioeventfds_locked();
    void unregister_ioeventfds_locked();
    void msix_control_changed_locked();
    void ignore(const char* what, std::uint64_t offset, std::size_t size) const;

    const std::shared_ptr<VirtioDevice> device_;
    const std::shared_ptr<pci::PciPlatform> platform_;
    const std::uint16_t queue_count_;
    const std::uint64_t pba_offset_;
    const std::uint64_t bar_size_;
    const std::uint16_t msix_cap_;  // config offset of the MSI-X capability
    std::shared_ptr<Interrupts> interrupts_;
    std::shared_ptr<LogRateLimiter> log_limiter_;  // set before the guest runs

    mutable std::mutex mutex_;
    pci::ConfigSpace config_;
    std::uint32_t device_feature_select_ = 0;
    std::uint32_t driver_feature_select_ = 0;
    std::uint64_t driver_features_ = 0;
    std::uint8_t status_ = 0;
    bool activated_ = false;
    std::uint16_t queue_select_ = 0;
    std::vector<QueueState> queues_;
    // The ioeventfds registered now: (address, eventfd).
    std::vector<std::pair<GuestPhysAddr, int>> ioeventfds_;
    std::optional<GuestPhysAddr> ioeventfd_base_;
};

}  // namespace lparvisor::virtio
