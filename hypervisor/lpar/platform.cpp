#include "lpar/platform.hpp"

#include <linux/kvm.h>

#include <string>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "boot/firmware_loader.hpp"
#include "boot/linux_loader.hpp"
#include "util/fault.hpp"

namespace lparvisor {

namespace {

// What a Linux guest needs on a PVM host, whose instruction emulator lacks XRSTOR, POPCNT, some
// vector instructions and CLAC/STAC (0f 01 ca / cb: the kernel's SMAP guards, which it patches
// out when SMAP is cleared; 6.1 has no `nosmap` any more). See docs/kvm-notes.md, Linux under
// PVM.
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

class FirmwarePlatform final : public GuestPlatform {
  public:
    bool has_interrupt_controllers() const noexcept override { return false; }
    bool has_acpi_power() const noexcept override { return false; }
    bool tolerates_unclaimed_access() const noexcept override { return false; }
    // The firmware has no IDT: any exception ends in a triple fault.
    GuestEvent triple_fault_event() const noexcept override { return GuestEvent::Crash; }
    // It runs at CPL3, natively under PVM: nothing of it is emulated.
    bool completes_unemulated_instructions() const noexcept override { return false; }

    void boot(const BootContext& context) const override {
        const LparSpec& spec = context.spec;
        auto image = boot::load_firmware_elf(spec.firmware, context.memory, spec.name);
        auto cpuid = context.system.supported_cpuid();
        std::uint64_t tsc_khz = 0;
        for (unsigned i = 0; i < spec.vcpus; ++i) {
            auto vcpu = context.vm.create_vcpu(i);
            vcpu->set_cpuid(cpuid_for_vcpu(cpuid, i));
            boot::set_cpl3_entry_state(*vcpu, image.entry, i);
            if (i == 0) tsc_khz = vcpu->tsc_khz();
            context.vcpus.push_back(std::move(vcpu));
        }
        boot::FirmwareParams params;
        params.lpar_name = spec.name;
        params.vcpus = spec.vcpus;
        params.tsc_khz = tsc_khz;
        params.rewrite_pages_per_sec = spec.rewrite_pages_per_sec;
        params.working_set_bytes = spec.working_set_bytes;
        params.round_limit = spec.round_limit;
        params.pci_bus = true;                  // the firmware drives the LPAR's virtio-pci devices
        params.max_storage = spec.max_storage;  // mapped, so it can use what EXPAND adds
        // A guest that floods its UART, for the console log's limits (tests/kvm/limits.sh).
        params.console_flood = fault::triggered("firmware.console_flood");
        params.reboot_at_end = fault::triggered("firmware.reboot");
        params.triple_fault_at_end = fault::triggered("firmware.triple_fault");
        params.report_progress = spec.report_progress;
        boot::build_system_area(context.memory, params);
        spdlog::info("{}: {} vCPU(s), storage {} at origin {}, firmware {} (entry {:#x})",
                     spec.name, spec.vcpus, format_mib(spec.storage.size),
                     format_mib(spec.storage.start.value), spec.firmware, image.entry);
    }
};

class LinuxPlatform final : public GuestPlatform {
  public:
    bool has_interrupt_controllers() const noexcept override { return true; }
    bool has_acpi_power() const noexcept override { return true; }
    // A kernel probes ports and addresses a PC may have (CMOS, floppy, more UARTs): no device
    // there answers with all ones, as on real hardware.
    bool tolerates_unclaimed_access() const noexcept override { return true; }
    // A PC's chipset resets on a triple fault, and Linux's last way to reboot (reboot=t)
    // relies on it.
    GuestEvent triple_fault_event() const noexcept override { return GuestEvent::Reboot; }
    bool completes_unemulated_instructions() const noexcept override { return true; }

    void boot(const BootContext& context) const override {
        const LparSpec& spec = context.spec;
        boot::LinuxBootSpec boot_spec;
        boot_spec.lpar_name = spec.name;
        boot_spec.kernel = spec.kernel;
        boot_spec.initrd = spec.initrd;
        boot_spec.cmdline = command_line(spec);
        boot_spec.vcpus = spec.vcpus;
        auto cpuid = context.system.supported_cpuid();
        // The TSC-deadline timer: KVM emulates it but leaves it out of what it reports as
        // supported (the VMM decides, as QEMU and Firecracker do). With it Linux programs its
        // local APIC timer in TSC ticks it knows from kvmclock; without it, the kernel
        // calibrates the APIC timer against the TSC at boot, which a busy or nested host can
        // skew badly.
        if (context.system.check_extension(KVM_CAP_TSC_DEADLINE_TIMER) > 0)
            for (auto& e : cpuid)
                if (e.function == 1) e.ecx |= 1u << 24;
        if (kvm::detect_flavour() == kvm::Flavour::Pvm) {
            // PVM emulates guest kernel code and cannot emulate some instructions at all
            // (docs/kvm-notes.md, Linux under PVM): hide what can be hidden so the kernel takes
            // other paths.
            append_argument(boot_spec.cmdline, kPvmCmdline);
            for (auto& e : cpuid)
                if (e.function == 1) e.ecx &= ~(1u << 13);  // CX16: cmpxchg16b in SLUB
            for (auto& e : cpuid)
                if (e.function == 7 && e.index == 0) e.ebx &= ~(1u << 20);  // SMAP: clac/stac
            spdlog::warn(
                "{}: this KVM is PVM, which emulates guest kernel code (slowly): added "
                "'{}' to the command line and hid CMPXCHG16B",
                spec.name, kPvmCmdline);
        }
        auto boot = boot::load_linux(boot_spec, context.memory);
        for (unsigned i = 0; i < spec.vcpus; ++i) {
            auto vcpu = context.vm.create_vcpu(i);
            vcpu->set_cpuid(cpuid_for_vcpu(cpuid, i));
            if (i == 0) {
                // The others wait for the kernel's INIT/SIPI in the in-kernel local APIC.
                auto sregs = vcpu->get_sregs();
                kvm_regs regs{};
                boot::apply_linux_entry(sregs, regs, boot);
                vcpu->set_sregs(sregs);
                vcpu->set_regs(regs);
            }
            context.vcpus.push_back(std::move(vcpu));
        }
        spdlog::info("{}: {} vCPU(s), storage {} at origin {}, Linux {} {} (entry {:#x}){}{}",
                     spec.name, spec.vcpus, format_mib(spec.storage.size),
                     format_mib(spec.storage.start.value), boot.kind, spec.kernel, boot.entry,
                     spec.initrd.empty() ? "" : ", initrd " + spec.initrd,
                     boot_spec.cmdline.empty() ? "" : ", command line '" + boot_spec.cmdline + "'");
    }

  private:
    // The definition's command line and what this platform adds to it.
    static std::string command_line(const LparSpec& spec) {
        std::string cmdline = spec.cmdline;
        if (spec.max_storage > spec.storage.size &&
            spec.cmdline.find("memhp_default_state=") == std::string::npos) {
            // EXPAND hands memory to the kernel's virtio-mem driver, which adds it as memory
            // blocks; the Debian kernel leaves new blocks offline unless told otherwise.
            // Movable, so that shrink can take them back.
            append_argument(cmdline, kOnlineHotplugged);
            spdlog::info("{}: has a virtio-mem region (max {}): added '{}' to the command line",
                         spec.name, format_mib(spec.max_storage), kOnlineHotplugged);
        }
        if (spec.cmdline.find("reboot=") == std::string::npos) {
            append_argument(cmdline, kAcpiReboot);
            spdlog::info("{}: added '{}' to the command line (a guest reboot resets through ACPI)",
                         spec.name, kAcpiReboot);
        }
        return cmdline;
    }
};

}  // namespace

std::unique_ptr<GuestPlatform> make_guest_platform(const LparSpec& spec) {
    if (spec.is_linux()) return std::make_unique<LinuxPlatform>();
    return std::make_unique<FirmwarePlatform>();
}

}  // namespace lparvisor
