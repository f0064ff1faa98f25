// PCI bus 0 of one LPAR: a host bridge at 00:00.0 and up to 31 devices (slots 1-31, function 0
// only), reached through configuration mechanism #1 (ports 0xCF8-0xCFF) and their memory BARs.
//
// LPAR wiring (set-up, before the vCPUs start):
//   auto pci = std::make_shared<pci::PciBus>();
//   pci->add(1, std::make_shared<virtio::VirtioPciDevice>(blk, platform));  // BAR0 assigned
//   io_bus.add(pci::PciBus::kConfigPort, pci::PciBus::kConfigPortCount, pci);
//   on KVM_EXIT_MMIO: if (!pci->mmio_read(addr, data)) -> report the unclaimed access.
// Because the bus is a PortDevice on the I/O bus, MVSTOR's drain (stop_accepting / idle /
// resume_accepting over the I/O bus's devices) reaches every PCI device too.
//
// Lock order (outermost first): PciBus::slots_mutex_ (only to look a device up; released
// before the device is called) -> a PciDevice's own mutex (VirtioPciDevice::mutex_) -> the
// virtio device's locks -> the transport's interrupt mutex -> the PciPlatform's mutex.
#pragma once

#include <lparvisor/abi.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <shared_mutex>
#include <span>
#include <string>
#include <vector>

#include "devices/device.hpp"
#include "util/address.hpp"
#include "util/rate_limit.hpp"

namespace lparvisor::pci {

inline constexpr std::size_t kConfigSpaceSize = 256;
inline constexpr unsigned kBarCount = 6;
inline constexpr unsigned kSlotCount = 32;  // slot 0 is the host bridge

// Standard type-0 header offsets and bits the PCI code shares.
namespace reg {
inline constexpr std::uint16_t kVendorId = 0x00;
inline constexpr std::uint16_t kDeviceId = 0x02;
inline constexpr std::uint16_t kCommand = 0x04;
inline constexpr std::uint16_t kStatus = 0x06;
inline constexpr std::uint16_t kRevision = 0x08;
inline constexpr std::uint16_t kClassProgIf = 0x09;
inline constexpr std::uint16_t kSubclass = 0x0a;
inline constexpr std::uint16_t kClass = 0x0b;
inline constexpr std::uint16_t kHeaderType = 0x0e;
inline constexpr std::uint16_t kBar0 = 0x10;
inline constexpr std::uint16_t kSubsystemVendorId = 0x2c;
inline constexpr std::uint16_t kSubsystemId = 0x2e;
inline constexpr std::uint16_t kCapabilitiesPointer = 0x34;
inline constexpr std::uint16_t kInterruptLine = 0x3c;
inline constexpr std::uint16_t kInterruptPin = 0x3d;

inline constexpr std::uint16_t kCommandMemory = 1u << 1;
inline constexpr std::uint16_t kStatusCapabilities = 1u << 4;
inline constexpr std::uint8_t kCapabilityMsix = 0x11;
inline constexpr std::uint8_t kCapabilityVendor = 0x09;
}  // namespace reg

// 256 bytes of configuration space with a per-byte mask of the bits a guest may write, so a
// device states once what is writable and guest writes to read-only bits change nothing.
class ConfigSpace {
  public:
    // Device side (set-up and side effects): ignores the mask.
    void set8(std::uint16_t offset, std::uint8_t value);
    void set16(std::uint16_t offset, std::uint16_t value);
    void set32(std::uint16_t offset, std::uint32_t value);
    std::uint8_t get8(std::uint16_t offset) const;
    std::uint16_t get16(std::uint16_t offset) const;
    std::uint32_t get32(std::uint16_t offset) const;
    void set_writable8(std::uint16_t offset, std::uint8_t mask);
    void set_writable16(std::uint16_t offset, std::uint16_t mask);
    void set_writable32(std::uint16_t offset, std::uint32_t mask);

    // Guest side: bytes past the end read as ones and are not written.
    void read(std::uint16_t offset, std::span<std::uint8_t> data) const;
    void write(std::uint16_t offset, std::span<const std::uint8_t> data);

  private:
    std::array<std::uint8_t, kConfigSpaceSize> bytes_{};
    std::array<std::uint8_t, kConfigSpaceSize> writable_{};
};

// True when [offset, offset + size) and [start, start + length) share a byte.
constexpr bool touches(std::uint64_t offset, std::uint64_t size, std::uint64_t start,
                       std::uint64_t length) {
    return offset < start + length && start < offset + size;
}

// One PCI function. Everything here may be called from several vCPU threads at once and from
// guest-triggered paths: implementations lock themselves and never throw.
class PciDevice {
  public:
    virtual ~PciDevice() = default;
    virtual std::string name() const = 0;

    // Configuration space: offset + data.size() <= 256, 1 to 4 bytes (the bus checks).
    virtual void config_read(std::uint16_t offset, std::span<std::uint8_t> data) = 0;
    virtual void config_write(std::uint16_t offset, std::span<const std::uint8_t> data) = 0;

    // Memory BARs. Size 0: BAR `bar` is not implemented; otherwise a power of two.
    virtual std::uint64_t bar_size(unsigned bar) const = 0;
    // The firmware's part, done by PciBus::add: program the BAR's address and turn memory
    // decoding on, so a guest that does not enumerate PCI finds the device in place.
    virtual void assign_bar(unsigned bar, GuestPhysAddr gpa) = 0;
    // Where the BAR decodes now; nullopt while memory decoding is off or it has no address.
    virtual std::optional<GuestPhysAddr> bar_address(unsigned bar) const = 0;
    // An access of 1 to 8 bytes inside the BAR (offset + size <= bar_size, the bus checks).
    virtual void bar_read(unsigned bar, std::uint64_t offset, std::span<std::uint8_t> data) = 0;
    virtual void bar_write(unsigned bar, std::uint64_t offset,
                           std::span<const std::uint8_t> data) = 0;

    // MVSTOR step 202, as PortDevice.
    virtual void stop_accepting() {}
    virtual void resume_accepting() {}
    virtual bool idle() const { return true; }
};

class PciBus final : public PortDevice {
  public:
    static constexpr std::uint16_t kConfigPort = LPV_PORT_PCI_CONFIG;  // 0xCF8
    static constexpr std::uint16_t kConfigPortCount = 8;               // 0xCF8-0xCFF
    static constexpr GuestPhysAddr kMmioBase{LPV_PCI_MMIO_GPA};
    static constexpr std::uint64_t kBarStride = LPV_PCI_BAR_STRIDE;
    // The host bridge's identity (Red Hat's generic "QEMU PCIe host bridge": no quirks in
    // Linux) and class 0x060000.
    static constexpr std::uint16_t kHostBridgeVendor = 0x1b36;
    static constexpr std::uint16_t kHostBridgeDevice = 0x0008;

    PciBus();

    // Puts `device` at 00:slot.0 (slot 1-31) and assigns its memory BARs inside
    // [kMmioBase + slot * kBarStride, + kBarStride), each aligned to its size. Throws
    // lparvisor::Error for slot 0, a slot out of range or taken, or BARs that do not fit.
    void add(unsigned slot, std::shared_ptr<PciDevice> device);
    std::shared_ptr<PciDevice> device(unsigned slot) const;  // nullptr if empty (0: host bridge)

    // An MMIO exit: the device whose decoding BAR holds all of [gpa, gpa + size) serves it.
    // false when none does (the vCPU loop reports the access), or size is not 1 to 8.
    [[nodiscard]] bool mmio_read(GuestPhysAddr gpa, std::span<std::uint8_t> data) const;
    [[nodiscard]] bool mmio_write(GuestPhysAddr gpa, std::span<const std::uint8_t> data) const;

    // Configuration mechanism #1, offsets from 0xCF8: 0-3 the address register (dword
    // accesses only; it reads back what was written), 4-7 the data window into the dword the
    // address selects. Without the enable bit, or for another bus, function or an empty slot,
    // reads give all ones and writes are dropped.
    std::string name() const override { return "pci-config"; }
    void read(std::uint16_t offset, std::span<std::uint8_t> data) override;
    void write(std::uint16_t offset, std::span<const std::uint8_t> data) override;

    void stop_accepting() override;
    void resume_accepting() override;
    bool idle() const override;

    // The LPAR's limiter for the log lines a guest can cause; set before the guest runs.
    void set_log_limiter(std::shared_ptr<LogRateLimiter> limiter) {
        if (limiter) log_limiter_ = std::move(limiter);
    }

  private:
    std::shared_ptr<PciDevice> selected(std::uint32_t address) const;
    std::vector<std::shared_ptr<PciDevice>> all_devices() const;
    template <typename Span, typename Fn>
    bool dispatch_mmio(GuestPhysAddr gpa, Span data, Fn&& access) const;

    mutable std::shared_mutex slots_mutex_;  // add() against lookups
    std::array<std::shared_ptr<PciDevice>, kSlotCount> slots_;
    std::atomic<std::uint32_t> address_{0};  // 0xCF8; the guest serialises its own accesses
    std::shared_ptr<LogRateLimiter> log_limiter_ = own_log_limiter(nullptr, "pci-config");
};

}  // namespace lparvisor::pci
