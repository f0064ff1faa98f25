#include "lpar/lpar.hpp"

#include <lparvisor/abi.h>
#include <pthread.h>
#include <signal.h>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "boot/firmware_loader.hpp"
#include "boot/linux_loader.hpp"
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
#include "sandbox/sandbox.hpp"
#include "util/error.hpp"
#include "util/fault.hpp"

namespace lparvisor {

namespace {

constexpr std::size_t kConsoleCapacity = 1024 * 1024;
// What a Linux guest needs on a PVM host, whose instruction emulator lacks XRSTOR, POPCNT, some
// vector instructions (KVM-NOTES.md) and CLAC/STAC (0f 01 ca / cb: the kernel's SMAP guards,
// which it patches out when SMAP is cleared; 6.1 has no `nosmap` any more).
constexpr const char* kPvmCmdline = "noxsave clearcpuid=popcnt,avx,avx2,avx512f,smap";
constexpr const char* kOnlineHotplugged = "memhp_default_state=online_movable";
// On a hardware-reduced ACPI platform without EFI, x86 Linux picks the EFI reboot, which does
// nothing, then jumps to a BIOS that is not there and hangs (measured: only the CMOS writes of
// the BIOS path came out). The FADT's reset register is what this platform resets with.
constexpr const char* kAcpiReboot = "reboot=acpi";

// Adds `argument` to a kernel command line, space-separated.
void append_argument(std::string& cmdline, const char* argument) {
    if (!cmdline.empty()) cmdline += ' ';
    cmdline += argument;
}

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

std::vector<kvm_cpuid_entry2> cpuid_for_vcpu(std::vector<kvm_cpuid_entry2> entries,
                                             unsigned index) {
    for (auto& e : entries) {
        if (e.function == 1) {
            e.ebx = (e.ebx & 0x00ffffff) | (index << 24);  // initial APIC ID
            // "Running under a hypervisor": KVM does not set it in what it supports, and
            // without it Linux never looks at the KVM leaves (no kvmclock, so no clock at all
            // on a hardware-reduced platform without PIT calibration or HPET).
            e.ecx |= 1u << 31;
        }
        if (e.function == 0xb || e.function == 0x1f) e.edx = index;  // x2APIC ID
    }
    return entries;
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
      listener_(std::move(listener)),
      window_(arena, spec.storage, spec.max_storage),
      log_limiter_(std::make_shared<LogRateLimiter>(spec.name)),
      console_(std::make_shared<ConsoleLog>(spec.name, kConsoleCapacity, spec.console_file,
                                            spec.console_max_bytes, log_limiter_)),
      vm_(system) {
    install_kick_handler();
    if (spec.is_linux()) {
        // Linux wants its interrupt controllers and timer where a PC has them; the polling
        // firmware runs without them (and its secondary vCPUs need no INIT/SIPI then).
        vm_.create_irqchip();
        vm_.create_pit2();
    }
    // The memslot covers the whole reservation: an EXPAND maps more of it, never resizes it
    // (KVM refuses a new size for a live slot).
    vm_.set_memory_region(0, 0, window_.size(), window_.host_base());
    add_port_devices(keys);
    add_pci_devices();
    if (spec.is_linux())
        boot_linux(system);
    else
        boot_firmware(system);
}

void Lpar::add_port_devices(StorageKeys& keys) {
    Uart8250::IrqCallback uart_irq;
    if (spec_.is_linux())
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
    if (spec_.is_linux())
        bus_.add(PowerPort::kBase, PowerPort::kPortCount, std::make_shared<PowerPort>(guest_event));
    bus_.add(I8042::kBase, I8042::kPortCount, std::make_shared<I8042>(guest_event));
}

void Lpar::add_pci_devices() {
    pci_platform_ = std::make_shared<pci::KvmPciPlatform>(
        vm_, spec_.is_linux() ? pci::KvmPciPlatform::Interrupts::InKernelIrqchip
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

void Lpar::boot_firmware(const kvm::System& system) {
    auto image = boot::load_firmware_elf(spec_.firmware, window_.memory(), spec_.name);
    auto cpuid = system.supported_cpuid();
    std::uint64_t tsc_khz = 0;
    for (unsigned i = 0; i < spec_.vcpus; ++i) {
        auto vcpu = vm_.create_vcpu(i);
        vcpu->set_cpuid(cpuid_for_vcpu(cpuid, i));
        boot::set_cpl3_entry_state(*vcpu, image.entry, i);
        if (i == 0) tsc_khz = vcpu->tsc_khz();
        vcpus_.push_back(std::move(vcpu));
    }
    boot::FirmwareParams params;
    params.lpar_name = spec_.name;
    params.vcpus = spec_.vcpus;
    params.tsc_khz = tsc_khz;
    params.rewrite_pages_per_sec = spec_.rewrite_pages_per_sec;
    params.working_set_bytes = spec_.working_set_bytes;
    params.round_limit = spec_.round_limit;
    params.pci_bus = true;                   // the firmware drives the LPAR's virtio-pci devices
    params.max_storage = spec_.max_storage;  // mapped, so it can use what EXPAND adds
    // A guest that floods its UART, for the console log's limits (tests/kvm/limits.sh).
    params.console_flood = fault::triggered("firmware.console_flood");
    params.reboot_at_end = fault::triggered("firmware.reboot");
    params.triple_fault_at_end = fault::triggered("firmware.triple_fault");
    boot::build_system_area(window_.memory(), params);
    spdlog::info("{}: {} vCPU(s), storage {} at origin {}, firmware {} (entry {:#x})", spec_.name,
                 spec_.vcpus, format_mib(spec_.storage.size), format_mib(spec_.storage.start.value),
                 spec_.firmware, image.entry);
}

void Lpar::boot_linux(const kvm::System& system) {
    boot::LinuxBootSpec boot_spec;
    boot_spec.lpar_name = spec_.name;
    boot_spec.kernel = spec_.kernel;
    boot_spec.initrd = spec_.initrd;
    boot_spec.cmdline = spec_.cmdline;
    boot_spec.vcpus = spec_.vcpus;
    if (spec_.max_storage > spec_.storage.size &&
        spec_.cmdline.find("memhp_default_state=") == std::string::npos) {
        // EXPAND hands memory to the kernel's virtio-mem driver, which adds it as memory
        // blocks; the Debian kernel leaves new blocks offline unless told otherwise. Movable, so
        // that shrink can take them back.
        append_argument(boot_spec.cmdline, kOnlineHotplugged);
        spdlog::info("{}: has a virtio-mem region (max {}): added '{}' to the command line",
                     spec_.name, format_mib(spec_.max_storage), kOnlineHotplugged);
    }
    if (spec_.cmdline.find("reboot=") == std::string::npos) {
        append_argument(boot_spec.cmdline, kAcpiReboot);
        spdlog::info("{}: added '{}' to the command line (a guest reboot resets through ACPI)",
                     spec_.name, kAcpiReboot);
    }
    auto cpuid = system.supported_cpuid();
    // The TSC-deadline timer: KVM emulates it but leaves it out of what it reports as supported
    // (the VMM decides, as QEMU and Firecracker do). With it Linux programs its local APIC
    // timer in TSC ticks it knows from kvmclock; without it, the kernel calibrates the APIC
    // timer against the TSC at boot, which a busy or nested host can skew badly.
    if (system.check_extension(KVM_CAP_TSC_DEADLINE_TIMER) > 0)
        for (auto& e : cpuid)
            if (e.function == 1) e.ecx |= 1u << 24;
    if (kvm::detect_flavour() == kvm::Flavour::Pvm) {
        // PVM emulates guest kernel code and cannot emulate some instructions at all
        // (KVM-NOTES.md): hide what can be hidden so the kernel takes other paths.
        append_argument(boot_spec.cmdline, kPvmCmdline);
        for (auto& e : cpuid)
            if (e.function == 1) e.ecx &= ~(1u << 13);  // CX16: cmpxchg16b in SLUB
        for (auto& e : cpuid)
            if (e.function == 7 && e.index == 0) e.ebx &= ~(1u << 20);  // SMAP: clac/stac
        spdlog::warn(
            "{}: this KVM is PVM, which emulates guest kernel code (slowly): added "
            "'{}' to the command line and hid CMPXCHG16B",
            spec_.name, kPvmCmdline);
    }
    auto boot = boot::load_linux(boot_spec, window_.memory());
    for (unsigned i = 0; i < spec_.vcpus; ++i) {
        auto vcpu = vm_.create_vcpu(i);
        vcpu->set_cpuid(cpuid_for_vcpu(cpuid, i));
        if (i == 0) {
            // The others wait for the kernel's INIT/SIPI in the in-kernel local APIC.
            auto sregs = vcpu->get_sregs();
            kvm_regs regs{};
            boot::apply_linux_entry(sregs, regs, boot);
            vcpu->set_sregs(sregs);
            vcpu->set_regs(regs);
        }
        vcpus_.push_back(std::move(vcpu));
    }
    spdlog::info("{}: {} vCPU(s), storage {} at origin {}, Linux {} {} (entry {:#x}){}{}",
                 spec_.name, spec_.vcpus, format_mib(spec_.storage.size),
                 format_mib(spec_.storage.start.value), boot.kind, spec_.kernel, boot.entry,
                 spec_.initrd.empty() ? "" : ", initrd " + spec_.initrd,
                 boot_spec.cmdline.empty() ? "" : ", command line '" + boot_spec.cmdline + "'");
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
    vm_.set_memory_region(0, 0, window_.size(), window_.host_base(),
                          on ? KVM_MEM_LOG_DIRTY_PAGES : 0);
    if (!on) window_.device_dirty_log().set_tracking(false);
}

DirtyBitmap Lpar::harvest_dirty() {
    DirtyBitmap bitmap(window_.size());
    vm_.get_dirty_log(0, bitmap.words());
    window_.device_dirty_log().harvest_into(bitmap);
    return bitmap;
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

void Lpar::vcpu_loop(unsigned index) {
    kvm::Vcpu& vcpu = *vcpus_[index];
    for (;;) {
        {
            std::unique_lock lock(mutex_);
            auto may_run = [&] {
                return exit_requested_ || (!pause_requested_ && state_ == LparState::Running);
            };
            if (!may_run()) {
                ++parked_;
                changed_.notify_all();
                changed_.wait(lock, may_run);
                --parked_;
            }
            if (exit_requested_) return;
            vcpu.set_immediate_exit(false);
        }
        // Whatever goes wrong while serving this LPAR stops this LPAR, not the daemon: nothing
        // may throw through the loop (an escaping exception would end every LPAR).
        try {
            fault::point("vcpu.exit");
            const auto entered = std::chrono::steady_clock::now();
            const auto result = vcpu.run();
            run_ns_.fetch_add(
                static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                               std::chrono::steady_clock::now() - entered)
                                               .count()),
                std::memory_order_relaxed);
            exit_counts_[result.exit.index()].fetch_add(1, std::memory_order_relaxed);
            handle_exit(vcpu, result);
        } catch (const std::exception& e) {
            fence(describe_fault(
                vcpu, fmt::format("internal error serving vCPU {}: {}", index, e.what())));
        } catch (...) {
            fence(fmt::format("internal error serving vCPU {} (unknown exception)", index));
        }
    }
}

Lpar::RunStats Lpar::run_stats() const {
    RunStats stats;
    for (std::size_t i = 0; i < exit_counts_.size(); ++i)
        stats.exits[i] = exit_counts_[i].load(std::memory_order_relaxed);
    stats.run_us = run_ns_.load(std::memory_order_relaxed) / 1000;
    for (const auto& device : virtio_devices_) {
        if (const auto* disk = dynamic_cast<const virtio::VirtioBlk*>(device.get())) {
            const auto blk = disk->stats();
            stats.disk_requests += blk.requests;
            stats.disk_errors += blk.errors;
            stats.disk_read_bytes += blk.bytes_read;
            stats.disk_written_bytes += blk.bytes_written;
        }
    }
    return stats;
}

std::string Lpar::describe_fault(kvm::Vcpu& vcpu, const std::string& what) {
    // The registers an operator (or a bug report) needs to find where the guest was: the
    // general ones, the flags, and the control registers that say which mode and page tables.
    std::string registers;
    try {
        const auto regs = vcpu.get_regs();
        registers = fmt::format(
            ", rip={:#x}, rsp={:#x}, rbp={:#x}, rflags={:#x}, rax={:#x}, rbx={:#x}, rcx={:#x}, "
            "rdx={:#x}, rsi={:#x}, rdi={:#x}",
            regs.rip, regs.rsp, regs.rbp, regs.rflags, regs.rax, regs.rbx, regs.rcx, regs.rdx,
            regs.rsi, regs.rdi);
        const auto sregs = vcpu.get_sregs();
        registers += fmt::format(", cs={:#x}, cr0={:#x}, cr2={:#x}, cr3={:#x}, cr4={:#x}",
                                 sregs.cs.selector, sregs.cr0, sregs.cr2, sregs.cr3, sregs.cr4);
    } catch (const Error&) {
        // What could be read is said; a vCPU whose registers cannot be read still stops.
    }
    return fmt::format("{} (vCPU {}{})", what, vcpu.index(), registers);
}

bool Lpar::complete_unemulated(kvm::Vcpu& vcpu, std::uint8_t opcode) {
    // PVM's instruction emulator (guest kernel code) cannot run a few one-byte instructions a
    // Linux kernel uses early (KVM-NOTES.md); do what the CPU would have done and carry on.
    constexpr std::uint8_t kInt3 = 0xcc, kFwait = 0x9b, kBreakpointVector = 3;
    if (opcode != kInt3 && opcode != kFwait) return false;
    try {
        auto regs = vcpu.get_regs();
        regs.rip += 1;  // both are one byte; #BP is a trap, so it reports the next RIP
        vcpu.set_regs(regs);
    } catch (const Error&) {
        return false;
    }
    if (opcode == kInt3 && !vcpu.inject_exception(kBreakpointVector)) return false;
    if (unemulated_completed_.fetch_add(1) == 0)
        spdlog::info(
            "{}: completing instructions the KVM emulator cannot run (int3, fwait) "
            "for the guest (PVM)",
            spec_.name);
    return true;
}

void Lpar::note_unclaimed(const char* what, std::uint64_t address, bool is_write) {
    // Logged once per address, so a probing kernel does not flood the log.
    std::lock_guard lock(mutex_);
    if (unclaimed_.size() < 256 && unclaimed_.insert(address).second)
        log_limiter_->log(spdlog::level::debug, "{}: {} {:#x} {} with no device there (ignored)",
                          spec_.name, what, address, is_write ? "write" : "read");
}

void Lpar::handle_exit(kvm::Vcpu& vcpu, const kvm::Vcpu::RunResult& result) {
    std::visit(
        [&](const auto& exit) {
            using T = std::decay_t<decltype(exit)>;
            if constexpr (std::is_same_v<T, kvm::IoExit>) {
                for (std::uint32_t i = 0; i < exit.count; ++i) {
                    auto part = exit.data.subspan(std::size_t{i} * exit.size, exit.size);
                    bool served =
                        exit.is_write ? bus_.write(exit.port, part) : bus_.read(exit.port, part);
                    if (served) continue;
                    if (spec_.is_linux()) {
                        // A kernel probes ports a PC may have (CMOS, floppy, more UARTs): no
                        // device there answers with all ones, as on real hardware.
                        if (!exit.is_write) std::fill(part.begin(), part.end(), 0xff);
                        note_unclaimed("I/O port", exit.port, exit.is_write);
                        continue;
                    }
                    stop(describe_fault(
                             vcpu,
                             fmt::format("unhandled I/O port {:#x} ({} of {} byte(s))", exit.port,
                                         exit.is_write ? "write" : "read", exit.size)),
                         GuestEvent::Crash);
                    return;
                }
            } else if constexpr (std::is_same_v<T, kvm::MmioExit>) {
                bool served = exit.is_write ? pci_->mmio_write(exit.address, exit.data)
                                            : pci_->mmio_read(exit.address, exit.data);
                if (served) return;
                if (spec_.is_linux()) {
                    if (!exit.is_write) std::fill(exit.data.begin(), exit.data.end(), 0xff);
                    note_unclaimed("MMIO address", exit.address, exit.is_write);
                    return;
                }
                stop(describe_fault(vcpu,
                                    fmt::format("MMIO {} at guest-physical {:#x} with no "
                                                "device there",
                                                exit.is_write ? "write" : "read", exit.address)),
                     GuestEvent::Crash);
            } else if constexpr (std::is_same_v<T, kvm::HltExit>) {
                stop(describe_fault(vcpu, "halted"), GuestEvent::Crash);
            } else if constexpr (std::is_same_v<T, kvm::ShutdownExit>) {
                // A PC's chipset resets on a triple fault, and Linux's last way to reboot
                // (reboot=t) relies on it: a reboot for Linux. The test firmware never resets
                // this way (it has no IDT: any exception ends here), so for it a crash.
                if (spec_.is_linux())
                    stop(describe_fault(vcpu, "triple fault (guest reset)"), GuestEvent::Reboot);
                else
                    stop(describe_fault(vcpu, "triple fault"), GuestEvent::Crash);
            } else if constexpr (std::is_same_v<T, kvm::InternalErrorExit>) {
                auto bytes = exit.instruction_bytes;
                if (bytes.empty()) {
                    // KVM gave no bytes: fetch them through the guest's page tables.
                    try {
                        auto regs = vcpu.get_regs();
                        if (auto gpa = vcpu.translate(regs.rip)) {
                            bytes.resize(15);
                            if (!window_.memory().read(GuestPhysAddr{*gpa}, bytes)) bytes.clear();
                        }
                    } catch (const Error&) {
                    }
                }
                if (exit.suberror == KVM_INTERNAL_ERROR_EMULATION && spec_.is_linux() &&
                    !bytes.empty() && complete_unemulated(vcpu, bytes[0]))
                    return;
                std::string hex;
                for (auto b : bytes) hex += fmt::format("{}{:02x}", hex.empty() ? "" : " ", b);
                stop(describe_fault(vcpu,
                                    fmt::format("KVM internal error {}{} instruction bytes [{}]",
                                                exit.suberror,
                                                exit.suberror == KVM_INTERNAL_ERROR_EMULATION
                                                    ? " (emulation failure)"
                                                    : "",
                                                hex.empty() ? "unavailable" : hex)),
                     GuestEvent::Crash);
            } else if constexpr (std::is_same_v<T, kvm::FailEntryExit>) {
                stop(describe_fault(vcpu, fmt::format("VM entry failed, hardware reason {:#x}",
                                                      exit.hardware_reason)),
                     GuestEvent::Crash);
            } else if constexpr (std::is_same_v<T, kvm::SystemEventExit>) {
                // KVM_SYSTEM_EVENT_SHUTDOWN, _RESET, _CRASH; anything newer counts as a crash.
                const GuestEvent event = exit.type == KVM_SYSTEM_EVENT_SHUTDOWN
                                             ? GuestEvent::PowerOff
                                         : exit.type == KVM_SYSTEM_EVENT_RESET ? GuestEvent::Reboot
                                                                               : GuestEvent::Crash;
                stop(fmt::format("guest system event {} ({})", exit.type, to_string(event)), event);
            } else if constexpr (std::is_same_v<T, kvm::OtherExit>) {
                stop(describe_fault(
                         vcpu,
                         result.error != 0
                             ? fmt::format("KVM_RUN failed: {}", std::strerror(result.error))
                             : fmt::format("unhandled {}", kvm::describe_exit_reason(exit.reason))),
                     GuestEvent::Crash);
            }
            // InterruptedExit: a kick; the loop parks if asked to.
        },
        result.exit);
}

}  // namespace lparvisor
