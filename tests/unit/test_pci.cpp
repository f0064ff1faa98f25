// The PCI bus (configuration mechanism #1, BAR dispatch) and the modern virtio-pci transport,
// driven the way Linux's virtio_pci_modern driver drives them, over a fake device and a fake
// platform (no KVM).
#include <unistd.h>
#include <catch2/catch.hpp>

#include <array>
#include <cerrno>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <tuple>

#include "devices/pci/kvm_pci_platform.hpp"
#include "devices/pci/pci_bus.hpp"
#include "devices/pci/pci_platform.hpp"
#include "devices/virtio/virtio_pci.hpp"
#include "util/error.hpp"

using namespace lparvisor;
using virtio::VirtioPciDevice;

namespace {

constexpr std::uint64_t kFeatureA = 1ull << 0;
constexpr std::uint64_t kFeatureB = 1ull << 5;
constexpr std::uint64_t kRingReset = 1ull << 40;  // offered by the device, not the transport

class FakeDevice final : public virtio::VirtioDevice {
  public:
    std::mutex mutex;
    int activations = 0;
    int resets = 0;
    std::vector<std::uint16_t> notifies;
    std::uint64_t features = 0;
    std::vector<virtio::QueueConfig> queues;
    virtio::InterruptSink sink;
    bool accept = true;
    bool broken = false;
    std::array<std::uint8_t, 8> config{1, 2, 3, 4, 5, 6, 7, 8};

    std::string name() const override { return "fake0"; }
    virtio::DeviceType device_type() const override { return virtio::DeviceType::Block; }
    std::uint64_t device_features() const override {
        return virtio::kFeatureVersion1 | kFeatureA | kFeatureB | kRingReset;
    }
    std::uint16_t queue_count() const override { return 2; }
    std::uint16_t queue_max_size() const override { return 256; }
    void read_config(std::uint32_t offset, std::span<std::uint8_t> data) override {
        for (std::size_t i = 0; i < data.size(); ++i)
            data[i] = offset + i < config.size() ? config[offset + i] : 0;
    }
    void write_config(std::uint32_t offset, std::span<const std::uint8_t> data) override {
        for (std::size_t i = 0; i < data.size(); ++i)
            if (offset + i < config.size()) config[offset + i] = data[i];
    }
    bool activate(std::uint64_t driver_features, std::vector<virtio::QueueConfig> q,
                  virtio::InterruptSink s) override {
        std::lock_guard lock(mutex);
        ++activations;
        features = driver_features;
        queues = std::move(q);
        sink = std::move(s);
        return accept;
    }
    void reset() override {
        std::lock_guard lock(mutex);
        ++resets;
        sink = {};
        broken = false;
    }
    bool needs_reset() const override { return broken; }
    int queue_event_fd(std::uint16_t queue) const override { return 100 + queue; }
    void notify(std::uint16_t queue) override {
        std::lock_guard lock(mutex);
        notifies.push_back(queue);
    }
    void stop_accepting() override {}
    bool idle() const override { return true; }
    void resume_accepting() override {}
};

class FakePlatform final : public pci::PciPlatform {
  public:
    std::mutex mutex;
    std::uint32_t next_gsi = pci::kFirstMsiGsi;
    std::set<std::uint32_t> gsis;
    std::map<std::uint32_t, int> irqfds;  // gsi -> eventfd
    std::map<std::uint32_t, std::pair<std::uint64_t, std::uint32_t>> routes;
    std::set<std::tuple<GuestPhysAddr, std::uint32_t, int>> ioeventfds;
    int route_updates = 0;

    std::uint32_t allocate_gsi() override {
        std::lock_guard lock(mutex);
        gsis.insert(next_gsi);
        return next_gsi++;
    }
    void release_gsi(std::uint32_t gsi) noexcept override {
        std::lock_guard lock(mutex);
        gsis.erase(gsi);
    }
    void attach_irqfd(std::uint32_t gsi, int eventfd) override {
        std::lock_guard lock(mutex);
        irqfds[gsi] = eventfd;
    }
    void detach_irqfd(std::uint32_t gsi, int) noexcept override {
        std::lock_guard lock(mutex);
        irqfds.erase(gsi);
    }
    bool set_msi_route(std::uint32_t gsi, std::uint64_t address,
                       std::uint32_t data) noexcept override {
        std::lock_guard lock(mutex);
        ++route_updates;
        routes[gsi] = {address, data};
        return true;
    }
    void clear_msi_route(std::uint32_t gsi) noexcept override {
        std::lock_guard lock(mutex);
        ++route_updates;
        routes.erase(gsi);
    }
    bool register_ioeventfd(GuestPhysAddr gpa, std::uint32_t length,
                            int eventfd) noexcept override {
        std::lock_guard lock(mutex);
        return ioeventfds.emplace(gpa, length, eventfd).second;
    }
    void unregister_ioeventfd(GuestPhysAddr gpa, std::uint32_t length,
                              int eventfd) noexcept override {
        std::lock_guard lock(mutex);
        ioeventfds.erase({gpa, length, eventfd});
    }
};

std::uint64_t le(std::span<const std::uint8_t> bytes) {
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < bytes.size(); ++i) v |= std::uint64_t{bytes[i]} << (8 * i);
    return v;
}

// Port offsets from 0xCF8.
constexpr std::uint16_t kAddressPort = 0;
constexpr std::uint16_t kDataPort = 4;

struct Rig {
    std::shared_ptr<FakeDevice> device = std::make_shared<FakeDevice>();
    std::shared_ptr<FakePlatform> platform = std::make_shared<FakePlatform>();
    std::shared_ptr<pci::PciBus> bus = std::make_shared<pci::PciBus>();
    std::shared_ptr<VirtioPciDevice> vpci;
    static constexpr unsigned kSlot = 3;

    Rig() {
        vpci = std::make_shared<VirtioPciDevice>(device, platform);
        bus->add(kSlot, vpci);
    }

    // --- configuration mechanism #1, as port accesses ---
    void port_write(std::uint16_t offset, std::uint64_t value, std::size_t size) {
        std::array<std::uint8_t, 4> b{};
        for (std::size_t i = 0; i < size; ++i) b[i] = static_cast<std::uint8_t>(value >> (8 * i));
        bus->write(offset, std::span<const std::uint8_t>(b.data(), size));
    }
    std::uint32_t port_read(std::uint16_t offset, std::size_t size) {
        std::array<std::uint8_t, 4> b{};
        bus->read(offset, std::span<std::uint8_t>(b.data(), size));
        return static_cast<std::uint32_t>(le(std::span<const std::uint8_t>(b.data(), size)));
    }
    static std::uint32_t address(unsigned slot, unsigned reg, unsigned function = 0) {
        return 0x80000000u | slot << 11 | function << 8 | (reg & 0xfc);
    }
    std::uint32_t cfg_read(unsigned slot, unsigned reg, std::size_t size = 4) {
        port_write(kAddressPort, address(slot, reg), 4);
        return port_read(static_cast<std::uint16_t>(kDataPort + (reg & 3)), size);
    }
    void cfg_write(unsigned slot, unsigned reg, std::uint32_t value, std::size_t size = 4) {
        port_write(kAddressPort, address(slot, reg), 4);
        port_write(static_cast<std::uint16_t>(kDataPort + (reg & 3)), value, size);
    }

    // --- BAR0 by guest address ---
    GuestPhysAddr bar0() { return GuestPhysAddr{cfg_read(kSlot, pci::reg::kBar0) & ~0xfull}; }
    std::uint64_t mmio_read(std::uint64_t offset, std::size_t size) {
        std::array<std::uint8_t, 8> b{};
        REQUIRE(bus->mmio_read(bar0() + offset, std::span<std::uint8_t>(b.data(), size)));
        return le(std::span<const std::uint8_t>(b.data(), size));
    }
    void mmio_write(std::uint64_t offset, std::uint64_t value, std::size_t size) {
        std::array<std::uint8_t, 8> b{};
        for (std::size_t i = 0; i < size; ++i) b[i] = static_cast<std::uint8_t>(value >> (8 * i));
        REQUIRE(bus->mmio_write(bar0() + offset, std::span<const std::uint8_t>(b.data(), size)));
    }

    // Capabilities as Linux's virtio_pci_find_capability walks them: from the pointer at
    // 0x34, following cap_next, the first vendor capability of each cfg_type.
    struct Cap {
        unsigned at = 0;
        std::uint8_t bar = 0xff;
        std::uint32_t offset = 0;
        std::uint32_t length = 0;
    };
    std::map<std::uint8_t, Cap> virtio_caps;
    unsigned msix_cap = 0;
    void walk_capabilities() {
        REQUIRE((cfg_read(kSlot, pci::reg::kStatus, 2) & pci::reg::kStatusCapabilities) != 0);
        unsigned pos = cfg_read(kSlot, pci::reg::kCapabilitiesPointer, 1);
        for (int guard = 0; pos != 0 && guard < 48; ++guard) {
            REQUIRE(pos >= 0x40);
            REQUIRE(pos % 4 == 0);
            std::uint8_t id = static_cast<std::uint8_t>(cfg_read(kSlot, pos, 1));
            unsigned next = cfg_read(kSlot, pos + 1, 1);
            if (id == pci::reg::kCapabilityVendor) {
                std::uint8_t type = static_cast<std::uint8_t>(cfg_read(kSlot, pos + 3, 1));
                if (!virtio_caps.count(type))
                    virtio_caps[type] =
                        Cap{pos, static_cast<std::uint8_t>(cfg_read(kSlot, pos + 4, 1)),
                            cfg_read(kSlot, pos + 8), cfg_read(kSlot, pos + 12)};
            } else if (id == pci::reg::kCapabilityMsix) {
                msix_cap = pos;
            }
            pos = next;
        }
    }
    std::uint64_t common() { return virtio_caps.at(virtio::kPciCapCommonCfg).offset; }

    std::uint8_t status() { return static_cast<std::uint8_t>(mmio_read(common() + 0x14, 1)); }
    void set_status(std::uint8_t s) { mmio_write(common() + 0x14, s, 1); }

    // Linux's order: reset, ACKNOWLEDGE, DRIVER, features (select 0 and 1), FEATURES_OK.
    std::uint64_t negotiate(std::uint64_t wanted) {
        set_status(0);
        REQUIRE(status() == 0);
        set_status(virtio::kStatusAcknowledge);
        set_status(virtio::kStatusAcknowledge | virtio::kStatusDriver);
        std::uint64_t offered = 0;
        for (std::uint32_t sel = 0; sel < 2; ++sel) {
            mmio_write(common() + virtio::common::kDeviceFeatureSelect, sel, 4);
            offered |= mmio_read(common() + virtio::common::kDeviceFeature, 4) << (32 * sel);
        }
        std::uint64_t accepted = offered & wanted;
        for (std::uint32_t sel = 0; sel < 2; ++sel) {
            mmio_write(common() + virtio::common::kDriverFeatureSelect, sel, 4);
            mmio_write(common() + virtio::common::kDriverFeature,
                       (accepted >> (32 * sel)) & 0xffffffffu, 4);
        }
        set_status(virtio::kStatusAcknowledge | virtio::kStatusDriver | virtio::kStatusFeaturesOk);
        return offered;
    }

    // MSI-X on with every entry programmed and masked (as msix_capability_init leaves them).
    void enable_msix() {
        std::uint16_t control = static_cast<std::uint16_t>(cfg_read(kSlot, msix_cap + 2, 2));
        cfg_write(kSlot, msix_cap + 2, control | 0xc000u, 2);  // enable + function mask
        std::uint64_t table = cfg_read(kSlot, msix_cap + 4) & ~7u;
        for (unsigned v = 0; v < 3; ++v) {
            mmio_write(table + 16 * v + 0, 0xfee00000u + (v << 12), 4);
            mmio_write(table + 16 * v + 4, 0, 4);
            mmio_write(table + 16 * v + 8, 0x40 + v, 4);
            mmio_write(table + 16 * v + 12, 1, 4);  // masked
        }
        cfg_write(kSlot, msix_cap + 2, (control | 0x8000u) & ~0x4000u, 2);  // function unmask
    }
    void unmask_vector(unsigned v) {
        std::uint64_t table = cfg_read(kSlot, msix_cap + 4) & ~7u;
        mmio_write(table + 16 * v + 12, 0, 4);
    }
    std::uint64_t pba() {
        std::uint64_t at = cfg_read(kSlot, msix_cap + 8) & ~7u;
        return mmio_read(at, 8);
    }

    void setup_queue(std::uint16_t q, std::uint16_t size, std::uint64_t desc, std::uint64_t avail,
                     std::uint64_t used, std::uint16_t vector) {
        using namespace virtio::common;
        mmio_write(common() + kQueueSelect, q, 2);
        REQUIRE(mmio_read(common() + kQueueSize, 2) == 256);
        mmio_write(common() + kQueueSize, size, 2);
        // vp_iowrite64_twopart: low then high dword.
        mmio_write(common() + kQueueDesc, desc & 0xffffffffu, 4);
        mmio_write(common() + kQueueDesc + 4, desc >> 32, 4);
        mmio_write(common() + kQueueDriver, avail & 0xffffffffu, 4);
        mmio_write(common() + kQueueDriver + 4, avail >> 32, 4);
        mmio_write(common() + kQueueDevice, used, 8);  // one qword access works too
        mmio_write(common() + kQueueMsixVector, vector, 2);
        REQUIRE(mmio_read(common() + kQueueMsixVector, 2) == vector);
        mmio_write(common() + kQueueEnable, 1, 2);
    }

    // The whole driver initialisation up to DRIVER_OK.
    void bring_up() {
        walk_capabilities();
        negotiate(virtio::kFeatureVersion1 | kFeatureA | kRingReset);
        REQUIRE((status() & virtio::kStatusFeaturesOk) != 0);
        enable_msix();
        mmio_write(common() + virtio::common::kMsixConfig, 0, 2);
        REQUIRE(mmio_read(common() + virtio::common::kMsixConfig, 2) == 0);
        setup_queue(0, 128, 0x180000, 0x181000, 0x182000, 1);
        setup_queue(1, 64, 0x1'0000'0010ull, 0x184000, 0x185000, 2);
        set_status(virtio::kStatusAcknowledge | virtio::kStatusDriver | virtio::kStatusFeaturesOk |
                   virtio::kStatusDriverOk);
    }
};

std::uint64_t eventfd_count(int fd) {
    std::uint64_t value = 0;
    if (::read(fd, &value, sizeof value) != static_cast<ssize_t>(sizeof value)) return 0;
    return value;
}

}  // namespace

TEST_CASE("configuration mechanism #1: address register, host bridge, absent slots", "[pci]") {
    Rig rig;
    // Linux's pci_check_type1: the address register reads back a written dword.
    rig.port_write(kAddressPort, 0x80000000u, 4);
    CHECK(rig.port_read(kAddressPort, 4) == 0x80000000u);
    rig.port_write(kAddressPort, 0x8000f87cu, 4);
    CHECK(rig.port_read(kAddressPort, 4) == 0x8000f87cu);
    // Byte accesses to 0xCF8-0xCFB are not the address register (0xCFB is mechanism #2's).
    rig.port_write(3, 0x01, 1);
    CHECK(rig.port_read(kAddressPort, 4) == 0x8000f87cu);
    CHECK(rig.port_read(kAddressPort, 1) == 0xff);
    CHECK(rig.port_read(kAddressPort, 2) == 0xffff);

    // 00:00.0 is a host bridge.
    CHECK(rig.cfg_read(0, 0x00) ==
          (std::uint32_t{pci::PciBus::kHostBridgeDevice} << 16 | pci::PciBus::kHostBridgeVendor));
    CHECK(rig.cfg_read(0, 0x08) >> 8 == 0x060000u);
    CHECK(rig.cfg_read(0, pci::reg::kHeaderType, 1) == 0);

    // Absent slots, other functions and other buses read all ones; writes go nowhere.
    CHECK(rig.cfg_read(5, 0x00) == 0xffffffffu);
    CHECK(rig.cfg_read(31, 0x08) == 0xffffffffu);
    rig.cfg_write(5, 0x04, 0x0006);
    CHECK(rig.cfg_read(5, 0x04) == 0xffffffffu);
    rig.port_write(kAddressPort, Rig::address(Rig::kSlot, 0, 1), 4);
    CHECK(rig.port_read(kDataPort, 4) == 0xffffffffu);
    rig.port_write(kAddressPort, Rig::address(Rig::kSlot, 0) | 1u << 16, 4);  // bus 1
    CHECK(rig.port_read(kDataPort, 4) == 0xffffffffu);
    // Without the enable bit nothing is selected.
    rig.port_write(kAddressPort, Rig::address(Rig::kSlot, 0) & ~0x80000000u, 4);
    CHECK(rig.port_read(kDataPort, 4) == 0xffffffffu);

    // Byte and word accesses land on the right bytes of the selected dword.
    CHECK(rig.cfg_read(Rig::kSlot, 0x00) == (0x1042u << 16 | 0x1af4u));
    CHECK(rig.cfg_read(Rig::kSlot, 0x00, 1) == 0xf4);
    CHECK(rig.cfg_read(Rig::kSlot, 0x01, 1) == 0x1a);
    CHECK(rig.cfg_read(Rig::kSlot, 0x02, 2) == 0x1042);
    CHECK(rig.cfg_read(Rig::kSlot, 0x03, 1) == 0x10);
    CHECK(rig.cfg_read(Rig::kSlot, 0x08) == 0x01800001u);  // storage/other, revision 1
    CHECK(rig.cfg_read(Rig::kSlot, pci::reg::kSubsystemVendorId, 2) == 0x1af4);
    rig.cfg_write(Rig::kSlot, pci::reg::kInterruptLine, 0x0b, 1);
    CHECK(rig.cfg_read(Rig::kSlot, pci::reg::kInterruptLine, 1) == 0x0b);
    CHECK(rig.cfg_read(Rig::kSlot, pci::reg::kInterruptPin, 1) == 0);

    // Read-only identity stays.
    rig.cfg_write(Rig::kSlot, 0x00, 0x12345678u);
    rig.cfg_write(Rig::kSlot, 0x08, 0xffffffffu);
    CHECK(rig.cfg_read(Rig::kSlot, 0x00) == (0x1042u << 16 | 0x1af4u));
    CHECK(rig.cfg_read(Rig::kSlot, 0x08) == 0x01800001u);
}

TEST_CASE("PciBus::add checks slots and assigns BAR0 by slot", "[pci]") {
    Rig rig;
    CHECK(rig.bar0() == GuestPhysAddr{LPV_PCI_MMIO_GPA + Rig::kSlot * LPV_PCI_BAR_STRIDE});
    CHECK((rig.cfg_read(Rig::kSlot, pci::reg::kCommand, 2) & pci::reg::kCommandMemory) != 0);
    auto other = std::make_shared<VirtioPciDevice>(std::make_shared<FakeDevice>(), rig.platform);
    CHECK_THROWS_AS(rig.bus->add(0, other), Error);
    CHECK_THROWS_AS(rig.bus->add(32, other), Error);
    CHECK_THROWS_WITH(rig.bus->add(Rig::kSlot, other), Catch::Contains("already holds fake0"));
    rig.bus->add(31, other);
    CHECK(rig.cfg_read(31, pci::reg::kBar0) == LPV_PCI_MMIO_GPA + 31 * LPV_PCI_BAR_STRIDE);
    CHECK(rig.bus->device(31) == other);
    // Three vectors per device (2 queues + config), each an irqfd on a GSI from 24.
    CHECK(rig.platform->irqfds.size() == 6);
    CHECK(*rig.platform->gsis.begin() == pci::kFirstMsiGsi);
}

TEST_CASE("virtio capabilities are found as Linux's virtio_pci_modern_dev finds them", "[pci]") {
    Rig rig;
    rig.walk_capabilities();
    REQUIRE(rig.virtio_caps.size() == 4);
    const auto& caps = rig.virtio_caps;
    CHECK(caps.at(virtio::kPciCapCommonCfg).offset == VirtioPciDevice::kCommonCfgOffset);
    CHECK(caps.at(virtio::kPciCapCommonCfg).length >= 0x38);  // sizeof virtio_pci_common_cfg
    CHECK(caps.at(virtio::kPciCapIsrCfg).offset == VirtioPciDevice::kIsrOffset);
    CHECK(caps.at(virtio::kPciCapIsrCfg).length >= 1);
    CHECK(caps.at(virtio::kPciCapDeviceCfg).offset == VirtioPciDevice::kDeviceCfgOffset);
    CHECK(caps.at(virtio::kPciCapNotifyCfg).offset == VirtioPciDevice::kNotifyOffset);
    std::uint64_t bar_size = rig.vpci->bar0_size();
    for (const auto& [type, cap] : caps) {
        INFO("cfg_type " << int(type));
        CHECK(cap.bar == 0);
        CHECK(cap.offset + std::uint64_t{cap.length} <= bar_size);
        CHECK(rig.cfg_read(Rig::kSlot, cap.at + 2, 1) >= 16);  // cap_len
    }
    unsigned notify = caps.at(virtio::kPciCapNotifyCfg).at;
    CHECK(rig.cfg_read(Rig::kSlot, notify + 2, 1) == 20);
    CHECK(rig.cfg_read(Rig::kSlot, notify + 16) == 4);  // notify_off_multiplier
    // Every queue's notify address lies inside the notify structure (Linux checks this).
    for (std::uint16_t q = 0; q < 2; ++q) {
        rig.mmio_write(rig.common() + virtio::common::kQueueSelect, q, 2);
        std::uint64_t off = rig.mmio_read(rig.common() + virtio::common::kQueueNotifyOff, 2);
        CHECK(off * 4 + 2 <= caps.at(virtio::kPciCapNotifyCfg).length);
    }

    REQUIRE(rig.msix_cap != 0);
    CHECK((rig.cfg_read(Rig::kSlot, rig.msix_cap + 2, 2) & 0x7ff) == 2);  // 3 vectors
    std::uint32_t table = rig.cfg_read(Rig::kSlot, rig.msix_cap + 4);
    std::uint32_t pba = rig.cfg_read(Rig::kSlot, rig.msix_cap + 8);
    CHECK((table & 7) == 0);  // BIR 0
    CHECK((pba & 7) == 0);
    CHECK(table == VirtioPciDevice::kMsixTableOffset);
    CHECK(pba == rig.vpci->msix_pba_offset());
    CHECK(pba + 8 <= bar_size);
    // Device configuration reads reach the device.
    CHECK(rig.mmio_read(VirtioPciDevice::kDeviceCfgOffset, 4) == 0x04030201u);
    CHECK(rig.mmio_read(VirtioPciDevice::kDeviceCfgOffset + 4, 2) == 0x0605u);
}

TEST_CASE("BAR0 sizing, moving and memory decode", "[pci]") {
    Rig rig;
    rig.bring_up();
    REQUIRE(rig.device->activations == 1);
    const GuestPhysAddr old_base = rig.bar0();
    std::uint64_t size = rig.vpci->bar0_size();
    REQUIRE((size & (size - 1)) == 0);
    CHECK(rig.platform->ioeventfds.count({old_base + 0x3000, 2, 100}) == 1);
    CHECK(rig.platform->ioeventfds.count({old_base + 0x3004, 2, 101}) == 1);

    // Sizing as Linux does it: decode off, all ones, read back, restore.
    std::uint32_t command = rig.cfg_read(Rig::kSlot, pci::reg::kCommand, 2);
    rig.cfg_write(Rig::kSlot, pci::reg::kCommand, command & ~2u, 2);
    CHECK(rig.platform->ioeventfds.empty());  // no decode: the notify addresses are not ours
    std::array<std::uint8_t, 4> probe{};
    CHECK_FALSE(rig.bus->mmio_read(old_base, probe));
    rig.cfg_write(Rig::kSlot, pci::reg::kBar0, 0xffffffffu);
    CHECK(rig.cfg_read(Rig::kSlot, pci::reg::kBar0) ==
          static_cast<std::uint32_t>(~(size - 1)));  // 32-bit, non-prefetchable: flags 0
    rig.cfg_write(Rig::kSlot, pci::reg::kBar0, static_cast<std::uint32_t>(old_base.value));
    rig.cfg_write(Rig::kSlot, pci::reg::kCommand, command, 2);
    CHECK(rig.platform->ioeventfds.count({old_base + 0x3000, 2, 100}) == 1);

    // The guest moves the BAR: accesses and ioeventfds follow.
    const GuestPhysAddr new_base{LPV_PCI_MMIO_GPA + 0x800000};
    rig.cfg_write(Rig::kSlot, pci::reg::kBar0, static_cast<std::uint32_t>(new_base.value | 0xf));
    CHECK(rig.bar0() == new_base);
    CHECK(rig.platform->ioeventfds ==
          std::set<std::tuple<GuestPhysAddr, std::uint32_t, int>>{{new_base + 0x3000, 2, 100},
                                                                  {new_base + 0x3004, 2, 101}});
    CHECK_FALSE(rig.bus->mmio_read(old_base, probe));
    CHECK(rig.mmio_read(rig.common() + virtio::common::kNumQueues, 2) == 2);
    // An access that runs past the BAR's end is nobody's.
    std::array<std::uint8_t, 8> wide{};
    CHECK_FALSE(rig.bus->mmio_read(new_base + (size - 4), wide));
    CHECK_FALSE(rig.bus->mmio_read(new_base + size, probe));
}

TEST_CASE("a Linux-like driver initialisation ends in activate() with its queues", "[pci]") {
    Rig rig;
    rig.walk_capabilities();
    std::uint64_t offered = rig.negotiate(virtio::kFeatureVersion1 | kFeatureA | kRingReset);
    // Only what the device offers, less what the transport cannot do.
    CHECK(offered == (virtio::kFeatureVersion1 | kFeatureA | kFeatureB));
    CHECK(rig.status() ==
          (virtio::kStatusAcknowledge | virtio::kStatusDriver | virtio::kStatusFeaturesOk));
    // Bits that were not offered do not stick.
    rig.set_status(0);
    rig.negotiate(virtio::kFeatureVersion1 | kFeatureA);
    rig.mmio_write(rig.common() + virtio::common::kDriverFeatureSelect, 0, 4);
    CHECK(rig.mmio_read(rig.common() + virtio::common::kDriverFeature, 4) == kFeatureA);
    rig.set_status(0);
    rig.set_status(virtio::kStatusAcknowledge | virtio::kStatusDriver);
    rig.mmio_write(rig.common() + virtio::common::kDriverFeatureSelect, 0, 4);
    rig.mmio_write(rig.common() + virtio::common::kDriverFeature, kFeatureA | 1u << 3, 4);
    rig.mmio_write(rig.common() + virtio::common::kDriverFeatureSelect, 1, 4);
    rig.mmio_write(rig.common() + virtio::common::kDriverFeature, 1u | 1u << 8, 4);  // 32, 40
    CHECK(rig.mmio_read(rig.common() + virtio::common::kDriverFeature, 4) == 1);
    rig.mmio_write(rig.common() + virtio::common::kDriverFeatureSelect, 0, 4);
    CHECK(rig.mmio_read(rig.common() + virtio::common::kDriverFeature, 4) == kFeatureA);
    rig.set_status(virtio::kStatusAcknowledge | virtio::kStatusDriver | virtio::kStatusFeaturesOk);
    // Features are frozen after FEATURES_OK.
    rig.mmio_write(rig.common() + virtio::common::kDriverFeatureSelect, 0, 4);
    rig.mmio_write(rig.common() + virtio::common::kDriverFeature, 0xffffffffu, 4);
    CHECK(rig.mmio_read(rig.common() + virtio::common::kDriverFeature, 4) == kFeatureA);

    rig.enable_msix();
    rig.mmio_write(rig.common() + virtio::common::kMsixConfig, 0, 2);
    // A vector past the table reads back as NO_VECTOR (Linux then gives up on MSI-X).
    rig.mmio_write(rig.common() + virtio::common::kQueueSelect, 0, 2);
    rig.mmio_write(rig.common() + virtio::common::kQueueMsixVector, 7, 2);
    CHECK(rig.mmio_read(rig.common() + virtio::common::kQueueMsixVector, 2) == virtio::kNoVector);
    rig.setup_queue(0, 128, 0x180000, 0x181000, 0x182000, 1);
    rig.setup_queue(1, 64, 0x1'0000'0010ull, 0x184000, 0x185000, 2);
    // An enabled queue's set-up is frozen.
    rig.mmio_write(rig.common() + virtio::common::kQueueSelect, 0, 2);
    rig.mmio_write(rig.common() + virtio::common::kQueueSize, 16, 2);
    rig.mmio_write(rig.common() + virtio::common::kQueueDriver, 0x777000, 4);
    CHECK(rig.mmio_read(rig.common() + virtio::common::kQueueSize, 2) == 128);
    CHECK(rig.mmio_read(rig.common() + virtio::common::kQueueDriver, 8) == 0x181000);
    // A queue past num_queues reads size 0 and takes nothing.
    rig.mmio_write(rig.common() + virtio::common::kQueueSelect, 2, 2);
    CHECK(rig.mmio_read(rig.common() + virtio::common::kQueueSize, 2) == 0);
    rig.mmio_write(rig.common() + virtio::common::kQueueEnable, 1, 2);
    CHECK(rig.mmio_read(rig.common() + virtio::common::kQueueEnable, 2) == 0);
    CHECK(rig.device->activations == 0);
    CHECK(rig.platform->ioeventfds.empty());

    rig.set_status(virtio::kStatusAcknowledge | virtio::kStatusDriver | virtio::kStatusFeaturesOk |
                   virtio::kStatusDriverOk);
    REQUIRE(rig.device->activations == 1);
    CHECK(rig.status() == (virtio::kStatusAcknowledge | virtio::kStatusDriver |
                           virtio::kStatusFeaturesOk | virtio::kStatusDriverOk));
    CHECK(rig.device->features == (virtio::kFeatureVersion1 | kFeatureA));
    REQUIRE(rig.device->queues.size() == 2);
    const auto& q0 = rig.device->queues[0];
    const auto& q1 = rig.device->queues[1];
    CHECK(q0.size == 128);
    CHECK(q0.ready);
    CHECK(q0.desc_table.value == 0x180000);
    CHECK(q0.avail_ring.value == 0x181000);
    CHECK(q0.used_ring.value == 0x182000);
    CHECK(q1.size == 64);
    CHECK(q1.desc_table.value == 0x1'0000'0010ull);
    CHECK(q1.used_ring.value == 0x185000);
    // Every queue's notify address is now an ioeventfd on the device's event fd.
    const GuestPhysAddr notify = rig.bar0() + VirtioPciDevice::kNotifyOffset;
    CHECK(rig.platform->ioeventfds == std::set<std::tuple<GuestPhysAddr, std::uint32_t, int>>{
                                          {notify, 2, 100}, {notify + 4, 2, 101}});
    // Queue set-up is frozen now.
    rig.mmio_write(rig.common() + virtio::common::kQueueSelect, 0, 2);
    rig.mmio_write(rig.common() + virtio::common::kQueueSize, 32, 2);
    rig.mmio_write(rig.common() + virtio::common::kQueueDesc, 0x999000, 4);
    CHECK(rig.mmio_read(rig.common() + virtio::common::kQueueSize, 2) == 128);
    CHECK(rig.mmio_read(rig.common() + virtio::common::kQueueDesc, 8) == 0x180000);
}

TEST_CASE("FEATURES_OK is refused without VERSION_1; DRIVER_OK needs FEATURES_OK", "[pci]") {
    Rig rig;
    rig.walk_capabilities();
    rig.negotiate(kFeatureA);  // a legacy-minded driver
    CHECK((rig.status() & virtio::kStatusFeaturesOk) == 0);
    CHECK(rig.status() == (virtio::kStatusAcknowledge | virtio::kStatusDriver));
    rig.set_status(virtio::kStatusAcknowledge | virtio::kStatusDriver | virtio::kStatusDriverOk);
    CHECK(rig.device->activations == 0);
    CHECK((rig.status() & virtio::kStatusDriverOk) == 0);

    // After a reset the same driver with VERSION_1 gets through.
    rig.negotiate(virtio::kFeatureVersion1);
    CHECK((rig.status() & virtio::kStatusFeaturesOk) != 0);
}

TEST_CASE("a refused configuration or a broken device shows NEEDS_RESET", "[pci]") {
    Rig rig;
    rig.device->accept = false;
    rig.bring_up();
    CHECK(rig.device->activations == 1);
    CHECK((rig.status() & virtio::kStatusNeedsReset) != 0);
    CHECK(rig.platform->ioeventfds.empty());

    rig.device->accept = true;
    rig.bring_up();
    CHECK(rig.device->activations == 2);
    CHECK((rig.status() & virtio::kStatusNeedsReset) == 0);
    rig.device->broken = true;
    CHECK((rig.status() & virtio::kStatusNeedsReset) != 0);
    rig.set_status(0);
    CHECK(rig.status() == 0);
}

TEST_CASE("queue notifies reach the device; reset returns everything to defaults", "[pci]") {
    Rig rig;
    rig.walk_capabilities();
    std::uint64_t notify = rig.virtio_caps.at(virtio::kPciCapNotifyCfg).offset;
    rig.mmio_write(notify + 4, 1, 2);  // before DRIVER_OK: nothing to notify
    CHECK(rig.device->notifies.empty());
    rig.bring_up();
    rig.mmio_write(notify + 4, 1, 2);
    rig.mmio_write(notify, 0, 2);
    rig.mmio_write(notify + 2, 0, 2);  // not a queue's address
    CHECK(rig.device->notifies == std::vector<std::uint16_t>{1, 0});

    int resets = rig.device->resets;
    rig.set_status(0);
    CHECK(rig.device->resets == resets + 1);
    CHECK(rig.status() == 0);
    CHECK(rig.platform->ioeventfds.empty());
    using namespace virtio::common;
    CHECK(rig.mmio_read(rig.common() + kQueueSelect, 2) == 0);
    CHECK(rig.mmio_read(rig.common() + kMsixConfig, 2) == virtio::kNoVector);
    for (std::uint16_t q = 0; q < 2; ++q) {
        rig.mmio_write(rig.common() + kQueueSelect, q, 2);
        CHECK(rig.mmio_read(rig.common() + kQueueSize, 2) == 256);
        CHECK(rig.mmio_read(rig.common() + kQueueEnable, 2) == 0);
        CHECK(rig.mmio_read(rig.common() + kQueueDesc, 8) == 0);
        CHECK(rig.mmio_read(rig.common() + kQueueMsixVector, 2) == virtio::kNoVector);
    }
    rig.mmio_write(rig.common() + kDriverFeatureSelect, 0, 4);
    CHECK(rig.mmio_read(rig.common() + kDriverFeature, 4) == 0);
    rig.mmio_write(notify, 0, 2);  // not live any more
    CHECK(rig.device->notifies.size() == 2);
    // And it comes up again.
    rig.bring_up();
    CHECK(rig.device->activations == 2);
}

TEST_CASE("MSI-X: routes follow the table, masked vectors pend, unmasking delivers", "[pci]") {
    Rig rig;
    rig.bring_up();
    REQUIRE(rig.device->sink.used_buffer);
    // All entries are still masked (bring_up only unmasked the function): no routes yet.
    CHECK(rig.platform->routes.empty());
    int fd1 = rig.vpci->vector_eventfd(1);
    std::uint32_t gsi1 = rig.vpci->vector_gsi(1);
    CHECK(rig.platform->irqfds.at(gsi1) == fd1);

    rig.device->sink.used_buffer(0);  // queue 0 -> vector 1, masked
    CHECK(eventfd_count(fd1) == 0);
    CHECK(rig.pba() == 0b010);
    CHECK((rig.mmio_read(VirtioPciDevice::kIsrOffset, 1) & 1) == 1);
    CHECK(rig.mmio_read(VirtioPciDevice::kIsrOffset, 1) == 0);  // the read cleared it

    rig.unmask_vector(1);
    CHECK(rig.platform->routes.at(gsi1) == std::make_pair(std::uint64_t{0xfee01000}, 0x41u));
    CHECK(eventfd_count(fd1) == 1);  // the pending interrupt went out
    CHECK(rig.pba() == 0);
    rig.device->sink.used_buffer(0);
    CHECK(eventfd_count(fd1) == 1);

    // Function mask: pend again, and the route goes away until it clears.
    std::uint32_t control = rig.cfg_read(Rig::kSlot, rig.msix_cap + 2, 2);
    rig.cfg_write(Rig::kSlot, rig.msix_cap + 2, control | 0x4000u, 2);
    CHECK(rig.platform->routes.count(gsi1) == 0);
    rig.device->sink.used_buffer(0);
    CHECK(eventfd_count(fd1) == 0);
    CHECK(rig.pba() == 0b010);
    rig.cfg_write(Rig::kSlot, rig.msix_cap + 2, control & ~0x4000u, 2);
    CHECK(eventfd_count(fd1) == 1);

    // Reprogramming an unmasked entry moves its route.
    std::uint64_t table = VirtioPciDevice::kMsixTableOffset;
    rig.mmio_write(table + 16 + 8, 0x77, 4);
    CHECK(rig.platform->routes.at(gsi1).second == 0x77u);

    // Config changes: ISR bit 1, a new generation, the config vector (0, still masked).
    rig.mmio_read(VirtioPciDevice::kIsrOffset, 1);  // clear the queue bit
    std::uint64_t generation = rig.mmio_read(rig.common() + virtio::common::kConfigGeneration, 1);
    rig.device->sink.config_change();
    CHECK(rig.mmio_read(rig.common() + virtio::common::kConfigGeneration, 1) == generation + 1);
    CHECK(rig.mmio_read(VirtioPciDevice::kIsrOffset, 1) == 2);
    CHECK(rig.pba() == 0b001);
    rig.unmask_vector(0);
    CHECK(eventfd_count(rig.vpci->vector_eventfd(0)) == 1);

    // MSI-X off: no delivery, no routes.
    rig.cfg_write(Rig::kSlot, rig.msix_cap + 2, 0, 2);
    CHECK(rig.platform->routes.empty());
    rig.device->sink.used_buffer(0);
    CHECK(eventfd_count(fd1) == 0);
    CHECK(rig.pba() == 0);
    CHECK(rig.mmio_read(VirtioPciDevice::kIsrOffset, 1) == 1);
}

TEST_CASE("the transport gives its GSIs and irqfds back when it goes", "[pci]") {
    auto platform = std::make_shared<FakePlatform>();
    {
        auto vpci = std::make_shared<VirtioPciDevice>(std::make_shared<FakeDevice>(), platform);
        CHECK(platform->gsis.size() == 3);
        CHECK(platform->irqfds.size() == 3);
    }
    CHECK(platform->gsis.empty());
    CHECK(platform->irqfds.empty());
}

TEST_CASE("hostile accesses change nothing and never throw", "[pci]") {
    Rig rig;
    rig.bring_up();
    auto snapshot = [&] {
        std::vector<std::uint64_t> s;
        using namespace virtio::common;
        for (std::uint16_t q = 0; q < 2; ++q) {
            rig.mmio_write(rig.common() + kQueueSelect, q, 2);
            for (std::uint64_t off : {kQueueSize, kQueueMsixVector, kQueueEnable, kQueueNotifyOff})
                s.push_back(rig.mmio_read(rig.common() + off, 2));
            for (std::uint64_t off : {kQueueDesc, kQueueDriver, kQueueDevice})
                s.push_back(rig.mmio_read(rig.common() + off, 8));
        }
        rig.mmio_write(rig.common() + kQueueSelect, 0, 2);
        rig.mmio_write(rig.common() + kDeviceFeatureSelect, 1, 4);
        s.push_back(rig.mmio_read(rig.common() + kDeviceFeature, 4));
        s.push_back(rig.mmio_read(rig.common() + kNumQueues, 2));
        s.push_back(rig.status());
        s.push_back(rig.mmio_read(rig.common() + kConfigGeneration, 1));
        s.push_back(rig.mmio_read(rig.common() + kMsixConfig, 2));
        for (unsigned i = 0; i < 3 * 16; i += 4)
            s.push_back(rig.mmio_read(VirtioPciDevice::kMsixTableOffset + i, 4));
        s.push_back(rig.pba());
        for (unsigned reg = 0; reg < 256; reg += 4) s.push_back(rig.cfg_read(Rig::kSlot, reg));
        return s;
    };
    auto before = snapshot();
    auto routes = rig.platform->route_updates;
    using namespace virtio::common;
    // Read-only fields.
    rig.mmio_write(rig.common() + kDeviceFeatureSelect, 1, 4);
    rig.mmio_write(rig.common() + kDeviceFeature, 0xffffffffu, 4);
    rig.mmio_write(rig.common() + kNumQueues, 9, 2);
    rig.mmio_write(rig.common() + kConfigGeneration, 9, 1);
    rig.mmio_write(rig.common() + kQueueNotifyOff, 9, 2);
    rig.mmio_write(VirtioPciDevice::kIsrOffset, 0xff, 1);
    rig.mmio_write(rig.vpci->msix_pba_offset(), 0xff, 4);
    // Wrong widths and misaligned: a byte of a word, a word of a dword, three bytes.
    rig.mmio_write(rig.common() + kQueueSize, 1, 1);
    rig.mmio_write(rig.common() + kQueueSelect, 1, 4);
    rig.mmio_write(rig.common() + kDeviceStatus, 0, 2);  // would be a reset at width 1
    rig.mmio_write(rig.common() + 0x13, 0xffff, 2);
    rig.mmio_write(rig.common() + kMsixConfig, 0xff, 1);
    rig.mmio_write(VirtioPciDevice::kMsixTableOffset + 12, 0, 2);           // an unmask, but a word
    rig.mmio_write(VirtioPciDevice::kMsixTableOffset + 14, 0, 4);           // misaligned dword
    rig.mmio_write(VirtioPciDevice::kMsixTableOffset + 3 * 16 + 12, 0, 4);  // past the table
    std::array<std::uint8_t, 3> three{0, 0, 0};
    const GuestPhysAddr base = rig.bar0();
    CHECK(rig.bus->mmio_write(base + rig.common() + kDeviceStatus, three));
    std::array<std::uint8_t, 3> three_out{1, 1, 1};
    CHECK(rig.bus->mmio_read(base + rig.common(), three_out));
    CHECK(three_out == std::array<std::uint8_t, 3>{0, 0, 0});
    CHECK(rig.mmio_read(rig.common() + 0x13, 2) == 0);
    CHECK(rig.mmio_read(rig.common() + kNumQueues, 4) == 0);  // a dword over two words
    // Config space: BARs 1-5, the expansion ROM and the capabilities are read-only.
    for (unsigned reg = 0x14; reg <= 0x30; reg += 4) rig.cfg_write(Rig::kSlot, reg, 0xffffffffu);
    for (unsigned reg = 0x40; reg < 0x84; reg += 4) rig.cfg_write(Rig::kSlot, reg, 0xdeadbeefu);
    std::uint32_t control = rig.cfg_read(Rig::kSlot, rig.msix_cap + 2, 2);
    rig.cfg_write(Rig::kSlot, rig.msix_cap + 2, (control & 0xc000u) | 0x3ff5u, 2);  // table size
    rig.cfg_write(Rig::kSlot, rig.msix_cap + 4, 0xffffffffu);
    rig.cfg_write(Rig::kSlot, rig.msix_cap + 8, 0xffffffffu);
    // Directly past BAR0's end and in other BARs (the bus would not route these).
    std::array<std::uint8_t, 8> buf{};
    rig.vpci->bar_write(0, rig.vpci->bar0_size(), buf);
    rig.vpci->bar_write(0, ~0ull - 3, buf);
    rig.vpci->bar_write(3, 0, buf);
    buf.fill(0xaa);
    rig.vpci->bar_read(0, ~0ull - 3, buf);
    CHECK(buf == std::array<std::uint8_t, 8>{});
    rig.vpci->config_write(250, buf);  // past the end of config space
    CHECK(snapshot() == before);
    CHECK(rig.platform->route_updates == routes);
    CHECK(rig.device->resets == 1);  // only bring_up's own reset
    CHECK(rig.device->activations == 1);

    // Random accesses everywhere: none throws, and the device still answers.
    std::mt19937_64 random(20240601);
    for (int i = 0; i < 20000; ++i) {
        std::size_t size = 1 + random() % 8;
        std::array<std::uint8_t, 8> data{};
        for (auto& b : data) b = static_cast<std::uint8_t>(random());
        std::span<std::uint8_t> access(data.data(), size);
        std::uint64_t offset = random() % (rig.vpci->bar0_size() + 64);
        switch (random() % 4) {
            case 0:
                REQUIRE_NOTHROW(rig.vpci->bar_read(0, offset, access));
                break;
            case 1:
                REQUIRE_NOTHROW(rig.vpci->bar_write(0, offset, access));
                break;
            case 2:
                REQUIRE_NOTHROW(rig.bus->read(static_cast<std::uint16_t>(random() % 8),
                                              access.first(std::min<std::size_t>(size, 4))));
                break;
            default:
                REQUIRE_NOTHROW(rig.vpci->config_write(
                    static_cast<std::uint16_t>(offset % 256),
                    access.first(std::min<std::size_t>(std::min<std::size_t>(size, 4),
                                                       256 - offset % 256))));
                break;
        }
    }
    CHECK(rig.cfg_read(Rig::kSlot, 0x00) == (0x1042u << 16 | 0x1af4u));
    CHECK(rig.vpci->bar_size(0) == rig.vpci->bar0_size());
}

TEST_CASE("the KVM platform's irqchip routes keep the legacy interrupts", "[pci]") {
    using Irq0 = pci::KvmPciPlatform::Irq0;
    auto find = [](const std::vector<kvm_irq_routing_entry>& table, std::uint32_t gsi,
                   std::uint32_t chip) -> std::optional<std::uint32_t> {
        std::optional<std::uint32_t> pin;
        for (const auto& e : table)
            if (e.gsi == gsi && e.type == KVM_IRQ_ROUTING_IRQCHIP && e.u.irqchip.irqchip == chip) {
                REQUIRE_FALSE(pin);  // one route per GSI and chip
                pin = e.u.irqchip.pin;
            }
        return pin;
    };
    auto table = pci::KvmPciPlatform::irqchip_routes(Irq0::IoapicPin2);
    CHECK(table.size() == 15 + 23);
    // The UART's IRQ 4 and the slave PIC's lines.
    CHECK(find(table, 4, KVM_IRQCHIP_PIC_MASTER) == 4u);
    CHECK(find(table, 4, KVM_IRQCHIP_IOAPIC) == 4u);
    CHECK(find(table, 12, KVM_IRQCHIP_PIC_SLAVE) == 4u);
    CHECK(find(table, 23, KVM_IRQCHIP_IOAPIC) == 23u);
    CHECK_FALSE(find(table, 23, KVM_IRQCHIP_PIC_SLAVE));
    CHECK_FALSE(find(table, 24, KVM_IRQCHIP_IOAPIC));
    // The PIT (GSI 0) reaches PIC pin 0 and IOAPIC pin 2, as the MADT's override says.
    CHECK(find(table, 0, KVM_IRQCHIP_PIC_MASTER) == 0u);
    CHECK(find(table, 0, KVM_IRQCHIP_IOAPIC) == 2u);
    CHECK_FALSE(find(table, 2, KVM_IRQCHIP_IOAPIC));
    CHECK_FALSE(find(table, 2, KVM_IRQCHIP_PIC_MASTER));

    // KVM's own default table: GSI n to pin n everywhere.
    auto plain = pci::KvmPciPlatform::irqchip_routes(Irq0::IoapicPin0);
    CHECK(plain.size() == 16 + 24);
    CHECK(find(plain, 0, KVM_IRQCHIP_IOAPIC) == 0u);
    CHECK(find(plain, 2, KVM_IRQCHIP_IOAPIC) == 2u);
    CHECK(find(plain, 2, KVM_IRQCHIP_PIC_MASTER) == 2u);
}
