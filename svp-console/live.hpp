// svp's live views: event lines for `svp watch` and the progress bar of long commands.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace lparvisor::svp {

// One human line (no '\n') for an event notification's params: "12:34:56.789  mvstor.phase
// LPAR2  phase=copy us=30000", at the event's own time (its "time", local), or at `now` for an
// event without one (a daemon older than the timestamps).
[[nodiscard]] std::string format_event(const nlohmann::json& params,
                                       std::chrono::system_clock::time_point now);

// The wall-clock time of an RFC 3339 UTC timestamp "2026-12-07T10:01:02.123456Z"; nullopt when
// the text is not one.
[[nodiscard]] std::optional<std::chrono::system_clock::time_point> parse_event_time(
    std::string_view text);

// "[#####.....] 128/256 MiB copy": `width` cells of '#' (done) and '.' (to do).
[[nodiscard]] std::string progress_bar(std::uint64_t done_bytes, std::uint64_t total_bytes,
                                       std::string_view label, std::size_t width = 30);

}  // namespace lparvisor::svp
