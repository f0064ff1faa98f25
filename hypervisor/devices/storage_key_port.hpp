// The paravirtual storage-key interface (docs/paravirt-interface.md): a 32-bit write to
// LPV_PORT_STORAGE_KEY carries the guest-physical address of a struct lpv_skey_request; one
// exit serves a whole range. Every guest address goes through the LPAR's GuestMemory, and keys
// are indexed through the LPAR's current origin, so a request can only reach its own frames.
#pragma once

#include <lparvisor/abi.h>

#include <functional>
#include <utility>

#include "devices/device.hpp"
#include "storage/guest_memory.hpp"
#include "storage/storage_keys.hpp"

namespace lparvisor {

class StorageKeyPort final : public PortDevice {
  public:
    static constexpr std::uint16_t kPortCount = 4;
    // `locate` says where a guest page lives in main storage now (GuestWindow::arena_offset_of);
    // that changes only while the vCPUs are stopped.
    using Locator = std::function<ArenaOffset(GuestPhysAddr)>;
    StorageKeyPort(GuestMemory memory, StorageKeys& keys, Locator locate)
        : memory_(std::move(memory)), keys_(keys), locate_(std::move(locate)) {}

    std::string name() const override { return "storage-key"; }
    void read(std::uint16_t, std::span<std::uint8_t> data) override;
    void write(std::uint16_t offset, std::span<const std::uint8_t> data) override;

    // Serves one request; public for the unit tests and the fuzzer.
    [[nodiscard]] lpv_skey_status serve(GuestPhysAddr request_address);

  private:
    lpv_skey_status execute(const lpv_skey_request& request);

    GuestMemory memory_;
    StorageKeys& keys_;
    Locator locate_;
};

}  // namespace lparvisor
