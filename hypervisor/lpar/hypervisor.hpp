// The daemon's core: main storage (the arena and its storage keys), the storage map, the LPARs,
// and the LPAR controlling section that carries out MVSTOR (mvstor.cpp). Implements the
// control socket's Api.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "control/api.hpp"
#include "devices/device.hpp"
#include "kvm/kvm.hpp"
#include "lpar/config.hpp"
#include "lpar/lpar.hpp"
#include "storage/arena.hpp"
#include "storage/storage_keys.hpp"
#include "storage/storage_map.hpp"

namespace lparvisor {

struct HypervisorOptions {
    HugePagePolicy huge_pages = HugePagePolicy::Auto;
    std::string default_firmware;  // used by LPARs whose configuration names none
    std::string console_dir;       // when set, each LPAR's serial output also goes to DIR/NAME.log
};

class Hypervisor final : public control::Api {
public:
    // Creates main storage and every configured LPAR, and starts them (IPL).
    Hypervisor(const SystemConfig& config, const HypervisorOptions& options);
    ~Hypervisor() override;

    control::SystemStatus list() override;
    control::MvstorResult mvstor(const control::MvstorRequest& request) override;
    std::string console(const std::string& lpar, std::size_t max_bytes) override;

    Lpar& lpar(const std::string& name);
    const Arena& arena() const noexcept { return arena_; }
    StorageKeys& storage_keys() noexcept { return keys_; }
    std::vector<StorageRow> storage_table() const;

private:
    kvm::System kvm_;
    Arena arena_;
    StorageKeys keys_;

    mutable std::mutex map_mutex_;  // guards map_ and relocating_; never held across a copy
    StorageMap map_;
    std::string relocating_;        // the LPAR an MVSTOR is moving, shown as "relocating"

    // Serializes operations that change storage ownership (MVSTOR now; later EXPAND and
    // EXCHANGE), so a range vacated by one is scrubbed before another can take it.
    std::mutex storage_operation_mutex_;

    std::vector<std::unique_ptr<Lpar>> lpars_;
};

// Step 202: tell every device to stop taking requests and wait until all are idle. Returns the
// names of those still busy at the deadline (empty: all idle). On a non-empty result the caller
// must call resume_devices().
std::vector<std::string> drain_devices(const std::vector<std::shared_ptr<PortDevice>>& devices,
                                       std::chrono::milliseconds timeout);
void resume_devices(const std::vector<std::shared_ptr<PortDevice>>& devices);

}  // namespace lparvisor
