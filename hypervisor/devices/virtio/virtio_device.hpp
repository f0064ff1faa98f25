// The contract between a virtio device model (virtio-blk, virtio-rng, ...) and its transport
// (virtio_pci.hpp). Virtio 1.x only ("modern"): little-endian, VIRTIO_F_VERSION_1 required.
//
// Threads: the transport calls everything here from vCPU threads (MMIO exits); the device
// serves its queues on its own worker thread, woken by one eventfd per queue (the transport
// registers those as KVM ioeventfds on the queue-notify addresses, so a guest's notify costs no
// exit) or by notify() when the transport sees the notify write itself. Lock order: the
// transport's lock, then the device's; the device never calls the transport with its own lock
// held except through the InterruptSink, which must not take the transport's lock.
//
// The device reaches guest memory only through the GuestMemory it was built with (the LPAR's
// bounds-checked view; its host address never changes when the LPAR moves).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "devices/quiescable.hpp"
#include "storage/address.hpp"
#include "util/rate_limit.hpp"

namespace lparvisor::virtio {

inline constexpr std::uint16_t kPciVendorId = 0x1af4;
// Modern virtio-pci device id = 0x1040 + device type.
enum class DeviceType : std::uint16_t { Block = 2, Rng = 4, Mem = 24 };

inline constexpr std::uint64_t kFeatureVersion1 = 1ull << 32;  // VIRTIO_F_VERSION_1

// Device status register bits (virtio 1.2, 2.1).
inline constexpr std::uint8_t kStatusAcknowledge = 1;
inline constexpr std::uint8_t kStatusDriver = 2;
inline constexpr std::uint8_t kStatusDriverOk = 4;
inline constexpr std::uint8_t kStatusFeaturesOk = 8;
inline constexpr std::uint8_t kStatusNeedsReset = 64;
inline constexpr std::uint8_t kStatusFailed = 128;

// One split virtqueue as the driver configured it through the transport.
struct QueueConfig {
    std::uint16_t size = 0;  // entries (power of two, <= the device's max)
    bool ready = false;
    GuestPhysAddr desc_table{0};
    GuestPhysAddr avail_ring{0};
    GuestPhysAddr used_ring{0};
};

// How a device tells the driver something happened. The transport maps these onto MSI-X
// vectors (irqfd) and the ISR status register. Called on the device's worker thread.
struct InterruptSink {
    std::function<void(std::uint16_t queue)> used_buffer;  // a queue has new used entries
    std::function<void()> config_change;                   // config space or NEEDS_RESET
};

// The interface the transport sees. devices/virtio/virtio_device_base.hpp (helper-owned)
// implements the worker thread, queue notification and the I/O drain once for all devices.
class VirtioDevice : public Quiescable {
  public:
    std::string name() const override = 0;  // "virtio-blk0": used in logs and drain errors
    virtual DeviceType device_type() const = 0;
    virtual std::uint64_t device_features() const = 0;  // includes kFeatureVersion1
    virtual std::uint16_t queue_count() const = 0;
    virtual std::uint16_t queue_max_size() const = 0;

    // Device-specific configuration space (virtio_blk_config, ...). Out-of-range reads give
    // zeros, out-of-range or read-only writes are ignored.
    virtual void read_config(std::uint32_t offset, std::span<std::uint8_t> data) = 0;
    virtual void write_config(std::uint32_t offset, std::span<const std::uint8_t> data) = 0;

    // The driver set DRIVER_OK with these features and queues: start serving. Returns false
    // (and the transport then sets NEEDS_RESET) if the configuration is unusable, e.g. a queue
    // ring outside the LPAR's storage or a size that is not a power of two.
    [[nodiscard]] virtual bool activate(std::uint64_t driver_features,
                                        std::vector<QueueConfig> queues, InterruptSink sink) = 0;
    // The driver wrote 0 to device_status: stop serving, forget queues and features. Waits
    // for a request in flight to finish.
    virtual void reset() = 0;
    // The device hit a driver error (a hostile or broken queue) and serves nothing more until
    // reset: the transport shows it as NEEDS_RESET in device_status.
    virtual bool needs_reset() const = 0;

    // eventfd the guest's notify for `queue` signals (the transport registers it with KVM as
    // an ioeventfd) and the same wake-up for a notify the transport handled itself.
    virtual int queue_event_fd(std::uint16_t queue) const = 0;
    virtual void notify(std::uint16_t queue) = 0;

    // MVSTOR step 202 ("I/O processors not busy"): stop taking new requests from the queues
    // (notifies are remembered, not lost), report whether a request is still in flight, and
    // take requests again (re-checking every queue) after the move or its abort.
    void stop_accepting() override = 0;
    bool idle() const override = 0;
    void resume_accepting() override = 0;

    // The LPAR's limiter for the log lines a guest can cause (util/rate_limit.hpp). Set once,
    // before the device is first activated; a device without one limits its lines itself.
    // By value: an override keeps the pointer (VirtioDeviceBase moves it into its member); only
    // this default for a device without one drops it unused.
    // NOLINTNEXTLINE(performance-unnecessary-value-param): a sink parameter, for the reason above
    virtual void set_log_limiter(std::shared_ptr<LogRateLimiter> limiter) { (void)limiter; }
};

}  // namespace lparvisor::virtio
