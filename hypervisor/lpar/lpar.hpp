// One LPAR: its own KVM VM, one thread per vCPU (the patent's logical instruction processors),
// its devices, and a guest window onto its range of main storage.
//
// The vCPU threads are small state machines (running / parked / exiting) driven by the LIP
// controlling section below: pause() sets the request, sets kvm_run.immediate_exit and signals
// each thread so that KVM_RUN returns, then waits until all are parked; resume() releases them.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <span>
#include <string>
#include <thread>
#include <variant>
#include <vector>

#include "control/api.hpp"
#include "devices/console_log.hpp"
#include "devices/device.hpp"
#include "devices/virtio/virtio_device.hpp"
#include "kvm/kvm.hpp"
#include "storage/arena.hpp"
#include "storage/dirty_bitmap.hpp"
#include "storage/guest_memory.hpp"
#include "storage/storage_keys.hpp"
#include "util/rate_limit.hpp"

namespace lparvisor {

class Uart8250;
namespace pci {
class KvmPciPlatform;
class PciBus;
}  // namespace pci
namespace virtio {
class DiskUsers;
class VirtioMem;
}  // namespace virtio
class GuestPlatform;

struct LparSpec {
    std::string name;
    ArenaRange storage;
    std::uint64_t max_storage = 0;  // how far EXPAND may grow it (0: storage.size, no growth)
    unsigned vcpus = 1;
    std::string firmware;      // ELF path of the test firmware
    std::string console_file;  // mirror of the serial output, empty for none
    std::uint64_t console_max_bytes = ConsoleLog::kDefaultFileMaxBytes;  // then it rotates
    std::uint64_t rewrite_pages_per_sec = 0;
    std::uint64_t working_set_bytes = 0;
    std::uint64_t round_limit = 0;  // firmware ends with debug-exit after N rounds (0: never)
    bool report_progress = false;   // firmware progress lines (LPV_BOOT_FLAG_REPORT_PROGRESS)
    // Linux instead of the firmware when `kernel` is set (boot/linux_loader.hpp).
    std::string kernel, initrd, cmdline;
    std::vector<control::DiskDefinition> disks;     // one virtio-blk each
    std::shared_ptr<virtio::DiskUsers> disk_users;  // the images in use (the Hypervisor's)
    bool rng = true;                                // a virtio-rng
    bool is_linux() const { return !kernel.empty(); }
};

// Failed: fenced. A storage operation on the LPAR could neither complete nor be undone, or the
// hypervisor itself failed serving it (an exception on its vCPU thread). Its vCPUs stay parked
// and its devices stay stopped; start is refused; its storage stays its own until the operator
// deactivates it (docs/ARCHITECTURE.md, "Nothing lost").
enum class LparState { Running, Stopped, Failed };
const char* to_string(LparState state);

// What the guest asked for when it stopped itself, which picks the LPAR's on_reboot,
// on_poweroff or on_crash action (the Hypervisor carries it out). None: an operator stop, or a
// state change that is not the guest's.
//   Reboot:   the ACPI reset register, the i8042 reset line, KVM's reset event, and a Linux
//             guest's triple fault (a PC's chipset resets on one; Linux's reboot=t uses it)
//   PowerOff: ACPI S5, KVM's shutdown event, the firmware's debug exit
//   Crash:    a firmware's triple fault, HLT with nothing to wake it, an I/O port or MMIO access
//             nothing serves, a KVM internal error or failed entry, KVM's crash event
enum class GuestEvent { None, Reboot, PowerOff, Crash };
const char* to_string(GuestEvent event);

// Told of every state change ("running" / "stopped", reason, and what the guest asked for);
// called on the thread that caused it (a vCPU thread for guest exits and faults): must be quick
// and must not call back into the Lpar.
using StateListener =
    std::function<void(LparState state, const std::string& reason, GuestEvent event)>;

class Lpar {
  public:
    // Builds the VM, maps the window, loads the firmware; vCPUs do not run until start().
    Lpar(const kvm::System& system, const Arena& arena, StorageKeys& keys, const LparSpec& spec,
         StateListener listener = {});
    ~Lpar();
    Lpar(const Lpar&) = delete;
    Lpar& operator=(const Lpar&) = delete;

    const std::string& name() const noexcept { return spec_.name; }
    unsigned vcpu_count() const noexcept { return static_cast<unsigned>(vcpus_.size()); }
    const LparSpec& spec() const noexcept { return spec_; }

    void ipl();  // start the vCPU threads

    // Operator start after a stop (operator stop, guest exit or fault): the vCPUs carry on
    // from where they stopped. No effect on a running LPAR; throws Refused for a fenced one.
    void restart();

    // Stops and joins every thread of the LPAR (vCPUs, device workers) and unmaps its guest
    // window, so that nothing of it can touch main storage any more, however many holders the
    // object still has. Idempotent. The Hypervisor calls it before it scrubs the storage.
    void shutdown();

    // --- LIP controlling section (MVSTOR steps 201 and 210) ---
    // Stops every vCPU and waits until all are parked outside KVM_RUN (re-kicking every 100 ms).
    // False, with every vCPU running again, if they were not all parked within `timeout`.
    [[nodiscard]] bool pause(std::chrono::milliseconds timeout);
    void resume();
    // After resume(): waits, at most `timeout`, until every vCPU thread has left its park and is
    // about to re-enter KVM_RUN (where a stop's pause ends). True at once when the LPAR is not
    // running: a stopped or fenced LPAR's vCPUs stay parked. False on timeout.
    bool wait_until_unparked(std::chrono::milliseconds timeout);

    LparState state() const;
    std::string stop_reason() const;
    // A vCPU exit the hypervisor cannot serve, or the guest's own exit: the LPAR stops, the
    // daemon and the other LPARs run on. `event` tells the listener what the guest asked for.
    void stop(const std::string& reason, GuestEvent event = GuestEvent::None);
    // Fences the LPAR (LparState::Failed) with the reason: vCPUs park at their next exit (or
    // stay parked if paused), devices stop taking requests. Never undone but by deactivation.
    void fence(const std::string& reason);

    // Dirty-page tracking for a live relocation: KVM's log for the guest's own writes plus the
    // window's device log for the hypervisor's (docs/ARCHITECTURE.md, "Dirty logging").
    void set_dirty_tracking(bool on);
    // Overwrites `into` (sized for the whole window, allocated by the caller outside any stop)
    // with the pages written since they were last re-protected, then re-protects the pages of
    // [first_page, +pages) found dirty, so that the next harvest sees every later write to them.
    // With KVM's manual protection only that range is re-protected and the rest of the slot
    // keeps running unprotected (pages outside it must not be relied on); with the legacy log
    // KVM re-protects the whole slot. `reprotect` false (a stop's last harvest, after which the
    // range moves) reads without re-protecting anything manual protection lets it skip.
    void harvest_dirty(DirtyBitmap& into, std::uint64_t first_page, std::uint64_t pages,
                       bool reprotect = true);
    // Which of KVM's dirty logs this LPAR's VM uses: "manual-protect-initially-set",
    // "manual-protect" or "legacy" (KVM_GET_DIRTY_LOG only; the fault point
    // "kvm.manual_dirty_log" forces it).
    const char* dirty_log_method() const noexcept;

    GuestWindow& window() noexcept { return window_; }
    // The virtio-mem device EXPAND and shrink drive; null when the LPAR cannot grow.
    virtio::VirtioMem* memory_device() const noexcept { return memory_device_.get(); }
    GuestMemory memory() const noexcept { return window_.memory(); }
    ConsoleLog& console() noexcept { return *console_; }
    // Bytes typed at the LPAR's serial port (COM1), for the guest to read: how many were taken
    // (the UART buffers up to Uart8250::kInputBufferBytes; the caller keeps the rest).
    std::size_t console_input(std::span<const std::uint8_t> bytes);
    // Every device MVSTOR must quiesce (step 202): the port devices and the virtio devices.
    std::vector<std::shared_ptr<Quiescable>> devices() const;

    // Counters since this IPL (system.stats): vCPU exits by kind (kvm::kExitKindNames' order),
    // the time the vCPUs spent in KVM_RUN, and the virtio-blk disks' requests and bytes.
    struct RunStats {
        std::array<std::uint64_t, std::variant_size_v<kvm::Exit>> exits{};
        std::uint64_t run_us = 0;
        std::uint64_t disk_requests = 0;
        std::uint64_t disk_errors = 0;
        std::uint64_t disk_read_bytes = 0;
        std::uint64_t disk_written_bytes = 0;
    };
    RunStats run_stats() const;
    // KVM's own statistics of this LPAR's VM and vCPUs (KVM_GET_STATS_FD), opened now and read
    // at will by the caller (tools and benchmarks); throws where KVM cannot give them.
    kvm::KvmStats open_kvm_stats() const;

  private:
    void add_port_devices(StorageKeys& keys);
    void add_pci_devices();
    void kick_all();

    // --- The vCPU loop (vcpu_loop.cpp) ---
    void vcpu_loop(unsigned index);
    // Parks while the LPAR is paused or stopped; false when the thread is to end.
    bool wait_until_may_run(kvm::Vcpu& vcpu);
    void count_run(const kvm::Vcpu::RunResult& result, std::chrono::nanoseconds in_kvm_run);

    // --- Exit handlers (exit_handlers.cpp): one per kvm::Exit alternative ---
    void handle_exit(kvm::Vcpu& vcpu, const kvm::Vcpu::RunResult& result);
    void on_exit(kvm::Vcpu& vcpu, const kvm::IoExit& exit, int error);
    void on_exit(kvm::Vcpu& vcpu, const kvm::MmioExit& exit, int error);
    void on_exit(kvm::Vcpu& vcpu, const kvm::HltExit& exit, int error);
    void on_exit(kvm::Vcpu& vcpu, const kvm::ShutdownExit& exit, int error);
    void on_exit(kvm::Vcpu& vcpu, const kvm::InternalErrorExit& exit, int error);
    void on_exit(kvm::Vcpu& vcpu, const kvm::FailEntryExit& exit, int error);
    void on_exit(kvm::Vcpu& vcpu, const kvm::InterruptedExit& exit, int error);
    void on_exit(kvm::Vcpu& vcpu, const kvm::SystemEventExit& exit, int error);
    void on_exit(kvm::Vcpu& vcpu, const kvm::OtherExit& exit, int error);
    std::string describe_fault(kvm::Vcpu& vcpu, const std::string& what);
    std::vector<std::uint8_t> instruction_bytes_at_rip(kvm::Vcpu& vcpu);
    bool complete_unemulated(kvm::Vcpu& vcpu, std::uint8_t opcode);
    // `address` is an I/O port or an MMIO address: only a key, so that each is logged once.
    void note_unclaimed(const char* what, std::uint64_t address, bool is_write);

    LparSpec spec_;
    // What differs between the firmware and Linux (platform.hpp).
    std::unique_ptr<GuestPlatform> platform_;
    StateListener listener_;
    GuestWindow window_;
    // Every log line the guest can cause goes through this one bucket (util/rate_limit.hpp).
    std::shared_ptr<LogRateLimiter> log_limiter_;
    std::shared_ptr<ConsoleLog> console_;
    std::shared_ptr<Uart8250> uart_;  // COM1, for console_input
    kvm::Vm vm_;
    kvm::Vm::DirtyLogMode dirty_log_mode_;
    std::vector<std::unique_ptr<kvm::Vcpu>> vcpus_;
    IoBus bus_;
    // Destroyed before the VM and the window (members go in reverse): the device threads stop
    // first, then the transports detach their irqfds and ioeventfds.
    std::shared_ptr<pci::KvmPciPlatform> pci_platform_;
    std::shared_ptr<pci::PciBus> pci_;
    std::vector<std::shared_ptr<virtio::VirtioDevice>> virtio_devices_;
    std::shared_ptr<virtio::VirtioMem> memory_device_;

    mutable std::mutex mutex_;
    std::condition_variable changed_;
    bool pause_requested_ = false;
    bool exit_requested_ = false;
    bool shut_down_ = false;
    unsigned parked_ = 0;
    LparState state_ = LparState::Running;
    std::string stop_reason_;
    std::set<std::uint64_t> unclaimed_;
    std::atomic<std::uint64_t> unemulated_completed_{
        0};  // I/O ports and MMIO addresses a Linux guest probed
    // Relaxed counters: the vCPU threads add, run_stats() reads a snapshot.
    std::array<std::atomic<std::uint64_t>, std::variant_size_v<kvm::Exit>> exit_counts_{};
    std::atomic<std::uint64_t> run_ns_{0};
    std::vector<std::thread> threads_;
};

}  // namespace lparvisor
