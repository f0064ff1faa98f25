// A thin RAII layer over the KVM ioctls: /dev/kvm, one VM, its vCPUs, and a typed view of
// KVM_RUN's exits. Set-up calls throw lparvisor::Error; the run path returns values.
#pragma once

#include <linux/kvm.h>

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "kvm/binary_stats.hpp"
#include "util/address.hpp"
#include "util/fd.hpp"
#include "util/mapping.hpp"

namespace lparvisor::kvm {

// Which KVM this host has. PVM runs guest CPL3 natively and emulates CPL0 (docs/kvm-notes.md,
// Which KVM).
enum class Flavour { Hardware, Pvm, Unknown };
Flavour detect_flavour();
const char* to_string(Flavour flavour);

// Why /dev/kvm cannot be used here, or nullopt when it can. Tests print this when they skip.
std::optional<std::string> unavailable_reason();

class System {
  public:
    System();  // opens /dev/kvm, checks the API version
    int fd() const noexcept { return fd_.get(); }
    int check_extension(long capability) const;
    std::size_t vcpu_mmap_size() const noexcept { return vcpu_mmap_size_; }
    // KVM_GET_SUPPORTED_CPUID: what a guest may be told.
    std::vector<kvm_cpuid_entry2> supported_cpuid() const;

  private:
    Fd fd_;
    std::size_t vcpu_mmap_size_ = 0;
};

// --- KVM_RUN exits, one struct per reason the hypervisor serves ---
struct IoExit {
    std::uint16_t port;
    bool is_write;
    std::span<std::uint8_t> data;  // inside kvm_run: size * count bytes
    std::uint8_t size;
    std::uint32_t count;
};
struct MmioExit {
    GuestPhysAddr address;
    bool is_write;
    std::span<std::uint8_t> data;  // inside kvm_run
};
struct HltExit {};
struct ShutdownExit {};  // triple fault
struct InternalErrorExit {
    std::uint32_t suberror;
    std::vector<std::uint8_t> instruction_bytes;  // when KVM reports them
};
struct FailEntryExit {
    std::uint64_t hardware_reason;
};
struct InterruptedExit {};  // a signal or immediate_exit took KVM_RUN out: not an error
struct SystemEventExit {
    std::uint32_t type;
};
struct OtherExit {
    std::uint32_t reason;
};
using Exit = std::variant<IoExit, MmioExit, HltExit, ShutdownExit, InternalErrorExit, FailEntryExit,
                          InterruptedExit, SystemEventExit, OtherExit>;
std::string describe_exit_reason(std::uint32_t reason);
// A name per Exit alternative, in the variant's order (the counters of system.stats).
inline constexpr std::array<std::string_view, std::variant_size_v<Exit>> kExitKindNames{
    "io",         "mmio",        "hlt",          "shutdown", "internal_error",
    "fail_entry", "interrupted", "system_event", "other"};

class Vcpu {
  public:
    Vcpu(Fd fd, Mapping run, unsigned index);
    unsigned index() const noexcept { return index_; }
    int fd() const noexcept { return fd_.get(); }

    // One KVM_RUN. An EINTR (signal / immediate_exit) is InterruptedExit; other errno values
    // come back as errno in the optional error.
    struct RunResult {
        Exit exit;
        int error = 0;  // errno of a failed KVM_RUN other than EINTR/EAGAIN
    };
    [[nodiscard]] RunResult run();

    // immediate_exit lives in the shared kvm_run page: another thread may set it to kick us.
    void set_immediate_exit(bool on) noexcept;

    kvm_regs get_regs() const;
    void set_regs(const kvm_regs& regs);
    kvm_sregs get_sregs() const;
    void set_sregs(const kvm_sregs& sregs);
    // The same for the run path (serving an exit), where nothing may throw: nullopt, or false,
    // when KVM refuses.
    std::optional<kvm_regs> try_get_regs() const noexcept;
    std::optional<kvm_sregs> try_get_sregs() const noexcept;
    [[nodiscard]] bool try_set_regs(const kvm_regs& regs) noexcept;
    void set_cpuid(const std::vector<kvm_cpuid_entry2>& entries);
    void set_mp_state(std::uint32_t state);
    // Delivers exception `vector` (no error code) on the next KVM_RUN, as the instruction at
    // RIP would have (KVM_SET_VCPU_EVENTS). For guest-triggered paths: false if KVM refused.
    [[nodiscard]] bool inject_exception(std::uint8_t vector) noexcept;
    std::uint64_t tsc_khz() const;  // 0 if KVM cannot tell
    // Guest-virtual to guest-physical through the vCPU's current page tables (KVM_TRANSLATE).
    std::optional<GuestPhysAddr> translate(std::uint64_t guest_virtual) const noexcept;
    // KVM_GET_STATS_FD: this vCPU's binary statistics (exits, page faults, ...). Waits for the
    // vCPU to leave KVM_RUN; reading the result does not.
    BinaryStats open_stats() const;

  private:
    Fd fd_;
    Mapping run_mapping_;
    kvm_run* run_;
    unsigned index_;
};

class Vm {
  public:
    explicit Vm(const System& system);
    int fd() const noexcept { return fd_.get(); }

    // Registers guest RAM [guest_address, +size) backed by host memory at host_address.
    void set_memory_region(std::uint32_t slot, GuestPhysAddr guest_address, std::uint64_t size,
                           void* host_address, std::uint32_t flags = 0);
    std::unique_ptr<Vcpu> create_vcpu(unsigned index);
    // KVM_GET_DIRTY_LOG: overwrites `bitmap` (one bit per 4 KiB page of the slot, in 64-bit
    // words) with the pages the guest wrote since the last call and re-arms tracking. The slot
    // needs KVM_MEM_LOG_DIRTY_PAGES.
    void get_dirty_log(std::uint32_t slot, std::span<std::uint64_t> bitmap);
    // KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2: from now on get_dirty_log() only reads the log, and
    // clear_dirty_log() clears and re-protects just the pages asked for, so a live move
    // write-protects the chunk it moves rather than the whole slot on every harvest. With
    // KVM_DIRTY_LOG_INITIALLY_SET (where offered) turning logging on sets every bit and protects
    // nothing. Call before any slot logs. Returns what is in force: Legacy where KVM lacks the
    // capability (get_dirty_log then clears and re-protects the whole slot, as before).
    enum class DirtyLogMode { Legacy, ManualProtect, ManualProtectInitiallySet };
    DirtyLogMode enable_manual_dirty_log();
    // "manual-protect-initially-set", "manual-protect" or "legacy" (MvstorResult::dirty_log).
    static const char* name_of(DirtyLogMode mode) noexcept;
    // KVM_CLEAR_DIRTY_LOG: clears (and re-protects) the pages of [first_page, +pages) of `slot`
    // whose bit is set in `bitmap`, whose bit 0 is first_page. first_page must be a multiple of
    // 64 and pages too, unless the range ends at the end of the slot.
    void clear_dirty_log(std::uint32_t slot, std::uint64_t first_page, std::uint64_t pages,
                         std::span<const std::uint64_t> bitmap);

    // --- Interrupts: the in-kernel PIC/IOAPIC/PIT, routing, irqfd and ioeventfd ---
    // KVM_CREATE_IRQCHIP: the in-kernel PIC, IOAPIC and local APICs. Call before any vCPU is
    // created. KVM installs its default routing table (GSI 0-15 to the PICs, 0-23 to the
    // IOAPIC); set_gsi_routing replaces it.
    void create_irqchip();
    // KVM_CREATE_PIT2 with KVM_PIT_SPEAKER_DUMMY (port 0x61 answered in the kernel). Needs the
    // irqchip; the PIT raises GSI 0.
    void create_pit2();
    // KVM_IRQ_LINE: drives GSI `irq` (through the routing table) high or low. Called from vCPU
    // threads for device interrupts, so it does not throw: false (errno kept) if KVM refused,
    // which only happens without an irqchip.
    bool set_irq_line(std::uint32_t irq, bool level) noexcept;
    // KVM_SET_GSI_ROUTING: replaces the WHOLE table with `entries` (include the irqchip routes
    // for GSI 0-23 or the PIC/IOAPIC pins lose their sources).
    void set_gsi_routing(const std::vector<kvm_irq_routing_entry>& entries);
    // KVM_IRQFD: a write to `eventfd` raises `gsi` (an edge, as MSI wants) without an exit.
    void assign_irqfd(int eventfd, std::uint32_t gsi);
    void deassign_irqfd(int eventfd, std::uint32_t gsi);
    // KVM_IOEVENTFD on MMIO, no datamatch: a guest write of `length` bytes (0: any length) to
    // `gpa` signals `eventfd` and completes in the kernel, with no MMIO exit.
    void assign_ioeventfd(GuestPhysAddr gpa, std::uint32_t length, int eventfd);
    void deassign_ioeventfd(GuestPhysAddr gpa, std::uint32_t length, int eventfd);

    // KVM_GET_STATS_FD: the VM's binary statistics (MMU, remote TLB flushes); throws where KVM
    // lacks KVM_CAP_BINARY_STATS_FD.
    BinaryStats open_stats() const;

  private:
    const System& system_;
    Fd fd_;
};

}  // namespace lparvisor::kvm
