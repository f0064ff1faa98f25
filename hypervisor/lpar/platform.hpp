// What differs between the two kinds of guest an LPAR runs, in one object per kind, so that the
// rest of the LPAR (devices, vCPU loop, exit handlers) asks instead of testing the kind:
// - the test firmware: polls its devices at CPL3, no interrupt controllers, no ACPI; an access
//   nothing serves, or a triple fault, is a crash (docs/paravirt-interface.md);
// - a Linux kernel: a PC's platform (in-kernel irqchip and PIT, COM1's IRQ 4, MSI-X, ACPI power
//   and reset); it probes ports and addresses a PC may have, and resets by triple fault.
#pragma once

#include <memory>
#include <vector>

#include "kvm/kvm.hpp"
#include "lpar/lpar.hpp"
#include "storage/guest_memory.hpp"

namespace lparvisor {

// What a platform needs to boot an LPAR: its definition, KVM, its VM and storage; the vCPUs it
// creates go into `vcpus`.
struct BootContext {
    const LparSpec& spec;
    const kvm::System& system;
    kvm::Vm& vm;
    GuestMemory memory;
    std::vector<std::unique_ptr<kvm::Vcpu>>& vcpus;
};

class GuestPlatform {
  public:
    virtual ~GuestPlatform() = default;

    // A PC's interrupt controllers and timer in KVM (irqchip, PIT): COM1 raises IRQ 4, virtio
    // devices interrupt through MSI-X and irqfds.
    virtual bool has_interrupt_controllers() const noexcept = 0;
    // ACPI's power and reset registers (devices/power_port).
    virtual bool has_acpi_power() const noexcept = 0;
    // An I/O port or MMIO address no device serves: true to answer as a PC does (reads return
    // all ones, logged once per address), false to stop the LPAR as a crash.
    virtual bool tolerates_unclaimed_access() const noexcept = 0;
    // What a triple fault (KVM_EXIT_SHUTDOWN) means for this guest.
    virtual GuestEvent triple_fault_event() const noexcept = 0;
    // Whether the instructions PVM's emulator cannot run in guest kernel code (int3, fwait) are
    // completed for the guest (docs/kvm-notes.md, Linux under PVM).
    virtual bool completes_unemulated_instructions() const noexcept = 0;

    // Loads the guest into storage and creates the vCPUs in their entry state.
    virtual void boot(const BootContext& context) const = 0;
};

// The firmware's, or Linux's when the definition names a kernel.
std::unique_ptr<GuestPlatform> make_guest_platform(const LparSpec& spec);

}  // namespace lparvisor
