#include "lpar/lpar.hpp"

#include <lparvisor/abi.h>
#include <pthread.h>
#include <signal.h>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "devices/debug_exit.hpp"
#include "devices/i8042.hpp"
#include "devices/pci/kvm_pci_platform.hpp"
#include "devices/pci/pci_bus.hpp"
#include "devices/power_port.hpp"
#include "devices/storage_key_port.hpp"
#include "devices/uart8250.hpp"
#include "devices/virtio/virtio_blk.hpp"
#include "devices/virtio/virtio_mem.hpp"
#include "devices/virtio/virtio_pci.hpp"
#include "devices/virtio/virtio_rng.hpp"
#include "lpar/platform.hpp"
#include "sandbox/sandbox.hpp"
#include "util/error.hpp"
#include "util/fault.hpp"

namespace lparvisor {

namespace {

constexpr std::size_t kConsoleCapacity = std::size_t{1024} * 1024;

// The signal that takes a vCPU thread out of KVM_RUN. Its handler does nothing: the point is
// that the ioctl returns EINTR (installed without SA_RESTART).
int kick_signal() {
    return SIGRTMIN;
}

void install_kick_handler() {
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction action {};
        action.sa_handler = [](int) {};
        sigemptyset(&action.sa_mask);
        action.sa_flags = 0;
        if (::sigaction(kick_signal(), &action, nullptr) != 0)
            throw_errno("sigaction for the vCPU kick signal");
    });
}

}  // namespace

const char* to_string(LparState state) {
    switch (state) {
        case LparState::Running:
            return "running";
        case LparState::Stopped:
            return "stopped";
        case LparState::Failed:
            return "failed";
    }
    return "unknown";
}

const char* to_string(GuestEvent event) {
    switch (event) {
        case GuestEvent::None:
            return "none";
        case GuestEvent::Reboot:
            return "reboot";
        case GuestEvent::PowerOff:
            return "poweroff";
        case GuestEvent::Crash:
            return "crash";
    }
    return "unknown";
}

Lpar::Lpar(const kvm::System& system, const Arena& arena, StorageKeys& keys, const LparSpec& spec,
           StateListener listener)
    : spec_(spec),
      platform_(make_guest_platform(spec)),
      listener_(std::move(listener)),
      window_(arena, spec.storage, spec.max_storage),
      log_limiter_(std::make_shared<LogRateLimiter>(spec.name)),
      console_(std::make_shared<ConsoleLog>(spec.name, kConsoleCapacity, spec.console_file,
                                            spec.console_max_bytes, log_limiter_)),
      vm_(system),
      dirty_log_mode_(fault::triggered("kvm.manual_dirty_log") ? kvm::Vm::DirtyLogMode::Legacy
                                                               : vm_.enable_manual_dirty_log()) {
    install_kick_handler();
    if (platform_->has_interrupt_controllers()) {
        // Linux wants its interrupt controllers and timer where a PC has them; the polling
        // firmware runs without them (and its secondary vCPUs need no INIT/SIPI then).
        vm_.create_irqchip();
        vm_.create_pit2();
    }
    // The memslot covers the whole reservation: an EXPAND maps more of it, never resizes it
    // (KVM refuses a new size for a live slot).
    vm_.set_memory_region(0, GuestPhysAddr{0}, window_.size(), window_.host_base());
    add_port_devices(keys);
    add_pci_devices();
    platform_->boot({spec_, system, vm_, window_.memory(), vcpus_});
}

void Lpar::add_port_devices(StorageKeys& keys) {
    Uart8250::IrqCallback uart_irq;
    if (platform_->has_interrupt_controllers())
        uart_irq = [this](bool level) { vm_.set_irq_line(Uart8250::kCom1Irq, level); };
    uart_ = std::make_shared<Uart8250>(console_, std::move(uart_irq));
    bus_.add(LPV_PORT_COM1, Uart8250::kPortCount, uart_);
    bus_.add(LPV_PORT_DEBUG_EXIT, 1, std::make_shared<DebugExit>([this](int code) {
                 stop(fmt::format("guest exit {}", code), GuestEvent::PowerOff);
             }));
    bus_.add(LPV_PORT_STORAGE_KEY, StorageKeyPort::kPortCount,
             std::make_shared<StorageKeyPort>(window_.memory(), keys, [this](GuestPhysAddr gpa) {
                 return window_.arena_offset_of(gpa);
             }));
    // The reset and power-off a PC has: ACPI's registers (Linux) and the i8042's reset line
    // (Linux, and the test firmware when a test makes it reboot).
    auto guest_event = [this](const std::string& what) {
        stop("guest " + what, what == "reboot" ? GuestEvent::Reboot : GuestEvent::PowerOff);
    };
    if (platform_->has_acpi_power())
        bus_.add(PowerPort::kBase, PowerPort::kPortCount, std::make_shared<PowerPort>(guest_event));
    bus_.add(I8042::kBase, I8042::kPortCount, std::make_shared<I8042>(guest_event));
}

void Lpar::add_pci_devices() {
    pci_platform_ = std::make_shared<pci::KvmPciPlatform>(
        vm_, platform_->has_interrupt_controllers()
                 ? pci::KvmPciPlatform::Interrupts::InKernelIrqchip
                 : pci::KvmPciPlatform::Interrupts::None);
    pci_platform_->set_log_limiter(log_limiter_);
    pci_ = std::make_shared<pci::PciBus>();
    pci_->set_log_limiter(log_limiter_);
    bus_.add(pci::PciBus::kConfigPort, pci::PciBus::kConfigPortCount, pci_);
    unsigned slot = 1;
    auto add = [&](std::shared_ptr<virtio::VirtioDevice> device) {
        auto function = std::make_shared<virtio::VirtioPciDevice>(device, pci_platform_);
        function->set_log_limiter(log_limiter_);  // the transport's and the device's
        pci_->add(slot, std::move(function));
        spdlog::info("{}: {} at PCI 00:{:02x}.0", spec_.name, device->name(), slot);
        virtio_devices_.push_back(std::move(device));
        ++slot;
    };
    for (std::size_t i = 0; i < spec_.disks.size(); ++i) {
        const auto& disk = spec_.disks[i];
        add(std::make_shared<virtio::VirtioBlk>(
            fmt::format("virtio-blk{}", i), window_.memory(),
            virtio::DiskSpec{disk.path, disk.read_only, disk.latency_ms, spec_.name,
                             spec_.disk_users}));
    }
    if (spec_.rng) add(std::make_shared<virtio::VirtioRng>("virtio-rng0", window_.memory()));
    if (spec_.max_storage > spec_.storage.size) {
        // EXPAND (claim 6): a virtio-mem region right above the boot storage; the blocks the
        // guest may plug are those the window already maps (the arena right above the LPAR).
        const std::uint64_t boot = spec_.storage.size;
        memory_device_ = std::make_shared<virtio::VirtioMem>(
            "virtio-mem0", window_.memory(),
            virtio::VirtioMemRegion{GuestPhysAddr{boot}, spec_.max_storage - boot});
        memory_device_->set_before_plug([this, boot](std::uint64_t offset, std::uint64_t bytes) {
            return boot + offset + bytes <= window_.storage_size();
        });
        add(memory_device_);
    }
}

Lpar::~Lpar() {
    shutdown();
}

void Lpar::shutdown() {
    {
        std::lock_guard lock(mutex_);
        if (shut_down_) return;
        shut_down_ = true;
        exit_requested_ = true;
    }
    changed_.notify_all();
    kick_all();
    for (auto& t : threads_)
        if (t.joinable()) t.join();
    // Device workers next (a request waiting out its latency is cut short), then the window:
    // from here no thread and no view of this LPAR reaches main storage.
    for (auto& d : virtio_devices_) d->reset();
    // The disk images are free for the next user now, not when the last holder lets go.
    for (auto& d : virtio_devices_)
        if (auto* disk = dynamic_cast<virtio::VirtioBlk*>(d.get())) disk->close_image();
    try {
        window_.detach();
    } catch (const Error& e) {
        spdlog::error("{}: {}", spec_.name, e.what());
    }
}

std::vector<std::shared_ptr<Quiescable>> Lpar::devices() const {
    std::vector<std::shared_ptr<Quiescable>> all;
    for (auto& d : bus_.devices())
        if (d != pci_) all.push_back(d);  // the PCI functions are listed by name below
    for (auto& d : virtio_devices_) all.push_back(d);
    return all;
}

void Lpar::ipl() {
    std::lock_guard lock(mutex_);
    if (!threads_.empty()) return;
    for (unsigned i = 0; i < vcpus_.size(); ++i) {
        threads_.push_back(sandbox::spawn(sandbox::ThreadClass::Vcpu,
                                          fmt::format("{} vcpu{}", spec_.name, i),
                                          [this, i] { vcpu_loop(i); }));
    }
}

void Lpar::set_dirty_tracking(bool on) {
    // Turn the device log on first and off last, so no device write falls between the two.
    if (on) window_.device_dirty_log().set_tracking(true);
    vm_.set_memory_region(0, GuestPhysAddr{0}, window_.size(), window_.host_base(),
                          on ? KVM_MEM_LOG_DIRTY_PAGES : 0);
    if (!on) window_.device_dirty_log().set_tracking(false);
}

void Lpar::harvest_dirty(DirtyBitmap& into, std::uint64_t first_page, std::uint64_t pages,
                         bool reprotect) {
    // Read, then re-protect, then (the caller) copy: a write after the read lands in a page that
    // is copied anyway; a write after the re-protect sets its bit again for the next harvest.
    vm_.get_dirty_log(0, into.words());
    if (reprotect && dirty_log_mode_ != kvm::Vm::DirtyLogMode::Legacy) {
        const auto words = std::span<const std::uint64_t>(into.words()).subspan(first_page / 64);
        vm_.clear_dirty_log(0, first_page, pages, words);
    }
    window_.device_dirty_log().harvest_into(into);
}

const char* Lpar::dirty_log_method() const noexcept {
    return kvm::Vm::name_of(dirty_log_mode_);
}

void Lpar::kick_all() {
    // Called with or without mutex_ held: immediate_exit catches a thread about to enter
    // KVM_RUN, the signal one already inside it.
    for (std::size_t i = 0; i < vcpus_.size(); ++i) {
        vcpus_[i]->set_immediate_exit(true);
        if (i < threads_.size()) ::pthread_kill(threads_[i].native_handle(), kick_signal());
    }
}

bool Lpar::pause(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    pause_requested_ = true;
    kick_all();
    // Threads not started yet count as parked.
    auto all_parked = [&] {
        return exit_requested_ || threads_.empty() || parked_ == threads_.size();
    };
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!all_parked()) {
        // Kicked again now and then: a kick costs nothing, and a vCPU that somehow missed one
        // must not hold the stop for ever.
        if (changed_.wait_for(lock, std::chrono::milliseconds(100), all_parked)) break;
        if (std::chrono::steady_clock::now() >= deadline) {
            const auto parked = parked_;
            pause_requested_ = false;
            lock.unlock();
            changed_.notify_all();
            spdlog::error("{}: only {} of {} vCPU(s) stopped within {} ms; resumed", spec_.name,
                          parked, threads_.size(), timeout.count());
            return false;
        }
        kick_all();
    }
    return true;
}

void Lpar::resume() {
    {
        std::lock_guard lock(mutex_);
        pause_requested_ = false;
    }
    changed_.notify_all();
}

bool Lpar::wait_until_unparked(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    return changed_.wait_for(lock, timeout, [&] {
        return parked_ == 0 || pause_requested_ || exit_requested_ || state_ != LparState::Running;
    });
}

LparState Lpar::state() const {
    std::lock_guard lock(mutex_);
    return state_;
}

std::string Lpar::stop_reason() const {
    std::lock_guard lock(mutex_);
    return stop_reason_;
}

std::size_t Lpar::console_input(std::span<const std::uint8_t> bytes) {
    return uart_->receive_input(bytes);
}

void Lpar::stop(const std::string& reason, GuestEvent event) {
    {
        std::lock_guard lock(mutex_);
        if (state_ != LparState::Running) return;
        state_ = LparState::Stopped;
        stop_reason_ = reason;
        kick_all();
    }
    changed_.notify_all();
    spdlog::warn("{}: stopped: {}", spec_.name, reason);
    if (listener_) listener_(LparState::Stopped, reason, event);
}

void Lpar::fence(const std::string& reason) {
    {
        std::lock_guard lock(mutex_);
        if (state_ == LparState::Failed) return;
        state_ = LparState::Failed;
        stop_reason_ = reason;
        kick_all();
    }
    changed_.notify_all();
    for (const auto& d : devices()) d->stop_accepting();
    spdlog::error("{}: fenced (failed): {}; deactivate it to free its storage", spec_.name, reason);
    if (listener_) listener_(LparState::Failed, reason, GuestEvent::None);
}

void Lpar::restart() {
    {
        std::lock_guard lock(mutex_);
        if (state_ == LparState::Failed)
            throw Error(ErrorKind::Refused,
                        fmt::format("{} is fenced ({}): it cannot be started; deactivate it, "
                                    "which scrubs and frees its storage, then activate it again",
                                    spec_.name, stop_reason_));
        if (state_ == LparState::Running) return;
        state_ = LparState::Running;
        stop_reason_.clear();
    }
    changed_.notify_all();
    spdlog::info("{}: started by the operator", spec_.name);
    if (listener_) listener_(LparState::Running, "", GuestEvent::None);
}

kvm::KvmStats Lpar::open_kvm_stats() const {
    std::vector<kvm::BinaryStats> vcpus;
    vcpus.reserve(vcpus_.size());
    for (const auto& vcpu : vcpus_) vcpus.push_back(vcpu->open_stats());
    return kvm::KvmStats(vm_.open_stats(), std::move(vcpus));
}

}  // namespace lparvisor
