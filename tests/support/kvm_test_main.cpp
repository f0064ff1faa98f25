// Main of every test that needs /dev/kvm: where KVM is missing it says so loudly and exits with
// the skip code, which ctest reports as "Skipped" (never "Passed"). Catch2's implementation is in
// catch_session.cpp.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "kvm/kvm.hpp"
#include "lpar/events.hpp"
#include "support/catch_session.hpp"

int main(int argc, char** argv) {
    if (auto reason = lparvisor::kvm::unavailable_reason()) {
        std::fprintf(stderr,
                     "\n*** SKIPPED: %s needs KVM and this host has none: %s ***\n"
                     "*** (scripts/nested-kvm/run.sh runs it inside QEMU with nested KVM) ***\n\n",
                     argv[0], reason->c_str());
        return LPARVISOR_SKIP_CODE;
    }
    std::fprintf(stderr, "KVM: %s\n", lparvisor::kvm::to_string(lparvisor::kvm::detect_flavour()));
    // An event that differs from what system.describe says fails the test run at once: the
    // schema (control/protocol_schema.hpp) is a promise to clients.
    lparvisor::EventHub::set_mismatch_handler([](const std::string& type, const std::string& why) {
        std::fprintf(stderr, "FAIL: event %s does not match its schema: %s\n", type.c_str(),
                     why.c_str());
        std::abort();
    });
    return lparvisor::test::run_catch_session(argc, argv);
}
