// virtio-rng (device type 4): one queue whose device-writable buffers the device fills from the
// host's getrandom(). At most kRngMaxBytesPerRequest per request, so that one guest request
// cannot keep the worker busy for long.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>

#include "devices/virtio/virtio_device_base.hpp"

namespace lparvisor::virtio {

inline constexpr std::uint32_t kRngMaxBytesPerRequest = 64 * 1024;
inline constexpr std::uint16_t kRngQueueMaxSize = 256;

class VirtioRng final : public VirtioDeviceBase {
  public:
    VirtioRng(std::string name, GuestMemory memory);
    ~VirtioRng() override;

    DeviceType device_type() const override { return DeviceType::Rng; }
    std::uint64_t device_features() const override { return kFeatureVersion1; }
    // virtio-rng has no configuration space.
    void read_config(std::uint32_t offset, std::span<std::uint8_t> data) override;
    void write_config(std::uint32_t offset, std::span<const std::uint8_t> data) override;

    std::uint64_t bytes_served() const noexcept { return bytes_served_.load(); }

    // Fills the chain's device-writable buffers (up to the per-request limit); returns the
    // bytes written. What the worker runs per chain.
    std::uint32_t serve_request(const DescriptorChain& chain);

  protected:
    ChainResult handle_chain(std::uint16_t queue_index, Queue& queue,
                             DescriptorChain& chain) override;

  private:
    std::atomic<std::uint64_t> bytes_served_{0};
};

}  // namespace lparvisor::virtio
