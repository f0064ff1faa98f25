// PciPlatform over KVM: GSIs from 24 up, irqfds, MSI routes kept in one table together with the
// irqchip routes (KVM_SET_GSI_ROUTING replaces the whole table), and MMIO ioeventfds.
//
// LPAR set-up order: Vm::create_irqchip() (and create_pit2()), then this platform (it installs
// its base table at once, so the legacy interrupts behave the same before and after the first
// MSI route), then the devices, then the vCPUs.
#pragma once

#include <linux/kvm.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "devices/pci/pci_platform.hpp"
#include "util/rate_limit.hpp"

namespace lparvisor::kvm {
class Vm;
}

namespace lparvisor::pci {

class KvmPciPlatform final : public PciPlatform {
  public:
    // Where GSI 0 (the PIT, ISA IRQ 0) reaches the IOAPIC. IoapicPin2 matches an MADT with the
    // usual IRQ0 -> GSI 2 interrupt source override (QEMU and kvmtool route it so; GSI 2 then
    // has no route). IoapicPin0 is KVM's own default table (GSI n -> pin n, PIC pin 2 too).
    enum class Irq0 { IoapicPin2, IoapicPin0 };
    // None: no in-kernel irqchip (a polling firmware LPAR). GSIs are still handed out, irqfds
    // and MSI routes are accepted and do nothing; ioeventfds work as usual.
    enum class Interrupts { InKernelIrqchip, None };

    // `vm` must outlive the platform and, with InKernelIrqchip, already have its irqchip.
    // Throws lparvisor::Error if KVM refuses the base table.
    explicit KvmPciPlatform(kvm::Vm& vm, Interrupts interrupts = Interrupts::InKernelIrqchip,
                            Irq0 irq0 = Irq0::IoapicPin2);

    std::uint32_t allocate_gsi() override;
    void release_gsi(std::uint32_t gsi) noexcept override;
    void attach_irqfd(std::uint32_t gsi, int eventfd) override;
    void detach_irqfd(std::uint32_t gsi, int eventfd) noexcept override;
    [[nodiscard]] bool set_msi_route(std::uint32_t gsi, std::uint64_t address,
                                     std::uint32_t data) noexcept override;
    void clear_msi_route(std::uint32_t gsi) noexcept override;
    [[nodiscard]] bool register_ioeventfd(GuestPhysAddr gpa, std::uint32_t length,
                                          int eventfd) noexcept override;
    void unregister_ioeventfd(GuestPhysAddr gpa, std::uint32_t length,
                              int eventfd) noexcept override;

    // The routes every table starts with: GSI 0-15 to the PIC pins (but GSI 2 with
    // IoapicPin2), GSI 0-23 to the IOAPIC pins (GSI 0 -> pin 2 with IoapicPin2). Inline so
    // that the unit tests check it without KVM.
    static std::vector<kvm_irq_routing_entry> irqchip_routes(Irq0 irq0) {
        // As kvm_setup_default_irq_routing (virt/kvm/irq_comm.c) builds it, with QEMU's and
        // kvmtool's IRQ 0 override when asked: the PIT always raises GSI 0.
        auto route = [](std::uint32_t gsi, std::uint32_t chip, std::uint32_t pin) {
            kvm_irq_routing_entry e{};
            e.gsi = gsi;
            e.type = KVM_IRQ_ROUTING_IRQCHIP;
            e.u.irqchip.irqchip = chip;
            e.u.irqchip.pin = pin;
            return e;
        };
        bool override0 = irq0 == Irq0::IoapicPin2;
        std::vector<kvm_irq_routing_entry> routes;
        for (std::uint32_t gsi = 0; gsi < 16; ++gsi) {
            if (gsi == 2 && override0) continue;  // the cascade pin: no ISA source
            routes.push_back(
                route(gsi, gsi < 8 ? KVM_IRQCHIP_PIC_MASTER : KVM_IRQCHIP_PIC_SLAVE, gsi % 8));
        }
        for (std::uint32_t gsi = 0; gsi < kFirstMsiGsi; ++gsi) {
            if (gsi == 2 && override0) continue;
            routes.push_back(route(gsi, KVM_IRQCHIP_IOAPIC, override0 && gsi == 0 ? 2 : gsi));
        }
        return routes;
    }
    // The table set_msi_route would install now (for tests and logs).
    std::vector<kvm_irq_routing_entry> routing_table() const;

    // KVM's x86 limit is 4096 routes (KVM_MAX_IRQ_ROUTES); a few hundred vectors is plenty.
    static constexpr std::uint32_t kGsiLimit = 1024;

    // The LPAR's limiter for the log lines a guest can cause (a BAR moved onto another
    // notify address, routes KVM refuses); set before the guest runs.
    void set_log_limiter(std::shared_ptr<LogRateLimiter> limiter) {
        if (limiter) log_limiter_ = std::move(limiter);
    }

  private:
    struct MsiRoute {
        std::uint64_t address;
        std::uint32_t data;
        bool operator==(const MsiRoute&) const = default;
    };
    std::vector<kvm_irq_routing_entry> table_locked() const;
    bool install_locked() noexcept;

    kvm::Vm& vm_;
    const Interrupts interrupts_;
    const Irq0 irq0_;
    std::shared_ptr<LogRateLimiter> log_limiter_ = own_log_limiter(nullptr, "PCI interrupts");
    mutable std::mutex mutex_;  // innermost: guards everything below
    std::uint32_t next_gsi_ = kFirstMsiGsi;
    std::vector<std::uint32_t> free_gsis_;
    std::map<std::uint32_t, MsiRoute> msi_routes_;
};

}  // namespace lparvisor::pci
