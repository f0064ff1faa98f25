// The KVM layer on its own: a few hand-assembled guest bytes run at CPL3 in long mode, their
// exits checked exactly; then the guest's memory is moved to another origin in the arena and the
// same vCPU runs again and sees the moved memory (KVM follows the window's re-map).
#include <catch2/catch.hpp>

#include <lparvisor/abi.h>

#include <cstring>

#include "boot/firmware_loader.hpp"
#include "kvm/kvm.hpp"
#include "storage/arena.hpp"
#include "storage/guest_memory.hpp"

using namespace lparvisor;

namespace {

constexpr std::uint64_t kCode = LPV_IMAGE_GPA;
constexpr std::uint64_t kData = LPV_IMAGE_GPA + 0x800;

struct Guest {
    kvm::System system;
    Arena arena{32 * kMiB, HugePagePolicy::Off};
    GuestWindow window{arena, {{4 * kMiB}, 4 * kMiB}};
    kvm::Vm vm{system};
    std::unique_ptr<kvm::Vcpu> vcpu;

    explicit Guest(std::initializer_list<std::uint8_t> code) {
        vm.set_memory_region(0, GuestPhysAddr{0}, window.size(), window.host_base());
        boot::build_system_area(window.memory(), {"KVMTEST", 1, 0, 0, 0, 0, true});
        std::vector<std::uint8_t> bytes(code);
        REQUIRE(window.memory().write(GuestPhysAddr{kCode}, bytes));
        vcpu = vm.create_vcpu(0);
        vcpu->set_cpuid(system.supported_cpuid());
        boot::set_cpl3_entry_state(*vcpu, kCode, 0);
    }

    kvm::Vcpu::RunResult run_until_exit() {
        for (;;) {
            auto result = vcpu->run();
            if (!std::holds_alternative<kvm::InterruptedExit>(result.exit)) return result;
        }
    }
};

kvm::IoExit expect_io(const kvm::Vcpu::RunResult& result) {
    INFO("exit index " << result.exit.index() << " errno " << result.error);
    REQUIRE(std::holds_alternative<kvm::IoExit>(result.exit));
    return std::get<kvm::IoExit>(result.exit);
}

}  // namespace

TEST_CASE("CPL3 port output reaches the hypervisor, and the guest follows a memory move", "[kvm]") {
    // mov dx, 0x3f8; loop: mov al, [kData]; out dx, al; jmp loop
    Guest guest(
        {0x66, 0xba, 0xf8, 0x03, 0x8a, 0x04, 0x25, 0x00, 0x08, 0x10, 0x00, 0xee, 0xeb, 0xf6});
    REQUIRE(guest.window.memory().write_object<std::uint8_t>(GuestPhysAddr{kData}, 'A'));

    auto io = expect_io(guest.run_until_exit());
    CHECK(io.port == 0x3f8);
    CHECK(io.is_write);
    CHECK(io.size == 1);
    CHECK(io.count == 1);
    CHECK(io.data[0] == 'A');
    // KVM exits at the out (newer kernels finish it on the next KVM_RUN) or just after it.
    auto at_out = [](std::uint64_t rip) { return rip == kCode + 11 || rip == kCode + 12; };
    CHECK(at_out(guest.vcpu->get_regs().rip));
    auto sregs = guest.vcpu->get_sregs();
    CHECK((sregs.cs.selector & 3) == 3);  // really at CPL3

    // Move the whole 4 MiB from 4 MiB to 20 MiB, change the byte at the new place only, and
    // re-map the window. The next load must see the new origin's byte.
    auto old_bytes = guest.arena.bytes({{4 * kMiB}, 4 * kMiB});
    auto new_bytes = guest.arena.bytes({{20 * kMiB}, 4 * kMiB});
    std::memcpy(new_bytes.data(), old_bytes.data(), 4 * kMiB);
    new_bytes[kData] = 'B';
    guest.window.remap(ArenaOffset{20 * kMiB});
    std::memset(old_bytes.data(), 0xcc, 4 * kMiB);  // the old origin now holds garbage

    io = expect_io(guest.run_until_exit());
    CHECK(io.data[0] == 'B');
    io = expect_io(guest.run_until_exit());
    CHECK(io.data[0] == 'B');
    CHECK(at_out(guest.vcpu->get_regs().rip));
}

TEST_CASE("a port outside the TSS I/O bitmap faults, and without an IDT that is a shutdown",
          "[kvm]") {
    // mov dx, 0x80; out dx, al
    Guest guest({0x66, 0xba, 0x80, 0x00, 0xee});
    auto result = guest.run_until_exit();
    CHECK(std::holds_alternative<kvm::ShutdownExit>(result.exit));
}

TEST_CASE("a privileged instruction at CPL3 faults to a shutdown", "[kvm]") {
    Guest guest({0xf4});  // hlt
    auto result = guest.run_until_exit();
    CHECK(std::holds_alternative<kvm::ShutdownExit>(result.exit));
}

TEST_CASE("immediate_exit takes KVM_RUN out without running the guest", "[kvm]") {
    Guest guest({0x66, 0xba, 0xf8, 0x03, 0xee, 0xeb, 0xfd});
    guest.vcpu->set_immediate_exit(true);
    auto result = guest.vcpu->run();
    CHECK(std::holds_alternative<kvm::InterruptedExit>(result.exit));
    CHECK(guest.vcpu->get_regs().rip == kCode);
    guest.vcpu->set_immediate_exit(false);
    auto io = expect_io(guest.run_until_exit());
    CHECK(io.port == 0x3f8);
}
