// What the PCI code needs from the hypervisor underneath: interrupt numbers (GSIs), irqfds,
// MSI routes and ioeventfds. KvmPciPlatform (kvm_pci_platform.hpp) provides them over KVM; the
// unit tests use a fake, so the PCI bus and the virtio-pci transport are tested without KVM.
//
// Threads: called from vCPU threads with the transport's locks held (it is the innermost lock
// but one: an implementation takes only its own mutex and never calls back into the PCI code).
#pragma once

#include <cstdint>

#include "util/address.hpp"

namespace lparvisor::pci {

// GSIs 0-23 are the IOAPIC pins (0-15 also the PICs); MSI routes are allocated from 24 on.
inline constexpr std::uint32_t kFirstMsiGsi = 24;

class PciPlatform {
  public:
    virtual ~PciPlatform() = default;

    // --- Set-up, when a device is built or destroyed: failures throw lparvisor::Error ---
    // A GSI of its own for one MSI-X vector (Error(Refused) when none is left).
    virtual std::uint32_t allocate_gsi() = 0;
    virtual void release_gsi(std::uint32_t gsi) noexcept = 0;
    // A write to `eventfd` raises `gsi`. Until the GSI has an MSI route the write goes nowhere.
    virtual void attach_irqfd(std::uint32_t gsi, int eventfd) = 0;
    virtual void detach_irqfd(std::uint32_t gsi, int eventfd) noexcept = 0;

    // --- Guest-triggered (the guest programs MSI-X, sets DRIVER_OK, moves a BAR): never
    // throw; false when the host refused, after logging why ---
    // `gsi` delivers the MSI message (address, data) from now on. The platform keeps the
    // full table (the host call replaces it whole).
    [[nodiscard]] virtual bool set_msi_route(std::uint32_t gsi, std::uint64_t address,
                                             std::uint32_t data) noexcept = 0;
    virtual void clear_msi_route(std::uint32_t gsi) noexcept = 0;
    // A guest write of `length` bytes to MMIO address `gpa` signals `eventfd` without an exit.
    [[nodiscard]] virtual bool register_ioeventfd(GuestPhysAddr gpa, std::uint32_t length,
                                                  int eventfd) noexcept = 0;
    virtual void unregister_ioeventfd(GuestPhysAddr gpa, std::uint32_t length,
                                      int eventfd) noexcept = 0;
};

}  // namespace lparvisor::pci
