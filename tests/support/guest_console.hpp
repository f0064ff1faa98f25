// Reading what the test firmware says about itself: its `verify ok round=N cpu=K` lines and any
// FAIL line. The guest is the witness; tests only read its console.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <string>

namespace lparvisor::test {

struct FirmwareProgress {
    std::map<unsigned, unsigned long> round_by_cpu;  // highest verified round per vCPU
    std::string first_failure;                       // first line containing FAIL, if any
    unsigned long min_round(unsigned vcpus) const;   // lowest of the vCPUs' highest rounds
};

// The test firmware: $LPARVISOR_FIRMWARE when set (e.g. inside the nested-KVM harness), else
// the one this build made.
std::string firmware_path();

FirmwareProgress parse_firmware_console(const std::string& text);

// Polls `read_console` until every one of `vcpus` vCPUs has verified at least `round`, or a FAIL
// line appears, or the timeout passes. Returns the last progress seen.
FirmwareProgress wait_for_rounds(const std::function<std::string()>& read_console, unsigned vcpus,
                                 unsigned long round, std::chrono::seconds timeout);

}  // namespace lparvisor::test
