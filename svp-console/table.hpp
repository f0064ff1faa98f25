// svp's human-readable output: the patent's Fig. 3A table and the MVSTOR report.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace lparvisor::svp {

// The lpar.list result as the Fig. 3A table (with MAX SIZE when some LPAR can grow, and the
// guest kind), ending in the AVAILABLE ... line and a newline.
// Throws nlohmann::json::exception when the result lacks a field.
[[nodiscard]] std::string format_lpar_table(const nlohmann::json& list_result);

// One LPAR row (lpar.define, lpar.activate ...) under the table's headings.
[[nodiscard]] std::string format_lpar_row(const nlohmann::json& row);

// The storage.mvstor result: one summary line, then one line per phase.
[[nodiscard]] std::string format_mvstor(const nlohmann::json& mvstor_result);

// "256 MiB", "1.5 MiB", "4096 bytes".
[[nodiscard]] std::string format_bytes(std::uint64_t bytes);

// Microseconds as milliseconds with one decimal: "31.2 ms".
[[nodiscard]] std::string format_ms(std::uint64_t microseconds);

// EXCHANGE's result: who went where, bytes moved, the pause.
std::string format_exchange(const nlohmann::json& result);
// storage.plan_grow / storage.make_room: the MVSTORs (planned or made, with each one's pause and
// total once made) or why it is impossible.
std::string format_grow_plan(const nlohmann::json& result);
// storage.expand / storage.shrink: "EXPAND LPAR1: 128 -> 192 MiB (+64 MiB), 64 MiB plugged, total
// 4.2 ms". `verb` is EXPAND or SHRINK.
std::string format_resize(const std::string& verb, const nlohmann::json& result);
// storage.grow: the room-making moves (as make-room), then the EXPAND line.
std::string format_grow(const nlohmann::json& result);
// system.stats: per LPAR its exits, time in KVM_RUN and disk I/O; per operation its outcomes and
// bytes; the pauses (count, mean, the bucket the median falls in); main storage's free space.
std::string format_stats(const nlohmann::json& result);
// system.describe: each method with where it runs and its parameters (type, range, default),
// then each event with its fields.
std::string format_describe(const nlohmann::json& result);

}  // namespace lparvisor::svp
