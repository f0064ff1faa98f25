#include "table.hpp"

#include <algorithm>
#include <array>
#include <string_view>
#include <vector>

#include <fmt/format.h>

namespace lparvisor::svp {

namespace {

constexpr std::string_view kColumnGap = "   ";

struct Column {
    std::string_view title;
    std::string_view unit;  // the second header line
    bool right_aligned;
};

// Fig. 3A's columns first, in the patent's order (scripts read them by position), then MAX SIZE
// (how far EXPAND may grow the LPAR; only when some LPAR can grow), the guest kind and the state.
// Widths grow with the data; the headings fix the minimum.
enum ColumnId : std::size_t { kName, kOrigin, kSize, kGap, kMax, kGuest, kState, kColumnCount };
constexpr std::array<Column, kColumnCount> kColumns{{
    {"LPAR NAME", "", false},
    {"MS AREA ORIGIN", "(MiB)", true},
    {"MS AREA SIZE", "(MiB)", true},
    {"MS GAP", "(MiB)", true},
    {"MAX SIZE", "(MiB)", true},
    {"GUEST", "", false},
    {"STATE", "", false},
}};
using Cells = std::array<std::string, kColumnCount>;

std::string state_text(const nlohmann::json& lpar) {
    std::string state = lpar.at("state").get<std::string>();
    const std::string reason = lpar.value("reason", "");
    if (!reason.empty()) state += fmt::format(" ({})", reason);
    return state;
}

// Whether the LPAR has a virtio-mem region: room to grow, or some of it plugged already.
bool can_grow(const nlohmann::json& lpar) {
    const auto size = lpar.at("size_mib").get<std::uint64_t>();
    return lpar.value("max_size_mib", std::uint64_t{0}) > size ||
           lpar.value("plugged_mib", std::uint64_t{0}) > 0;
}

void append_row(std::string& out, const Cells& cells,
                const std::array<std::size_t, kColumnCount>& widths,
                const std::array<bool, kColumnCount>& shown, bool data_row) {
    std::string line;
    for (std::size_t i = 0; i < cells.size(); ++i) {
        if (!shown[i]) continue;
        if (i > 0) line += kColumnGap;  // the name column is always shown
        const bool right = data_row && kColumns[i].right_aligned;
        line += right ? fmt::format("{:>{}}", cells[i], widths[i])
                      : fmt::format("{:<{}}", cells[i], widths[i]);
    }
    line.erase(line.find_last_not_of(' ') + 1);
    out += line;
    out += '\n';
}

// The headings and one line per LPAR. An LPAR without storage ("defined") has no origin or gap
// yet: "-" (its definition's origin, if any, is only a wish). MAX SIZE is "-" for an LPAR that
// cannot grow.
std::string format_rows(const nlohmann::json& lpars) {
    std::vector<Cells> rows;
    std::array<bool, kColumnCount> shown;
    shown.fill(true);
    shown[kMax] = false;
    for (const auto& lpar : lpars) {
        const bool placed = lpar.value("has_storage", true);
        const bool grows = can_grow(lpar);
        shown[kMax] = shown[kMax] || grows;
        Cells row;
        row[kName] = lpar.at("name").get<std::string>();
        row[kOrigin] = placed ? std::to_string(lpar.at("origin_mib").get<std::uint64_t>()) : "-";
        row[kSize] = std::to_string(lpar.at("size_mib").get<std::uint64_t>());
        row[kMax] = grows ? std::to_string(lpar.at("max_size_mib").get<std::uint64_t>()) : "-";
        row[kGap] = placed ? std::to_string(lpar.at("gap_mib").get<std::uint64_t>()) : "-";
        row[kGuest] = lpar.value("guest", std::string("-"));
        row[kState] = state_text(lpar);
        rows.push_back(std::move(row));
    }
    std::array<std::size_t, kColumnCount> widths{};
    for (std::size_t i = 0; i < kColumnCount; ++i) {
        widths[i] = std::max(kColumns[i].title.size(), kColumns[i].unit.size());
        for (const auto& row : rows) widths[i] = std::max(widths[i], row[i].size());
    }
    std::string out;
    Cells titles, units;
    for (std::size_t i = 0; i < kColumnCount; ++i) {
        titles[i] = kColumns[i].title;
        units[i] = kColumns[i].unit;
    }
    append_row(out, titles, widths, shown, false);
    append_row(out, units, widths, shown, false);
    for (const auto& row : rows) append_row(out, row, widths, shown, true);
    return out;
}

}  // namespace

std::string format_lpar_row(const nlohmann::json& row) {
    return format_rows(nlohmann::json::array({row}));
}

std::string format_lpar_table(const nlohmann::json& list_result) {
    std::string out = format_rows(list_result.at("lpars"));
    out += fmt::format("\nAVAILABLE PHYSICAL MAIN STORAGE AREA: {} MiB (free {} MiB)\n",
                       list_result.at("main_storage_mib").get<std::uint64_t>(),
                       list_result.at("free_mib").get<std::uint64_t>());
    return out;
}

std::string format_bytes(std::uint64_t bytes) {
    constexpr std::uint64_t kMiB = std::uint64_t{1024} * 1024;
    if (bytes % kMiB == 0) return fmt::format("{} MiB", bytes / kMiB);
    if (bytes < kMiB) return fmt::format("{} bytes", bytes);
    return fmt::format("{:.1f} MiB", static_cast<double>(bytes) / kMiB);
}

std::string format_ms(std::uint64_t microseconds) {
    return fmt::format("{:.1f} ms", static_cast<double>(microseconds) / 1000.0);
}

std::string format_mvstor(const nlohmann::json& mvstor_result) {
    std::string out =
        fmt::format("MVSTOR {}: {} -> {} MiB, {} copied, pause {}, total {}\n",
                    mvstor_result.at("lpar").get<std::string>(),
                    mvstor_result.at("old_origin_mib").get<std::uint64_t>(),
                    mvstor_result.at("new_origin_mib").get<std::uint64_t>(),
                    format_bytes(mvstor_result.at("bytes_copied").get<std::uint64_t>()),
                    format_ms(mvstor_result.at("pause_us").get<std::uint64_t>()),
                    format_ms(mvstor_result.at("total_us").get<std::uint64_t>()));
    // A live move: how many stops, the longest, and how the policy finished it.
    if (mvstor_result.value("mode", "") == "live") {
        std::uint64_t longest = 0;
        const auto stops = mvstor_result.value("stops_us", nlohmann::json::array());
        for (const auto& stop : stops) longest = std::max(longest, stop.get<std::uint64_t>());
        out += fmt::format("  live: {} stop(s), longest {}, {} round(s), {} re-copied, {}\n",
                           stops.size(), format_ms(longest), mvstor_result.value("rounds", 0u),
                           format_bytes(mvstor_result.value("bytes_recopied", std::uint64_t{0})),
                           mvstor_result.value("policy_branch", std::string()));
    }
    std::size_t name_width = 5;
    for (const auto& phase : mvstor_result.at("phases")) {
        name_width = std::max(name_width, phase.at("phase").get<std::string>().size());
    }
    for (const auto& phase : mvstor_result.at("phases")) {
        out += fmt::format("  {:<{}}  {:>12}\n", phase.at("phase").get<std::string>(), name_width,
                           format_ms(phase.at("us").get<std::uint64_t>()));
    }
    return out;
}

std::string format_exchange(const nlohmann::json& result) {
    return fmt::format(
        "EXCHANGE {} {}: {} {} -> {} MiB, {} {} -> {} MiB, {} moved, pause {}, total {}\n",
        result.at("a").get<std::string>(), result.at("b").get<std::string>(),
        result.at("a").get<std::string>(), result.at("a_old_origin_mib").get<std::uint64_t>(),
        result.at("a_new_origin_mib").get<std::uint64_t>(), result.at("b").get<std::string>(),
        result.at("b_old_origin_mib").get<std::uint64_t>(),
        result.at("b_new_origin_mib").get<std::uint64_t>(),
        format_bytes(result.at("bytes_moved").get<std::uint64_t>()),
        format_ms(result.at("pause_us").get<std::uint64_t>()),
        format_ms(result.at("total_us").get<std::uint64_t>()));
}

std::string format_grow_plan(const nlohmann::json& result) {
    const auto lpar = result.at("lpar").get<std::string>();
    const auto mib = result.at("mib").get<std::uint64_t>();
    if (!result.at("possible").get<bool>())
        return fmt::format("{} cannot get {} MiB more: {}\n", lpar, mib,
                           result.at("reason").get<std::string>());
    const auto& steps = result.at("steps");
    std::string out;
    if (steps.empty()) {
        out = fmt::format("{}: {} MiB directly above it are already free\n", lpar, mib);
    } else {
        out =
            fmt::format("{}: {} {} MiB above it with {} MVSTOR(s), {} copied\n", lpar,
                        result.at("carried_out").get<bool>() ? "freed" : "to free", mib,
                        steps.size(), format_bytes(result.at("bytes_copied").get<std::uint64_t>()));
        // Carried out: each step with its MVSTOR's pause and total (the moves are in step order).
        const auto moves = result.value("moves", nlohmann::json::array());
        for (std::size_t i = 0; i < steps.size(); ++i) {
            const auto& step = steps[i];
            out += fmt::format(
                "  MVSTOR {} {} -> {} MiB ({} MiB)", step.at("lpar").get<std::string>(),
                step.at("from_mib").get<std::uint64_t>(), step.at("to_mib").get<std::uint64_t>(),
                step.at("size_mib").get<std::uint64_t>());
            if (i < moves.size()) {
                out += fmt::format(", pause {}, total {}",
                                   format_ms(moves[i].at("pause_us").get<std::uint64_t>()),
                                   format_ms(moves[i].at("total_us").get<std::uint64_t>()));
            }
            out += '\n';
        }
    }
    const auto reason = result.value("reason", std::string());
    if (!reason.empty()) out += "  note: " + reason + "\n";
    return out;
}

std::string format_resize(const std::string& verb, const nlohmann::json& result) {
    const auto old_size = result.at("old_size_mib").get<std::uint64_t>();
    const auto new_size = result.at("new_size_mib").get<std::uint64_t>();
    const bool grew = new_size >= old_size;
    return fmt::format("{} {}: {} -> {} MiB ({}{} MiB), {} MiB plugged, total {}\n", verb,
                       result.at("lpar").get<std::string>(), old_size, new_size, grew ? '+' : '-',
                       grew ? new_size - old_size : old_size - new_size,
                       result.at("plugged_mib").get<std::uint64_t>(),
                       format_ms(result.at("total_us").get<std::uint64_t>()));
}

std::string format_grow(const nlohmann::json& result) {
    return format_grow_plan(result.at("plan")) + format_resize("EXPAND", result.at("expansion"));
}

namespace {

// Limits such as 2^44-1 as that, not as 17592186044415.
std::string describe_number(std::uint64_t value) {
    for (unsigned bits = 32; bits <= 64; ++bits) {
        const std::uint64_t all_ones =
            bits == 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << bits) - 1;
        if (value == all_ones) return fmt::format("2^{}-1", bits);
    }
    return std::to_string(value);
}

std::string describe_pool(const std::string& runs) {
    if (runs == "inline") return "answered at once";
    if (runs == "session") return "about the connection";
    return runs + " pool";
}

// "integer 1..600000, default 10000", "string", "\"stop-and-copy\" | \"live\", default ..."
std::string describe_param_type(const nlohmann::json& param) {
    const std::string type = param.value("type", "?");
    std::string text;
    if (param.contains("choices")) {
        for (const auto& choice : param["choices"])
            text += fmt::format("{}\"{}\"", text.empty() ? "" : " | ", choice.get<std::string>());
    } else if (type == "integer") {
        text = fmt::format("integer {}..{}", describe_number(param.value("min", std::uint64_t{0})),
                           describe_number(param.value("max", std::uint64_t{0})));
        if (param.contains("multiple_of"))
            text += fmt::format(", a multiple of {}", param["multiple_of"].get<std::uint64_t>());
    } else if (param.contains("max_bytes")) {
        text = fmt::format("string <= {} bytes", param["max_bytes"].get<std::uint64_t>());
    } else if (param.contains("max_items")) {
        text = fmt::format("{} <= {}", type, param["max_items"].get<std::uint64_t>());
    } else {
        text = type;
    }
    if (param.value("required", false)) {
        text += ", required";
    } else if (param.contains("default")) {
        const auto& fallback = param["default"];
        text +=
            ", default " + (fallback.is_string() ? fallback.get<std::string>() : fallback.dump());
    } else {
        text += ", optional";
    }
    return text;
}

}  // namespace

std::string format_describe(const nlohmann::json& result) {
    std::string out = fmt::format("lparvisor {} control protocol\n\nMETHODS\n",
                                  result.value("version", std::string("?")));
    for (const auto& method : result.at("methods")) {
        out += fmt::format("  {} ({}): {}\n", method.at("name").get<std::string>(),
                           describe_pool(method.value("runs", "?")), method.value("summary", ""));
        for (const auto& param : method.at("params")) {
            out += fmt::format("      {:<22} {}: {}\n", param.at("name").get<std::string>(),
                               describe_param_type(param), param.value("description", ""));
        }
    }
    out += "\nEVENTS (each also has";
    for (const auto& field : result.value("common_event_fields", nlohmann::json::array()))
        out += " " + field.get<std::string>();
    out += ")\n";
    for (const auto& event : result.at("events")) {
        out += fmt::format("  {}: {}\n", event.at("name").get<std::string>(),
                           event.value("summary", ""));
        for (const auto& field : event.at("fields")) {
            out += fmt::format("      {:<22} {}: {}\n", field.at("name").get<std::string>(),
                               field.value("type", "?"), field.value("description", ""));
        }
    }
    return out;
}

std::string format_stats(const nlohmann::json& result) {
    std::string out = fmt::format("{:<10} {:<11} {:>9} {:>10} {:>9} {:>10} {:>10}\n", "LPAR",
                                  "state", "IPL", "exits", "run s", "disk reqs", "disk MiB");
    for (const auto& lpar : result.at("lpars")) {
        std::uint64_t exits = 0;
        for (const auto& [reason, count] : lpar.at("vcpu_exits").items())
            exits += count.get<std::uint64_t>();
        const auto disk_bytes = lpar.at("disk_read_bytes").get<std::uint64_t>() +
                                lpar.at("disk_written_bytes").get<std::uint64_t>();
        out += fmt::format("{:<10} {:<11} {:>9} {:>10} {:>9.1f} {:>10} {:>10.1f}\n",
                           lpar.at("name").get<std::string>(), lpar.at("state").get<std::string>(),
                           lpar.at("ipl").get<std::uint64_t>(), exits,
                           static_cast<double>(lpar.at("vcpu_run_us").get<std::uint64_t>()) / 1e6,
                           lpar.at("disk_requests").get<std::uint64_t>(),
                           static_cast<double>(disk_bytes) / (1024.0 * 1024.0));
    }
    out += fmt::format("\n{:<10} {:>6} {:>8} {:>10}\n", "operation", "ok", "failed", "copied");
    for (const auto& [kind, operation] : result.at("operations").items()) {
        std::uint64_t ok = 0, failed = 0;
        for (const auto& [outcome, count] : operation.at("outcomes").items())
            (outcome == "ok" ? ok : failed) += count.get<std::uint64_t>();
        out += fmt::format("{:<10} {:>6} {:>8} {:>10}\n", kind, ok, failed,
                           format_bytes(operation.at("bytes_copied").get<std::uint64_t>()));
    }
    const auto& pauses = result.at("pauses");
    const auto count = pauses.at("count").get<std::uint64_t>();
    if (count > 0) {
        out += fmt::format("\npauses: {}, mean {}", count,
                           format_ms(pauses.at("sum_us").get<std::uint64_t>() / count));
        const auto& bounds = pauses.at("upper_us");
        const auto& cumulative = pauses.at("cumulative");
        for (std::size_t i = 0; i < bounds.size() && i < cumulative.size(); ++i) {
            if (cumulative[i].get<std::uint64_t>() * 2 >= count) {
                out += fmt::format(", half at most {}", format_ms(bounds[i].get<std::uint64_t>()));
                break;
            }
        }
        out += "\n";
    } else {
        out += "\npauses: none yet\n";
    }
    out += fmt::format("main storage {} MiB, free {} MiB, largest free gap {} MiB\n",
                       result.at("main_storage_mib").get<std::uint64_t>(),
                       result.at("free_mib").get<std::uint64_t>(),
                       result.at("largest_free_gap_mib").get<std::uint64_t>());
    return out;
}

}  // namespace lparvisor::svp
