#include "support/linux_guest_image.hpp"

#include <catch2/catch.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>

namespace lparvisor::test {

std::string env_or(const char* name, const std::string& fallback) {
    const char* v = std::getenv(name);
    return v != nullptr && *v != '\0' ? v : fallback;
}

namespace {

// The KEY=VALUE lines of a shell env file (surrounding double quotes stripped, # comments
// skipped); empty if the file cannot be read.
std::map<std::string, std::string> read_env_file(const std::string& path) {
    std::map<std::string, std::string> values;
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
        auto eq = line.find('=');
        if (eq == std::string::npos || line.starts_with('#')) continue;
        auto value = line.substr(eq + 1);
        if (value.size() >= 2 && value.front() == '"' && value.back() == '"')
            value = value.substr(1, value.size() - 2);
        values[line.substr(0, eq)] = value;
    }
    return values;
}

}  // namespace

LinuxGuestImage linux_guest_image(const std::string& env_file, bool prefer_vmlinux) {
    INFO("guest image from " << env_file << " (run scripts/build-linux-guest.sh to build it)");
    REQUIRE(std::filesystem::exists(env_file));
    auto file = read_env_file(env_file);
    LinuxGuestImage image;
    auto vmlinux = env_or("LPARVISOR_LINUX_KERNEL", file["LINUX_KERNEL"]);
    auto bzimage = env_or("LPARVISOR_LINUX_BZIMAGE", file["LINUX_BZIMAGE"]);
    image.kernel = prefer_vmlinux && !vmlinux.empty() ? vmlinux : bzimage;
    image.initrd = env_or("LPARVISOR_LINUX_INITRD", file["LINUX_INITRD"]);
    image.cmdline = file.contains("LINUX_CMDLINE")
                        ? file["LINUX_CMDLINE"]
                        : "console=ttyS0 earlyprintk=serial,ttyS0,115200 panic=-1 nokaslr "
                          "rdinit=/init";
    REQUIRE(!image.kernel.empty());
    REQUIRE(std::filesystem::exists(image.kernel));
    REQUIRE(std::filesystem::exists(image.initrd));
    return image;
}

LparConfig linux_lpar(const LinuxGuestImage& image, const std::string& name,
                      std::uint64_t origin_mib, std::uint64_t size_mib,
                      const std::string& init_knobs, unsigned vcpus) {
    LparConfig lpar;
    lpar.name = name;
    lpar.origin_mib = origin_mib;
    lpar.size_mib = size_mib;
    lpar.vcpus = vcpus;
    lpar.kernel = image.kernel;
    lpar.initrd = image.initrd;
    lpar.cmdline = image.cmdline + " " + init_knobs;
    return lpar;
}

}  // namespace lparvisor::test
