// libFuzzer target for virtio-mem: the guest's PLUG / UNPLUG / UNPLUG_ALL / STATE requests
// interleaved with what the hypervisor does to the device (requested and usable size, resets, a
// before_plug hook that refuses), served by serve_request() one chain at a time.
//
// Input: u8 block shift (block size 4 KiB << (shift % 10)), u8 region blocks (1-128), u8 op
// count, then that many 16-byte ops, then the LPAR's storage (64 KiB, zeros past the input).
// An op is { u8 kind, u8 type, u16 nb_blocks, u32 block, u64 raw }; by kind % 8:
//   0  a request { type, addr, nb_blocks } at storage 0x0 (24 bytes, readable), the response at
//      0x40 (10 bytes, writable); addr = raw if raw != 0, else region start + block * block size
//   1  the same request (type & 3) split over three readable and two writable descriptors,
//      some perhaps empty (type >> 2 picks the split points: ANY_LAYOUT)
//   2  a chain straight from the storage image: 1 + type % 4 descriptors, each from 16 bits of
//      raw (address bits 0-9 in 32-byte units, length bits 10-14 in 2-byte units, bit 15
//      device-writable)
//   3  set_requested_size(block * block size, +1 if type is odd)
//   4  set_usable_region_size(the same)
//   5  reset() (type even) or system_reset() (type odd)
//   6  the before_plug hook allows (type even) or refuses (type odd) from now on
//   7  read_config(type, nb_blocks % 16 bytes) and write_config
// Invariants beyond "no crash, no sanitizer report": every hook call lies inside the region and
// the usable region; the device plugs only blocks the hook allowed and unplugs only blocks it
// plugged; an acknowledged PLUG / UNPLUG changes plugged_size by exactly its blocks; a STATE
// answer matches what was plugged; plugged_size, requested_size and the highest plugged block
// stay within the usable region; the response never exceeds the writable bytes.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "devices/virtio/virtio_mem.hpp"
#include "fuzz_support.hpp"
#include "util/error.hpp"

namespace {

using namespace lparvisor;
using namespace lparvisor::virtio;

constexpr std::uint64_t kStorage = 64 * 1024;
constexpr std::uint64_t kRequestAt = 0x0;
constexpr std::uint64_t kResponseAt = 0x40;

struct Op {
    std::uint8_t kind;
    std::uint8_t type;
    std::uint16_t nb_blocks;
    std::uint32_t block;
    std::uint64_t raw;
};
static_assert(sizeof(Op) == 16);

// What the hypervisor side knows: which blocks it backed (before_plug said yes) and so which
// the guest may have plugged.
struct Shadow {
    VirtioMemRegion region;
    std::vector<bool> backed;
    bool allow = true;
    std::uint64_t usable = 0;

    std::uint64_t count() const {
        return static_cast<std::uint64_t>(std::count(backed.begin(), backed.end(), true));
    }
    bool all_backed(std::uint64_t first, std::uint64_t n) const {
        for (std::uint64_t b = first; b < first + n; ++b)
            if (!backed[b]) return false;
        return true;
    }
};

std::uint64_t size_of(const Op& op, std::uint64_t block_size) {
    return std::uint64_t{op.block} * block_size + (op.type & 1);
}

void check_state(const VirtioMem& device, const Shadow& shadow) {
    const std::uint64_t bs = shadow.region.block_size;
    const std::uint64_t usable = device.usable_region_size();
    fuzz::check(usable <= shadow.region.region_size, "usable region beyond the region");
    fuzz::check(device.plugged_size() <= usable, "plugged beyond the usable region");
    fuzz::check(device.requested_size() <= usable, "requested beyond the usable region");
    fuzz::check(device.highest_plugged_end().value_or(0) <= usable,
                "a plugged block beyond the usable region");
    fuzz::check(device.plugged_size() <= shadow.count() * bs, "plugged blocks never backed");
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    fuzz::quiet_logs();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static fuzz::GuardedStorage storage(kStorage);
    fuzz::Input in(data, size);
    const std::uint64_t block_size = std::uint64_t{4096} << (in.take<std::uint8_t>() % 10);
    const std::uint64_t blocks = in.take<std::uint8_t>() % 128 + 1;
    const unsigned op_count = in.take<std::uint8_t>();
    std::vector<Op> ops;
    for (unsigned i = 0; i < op_count && !in.empty(); ++i) ops.push_back(in.take<Op>());
    storage.load(in.rest());
    const GuestMemory memory = storage.memory();

    Shadow shadow;
    shadow.region = VirtioMemRegion{GuestPhysAddr{std::max(kStorage, block_size)},
                                    blocks * block_size, block_size, 0};
    shadow.backed.assign(blocks, false);
    VirtioMem device("virtio-mem-fuzz", memory, shadow.region);
    device.set_before_plug([&shadow](std::uint64_t offset, std::uint64_t bytes) {
        const std::uint64_t bs = shadow.region.block_size;
        fuzz::check(offset % bs == 0 && bytes % bs == 0 && bytes > 0, "before_plug misaligned");
        fuzz::check(
            offset <= shadow.region.region_size && bytes <= shadow.region.region_size - offset,
            "before_plug outside the region");
        fuzz::check(offset + bytes <= shadow.usable, "before_plug outside the usable region");
        if (!shadow.allow) return false;
        for (std::uint64_t b = offset / bs; b < (offset + bytes) / bs; ++b) shadow.backed[b] = true;
        return true;
    });
    device.set_on_unplugged([&shadow](std::uint64_t offset, std::uint64_t bytes) {
        const std::uint64_t bs = shadow.region.block_size;
        fuzz::check(offset % bs == 0 && bytes % bs == 0 && bytes > 0, "on_unplugged misaligned");
        fuzz::check(
            offset <= shadow.region.region_size && bytes <= shadow.region.region_size - offset,
            "on_unplugged outside the region");
        fuzz::check(shadow.all_backed(offset / bs, bytes / bs),
                    "unplugged blocks that were never plugged");
        for (std::uint64_t b = offset / bs; b < (offset + bytes) / bs; ++b)
            shadow.backed[b] = false;
    });

    for (const Op& op : ops) {
        shadow.usable = device.usable_region_size();
        switch (op.kind % 8) {
            case 0:
            case 1: {
                const bool split = op.kind % 8 == 1;
                VirtioMemReq request{};
                request.type = split ? op.type & 3 : op.type % 5 == 4 ? op.nb_blocks : op.type % 5;
                request.addr =
                    op.raw != 0 ? op.raw : shadow.region.addr.value + op.block * block_size;
                request.nb_blocks = op.nb_blocks;
                if (!memory.write_object(GuestPhysAddr{kRequestAt}, request))
                    fuzz::fail("request outside the storage");
                DescriptorChain chain;
                if (!split) {
                    chain.descriptors = {{GuestPhysAddr{kRequestAt}, sizeof request, false},
                                         {GuestPhysAddr{kResponseAt}, sizeof(VirtioMemResp), true}};
                } else {
                    // Split the request at r1 < r2 and the response at w1 < w2 (some empty).
                    const std::uint32_t r1 = (op.type >> 2) % 25, w1 = (op.type >> 4) % 11;
                    const std::uint32_t r2 = std::max(r1, 24u - (op.type >> 5)), w2 = 10;
                    chain.descriptors = {
                        {GuestPhysAddr{kRequestAt}, r1, false},
                        {GuestPhysAddr{kRequestAt + r1}, r2 - r1, false},
                        {GuestPhysAddr{kRequestAt + r2}, 24 - r2, false},
                        {GuestPhysAddr{kResponseAt}, w1, true},
                        {GuestPhysAddr{kResponseAt + w1}, w2 - w1, true},
                    };
                }
                const std::uint64_t plugged_before = device.plugged_size();
                const auto range_first = (request.addr - shadow.region.addr.value) / block_size;
                std::memset(storage.data() + kResponseAt, 0xee, sizeof(VirtioMemResp));
                const std::uint32_t written = device.serve_request(chain);
                fuzz::check(written <= fuzz::writable_bytes(chain), "response too long");
                if (written < sizeof(VirtioMemResp)) {
                    fuzz::check(device.plugged_size() == plugged_before,
                                "a request without a response changed the plugged size");
                    break;
                }
                const auto response = memory.read_object<VirtioMemResp>(GuestPhysAddr{kResponseAt});
                const std::uint64_t delta = std::uint64_t{request.nb_blocks} * block_size;
                fuzz::tally("type " + std::to_string(request.type) + " response " +
                            std::to_string(response->type));
                if (response->type != kMemRespAck) {
                    if (request.type != kMemReqUnplugAll)
                        fuzz::check(device.plugged_size() == plugged_before,
                                    "a refused request changed the plugged size");
                    break;
                }
                switch (request.type) {
                    case kMemReqPlug:
                        fuzz::check(device.plugged_size() == plugged_before + delta,
                                    "an acknowledged PLUG did not plug its blocks");
                        break;
                    case kMemReqUnplug:
                        fuzz::check(device.plugged_size() + delta == plugged_before,
                                    "an acknowledged UNPLUG did not unplug its blocks");
                        break;
                    case kMemReqUnplugAll:
                        fuzz::check(device.plugged_size() == 0, "UNPLUG_ALL left blocks plugged");
                        break;
                    case kMemReqState:
                        if (response->state == kMemStatePlugged)
                            fuzz::check(shadow.all_backed(range_first, request.nb_blocks),
                                        "STATE says plugged for blocks never plugged");
                        break;
                    default:
                        fuzz::fail("an unknown request type was acknowledged");
                }
                break;
            }
            case 2: {
                DescriptorChain chain;
                const unsigned count = 1 + op.type % 4;
                for (unsigned i = 0; i < count; ++i) {
                    const auto bits = static_cast<std::uint16_t>(op.raw >> (16 * i));
                    chain.descriptors.push_back({GuestPhysAddr{(bits & 0x3ffu) * 32ull},
                                                 ((bits >> 10) & 0x1fu) * 2u, (bits >> 15) != 0});
                }
                std::vector<std::uint8_t> before(storage.data(), storage.data() + kStorage);
                const std::uint32_t written = device.serve_request(chain);
                fuzz::check(written <= fuzz::writable_bytes(chain), "response too long");
                fuzz::check_only_writable_changed(before, storage.data(), chain);
                break;
            }
            case 3:
            case 4:
                try {
                    if (op.kind % 8 == 3)
                        device.set_requested_size(size_of(op, block_size));
                    else
                        device.set_usable_region_size(size_of(op, block_size));
                } catch (const Error&) {
                }
                break;
            case 5:
                if (op.type & 1)
                    device.system_reset();
                else
                    device.reset();
                break;
            case 6:
                shadow.allow = (op.type & 1) == 0;
                break;
            case 7: {
                std::uint8_t config[16];
                device.read_config(op.type, std::span<std::uint8_t>(config, op.nb_blocks % 16));
                device.write_config(op.type, std::span<const std::uint8_t>(config, 8));
                break;
            }
        }
        check_state(device, shadow);
    }
    storage.check_guard();
    return 0;
}
