// KVM's binary statistics (kvm/binary_stats.hpp): a VM's and a vCPU's stats files open, name the
// stats every x86 KVM has, read before anything ran, and count what a guest then does.
#include <catch2/catch.hpp>

#include <lparvisor/abi.h>

#include <vector>

#include "boot/firmware_loader.hpp"
#include "kvm/binary_stats.hpp"
#include "kvm/kvm.hpp"
#include "storage/arena.hpp"
#include "storage/guest_memory.hpp"

using namespace lparvisor;

namespace {

constexpr std::uint64_t kCode = LPV_IMAGE_GPA;

bool has(const kvm::StatValues& values, const char* name) {
    return values.count(name) == 1;
}

}  // namespace

TEST_CASE("a VM's and a vCPU's binary stats open and read before anything ran", "[kvm]") {
    kvm::System system;
    kvm::Vm vm{system};
    auto vm_stats = vm.open_stats();
    CHECK(vm_stats.id().rfind("kvm-", 0) == 0);
    auto values = vm_stats.read();
    INFO("VM stats: " << values.size());
    CHECK(has(values, "remote_tlb_flush"));
    CHECK(values.at("remote_tlb_flush") == 0);  // nothing ran
    // A histogram (size > 1) or a peak never comes back as a scalar.
    for (const auto& d : vm_stats.descriptors())
        if (d.size != 1) CHECK_FALSE(has(values, d.name.c_str()));

    auto vcpu = vm.create_vcpu(0);
    auto vcpu_stats = vcpu->open_stats();
    CHECK(vcpu_stats.id().find("/vcpu-0") != std::string::npos);
    auto before = vcpu_stats.read();
    REQUIRE(has(before, "exits"));
    REQUIRE(has(before, "io_exits"));
    CHECK(before.at("exits") == 0);
    CHECK(before.at("io_exits") == 0);
    CHECK(vcpu_stats.read() == before);  // a second read of an idle vCPU: the same
}

TEST_CASE("a vCPU's stats count the guest's port exits, read while it stays open", "[kvm]") {
    kvm::System system;
    Arena arena{32 * kMiB, HugePagePolicy::Off};
    GuestWindow window{arena, {{4 * kMiB}, 4 * kMiB}};
    kvm::Vm vm{system};
    vm.set_memory_region(0, GuestPhysAddr{0}, window.size(), window.host_base());
    boot::build_system_area(window.memory(), {"KVMSTAT", 1, 0, 0, 0, 0, true});
    // loop: mov dx, 0x3f8; out dx, al; jmp loop
    std::vector<std::uint8_t> code{0x66, 0xba, 0xf8, 0x03, 0xee, 0xeb, 0xf9};
    REQUIRE(window.memory().write(GuestPhysAddr{kCode}, code));
    auto vcpu = vm.create_vcpu(0);
    vcpu->set_cpuid(system.supported_cpuid());
    boot::set_cpl3_entry_state(*vcpu, kCode, 0);

    kvm::KvmStats stats(vm.open_stats(), [&] {
        std::vector<kvm::BinaryStats> v;
        v.push_back(vcpu->open_stats());
        return v;
    }());
    auto before = stats.read();
    CHECK(before.vcpu_count == 1);
    constexpr unsigned kOuts = 5;
    unsigned outs = 0;
    while (outs < kOuts) {
        auto result = vcpu->run();
        if (std::holds_alternative<kvm::InterruptedExit>(result.exit)) continue;
        REQUIRE(std::holds_alternative<kvm::IoExit>(result.exit));
        ++outs;
    }
    auto after = stats.read();
    INFO("exits " << before.vcpus.at("exits") << " -> " << after.vcpus.at("exits"));
    // Every OUT left KVM_RUN: at least one exit each. (Not io_exits: PVM, which serves a CPL3
    // guest's port I/O through its own #GP path, does not count them there.)
    CHECK(after.vcpus.at("exits") - before.vcpus.at("exits") >= kOuts);
    CHECK(has(after.vm, "remote_tlb_flush"));
}
