// Serving a vCPU's exit from KVM_RUN, one function per exit reason. Anything a guest can cause
// is answered, or stops this LPAR with the reason (GuestEvent::Crash and the registers, for a
// fault); nothing here throws on purpose, and register access uses the vCPU's non-throwing
// calls. What the guest's kind changes (an access nothing serves, a triple fault, instructions
// PVM cannot emulate) its GuestPlatform says.
#include <linux/kvm.h>

#include <algorithm>
#include <cstring>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "devices/pci/pci_bus.hpp"
#include "lpar/lpar.hpp"
#include "lpar/platform.hpp"

namespace lparvisor {

void Lpar::handle_exit(kvm::Vcpu& vcpu, const kvm::Vcpu::RunResult& result) {
    std::visit([&](const auto& exit) { on_exit(vcpu, exit, result.error); }, result.exit);
}

void Lpar::on_exit(kvm::Vcpu& vcpu, const kvm::IoExit& exit, int) {
    for (std::uint32_t i = 0; i < exit.count; ++i) {
        auto part = exit.data.subspan(std::size_t{i} * exit.size, exit.size);
        const bool served =
            exit.is_write ? bus_.write(exit.port, part) : bus_.read(exit.port, part);
        if (served) continue;
        if (platform_->tolerates_unclaimed_access()) {
            if (!exit.is_write) std::fill(part.begin(), part.end(), 0xff);
            note_unclaimed("I/O port", exit.port, exit.is_write);
            continue;
        }
        stop(describe_fault(vcpu,
                            fmt::format("unhandled I/O port {:#x} ({} of {} byte(s))", exit.port,
                                        exit.is_write ? "write" : "read", exit.size)),
             GuestEvent::Crash);
        return;
    }
}

void Lpar::on_exit(kvm::Vcpu& vcpu, const kvm::MmioExit& exit, int) {
    const bool served = exit.is_write ? pci_->mmio_write(exit.address, exit.data)
                                      : pci_->mmio_read(exit.address, exit.data);
    if (served) return;
    if (platform_->tolerates_unclaimed_access()) {
        if (!exit.is_write) std::fill(exit.data.begin(), exit.data.end(), 0xff);
        note_unclaimed("MMIO address", exit.address.value, exit.is_write);
        return;
    }
    stop(describe_fault(vcpu, fmt::format("MMIO {} at guest-physical {:#x} with no device there",
                                          exit.is_write ? "write" : "read", exit.address.value)),
         GuestEvent::Crash);
}

void Lpar::on_exit(kvm::Vcpu& vcpu, const kvm::HltExit&, int) {
    stop(describe_fault(vcpu, "halted"), GuestEvent::Crash);
}

void Lpar::on_exit(kvm::Vcpu& vcpu, const kvm::ShutdownExit&, int) {
    const GuestEvent event = platform_->triple_fault_event();
    stop(describe_fault(
             vcpu, event == GuestEvent::Reboot ? "triple fault (guest reset)" : "triple fault"),
         event);
}

void Lpar::on_exit(kvm::Vcpu& vcpu, const kvm::InternalErrorExit& exit, int) {
    const bool emulation = exit.suberror == KVM_INTERNAL_ERROR_EMULATION;
    auto bytes = exit.instruction_bytes;
    if (bytes.empty()) bytes = instruction_bytes_at_rip(vcpu);  // KVM gave none
    if (emulation && platform_->completes_unemulated_instructions() && !bytes.empty() &&
        complete_unemulated(vcpu, bytes[0]))
        return;
    std::string hex;
    for (auto b : bytes) hex += fmt::format("{}{:02x}", hex.empty() ? "" : " ", b);
    stop(describe_fault(vcpu, fmt::format("KVM internal error {}{} instruction bytes [{}]",
                                          exit.suberror, emulation ? " (emulation failure)" : "",
                                          hex.empty() ? "unavailable" : hex)),
         GuestEvent::Crash);
}

void Lpar::on_exit(kvm::Vcpu& vcpu, const kvm::FailEntryExit& exit, int) {
    stop(describe_fault(
             vcpu, fmt::format("VM entry failed, hardware reason {:#x}", exit.hardware_reason)),
         GuestEvent::Crash);
}

void Lpar::on_exit(kvm::Vcpu&, const kvm::SystemEventExit& exit, int) {
    // KVM_SYSTEM_EVENT_SHUTDOWN, _RESET, _CRASH; anything newer counts as a crash.
    const GuestEvent event = exit.type == KVM_SYSTEM_EVENT_SHUTDOWN ? GuestEvent::PowerOff
                             : exit.type == KVM_SYSTEM_EVENT_RESET  ? GuestEvent::Reboot
                                                                    : GuestEvent::Crash;
    stop(fmt::format("guest system event {} ({})", exit.type, to_string(event)), event);
}

void Lpar::on_exit(kvm::Vcpu& vcpu, const kvm::OtherExit& exit, int error) {
    stop(describe_fault(vcpu, error != 0 ? fmt::format("KVM_RUN failed: {}", std::strerror(error))
                                         : fmt::format("unhandled {}",
                                                       kvm::describe_exit_reason(exit.reason))),
         GuestEvent::Crash);
}

void Lpar::on_exit(kvm::Vcpu&, const kvm::InterruptedExit&, int) {
    // A kick: the loop parks if asked to.
}

std::string Lpar::describe_fault(kvm::Vcpu& vcpu, const std::string& what) {
    // The registers an operator (or a bug report) needs to find where the guest was: the
    // general ones, the flags, and the control registers that say which mode and page tables.
    // What cannot be read is left out; the LPAR still stops.
    std::string registers;
    if (const auto regs = vcpu.try_get_regs()) {
        registers = fmt::format(
            ", rip={:#x}, rsp={:#x}, rbp={:#x}, rflags={:#x}, rax={:#x}, rbx={:#x}, rcx={:#x}, "
            "rdx={:#x}, rsi={:#x}, rdi={:#x}",
            regs->rip, regs->rsp, regs->rbp, regs->rflags, regs->rax, regs->rbx, regs->rcx,
            regs->rdx, regs->rsi, regs->rdi);
    }
    if (const auto sregs = vcpu.try_get_sregs()) {
        registers +=
            fmt::format(", cs={:#x}, cr0={:#x}, cr2={:#x}, cr3={:#x}, cr4={:#x}",
                        sregs->cs.selector, sregs->cr0, sregs->cr2, sregs->cr3, sregs->cr4);
    }
    return fmt::format("{} (vCPU {}{})", what, vcpu.index(), registers);
}

std::vector<std::uint8_t> Lpar::instruction_bytes_at_rip(kvm::Vcpu& vcpu) {
    // Through the guest's page tables; empty when RIP maps nowhere in the LPAR's storage.
    std::vector<std::uint8_t> bytes;
    const auto regs = vcpu.try_get_regs();
    if (!regs) return bytes;
    const auto gpa = vcpu.translate(regs->rip);
    if (!gpa) return bytes;
    bytes.resize(15);  // the longest x86 instruction
    if (!window_.memory().read(*gpa, bytes)) bytes.clear();
    return bytes;
}

bool Lpar::complete_unemulated(kvm::Vcpu& vcpu, std::uint8_t opcode) {
    // PVM's instruction emulator (guest kernel code) cannot run a few one-byte instructions a
    // Linux kernel uses early (docs/kvm-notes.md, Linux under PVM); do what the CPU would have
    // done and carry on.
    constexpr std::uint8_t kInt3 = 0xcc, kFwait = 0x9b, kBreakpointVector = 3;
    if (opcode != kInt3 && opcode != kFwait) return false;
    auto regs = vcpu.try_get_regs();
    if (!regs) return false;
    regs->rip += 1;  // both are one byte; #BP is a trap, so it reports the next RIP
    if (!vcpu.try_set_regs(*regs)) return false;
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

}  // namespace lparvisor
