// libFuzzer target for PCI as a guest drives it: configuration mechanism #1 (ports 0xCF8-0xCFF)
// and the BAR MMIO of three real virtio-pci devices built as the daemon builds them (virtio-blk
// at 00:01.0, virtio-rng at 00:02.0, virtio-mem at 00:03.0 on one PciBus, BARs pre-assigned):
// common configuration, ISR, device configuration, notifications, the MSI-X table and PBA. The
// platform is fuzz_support.hpp's fake, which checks the GSI / irqfd / route / ioeventfd
// bookkeeping. Everything is built afresh for each input, so a crash replays.
//
// Input: 16-byte ops { u8 kind, u8 size, u8 slot, u8 port, u32 offset, u64 value }; by kind % 8:
//   0  port write: PciBus::write(port % 8, size 1/2/4 (size % 3), value)
//   1  port read:  PciBus::read(port % 8, size 1/2/4)
//   2  config write: address register = enable | slot % 32 << 11 | offset & 0xfc, then a write
//      of size 1/2/4 at data port 4 + offset % 4 (the way a kernel does it)
//   3  config read, the same way
//   4  MMIO write of size 1/2/4/8 (size % 4) at kMmioBase + slot % 33 * kBarStride + offset
//   5  MMIO read, the same way
//   6  8 bytes of value into guest storage at offset % 64 KiB (rings and buffers for a worker)
//   7  the MVSTOR drain (stop_accepting, idle, resume_accepting); port odd: the platform refuses
//      MSI routes and ioeventfds from now on
// Invariants beyond "no crash, no sanitizer report": config reads of an empty slot are all ones;
// every registered ioeventfd lies in some device's notify area; once the bus and devices are
// gone every GSI is released and no irqfd, MSI route or ioeventfd is left.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "devices/pci/pci_bus.hpp"
#include "devices/virtio/virtio_blk.hpp"
#include "devices/virtio/virtio_mem.hpp"
#include "devices/virtio/virtio_pci.hpp"
#include "devices/virtio/virtio_rng.hpp"
#include "fuzz_support.hpp"

namespace {

using namespace lparvisor;
using namespace lparvisor::virtio;

constexpr std::uint64_t kStorage = 64 * 1024;
constexpr unsigned kDevices = 3;

struct Op {
    std::uint8_t kind;
    std::uint8_t size;
    std::uint8_t slot;
    std::uint8_t port;
    std::uint32_t offset;
    std::uint64_t value;
};
static_assert(sizeof(Op) == 16);

std::vector<std::uint8_t> little_endian(std::uint64_t value, std::size_t size) {
    std::vector<std::uint8_t> bytes(size);
    for (std::size_t i = 0; i < size; ++i) bytes[i] = static_cast<std::uint8_t>(value >> (8 * i));
    return bytes;
}

struct Fixture {
    Fixture() : storage(kStorage), disk("fuzz-pci-disk") { disk.resize(64 * 1024); }
    fuzz::GuardedStorage storage;
    fuzz::MemFile disk;
};

void run(Fixture& fixture, const std::vector<Op>& ops) {
    auto platform = std::make_shared<fuzz::FakePciPlatform>();
    {
        const GuestMemory memory = fixture.storage.memory();
        auto bus = std::make_shared<pci::PciBus>();
        std::vector<std::shared_ptr<VirtioDevice>> devices = {
            std::make_shared<VirtioBlk>("virtio-blk0", memory, DiskSpec{fixture.disk.path()}),
            std::make_shared<VirtioRng>("virtio-rng0", memory),
            std::make_shared<VirtioMem>(
                "virtio-mem0", memory,
                VirtioMemRegion{GuestPhysAddr{2ull << 20}, 8ull << 20, 2ull << 20, 0}),
        };
        for (unsigned i = 0; i < kDevices; ++i)
            bus->add(i + 1, std::make_shared<VirtioPciDevice>(devices[i], platform));

        for (const Op& op : ops) {
            const std::size_t port_size = std::size_t{1} << (op.size % 3);
            const std::size_t mmio_size = std::size_t{1} << (op.size % 4);
            const GuestPhysAddr gpa = pci::PciBus::kMmioBase +
                                      std::uint64_t{op.slot % 33u} * pci::PciBus::kBarStride +
                                      op.offset;
            switch (op.kind % 8) {
                case 0:
                    bus->write(op.port % 8, little_endian(op.value, port_size));
                    break;
                case 1: {
                    std::vector<std::uint8_t> out(port_size);
                    bus->read(op.port % 8, out);
                    break;
                }
                case 2:
                case 3: {
                    const std::uint32_t address =
                        0x80000000u | (op.slot % 32u) << 11 | (op.offset & 0xfcu);
                    bus->write(0, little_endian(address, 4));
                    const auto data_port = static_cast<std::uint16_t>(4 + op.offset % 4);
                    if (op.kind % 8 == 2) {
                        bus->write(data_port, little_endian(op.value, port_size));
                    } else {
                        std::vector<std::uint8_t> out(port_size, 0);
                        bus->read(data_port, out);
                        if (op.slot % 32u > kDevices)
                            for (std::uint8_t b : out)
                                fuzz::check(b == 0xff, "an empty slot answered a config read");
                    }
                    break;
                }
                case 4:
                    (void)bus->mmio_write(gpa, little_endian(op.value, mmio_size));
                    break;
                case 5: {
                    std::vector<std::uint8_t> out(mmio_size);
                    (void)bus->mmio_read(gpa, out);
                    break;
                }
                case 6: {
                    const std::uint64_t at = op.offset % (kStorage - 8);
                    std::memcpy(fixture.storage.data() + at, &op.value, 8);
                    break;
                }
                case 7:
                    bus->stop_accepting();
                    (void)bus->idle();
                    bus->resume_accepting();
                    if (op.port & 1) platform->set_refusals(true, true);
                    break;
            }
            // With LPARVISOR_FUZZ_REPORT: how far each device's driver got.
            for (unsigned slot = 1; slot <= kDevices; ++slot) {
                std::uint8_t status = 0;
                bus->device(slot)->bar_read(0, common::kDeviceStatus, {&status, 1});
                if (status & kStatusDriverOk)
                    fuzz::tally("DRIVER_OK in slot " + std::to_string(slot));
                if (status & kStatusNeedsReset)
                    fuzz::tally("NEEDS_RESET in slot " + std::to_string(slot));
            }
            // Every ioeventfd sits on a queue's notify address inside a decoding BAR0.
            for (GuestPhysAddr address : platform->ioeventfd_addresses()) {
                bool inside = false;
                for (unsigned slot = 1; slot <= kDevices; ++slot) {
                    auto device = bus->device(slot);
                    auto base = device->bar_address(0);
                    if (base && address >= *base + VirtioPciDevice::kNotifyOffset &&
                        address < *base + VirtioPciDevice::kNotifyOffset + 0x1000)
                        inside = true;
                }
                fuzz::check(inside, "an ioeventfd outside every notify area");
            }
        }
    }
    platform->check_nothing_held();
    // The seeds' virtio-blk FLUSH: used.idx (at 0x142) moved once the worker served it.
    if (fixture.storage.data()[0x142] != 0) fuzz::tally("a request was served from the queue");
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    fuzz::quiet_logs();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static Fixture fixture;
    fuzz::Input in(data, size);
    std::vector<Op> ops;
    while (in.size() >= sizeof(Op)) ops.push_back(in.take<Op>());
    fixture.storage.load({});
    run(fixture, ops);
    fixture.storage.check_guard();
    return 0;
}
