// What the control socket can ask of the hypervisor. The JSON-RPC layer (json_rpc.cpp) turns
// requests into these calls and results back into JSON; the daemon's Hypervisor implements it.
// Methods throw lparvisor::Error on refusal; the error kind picks the JSON-RPC error code.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace lparvisor::control {

struct LparStatus {
    std::string name;
    std::uint64_t origin_mib = 0;
    std::uint64_t size_mib = 0;
    std::uint64_t gap_mib = 0;  // free storage up to the next LPAR or the end of main storage
    std::string state;          // "running", "stopped", "relocating"
    std::string reason;         // why it stopped ("guest exit 0", "triple fault ...")
    unsigned vcpus = 0;
};

struct SystemStatus {
    std::uint64_t main_storage_mib = 0;
    std::uint64_t free_mib = 0;
    std::vector<LparStatus> lpars;  // sorted by origin
};

struct MvstorRequest {
    std::string lpar;
    std::uint64_t origin_mib = 0;
    std::chrono::milliseconds drain_timeout{10000};  // step 202
};

struct PhaseTiming {
    std::string phase;  // "stop_vcpus", "drain_io", "check_target", "copy", "remap", "resume", "scrub"
    std::uint64_t microseconds = 0;
};

struct MvstorResult {
    std::string lpar;
    std::uint64_t old_origin_mib = 0;
    std::uint64_t new_origin_mib = 0;
    std::uint64_t bytes_copied = 0;
    std::vector<PhaseTiming> phases;     // in the order they ran
    std::uint64_t pause_us = 0;          // vCPUs stopped -> vCPUs running again
    std::uint64_t total_us = 0;          // request accepted -> vacated storage scrubbed
};

class Api {
public:
    virtual ~Api() = default;
    virtual SystemStatus list() = 0;
    // Blocks for the whole relocation; the server runs it off its I/O thread.
    virtual MvstorResult mvstor(const MvstorRequest& request) = 0;
    // The most recent `max_bytes` of the LPAR's serial output.
    virtual std::string console(const std::string& lpar, std::size_t max_bytes) = 0;
};

}  // namespace lparvisor::control
