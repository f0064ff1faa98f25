#include "lpar/hypervisor.hpp"

#include <lparvisor/abi.h>

#include "control/definition_json.hpp"
#include "devices/virtio/virtio_blk.hpp"
#include "devices/virtio/virtio_mem.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "sandbox/sandbox.hpp"
#include "storage/address.hpp"
#include "storage/page_mover.hpp"
#include "util/error.hpp"

namespace lparvisor {

Hypervisor::Hypervisor(const SystemConfig& config, const HypervisorOptions& options)
    : options_(options),
      arena_(config.main_storage_mib * kMiB, options.huge_pages),
      keys_(arena_.size()),
      disk_users_(std::make_shared<virtio::DiskUsers>()),
      map_(config.main_storage_mib * kMiB) {
    spdlog::info("main storage: {} ({}), KVM: {}", format_mib(map_.main_storage()),
                 arena_.backing(), kvm::to_string(kvm::detect_flavour()));
    for (const auto& c : config.lpars) add_record(c);
    // Those with an origin first, so that first-fit ones fill around them.
    {
        std::lock_guard operation(storage_operation_mutex_);
        for (bool placed : {true, false})
            for (auto& r : records_)
                if (r.definition.active && r.definition.origin_mib.has_value() == placed)
                    activate_locked(r);
    }
    // A guest that rebooted meanwhile has its restart queued already: the worker takes it.
    action_worker_ = sandbox::spawn(sandbox::ThreadClass::Control, "guest-actions",
                                    [this] { run_guest_actions(); });
}

Hypervisor::~Hypervisor() {
    // No restart may begin once teardown has: the worker ends first (one in progress finishes).
    {
        std::lock_guard lock(actions_mutex_);
        actions_stopping_ = true;
    }
    actions_changed_.notify_all();
    if (action_worker_.joinable()) action_worker_.join();
    // Every LPAR's threads end and its window is unmapped before the arena goes away, whoever
    // still holds the object.
    std::vector<std::shared_ptr<Lpar>> running;
    {
        std::lock_guard lock(map_mutex_);
        for (auto& r : records_) running.push_back(std::move(r.lpar));
    }
    for (auto& l : running)
        if (l) l->shutdown();
    running.clear();
}

void Hypervisor::request_shutdown() {
    if (shutting_down_.exchange(true)) return;
    std::string relocating;
    {
        std::lock_guard lock(map_mutex_);
        relocating = relocating_;
    }
    spdlog::info("shutdown requested{}", relocating.empty()
                                             ? std::string()
                                             : ": MVSTOR of " + relocating +
                                                   " is cancelled before its first stop, or "
                                                   "finishes without pre-copy after it");
}

Hypervisor::Record& Hypervisor::record(const std::string& name) {
    for (auto& r : records_)
        if (r.definition.name == name) return r;
    std::string known;
    for (const auto& r : records_) known += (known.empty() ? "" : ", ") + r.definition.name;
    throw Error(ErrorKind::NotFound,
                "unknown LPAR '" + name + "' (defined: " + (known.empty() ? "none" : known) + ")");
}

void Hypervisor::add_record(const LparConfig& definition) {
    check_lpar_limit(records_.size(), definition.name);
    records_.push_back({definition, nullptr});
}

std::shared_ptr<Lpar> Hypervisor::active_lpar(const std::string& name) {
    std::lock_guard lock(map_mutex_);
    auto& r = record(name);
    if (!r.lpar) throw Error(ErrorKind::Refused, name + " is defined but not active");
    return r.lpar;
}

std::shared_ptr<Lpar> Hypervisor::operable_lpar(const std::string& name, const char* what) {
    auto l = active_lpar(name);
    if (l->state() == LparState::Failed)
        throw Error(ErrorKind::Refused,
                    fmt::format("{}: cannot {}: it is fenced ({}); deactivate it first", name, what,
                                l->stop_reason()));
    return l;
}

Lpar& Hypervisor::lpar(const std::string& name) {
    return *active_lpar(name);
}

std::vector<StorageRow> Hypervisor::storage_table() const {
    std::lock_guard lock(map_mutex_);
    return map_.rows();
}

namespace {

void describe_definition(const LparConfig& d, control::LparStatus& s) {
    s.vcpus = d.vcpus;
    s.guest = d.kernel.empty() ? "firmware" : "linux";
    s.max_size_mib = std::max(d.max_size_mib, d.size_mib);
}

}  // namespace

control::SystemStatus Hypervisor::list() {
    std::vector<StorageRow> rows;
    struct Active {
        std::shared_ptr<Lpar> lpar;
        const char* transition;
        LparConfig definition;  // a copy: used after map_mutex_ is released
    };
    std::vector<Active> active;
    std::vector<LparConfig> defined;
    std::string relocating;
    control::SystemStatus status;
    {
        std::lock_guard lock(map_mutex_);
        rows = map_.rows();
        relocating = relocating_;
        status.main_storage_mib = map_.main_storage() / kMiB;
        status.free_mib = map_.free_bytes() / kMiB;
        for (const auto& row : rows)
            for (auto& r : records_)
                if (r.definition.name == row.lpar)
                    active.push_back({r.lpar, r.transition, r.definition});
        for (const auto& r : records_)
            if (!r.lpar) defined.push_back(r.definition);
    }
    for (std::size_t i = 0; i < rows.size(); ++i) {
        control::LparStatus s;
        s.name = rows[i].lpar;
        s.origin_mib = rows[i].origin.value / kMiB;
        s.size_mib = rows[i].size / kMiB;
        s.gap_mib = rows[i].gap / kMiB;
        const auto& l = active[i].lpar;
        describe_definition(active[i].definition, s);
        if (l && l->memory_device()) s.plugged_mib = l->memory_device()->plugged_size() / kMiB;
        if (!l) {
            s.state = active[i].transition != nullptr ? active[i].transition : "defined";
        } else if (auto state = l->state(); state != LparState::Running) {
            s.state = to_string(state);  // "stopped", or "failed" (fenced)
            s.reason = l->stop_reason();
        } else {
            s.state = s.name == relocating ? "relocating" : "running";
        }
        status.lpars.push_back(std::move(s));
    }
    for (const auto& d : defined) {
        control::LparStatus s;
        s.name = d.name;
        s.origin_mib = d.origin_mib.value_or(0);
        s.size_mib = d.size_mib;
        s.state = "defined";
        describe_definition(d, s);
        s.has_storage = false;
        status.lpars.push_back(std::move(s));
    }
    return status;
}

control::LparStatus Hypervisor::status_of(const std::string& name) {
    for (auto& s : list().lpars)
        if (s.name == name) return s;
    throw Error(ErrorKind::NotFound, "unknown LPAR '" + name + "'");
}

control::ConsoleText Hypervisor::console(const std::string& name,
                                         std::optional<std::uint64_t> since,
                                         std::size_t max_bytes) {
    std::shared_ptr<Lpar> l;
    std::uint64_t ipl = 0;
    {
        std::lock_guard lock(map_mutex_);
        const auto& r = record(name);
        l = r.lpar;
        ipl = r.ipl;
    }
    if (!l) throw Error(ErrorKind::Refused, name + " is defined but not active: no console yet");
    auto slice = l->console().read(since, max_bytes);
    return {std::move(slice.text), slice.start, ipl};
}

std::string Hypervisor::console(const std::string& name, std::size_t max_bytes) {
    return console(name, std::nullopt, max_bytes).text;
}

std::size_t Hypervisor::console_write(const std::string& name, std::string_view bytes) {
    auto l = active_lpar(name);
    if (l->state() == LparState::Failed)
        throw Error(ErrorKind::Refused,
                    fmt::format("{}: cannot type at its console: it is fenced ({})", name,
                                l->stop_reason()));
    // SAFETY: the same bytes.size() bytes of `bytes`, viewed as the UART takes them (char and
    // std::uint8_t have the same size and alignment, and may alias anything).
    return l->console_input({reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()});
}

std::unique_lock<std::mutex> Hypervisor::begin_storage_operation(const std::string& lpar,
                                                                 const char* what) {
    if (shutting_down_.load())
        throw Error(ErrorKind::Refused,
                    fmt::format("{}: cannot {} now: the daemon is shutting down", lpar, what));
    std::unique_lock operation(storage_operation_mutex_, std::try_to_lock);
    if (!operation.owns_lock()) {
        std::lock_guard lock(map_mutex_);
        std::string detail = relocating_.empty() ? "" : " (MVSTOR of " + relocating_ + ")";
        throw Error(ErrorKind::Busy, fmt::format("{}: cannot {} now: another storage operation is "
                                                 "running{}; retry when it has finished",
                                                 lpar, what, detail));
    }
    return operation;
}

ArenaOffset Hypervisor::first_fit(std::uint64_t size) const {
    ArenaOffset candidate{0};
    auto rows = map_.rows();
    for (const auto& row : rows) {
        if (row.origin >= candidate + size) break;
        candidate = ArenaOffset{(row.origin.value + row.size + kOriginAlignment - 1) /
                                kOriginAlignment * kOriginAlignment};
    }
    if (candidate.value + size > map_.main_storage()) {
        // The free bytes below the first LPAR, then each gap above one.
        std::uint64_t largest = rows.empty() ? map_.main_storage() : rows.front().origin.value;
        for (const auto& row : rows) largest = std::max(largest, row.gap);
        throw Error(
            ErrorKind::Refused,
            fmt::format("no free range of {} in main storage (largest gap {}, free {})",
                        format_mib(size), format_mib(largest), format_mib(map_.free_bytes())));
    }
    return candidate;
}

void Hypervisor::activate_locked(Record& r, const std::string& reason, bool restart) {
    const auto& d = r.definition;
    std::shared_ptr<Lpar> lpar;
    bool published = false;
    const std::uint64_t size = d.size_mib * kMiB;
    ArenaRange range;
    std::uint64_t ipl = 0;
    {
        std::lock_guard lock(map_mutex_);
        range = {d.origin_mib ? ArenaOffset{*d.origin_mib * kMiB} : first_fit(size), size};
        map_.add(d.name, range);  // step 203's checks; throws naming the conflict
        r.transition = "activating";
        ipl = ++r.ipl;
    }
    try {
        arena_.populate(range);  // fault the storage in now, not during the guest's first pass
        LparSpec spec;
        spec.name = d.name;
        spec.storage = range;
        spec.vcpus = d.vcpus;
        spec.firmware = d.firmware.empty() ? options_.default_firmware : d.firmware;
        if (!options_.console_dir.empty())
            spec.console_file = options_.console_dir + "/" + d.name + ".log";
        spec.console_max_bytes = options_.console_max_bytes;
        spec.rewrite_pages_per_sec = d.rewrite_pages_per_sec;
        spec.working_set_bytes = d.working_set_mib * kMiB;
        spec.round_limit = d.round_limit;
        spec.report_progress = d.report_progress;
        spec.kernel = d.kernel;
        spec.initrd = d.initrd;
        spec.cmdline = d.cmdline;
        spec.disks = d.disks;
        spec.disk_users = disk_users_;
        spec.rng = d.rng;
        spec.max_storage = std::max(d.max_size_mib, d.size_mib) * kMiB;
        auto listener = [this, name = d.name, ipl, definition = d](
                            LparState state, const std::string& why, GuestEvent event) {
            events_.publish("lpar.state", name, control::StateChange{to_string(state), why});
            if (event != GuestEvent::None) on_guest_event(name, ipl, definition, event, why);
        };
        lpar = std::make_shared<Lpar>(kvm_, arena_, keys_, spec, listener);
        {
            std::lock_guard lock(map_mutex_);
            r.lpar = lpar;
            r.transition = nullptr;
        }
        // Published before the vCPUs start, so that nothing the guest does (a stop, a reboot)
        // can reach a client ahead of them.
        if (restart)
            events_.publish("lpar.restart", d.name,
                            control::Restarted{reason, range.start.value / kMiB});
        events_.publish("lpar.state", d.name, control::StateChange{"running", reason});
        published = true;
        lpar->ipl();
    } catch (...) {
        if (lpar) lpar->shutdown();
        scrub(arena_, keys_, range);
        {
            std::lock_guard lock(map_mutex_);
            r.lpar.reset();
            map_.remove(d.name);
            r.transition = nullptr;
        }
        if (published)
            events_.publish("lpar.state", d.name,
                            control::StateChange{"defined", "IPL failed; storage freed"});
        throw;
    }
    spdlog::info("{}: activated at {}", d.name, format_range_mib(range.start.value, range.size));
}

void Hypervisor::deactivate_locked(Record& r) {
    std::shared_ptr<Lpar> lpar;
    std::vector<ArenaRange> ranges;  // two while it is fenced half-moved
    {
        std::lock_guard lock(map_mutex_);
        lpar = std::move(r.lpar);
        ranges = map_.ranges_of(r.definition.name);
        r.transition = "deactivating";
    }
    // Joins its vCPU and device threads and unmaps its window now, not when the last holder
    // (a concurrent lpar.list or lpar.console) lets go of the object.
    lpar->shutdown();
    lpar.reset();
    for (const auto& range : ranges)
        scrub(arena_, keys_, range);  // nothing of this guest may reach the next owner
    std::lock_guard lock(map_mutex_);
    map_.remove(r.definition.name);
    r.transition = nullptr;
}

control::LparStatus Hypervisor::define(const control::LparDefinition& definition) {
    // The same validator as lpar.define's and the configuration file's (one table of limits).
    try {
        control::check_definition(definition);
    } catch (const std::invalid_argument& e) {
        throw Error(ErrorKind::InvalidArgument,
                    (definition.name.empty() ? std::string("definition") : definition.name) + ": " +
                        e.what());
    }
    {
        std::lock_guard lock(map_mutex_);
        for (const auto& r : records_)
            if (r.definition.name == definition.name)
                throw Error(ErrorKind::InvalidArgument,
                            definition.name + ": an LPAR of that name already exists");
        LparConfig c;
        static_cast<control::LparDefinition&>(c) = definition;
        c.active = false;
        add_record(c);
    }
    spdlog::info("{}: defined ({} MiB, {})", definition.name, definition.size_mib,
                 definition.origin_mib ? fmt::format("origin {} MiB", *definition.origin_mib)
                                       : std::string("first fit"));
    events_.publish("lpar.state", definition.name, control::StateChange{"defined", "defined"});
    return status_of(definition.name);
}

control::LparStatus Hypervisor::activate(const std::string& name) {
    auto operation = begin_storage_operation(name, "activate");
    Record* r;
    {
        std::lock_guard lock(map_mutex_);
        r = &record(name);
        if (r->lpar) throw Error(ErrorKind::Refused, name + " is already active");
    }
    activate_locked(*r);
    return status_of(name);
}

control::LparStatus Hypervisor::stop(const std::string& name) {
    active_lpar(name)->stop("operator stop");
    return status_of(name);
}

control::LparStatus Hypervisor::start(const std::string& name) {
    active_lpar(name)->restart();
    return status_of(name);
}

control::LparStatus Hypervisor::reset(const std::string& name) {
    auto operation = begin_storage_operation(name, "reset");
    Record* r;
    {
        std::lock_guard lock(map_mutex_);
        r = &record(name);
    }
    reset_locked(*r, "operator reset");
    return status_of(name);
}

void Hypervisor::reset_locked(Record& r, const std::string& cause) {
    const std::string name = r.definition.name;
    std::shared_ptr<Lpar> lpar;
    ArenaOffset origin;
    std::optional<std::uint64_t> defined_origin;
    {
        std::lock_guard lock(map_mutex_);
        if (!r.lpar) throw Error(ErrorKind::Refused, name + " is not active: activate it instead");
        lpar = r.lpar;
        origin = map_.find(name).range.start;
        defined_origin = r.definition.origin_mib;
    }
    if (lpar->state() == LparState::Failed)
        throw Error(ErrorKind::Refused,
                    name + " is fenced (" + lpar->stop_reason() +
                        "): deactivate it, which scrubs and frees all it holds, then activate it");
    lpar.reset();
    // A clear reset: the same storage range, scrubbed, and a fresh IPL. The definition is
    // written under map_mutex_, which lpar.list and system.config read it under.
    deactivate_locked(r);
    auto restore_origin = [&] {
        std::lock_guard lock(map_mutex_);
        r.definition.origin_mib = defined_origin;
    };
    {
        std::lock_guard lock(map_mutex_);
        r.definition.origin_mib = origin.value / kMiB;
    }
    try {
        activate_locked(r, cause, true);
    } catch (...) {
        restore_origin();
        throw;
    }
    restore_origin();
    spdlog::info("{}: re-IPLed at {} ({})", name, format_mib(origin.value), cause);
}

void Hypervisor::on_guest_event(const std::string& lpar, std::uint64_t ipl,
                                const LparConfig& definition, GuestEvent event,
                                const std::string& reason) {
    const control::GuestAction action = event == GuestEvent::Reboot     ? definition.on_reboot
                                        : event == GuestEvent::PowerOff ? definition.on_poweroff
                                                                        : definition.on_crash;
    const std::string key = event == GuestEvent::Reboot     ? "on_reboot"
                            : event == GuestEvent::PowerOff ? "on_poweroff"
                                                            : "on_crash";
    spdlog::info("{}: guest {}: {} is {}", lpar, to_string(event), key, control::to_string(action));
    events_.publish("lpar.guest_event", lpar,
                    control::GuestEventReport{to_string(event),
                                              std::string(control::to_string(action)), reason});
    if (action == control::GuestAction::Stop) return;  // stopped already, reason kept
    {
        std::lock_guard lock(actions_mutex_);
        actions_.push_back({lpar, ipl, action, std::string("guest ") + to_string(event)});
    }
    actions_changed_.notify_all();
}

void Hypervisor::run_guest_actions() {
    for (;;) {
        GuestActionRequest request;
        {
            std::unique_lock lock(actions_mutex_);
            actions_changed_.wait(lock, [&] { return actions_stopping_ || !actions_.empty(); });
            if (actions_stopping_) return;
            request = std::move(actions_.front());
            actions_.pop_front();
        }
        try {
            carry_out(request);
        } catch (const std::exception& e) {
            // The LPAR is as the failed step left it: reset's rules (stopped, or defined with its
            // storage freed when the new IPL failed). Said in the log and as its state.
            const std::string why =
                fmt::format("{} after {} failed: {}", control::to_string(request.action),
                            request.cause, e.what());
            spdlog::error("{}: {}", request.lpar, why);
            try {
                events_.publish("lpar.state", request.lpar,
                                control::StateChange{status_of(request.lpar).state, why});
            } catch (const std::exception&) {
                // Removed meanwhile: nobody to tell.
            }
        }
    }
}

void Hypervisor::carry_out(const GuestActionRequest& request) {
    const std::string what =
        fmt::format("{} after {}", control::to_string(request.action), request.cause);
    // Like an operator's request, but waiting its turn: a relocation may be running.
    std::unique_lock operation(storage_operation_mutex_);
    if (shutting_down_.load()) {
        spdlog::info("{}: no {}: the daemon is shutting down", request.lpar, what);
        return;
    }
    Record* r;
    std::shared_ptr<Lpar> lpar;
    {
        std::lock_guard lock(map_mutex_);
        r = &record(request.lpar);
        if (r->ipl == request.ipl) lpar = r->lpar;
    }
    // Too late when someone got there first: a reset or deactivation (another IPL or none), or
    // an operator's start (running again).
    if (!lpar || lpar->state() != LparState::Stopped) {
        spdlog::info("{}: no {}: the LPAR was reset, started or deactivated meanwhile",
                     request.lpar, what);
        return;
    }
    lpar.reset();
    if (request.action == control::GuestAction::Restart) {
        reset_locked(*r, request.cause);
        return;
    }
    deactivate_locked(*r);
    spdlog::info("{}: deactivated after {}; its storage is scrubbed and free", request.lpar,
                 request.cause);
    events_.publish("lpar.state", request.lpar,
                    control::StateChange{"defined", "deactivated after " + request.cause});
}

control::LparStatus Hypervisor::deactivate(const std::string& name) {
    auto operation = begin_storage_operation(name, "deactivate");
    Record* r;
    {
        std::lock_guard lock(map_mutex_);
        r = &record(name);
        if (!r->lpar) throw Error(ErrorKind::Refused, name + " is not active");
    }
    deactivate_locked(*r);
    spdlog::info("{}: deactivated; its storage is scrubbed and free", name);
    events_.publish("lpar.state", name, control::StateChange{"defined", "deactivated"});
    return status_of(name);
}

void Hypervisor::remove(const std::string& name) {
    auto operation = begin_storage_operation(name, "remove");  // not while it is being activated
    {
        std::lock_guard lock(map_mutex_);
        auto& r = record(name);
        if (r.lpar) throw Error(ErrorKind::Refused, name + " is active: deactivate it first");
        records_.remove_if([&](const Record& x) { return x.definition.name == name; });
    }
    spdlog::info("{}: removed", name);
    // Outside the map lock, as every event: sinks run under the hub's lock.
    events_.publish("lpar.state", name, control::StateChange{"removed", "removed"});
}

std::string Hypervisor::system_config() {
    SystemConfig config;
    std::lock_guard lock(map_mutex_);
    config.main_storage_mib = map_.main_storage() / kMiB;
    for (const auto& r : records_) {
        LparConfig c = r.definition;
        c.active = r.lpar != nullptr;
        if (r.lpar) c.origin_mib = map_.find(c.name).range.start.value / kMiB;
        config.lpars.push_back(c);
    }
    return to_json(config).dump();
}

void Hypervisor::cancel_mvstor(const std::string& name) {
    std::lock_guard lock(map_mutex_);
    record(name);
    if (relocating_ != name)
        throw Error(ErrorKind::NotFound, "no MVSTOR of " + name + " is running");
    if (final_stop_begun_)
        throw Error(ErrorKind::Refused,
                    "MVSTOR of " + name + ": too late to cancel, its final stop has begun");
    cancel_requested_ = true;
    spdlog::info("MVSTOR {}: cancel requested", name);
}

std::unique_ptr<control::Subscription> Hypervisor::subscribe(control::EventSink sink) {
    return events_.subscribe(std::move(sink));
}

}  // namespace lparvisor
