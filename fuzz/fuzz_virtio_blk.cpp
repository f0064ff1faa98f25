// libFuzzer target for virtio-blk's request parsing, chain by chain (the ring itself is
// fuzz_virtqueue's job): the chains pop() could hand out, served by serve_request() against a
// 64 KiB image in a memfd, read-write or read-only.
//
// Input: u8 flags (bit 0: the read-only disk), u8 config offset, u8 config size (read_config
// with 0-15 bytes), u8 chain count (1-8), then each chain as fuzz_support.hpp's take_chain
// (u8 count, then u16 address, u16 length, u8 flags per descriptor), then the LPAR's storage
// (64 KiB, zeros past the input).
// Invariants beyond "no crash, no sanitizer report": the bytes reported written never exceed the
// chain's device-writable bytes, nothing is written into device-readable buffers or outside the
// storage, a read-only disk never changes, and the image keeps its size.
#include <fcntl.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "devices/virtio/virtio_blk.hpp"
#include "fuzz_support.hpp"

namespace {

using namespace lparvisor;
using namespace lparvisor::virtio;

constexpr std::uint64_t kStorage = 64 * 1024;
constexpr std::uint64_t kDiskBytes = 64 * 1024;

struct Fixture {
    Fixture() : storage(kStorage), rw_disk("fuzz-blk-rw"), ro_disk("fuzz-blk-ro") {
        rw_disk.resize(kDiskBytes);
        std::vector<std::uint8_t> pattern(kDiskBytes);
        for (std::size_t i = 0; i < pattern.size(); ++i)
            pattern[i] = static_cast<std::uint8_t>(i * 13 + 7);
        ro_disk.assign(pattern);
        rw = std::make_unique<VirtioBlk>("virtio-blk-rw", storage.memory(),
                                         DiskSpec{rw_disk.path(), false, 0});
        ro = std::make_unique<VirtioBlk>("virtio-blk-ro", storage.memory(),
                                         DiskSpec{ro_disk.path(), true, 0});
        ro_pattern = std::move(pattern);
    }
    fuzz::GuardedStorage storage;
    fuzz::MemFile rw_disk;
    fuzz::MemFile ro_disk;
    std::unique_ptr<VirtioBlk> rw;
    std::unique_ptr<VirtioBlk> ro;
    std::vector<std::uint8_t> ro_pattern;
};

void tally(const VirtioBlkHeader& header, std::uint8_t status, bool read_only) {
    fuzz::tally(std::string(read_only ? "ro" : "rw") + " type " + std::to_string(header.type) +
                " status " + std::to_string(status));
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    fuzz::quiet_logs();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static Fixture fixture;
    fuzz::Input in(data, size);
    const auto flags = in.take<std::uint8_t>();
    const auto config_offset = in.take<std::uint8_t>();
    const auto config_size = in.take<std::uint8_t>();
    const unsigned chains = in.take<std::uint8_t>() % 8 + 1;
    std::vector<DescriptorChain> requests;
    for (unsigned i = 0; i < chains; ++i)
        requests.push_back(fuzz::take_chain(in, kStorage, static_cast<std::uint16_t>(i)));
    fixture.storage.load(in.rest());
    const bool read_only = (flags & 1) != 0;
    VirtioBlk& device = read_only ? *fixture.ro : *fixture.rw;
    if (!read_only) fixture.rw_disk.resize(kDiskBytes);  // the same disk for every input

    std::uint8_t config[16];
    device.read_config(config_offset, std::span<std::uint8_t>(config, config_size % 16));

    const GuestMemory memory = fixture.storage.memory();
    std::vector<std::uint8_t> before(kStorage);
    for (const DescriptorChain& chain : requests) {
        std::memcpy(before.data(), fixture.storage.data(), kStorage);
        const std::uint32_t written = device.serve_request(chain);
        fuzz::check(written <= fuzz::writable_bytes(chain), "more written than the chain holds");
        fuzz::check_only_writable_changed(before, fixture.storage.data(), chain);
        const Descriptor& first = chain.descriptors.front();
        const Descriptor& last = chain.descriptors.back();
        if (auto header = memory.read_object<VirtioBlkHeader>(first.addr);
            header && last.device_writable && last.len > 0)
            tally(*header, fixture.storage.data()[last.addr.value + last.len - 1], read_only);
    }
    fixture.storage.check_guard();
    fuzz::check(device.capacity_sectors() == kDiskBytes / kBlkSectorSize, "capacity changed");
    if (read_only) {
        std::vector<std::uint8_t> now(kDiskBytes);
        const int fd = ::open(fixture.ro_disk.path().c_str(), O_RDONLY | O_CLOEXEC);
        fuzz::check(
            fd >= 0 && ::pread(fd, now.data(), now.size(), 0) == static_cast<ssize_t>(now.size()),
            "cannot read the read-only image back");
        ::close(fd);
        fuzz::check(now == fixture.ro_pattern, "a read-only disk changed");
    }
    return 0;
}
