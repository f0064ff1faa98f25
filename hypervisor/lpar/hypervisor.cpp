#include "lpar/hypervisor.hpp"

#include <spdlog/spdlog.h>

#include "storage/address.hpp"
#include "util/error.hpp"

namespace lparvisor {

Hypervisor::Hypervisor(const SystemConfig& config, const HypervisorOptions& options)
    : arena_(config.main_storage_mib * kMiB, options.huge_pages),
      keys_(arena_.size()),
      map_(config.main_storage_mib * kMiB) {
    spdlog::info("main storage: {} ({}), KVM: {}", format_mib(map_.main_storage()),
                 arena_.backing(), kvm::to_string(kvm::detect_flavour()));
    for (const auto& c : config.lpars) {
        ArenaRange range{{c.origin_mib * kMiB}, c.size_mib * kMiB};
        map_.add(c.name, range);
        arena_.populate(range);  // fault the storage in now, not during the guest's first pass
        LparSpec spec;
        spec.name = c.name;
        spec.storage = range;
        spec.vcpus = c.vcpus;
        spec.firmware = c.firmware.empty() ? options.default_firmware : c.firmware;
        if (!options.console_dir.empty()) spec.console_file = options.console_dir + "/" + c.name + ".log";
        spec.rewrite_pages_per_sec = c.rewrite_pages_per_sec;
        spec.working_set_bytes = c.working_set_mib * kMiB;
        spec.round_limit = c.round_limit;
        lpars_.push_back(std::make_unique<Lpar>(kvm_, arena_, keys_, spec));
    }
    for (auto& l : lpars_) l->start();
}

Hypervisor::~Hypervisor() {
    // vCPU threads end before the arena and the windows go away (members die in reverse order,
    // but be explicit: LPARs first).
    lpars_.clear();
}

Lpar& Hypervisor::lpar(const std::string& name) {
    for (auto& l : lpars_)
        if (l->name() == name) return *l;
    std::lock_guard lock(map_mutex_);
    map_.find(name);  // throws NotFound listing the defined LPARs
    throw Error(ErrorKind::NotFound, "unknown LPAR '" + name + "'");
}

std::vector<StorageRow> Hypervisor::storage_table() const {
    std::lock_guard lock(map_mutex_);
    return map_.rows();
}

control::SystemStatus Hypervisor::list() {
    control::SystemStatus status;
    std::string relocating;
    std::vector<StorageRow> rows;
    {
        std::lock_guard lock(map_mutex_);
        rows = map_.rows();
        relocating = relocating_;
        status.main_storage_mib = map_.main_storage() / kMiB;
        status.free_mib = map_.free_bytes() / kMiB;
    }
    for (const auto& row : rows) {
        control::LparStatus s;
        s.name = row.lpar;
        s.origin_mib = row.origin / kMiB;
        s.size_mib = row.size / kMiB;
        s.gap_mib = row.gap / kMiB;
        Lpar& l = lpar(row.lpar);
        s.vcpus = l.vcpu_count();
        if (l.state() == LparState::Stopped) {
            s.state = "stopped";
            s.reason = l.stop_reason();
        } else {
            s.state = row.lpar == relocating ? "relocating" : "running";
        }
        status.lpars.push_back(std::move(s));
    }
    return status;
}

std::string Hypervisor::console(const std::string& name, std::size_t max_bytes) {
    return lpar(name).console().tail(max_bytes);
}

}  // namespace lparvisor
