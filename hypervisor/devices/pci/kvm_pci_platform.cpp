#include "devices/pci/kvm_pci_platform.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <exception>
#include <optional>
#include <string>

#include "kvm/kvm.hpp"
#include "util/error.hpp"

namespace lparvisor::pci {

namespace {

kvm_irq_routing_entry msi_route(std::uint32_t gsi, std::uint64_t address, std::uint32_t data) {
    kvm_irq_routing_entry e{};
    e.gsi = gsi;
    e.type = KVM_IRQ_ROUTING_MSI;
    e.u.msi.address_lo = static_cast<std::uint32_t>(address);
    e.u.msi.address_hi = static_cast<std::uint32_t>(address >> 32);
    e.u.msi.data = data;
    return e;
}

}  // namespace

KvmPciPlatform::KvmPciPlatform(kvm::Vm& vm, Interrupts interrupts, Irq0 irq0)
    : vm_(vm), interrupts_(interrupts), irq0_(irq0) {
    if (interrupts_ == Interrupts::InKernelIrqchip) vm_.set_gsi_routing(irqchip_routes(irq0_));
}

std::vector<kvm_irq_routing_entry> KvmPciPlatform::table_locked() const {
    std::vector<kvm_irq_routing_entry> table = irqchip_routes(irq0_);
    for (const auto& [gsi, route] : msi_routes_)
        table.push_back(msi_route(gsi, route.address, route.data));
    return table;
}

std::vector<kvm_irq_routing_entry> KvmPciPlatform::routing_table() const {
    std::lock_guard lock(mutex_);
    return table_locked();
}

bool KvmPciPlatform::install_locked() noexcept {
    if (interrupts_ == Interrupts::None) return true;
    try {
        vm_.set_gsi_routing(table_locked());
        return true;
    } catch (const std::exception& e) {
        log_limiter_->log(spdlog::level::warn, "PCI interrupts: {}", e.what());
        return false;
    }
}

std::uint32_t KvmPciPlatform::allocate_gsi() {
    std::lock_guard lock(mutex_);
    if (!free_gsis_.empty()) {
        std::uint32_t gsi = free_gsis_.back();
        free_gsis_.pop_back();
        return gsi;
    }
    if (next_gsi_ >= kGsiLimit)
        throw Error(ErrorKind::Refused, "PCI interrupts: all " +
                                            std::to_string(kGsiLimit - kFirstMsiGsi) +
                                            " MSI GSIs are in use");
    return next_gsi_++;
}

void KvmPciPlatform::release_gsi(std::uint32_t gsi) noexcept {
    std::lock_guard lock(mutex_);
    if (gsi < kFirstMsiGsi || gsi >= next_gsi_) return;
    if (std::find(free_gsis_.begin(), free_gsis_.end(), gsi) != free_gsis_.end()) return;
    if (msi_routes_.erase(gsi) != 0) install_locked();
    free_gsis_.push_back(gsi);
}

void KvmPciPlatform::attach_irqfd(std::uint32_t gsi, int eventfd) {
    if (interrupts_ == Interrupts::None) return;
    vm_.assign_irqfd(eventfd, gsi);
}

void KvmPciPlatform::detach_irqfd(std::uint32_t gsi, int eventfd) noexcept {
    if (interrupts_ == Interrupts::None) return;
    try {
        vm_.deassign_irqfd(eventfd, gsi);
    } catch (const std::exception& e) {
        log_limiter_->log(spdlog::level::warn, "PCI interrupts: {}", e.what());
    }
}

bool KvmPciPlatform::set_msi_route(std::uint32_t gsi, std::uint64_t address,
                                   std::uint32_t data) noexcept {
    std::lock_guard lock(mutex_);
    if (gsi < kFirstMsiGsi || gsi >= next_gsi_) {
        log_limiter_->log(spdlog::level::warn, "PCI interrupts: MSI route for unallocated GSI {}",
                          gsi);
        return false;
    }
    MsiRoute route{address, data};
    auto it = msi_routes_.find(gsi);
    if (it != msi_routes_.end() && it->second == route) return true;
    std::optional<MsiRoute> previous;
    if (it != msi_routes_.end()) previous = it->second;
    msi_routes_[gsi] = route;
    if (install_locked()) return true;
    // Keep our copy equal to what KVM has.
    if (previous)
        msi_routes_[gsi] = *previous;
    else
        msi_routes_.erase(gsi);
    return false;
}

void KvmPciPlatform::clear_msi_route(std::uint32_t gsi) noexcept {
    std::lock_guard lock(mutex_);
    if (msi_routes_.erase(gsi) != 0) install_locked();
}

bool KvmPciPlatform::register_ioeventfd(GuestPhysAddr gpa, std::uint32_t length,
                                        int eventfd) noexcept {
    try {
        vm_.assign_ioeventfd(gpa, length, eventfd);
        return true;
    } catch (const std::exception& e) {
        log_limiter_->log(spdlog::level::warn, "PCI notify: {}", e.what());
        return false;
    }
}

void KvmPciPlatform::unregister_ioeventfd(GuestPhysAddr gpa, std::uint32_t length,
                                          int eventfd) noexcept {
    try {
        vm_.deassign_ioeventfd(gpa, length, eventfd);
    } catch (const std::exception& e) {
        log_limiter_->log(spdlog::level::warn, "PCI notify: {}", e.what());
    }
}

}  // namespace lparvisor::pci
