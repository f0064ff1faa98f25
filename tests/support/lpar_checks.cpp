#include "support/lpar_checks.hpp"

#include <catch2/catch.hpp>

#include <regex>
#include <thread>

#include "support/guest_console.hpp"

namespace lparvisor::test {

LparConfig firmware_lpar(const std::string& name, std::uint64_t origin_mib, std::uint64_t size_mib,
                         unsigned vcpus, std::uint64_t rewrite_pages_per_sec,
                         std::uint64_t working_set_mib) {
    LparConfig lpar;
    lpar.name = name;
    lpar.origin_mib = origin_mib;
    lpar.size_mib = size_mib;
    lpar.vcpus = vcpus;
    lpar.rewrite_pages_per_sec = rewrite_pages_per_sec;
    lpar.working_set_mib = working_set_mib;
    return lpar;
}

HypervisorOptions firmware_options(const std::string& console_dir) {
    HypervisorOptions options;
    options.default_firmware = firmware_path();
    options.console_dir = console_dir;
    return options;
}

void require_clean_rounds(Hypervisor& hv, const std::string& name, unsigned long more) {
    Lpar& lpar = hv.lpar(name);
    auto read = [&] { return lpar.console().tail(64 * 1024); };
    auto target = parse_firmware_console(read()).min_round(lpar.vcpu_count()) + more;
    auto progress = wait_for_rounds(read, lpar.vcpu_count(), target, std::chrono::seconds(600));
    INFO(name << " console tail:\n" << lpar.console().tail(3000));
    REQUIRE(progress.first_failure.empty());
    REQUIRE(lpar.state() == LparState::Running);
    REQUIRE(progress.min_round(lpar.vcpu_count()) >= target);
}

void require_plugged_and_verified(Hypervisor& hv, const std::string& name, std::uint64_t mib) {
    Lpar& lpar = hv.lpar(name);
    const std::regex verified("MEM " + name + " verify ok " + std::to_string(mib) + " MiB round");
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(600);
    std::string text;
    while (std::chrono::steady_clock::now() < deadline) {
        text = lpar.console().tail(64 * 1024);
        if (std::regex_search(text, verified)) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    INFO(name << " console tail:\n" << lpar.console().tail(3000));
    REQUIRE(std::regex_search(text, verified));
    REQUIRE(parse_firmware_console(text).first_failure.empty());
}

std::uint64_t origin_mib_of(Hypervisor& hv, const std::string& name) {
    for (const auto& row : hv.storage_table())
        if (row.lpar == name) return row.origin.value / kMiB;
    FAIL("no LPAR " << name << " in the storage map");
    return 0;
}

}  // namespace lparvisor::test
