// What the KVM tests share: Hypervisor options for the test firmware, and the check that an
// LPAR's own firmware went on verifying its storage cleanly (the guest is the witness).
#pragma once

#include <cstdint>
#include <string>

#include "lpar/hypervisor.hpp"

namespace lparvisor::test {

// A firmware LPAR of a test configuration.
LparConfig firmware_lpar(const std::string& name, std::uint64_t origin_mib, std::uint64_t size_mib,
                         unsigned vcpus = 1, std::uint64_t rewrite_pages_per_sec = 0,
                         std::uint64_t working_set_mib = 0);

// The test firmware as default, and each LPAR's console mirrored to console_dir if given.
HypervisorOptions firmware_options(const std::string& console_dir = {});

// Waits until every vCPU of the LPAR has verified `more` rounds beyond what it has now (with
// two, at least one whole pass started after whatever happened just before), and requires that
// no FAIL line appeared and that the LPAR still runs.
void require_clean_rounds(Hypervisor& hv, const std::string& lpar, unsigned long more);

// Waits until the firmware has verified `mib` MiB of EXPANDed (virtio-mem) storage in a round
// ("MEM <name> verify ok <mib> MiB round"), with no FAIL line.
void require_plugged_and_verified(Hypervisor& hv, const std::string& name, std::uint64_t mib);

std::uint64_t origin_mib_of(Hypervisor& hv, const std::string& lpar);

}  // namespace lparvisor::test
