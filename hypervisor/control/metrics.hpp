// The Prometheus text exposition format (version 0.0.4) of the daemon's counters: what the HTTP
// listener serves at /metrics. The same SystemStats is system.stats' result, so the two can never
// disagree. Pure: no I/O, no locks; tests and the fuzzer call it directly.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "control/api.hpp"

namespace lparvisor::control {

// Counters of the HTTP listener itself, appended after the daemon's.
struct HttpCounters {
    std::vector<std::pair<unsigned, std::uint64_t>> responses;  // (status code, how many)
    std::uint64_t connections = 0;                              // open now
    std::uint64_t event_streams = 0;                            // open /events streams
};

[[nodiscard]] std::string prometheus_text(const SystemStats& stats, const HttpCounters& http);

// A label value with \, " and newline escaped as the format requires.
[[nodiscard]] std::string escape_label_value(std::string_view value);

}  // namespace lparvisor::control
