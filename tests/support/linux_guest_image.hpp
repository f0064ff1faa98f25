// The Linux guest image scripts/build-linux-guest.sh builds (a stock Debian kernel and the
// initramfs with the test workload), found through the env file that script writes, and the
// Linux LPARs the tests boot from it.
#pragma once

#include <cstdint>
#include <string>

#include "lpar/config.hpp"

namespace lparvisor::test {

struct LinuxGuestImage {
    std::string kernel;  // the ELF vmlinux (PVM: skips the slow decompressor) or the bzImage
    std::string initrd;
    std::string cmdline;
};

// $name when set and not empty, else `fallback`.
std::string env_or(const char* name, const std::string& fallback);

// The image `env_file` names; $LPARVISOR_LINUX_{KERNEL,BZIMAGE,INITRD} override its entries (the
// nested harness sets them to its copies). With prefer_vmlinux the kernel is the ELF vmlinux
// where the file names one. Requires the env file, the kernel and the initrd to exist.
LinuxGuestImage linux_guest_image(const std::string& env_file, bool prefer_vmlinux);

// A Linux LPAR booting `image` with one vCPU unless told otherwise; `init_knobs` (LPV_MIB=...)
// go after the image's command line, to the guest's /init.
LparConfig linux_lpar(const LinuxGuestImage& image, const std::string& name,
                      std::uint64_t origin_mib, std::uint64_t size_mib,
                      const std::string& init_knobs, unsigned vcpus = 1);

}  // namespace lparvisor::test
