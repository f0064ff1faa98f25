// Main of every test that needs /dev/kvm: where KVM is missing it says so loudly and exits with
// the skip code, which ctest reports as "Skipped" (never "Passed").
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cstdio>

#include "kvm/kvm.hpp"

int main(int argc, char** argv) {
    if (auto reason = lparvisor::kvm::unavailable_reason()) {
        std::fprintf(stderr,
                     "\n*** SKIPPED: %s needs KVM and this host has none: %s ***\n"
                     "*** (scripts/nested-kvm/run.sh runs it inside QEMU with nested KVM) ***\n\n",
                     argv[0], reason->c_str());
        return LPARVISOR_SKIP_CODE;
    }
    std::fprintf(stderr, "KVM: %s\n", lparvisor::kvm::to_string(lparvisor::kvm::detect_flavour()));
    return Catch::Session().run(argc, argv);
}
