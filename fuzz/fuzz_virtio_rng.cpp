// libFuzzer target for virtio-rng's request handling: the chains pop() could hand out, served by
// serve_request().
//
// Input: u8 config offset, u8 config size (read_config with 0-15 bytes), u8 chain count (1-8),
// then each chain as fuzz_support.hpp's take_chain (u8 count, then u16 address, u16 length,
// u8 flags per descriptor), then the LPAR's storage (64 KiB, zeros past the input).
// Invariants beyond "no crash, no sanitizer report": at most the chain's device-writable bytes
// and at most kRngMaxBytesPerRequest are reported written, nothing outside the device-writable
// buffers changes, the guard region after the storage never does, and the configuration space
// reads as zeros.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "devices/virtio/virtio_rng.hpp"
#include "fuzz_support.hpp"

namespace {

using namespace lparvisor;
using namespace lparvisor::virtio;

constexpr std::uint64_t kStorage = 64 * 1024;

struct Fixture {
    Fixture() : storage(kStorage) {
        device = std::make_unique<VirtioRng>("virtio-rng-fuzz", storage.memory());
    }
    fuzz::GuardedStorage storage;
    std::unique_ptr<VirtioRng> device;
};

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    fuzz::quiet_logs();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static Fixture fixture;
    fuzz::Input in(data, size);
    const auto config_offset = in.take<std::uint8_t>();
    const auto config_size = in.take<std::uint8_t>();
    const unsigned chains = in.take<std::uint8_t>() % 8 + 1;
    std::vector<DescriptorChain> requests;
    for (unsigned i = 0; i < chains; ++i)
        requests.push_back(fuzz::take_chain(in, kStorage, static_cast<std::uint16_t>(i)));
    fixture.storage.load(in.rest());

    std::uint8_t config[16];
    std::memset(config, 0xee, sizeof config);
    fixture.device->read_config(config_offset, std::span<std::uint8_t>(config, config_size % 16));
    for (unsigned i = 0; i < config_size % 16; ++i)
        fuzz::check(config[i] == 0, "virtio-rng has no configuration space");
    fixture.device->write_config(config_offset, std::span<const std::uint8_t>(config, 4));

    std::vector<std::uint8_t> before(kStorage);
    for (const DescriptorChain& chain : requests) {
        std::memcpy(before.data(), fixture.storage.data(), kStorage);
        const std::uint64_t served_before = fixture.device->bytes_served();
        const std::uint32_t written = fixture.device->serve_request(chain);
        fuzz::check(written <= fuzz::writable_bytes(chain), "more written than the chain holds");
        fuzz::check(written <= kRngMaxBytesPerRequest, "more than the per-request limit");
        fuzz::check(fixture.device->bytes_served() - served_before == written,
                    "bytes_served does not follow the requests");
        fuzz::check_only_writable_changed(before, fixture.storage.data(), chain);
        fuzz::tally(written == 0                        ? "request served 0 bytes"
                    : written == kRngMaxBytesPerRequest ? "request served the limit"
                                                        : "request served some bytes");
    }
    fixture.storage.check_guard();
    return 0;
}
