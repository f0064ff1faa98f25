#include "devices/pci/pci_bus.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <bit>
#include <mutex>

#include "util/error.hpp"

namespace lparvisor::pci {

// --- ConfigSpace ---

void ConfigSpace::set8(std::uint16_t offset, std::uint8_t value) {
    if (offset < kConfigSpaceSize) bytes_[offset] = value;
}
void ConfigSpace::set16(std::uint16_t offset, std::uint16_t value) {
    set8(offset, static_cast<std::uint8_t>(value));
    set8(static_cast<std::uint16_t>(offset + 1), static_cast<std::uint8_t>(value >> 8));
}
void ConfigSpace::set32(std::uint16_t offset, std::uint32_t value) {
    set16(offset, static_cast<std::uint16_t>(value));
    set16(static_cast<std::uint16_t>(offset + 2), static_cast<std::uint16_t>(value >> 16));
}
std::uint8_t ConfigSpace::get8(std::uint16_t offset) const {
    return offset < kConfigSpaceSize ? bytes_[offset] : 0xff;
}
std::uint16_t ConfigSpace::get16(std::uint16_t offset) const {
    return static_cast<std::uint16_t>(get8(offset) | get8(static_cast<std::uint16_t>(offset + 1))
                                                         << 8);
}
std::uint32_t ConfigSpace::get32(std::uint16_t offset) const {
    return get16(offset) | std::uint32_t{get16(static_cast<std::uint16_t>(offset + 2))} << 16;
}
void ConfigSpace::set_writable8(std::uint16_t offset, std::uint8_t mask) {
    if (offset < kConfigSpaceSize) writable_[offset] = mask;
}
void ConfigSpace::set_writable16(std::uint16_t offset, std::uint16_t mask) {
    set_writable8(offset, static_cast<std::uint8_t>(mask));
    set_writable8(static_cast<std::uint16_t>(offset + 1), static_cast<std::uint8_t>(mask >> 8));
}
void ConfigSpace::set_writable32(std::uint16_t offset, std::uint32_t mask) {
    set_writable16(offset, static_cast<std::uint16_t>(mask));
    set_writable16(static_cast<std::uint16_t>(offset + 2), static_cast<std::uint16_t>(mask >> 16));
}
void ConfigSpace::read(std::uint16_t offset, std::span<std::uint8_t> data) const {
    for (std::size_t i = 0; i < data.size(); ++i)
        data[i] = get8(static_cast<std::uint16_t>(offset + i));
}
void ConfigSpace::write(std::uint16_t offset, std::span<const std::uint8_t> data) {
    for (std::size_t i = 0; i < data.size(); ++i) {
        std::size_t at = offset + i;
        if (at >= kConfigSpaceSize) break;
        bytes_[at] =
            static_cast<std::uint8_t>((bytes_[at] & ~writable_[at]) | (data[i] & writable_[at]));
    }
}

namespace {

// 00:00.0: identifies the bus to a scanning guest (Linux looks for class 0x0600 there) and
// does nothing else.
class HostBridge final : public PciDevice {
  public:
    HostBridge() {
        config_.set16(reg::kVendorId, PciBus::kHostBridgeVendor);
        config_.set16(reg::kDeviceId, PciBus::kHostBridgeDevice);
        config_.set8(reg::kSubclass, 0x00);
        config_.set8(reg::kClass, 0x06);
        config_.set8(reg::kHeaderType, 0x00);
        // Decode and bus-master bits take writes (some guests set them), to no effect.
        config_.set_writable16(reg::kCommand, 0x0007);
    }
    std::string name() const override { return "pci-host-bridge"; }
    void config_read(std::uint16_t offset, std::span<std::uint8_t> data) override {
        std::lock_guard lock(mutex_);
        config_.read(offset, data);
    }
    void config_write(std::uint16_t offset, std::span<const std::uint8_t> data) override {
        std::lock_guard lock(mutex_);
        config_.write(offset, data);
    }
    std::uint64_t bar_size(unsigned) const override { return 0; }
    void assign_bar(unsigned, GuestPhysAddr) override {}
    std::optional<GuestPhysAddr> bar_address(unsigned) const override { return std::nullopt; }
    void bar_read(unsigned, std::uint64_t, std::span<std::uint8_t> data) override {
        std::fill(data.begin(), data.end(), 0);
    }
    void bar_write(unsigned, std::uint64_t, std::span<const std::uint8_t>) override {}

  private:
    std::mutex mutex_;
    ConfigSpace config_;
};

// Configuration address register fields (mechanism #1).
constexpr std::uint32_t kAddressEnable = 1u << 31;
unsigned address_bus(std::uint32_t a) {
    return (a >> 16) & 0xff;
}
unsigned address_slot(std::uint32_t a) {
    return (a >> 11) & 0x1f;
}
unsigned address_function(std::uint32_t a) {
    return (a >> 8) & 0x7;
}
std::uint16_t address_register(std::uint32_t a) {
    return static_cast<std::uint16_t>(a & 0xfc);
}

std::uint32_t load_le(std::span<const std::uint8_t> data) {
    std::uint32_t v = 0;
    for (std::size_t i = 0; i < data.size() && i < 4; ++i) v |= std::uint32_t{data[i]} << (8 * i);
    return v;
}

}  // namespace

// --- PciBus ---

PciBus::PciBus() {
    slots_[0] = std::make_shared<HostBridge>();
}

void PciBus::add(unsigned slot, std::shared_ptr<PciDevice> device) {
    if (!device) throw Error(ErrorKind::InvalidArgument, "PCI: no device given");
    if (slot == 0 || slot >= kSlotCount)
        throw Error(ErrorKind::InvalidArgument,
                    fmt::format("PCI: {} cannot go to slot {} (slots 1-{} take devices)",
                                device->name(), slot, kSlotCount - 1));
    // Lay the BARs out first, so a refusal leaves the device untouched.
    std::array<std::optional<GuestPhysAddr>, kBarCount> addresses{};
    const GuestPhysAddr window = kMmioBase + slot * kBarStride;
    GuestPhysAddr next = window;
    for (unsigned bar = 0; bar < kBarCount; ++bar) {
        std::uint64_t size = device->bar_size(bar);
        if (size == 0) continue;
        if (!std::has_single_bit(size))
            throw Error(ErrorKind::InvalidArgument,
                        fmt::format("PCI: {} BAR{} size {:#x} is not a power of two",
                                    device->name(), bar, size));
        const GuestPhysAddr at{(next.value + size - 1) & ~(size - 1)};
        if (at + size > window + kBarStride)
            throw Error(ErrorKind::InvalidArgument,
                        fmt::format("PCI: {} BARs do not fit the {:#x}-byte window of slot {}",
                                    device->name(), kBarStride, slot));
        addresses[bar] = at;
        next = at + size;
    }
    std::unique_lock lock(slots_mutex_);
    if (slots_[slot])
        throw Error(ErrorKind::Refused, fmt::format("PCI: slot {} already holds {}, cannot add {}",
                                                    slot, slots_[slot]->name(), device->name()));
    for (unsigned bar = 0; bar < kBarCount; ++bar)
        if (addresses[bar]) device->assign_bar(bar, *addresses[bar]);
    slots_[slot] = std::move(device);
}

std::shared_ptr<PciDevice> PciBus::device(unsigned slot) const {
    if (slot >= kSlotCount) return nullptr;
    std::shared_lock lock(slots_mutex_);
    return slots_[slot];
}

std::vector<std::shared_ptr<PciDevice>> PciBus::all_devices() const {
    std::shared_lock lock(slots_mutex_);
    std::vector<std::shared_ptr<PciDevice>> result;
    for (const auto& d : slots_)
        if (d) result.push_back(d);
    return result;
}

std::shared_ptr<PciDevice> PciBus::selected(std::uint32_t address) const {
    if ((address & kAddressEnable) == 0 || address_bus(address) != 0 ||
        address_function(address) != 0)
        return nullptr;
    return device(address_slot(address));
}

template <typename Span, typename Fn>
bool PciBus::dispatch_mmio(GuestPhysAddr gpa, Span data, Fn&& access) const {
    if (data.empty() || data.size() > 8) return false;
    for (const auto& d : all_devices()) {
        for (unsigned bar = 0; bar < kBarCount; ++bar) {
            std::uint64_t size = d->bar_size(bar);
            if (size == 0) continue;
            auto base = d->bar_address(bar);
            if (!base || gpa < *base) continue;
            std::uint64_t offset = gpa - *base;
            if (offset >= size || data.size() > size - offset) continue;
            access(*d, bar, offset, data);
            return true;
        }
    }
    return false;
}

bool PciBus::mmio_read(GuestPhysAddr gpa, std::span<std::uint8_t> data) const {
    return dispatch_mmio(gpa, data,
                         [](PciDevice& d, unsigned bar, std::uint64_t offset,
                            std::span<std::uint8_t> bytes) { d.bar_read(bar, offset, bytes); });
}

bool PciBus::mmio_write(GuestPhysAddr gpa, std::span<const std::uint8_t> data) const {
    return dispatch_mmio(
        gpa, data,
        [](PciDevice& d, unsigned bar, std::uint64_t offset, std::span<const std::uint8_t> bytes) {
            d.bar_write(bar, offset, bytes);
        });
}

void PciBus::read(std::uint16_t offset, std::span<std::uint8_t> data) {
    std::fill(data.begin(), data.end(), 0xff);
    if (offset == 0 && data.size() == 4) {
        std::uint32_t a = address_.load();
        for (std::size_t i = 0; i < 4; ++i) data[i] = static_cast<std::uint8_t>(a >> (8 * i));
        return;
    }
    if (offset < 4 || offset + data.size() > kConfigPortCount) return;  // not the data window
    std::uint32_t a = address_.load();
    auto d = selected(a);
    if (!d) return;
    d->config_read(static_cast<std::uint16_t>(address_register(a) + (offset - 4)), data);
}

void PciBus::write(std::uint16_t offset, std::span<const std::uint8_t> data) {
    if (offset == 0 && data.size() == 4) {
        address_.store(load_le(data));
        return;
    }
    if (offset < 4 || offset + data.size() > kConfigPortCount) {
        // 0xCF9 (reset control) and byte accesses to 0xCF8-0xCFB are not emulated.
        log_limiter_->log(spdlog::level::debug, "pci-config: {}-byte write to port {:#x} ignored",
                          data.size(), kConfigPort + offset);
        return;
    }
    std::uint32_t a = address_.load();
    auto d = selected(a);
    if (!d) return;
    d->config_write(static_cast<std::uint16_t>(address_register(a) + (offset - 4)), data);
}

void PciBus::stop_accepting() {
    for (const auto& d : all_devices()) d->stop_accepting();
}

void PciBus::resume_accepting() {
    for (const auto& d : all_devices()) d->resume_accepting();
}

bool PciBus::idle() const {
    auto devices = all_devices();
    return std::all_of(devices.begin(), devices.end(), [](const auto& d) { return d->idle(); });
}

}  // namespace lparvisor::pci
