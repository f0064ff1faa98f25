// libFuzzer target for the paravirtual storage-key port: 32-bit writes to LPV_PORT_STORAGE_KEY
// that carry the guest-physical address of a struct lpv_skey_request, and every other access
// size and offset a guest can make, against an LPAR of 16 frames in the middle of main storage.
//
// Input: u8 op count, then 6-byte ops { u8 kind, u8 offset, u32 value }: kind bit 0 set is a
// read, clear a write; bits 1-2 pick the size (1, 2, 4, 4); offset % 4 is the port offset;
// value is what a write carries (the request's address for a 4-byte write at offset 0). Then
// the LPAR's storage (64 KiB, zeros past the input): the requests and their key buffers.
// Invariants beyond "no crash, no sanitizer report": only the LPAR's own frames' keys change,
// every key keeps bit 0 clear, the locator is asked only about the LPAR's own pages, and
// nothing outside the LPAR's storage is written.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "devices/storage_key_port.hpp"
#include "fuzz_support.hpp"

namespace {

using namespace lparvisor;

constexpr std::uint64_t kStorage = 64 * 1024;
constexpr std::uint64_t kOrigin = 16 * 1024;  // the LPAR's place in main storage
constexpr std::uint64_t kMainStorage = kOrigin + kStorage + 16 * 1024;  // neighbours on both sides
constexpr std::uint8_t kNeighbourKey = 0x10;

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    fuzz::quiet_logs();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static fuzz::GuardedStorage storage(kStorage);
    fuzz::Input in(data, size);
    const unsigned op_count = in.take<std::uint8_t>();
    struct Op {
        std::uint8_t kind, offset;
        std::uint32_t value;
    };
    std::vector<Op> ops;
    for (unsigned i = 0; i < op_count && !in.empty(); ++i) {
        Op op{};
        op.kind = in.take<std::uint8_t>();
        op.offset = in.take<std::uint8_t>();
        op.value = in.take<std::uint32_t>();
        ops.push_back(op);
    }
    storage.load(in.rest());

    StorageKeys keys(kMainStorage);
    auto all = keys.frames({ArenaOffset{0}, kMainStorage});
    std::fill(all.begin(), all.end(), kNeighbourKey);
    auto own = keys.frames({ArenaOffset{kOrigin}, kStorage});
    std::fill(own.begin(), own.end(), std::uint8_t{0});
    StorageKeyPort port(storage.memory(), keys, [](GuestPhysAddr gpa) {
        fuzz::check(gpa.value < kStorage && gpa.value % 4096 == 0,
                    "a key looked up for a page outside the LPAR");
        return ArenaOffset{kOrigin + gpa.value};
    });

    for (const Op& op : ops) {
        static constexpr std::size_t kSizes[] = {1, 2, 4, 4};
        const std::size_t n = kSizes[(op.kind >> 1) & 3];
        std::uint8_t bytes[4];
        std::memcpy(bytes, &op.value, 4);
        if (op.kind & 1) {
            port.read(op.offset % 4, std::span<std::uint8_t>(bytes, n));
        } else {
            port.write(op.offset % 4, std::span<const std::uint8_t>(bytes, n));
            if (op.offset % 4 == 0 && n == 4) {
                const auto request =
                    storage.memory().read_object<lpv_skey_request>(GuestPhysAddr{op.value});
                if (request)
                    fuzz::tally("op " + std::to_string(request->op) + " status " +
                                std::to_string(request->status));
            }
        }
    }

    for (std::uint64_t frame = 0; frame < kMainStorage / 4096; ++frame) {
        const std::uint8_t key = all[frame];
        const bool mine = frame >= kOrigin / 4096 && frame < (kOrigin + kStorage) / 4096;
        if (!mine) fuzz::check(key == kNeighbourKey, "a neighbour's storage key changed");
        fuzz::check((key & ~LPV_KEY_VALID_MASK) == 0, "a key with bit 0 set");
    }
    storage.check_guard();
    return 0;
}
