// The daemon's configuration: main storage and the LPARs to activate at start. Parsed from JSON
// with every unknown key and bad value refused by name; the default is the patent's Fig. 3A.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "control/api.hpp"

namespace lparvisor {

// An LPAR of the configuration file: the same definition lpar.define takes, plus whether to
// activate it at start.
struct LparConfig : control::LparDefinition {
    bool active = true;  // false: defined only (lpar.activate starts it)
    // The test firmware prints progress lines (benchmarks; set in code, not in the file).
    bool report_progress = false;
};

struct SystemConfig {
    std::uint64_t main_storage_mib = 0;
    std::vector<LparConfig> lpars;
};

// Fig. 3A: 509 MiB of main storage, LPAR1 at 0 with 128 MiB, LPAR2 at 128 with 256 MiB.
SystemConfig fig3a_config();

// How many LPARs may be defined at once (configuration file and lpar.define together): each
// costs memory, threads and log lines even while only defined.
inline constexpr std::size_t kMaxLpars = 64;
// Throws Error(Refused) naming `name` and the limit when `defined` LPARs leave no room for one
// more.
void check_lpar_limit(std::size_t defined, const std::string& name);

// Throws Error(InvalidArgument) naming the key ("lpars[1].size_mib: expected ...").
SystemConfig parse_config(const nlohmann::json& document);
SystemConfig load_config_file(const std::string& path);
nlohmann::json to_json(const SystemConfig& config);

}  // namespace lparvisor
