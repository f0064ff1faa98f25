// libFuzzer target for the split virtqueue and virtio-blk's request parsing: the fuzzer's bytes
// become a queue configuration and the LPAR's guest memory (rings, descriptors, headers and
// data), and every chain the queue hands out is served by virtio-blk against a tmpfs image.
// Invariants beyond "no crash, no sanitizer report": every popped descriptor lies inside the
// LPAR's storage, the used index moves by exactly one per served chain, and the guard region
// standing for the neighbour LPAR is never written.
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "devices/virtio/virtio_blk.hpp"
#include "devices/virtio/virtqueue.hpp"
#include "fuzz_support.hpp"

namespace {

using namespace lparvisor;
using namespace lparvisor::virtio;

constexpr std::uint64_t kGuestBytes = 64 * 1024;
constexpr std::uint64_t kGuardBytes = 4096;
constexpr std::uint8_t kGuardByte = 0x5a;
constexpr int kMaxPops = 64;

// The fuzzer's prefix: how the driver configured the queue.
struct FuzzQueueSetup {
    std::uint16_t size;
    std::uint8_t place_in_range;  // bit i: take ring i's address modulo the storage size
    std::uint8_t reserved;
    std::uint64_t desc_table;
    std::uint64_t avail_ring;
    std::uint64_t used_ring;
};

struct Fixture {
    Fixture() : host(kGuestBytes + kGuardBytes) {
        // An image on tmpfs: the device opens it by path; the name goes once the fd is open.
        std::string path = "/dev/shm/lparvisor-fuzz-virtqueue-XXXXXX";
        const int fd = ::mkstemp(path.data());
        if (fd < 0 || ::ftruncate(fd, 64 * 1024) != 0) std::abort();
        ::close(fd);
        device = std::make_unique<VirtioBlk>("virtio-blk-fuzz",
                                             GuestMemory(host.data(), kGuestBytes), DiskSpec{path});
        ::unlink(path.c_str());
    }
    std::vector<std::uint8_t> host;  // guest storage, then the neighbour's guard region
    std::unique_ptr<VirtioBlk> device;
};

// With LPARVISOR_FUZZ_REPORT set: which request types were served with which status.
void tally_request(const GuestMemory& memory, const DescriptorChain& chain) {
    const Descriptor& first = chain.descriptors.front();
    const Descriptor& last = chain.descriptors.back();
    const auto header = memory.read_object<VirtioBlkHeader>(first.addr);
    if (!header || last.len == 0 || !last.device_writable) return;
    const auto status =
        memory.read_object<std::uint8_t>(GuestPhysAddr{last.addr.value + last.len - 1});
    fuzz::tally("virtio-blk type " + std::to_string(header->type) + " status " +
                std::to_string(status.value_or(0xff)));
}

std::uint64_t place(std::uint64_t address, bool in_range) {
    return in_range ? address % kGuestBytes : address;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    fuzz::quiet_logs();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static Fixture fixture;
    if (size < sizeof(FuzzQueueSetup)) return 0;
    FuzzQueueSetup setup;
    std::memcpy(&setup, data, sizeof setup);
    data += sizeof setup;
    size -= sizeof setup;

    std::fill(fixture.host.begin(), fixture.host.end(), std::uint8_t{0});
    std::fill(fixture.host.begin() + kGuestBytes, fixture.host.end(), kGuardByte);
    std::memcpy(fixture.host.data(), data, std::min<std::size_t>(size, kGuestBytes));
    const GuestMemory memory(fixture.host.data(), kGuestBytes);

    const QueueConfig config{setup.size, true,
                             GuestPhysAddr{place(setup.desc_table, setup.place_in_range & 1)},
                             GuestPhysAddr{place(setup.avail_ring, setup.place_in_range & 2)},
                             GuestPhysAddr{place(setup.used_ring, setup.place_in_range & 4)}};
    Queue queue(0, kBlkQueueMaxSize);
    if (queue.activate(memory, config)) return 0;

    for (int i = 0; i < kMaxPops; ++i) {
        PopResult popped = queue.pop(memory);
        auto* chain = std::get_if<DescriptorChain>(&popped);
        if (!chain) break;
        if (chain->descriptors.empty() || chain->descriptors.size() > config.size) std::abort();
        for (const Descriptor& descriptor : chain->descriptors)
            if (!memory.contains(descriptor.addr, descriptor.len)) std::abort();
        const std::uint32_t written = fixture.device->serve_request(*chain);
        tally_request(memory, *chain);
        const std::uint16_t used_before = queue.next_used();
        if (queue.add_used(memory, chain->head, written)) std::abort();  // head came from pop()
        if (queue.next_used() != static_cast<std::uint16_t>(used_before + 1)) std::abort();
        (void)queue.needs_interrupt(memory);
    }

    for (std::uint64_t i = kGuestBytes; i < fixture.host.size(); ++i)
        if (fixture.host[i] != kGuardByte) std::abort();
    return 0;
}
