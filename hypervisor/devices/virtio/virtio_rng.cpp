#include "devices/virtio/virtio_rng.hpp"

#include <sys/random.h>

#include <algorithm>
#include <cerrno>

namespace lparvisor::virtio {

VirtioRng::VirtioRng(std::string name, GuestMemory memory)
    : VirtioDeviceBase(std::move(name), std::move(memory), 1, kRngQueueMaxSize) {
}

VirtioRng::~VirtioRng() {
    stop_worker();
}

void VirtioRng::read_config(std::uint32_t, std::span<std::uint8_t> data) {
    std::fill(data.begin(), data.end(), std::uint8_t{0});
}

void VirtioRng::write_config(std::uint32_t, std::span<const std::uint8_t>) {
}

VirtioDeviceBase::ChainResult VirtioRng::handle_chain(std::uint16_t, Queue&,
                                                      DescriptorChain& chain) {
    return {serve_request(chain)};
}

std::uint32_t VirtioRng::serve_request(const DescriptorChain& chain) {
    std::uint32_t written = 0;
    for (const Descriptor& descriptor : chain.descriptors) {
        // Device-readable buffers have no meaning for this device: skip them.
        if (!descriptor.device_writable) continue;
        const std::uint32_t want = std::min(descriptor.len, kRngMaxBytesPerRequest - written);
        if (want == 0) break;
        // Marked written when `target` goes, after getrandom() has filled it.
        auto target = memory().write_span(descriptor.addr, want);
        if (!target) break;  // pop() checked the range; cannot happen
        std::size_t filled = 0;
        while (filled < target->size()) {
            const ssize_t n = ::getrandom(target->data() + filled, target->size() - filled, 0);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) break;
            filled += static_cast<std::size_t>(n);
        }
        written += static_cast<std::uint32_t>(filled);
        if (filled < target->size()) break;
    }
    bytes_served_.fetch_add(written);
    return written;
}

}  // namespace lparvisor::virtio
