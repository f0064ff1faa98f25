#include "control/metrics.hpp"

#include <array>

#include <fmt/format.h>

namespace lparvisor::control {

namespace {

constexpr std::uint64_t kMiB = std::uint64_t{1024} * 1024;

// Every state lpar.list reports: each LPAR gets one series per state, 1 for the one it is in (a
// state set, so that a query can sum over states without knowing them).
constexpr std::array<std::string_view, 7> kStates{
    "defined", "activating", "running", "relocating", "stopped", "failed", "deactivating"};

class Writer {
  public:
    void family(std::string_view name, std::string_view type, std::string_view help) {
        fmt::format_to(std::back_inserter(text_), "# HELP {} {}\n# TYPE {} {}\n", name, help, name,
                       type);
    }
    void sample(std::string_view name, std::string_view labels, std::uint64_t value) {
        fmt::format_to(std::back_inserter(text_), "{}{}{}{} {}\n", name, labels.empty() ? "" : "{",
                       labels, labels.empty() ? "" : "}", value);
    }
    void sample(std::string_view name, std::string_view labels, double value) {
        fmt::format_to(std::back_inserter(text_), "{}{}{}{} {}\n", name, labels.empty() ? "" : "{",
                       labels, labels.empty() ? "" : "}", value);
    }
    std::string take() { return std::move(text_); }

  private:
    std::string text_;
};

std::string lpar_label(const LparStats& lpar) {
    return fmt::format("lpar=\"{}\"", escape_label_value(lpar.name));
}

double seconds(std::uint64_t us) {
    return static_cast<double>(us) / 1e6;
}

// One family with a sample per LPAR (or per LPAR with storage), its value taken by `value`.
template <class Value>
void per_lpar(Writer& out, const SystemStats& stats, std::string_view name, std::string_view type,
              std::string_view help, Value value, bool storage_only = false) {
    out.family(name, type, help);
    for (const auto& lpar : stats.lpars)
        if (!storage_only || lpar.has_storage) out.sample(name, lpar_label(lpar), value(lpar));
}

void write_storage(Writer& out, const SystemStats& stats) {
    out.family("lparvisor_main_storage_bytes", "gauge", "Size of main storage (the arena).");
    out.sample("lparvisor_main_storage_bytes", "", stats.main_storage_mib * kMiB);
    out.family("lparvisor_main_storage_free_bytes", "gauge",
               "Main storage no LPAR owns, all gaps together.");
    out.sample("lparvisor_main_storage_free_bytes", "", stats.free_mib * kMiB);
    out.family("lparvisor_main_storage_largest_free_gap_bytes", "gauge",
               "The largest contiguous free gap: the largest LPAR that could be placed now.");
    out.sample("lparvisor_main_storage_largest_free_gap_bytes", "",
               stats.largest_free_gap_mib * kMiB);
    out.family("lparvisor_uptime_seconds", "gauge", "Seconds since the daemon started.");
    out.sample("lparvisor_uptime_seconds", "", seconds(stats.uptime_us));
}

void write_lpars(Writer& out, const SystemStats& stats) {
    out.family("lparvisor_lpar_info", "gauge", "One series per defined LPAR: its guest kind.");
    for (const auto& lpar : stats.lpars)
        out.sample("lparvisor_lpar_info",
                   fmt::format("{},guest=\"{}\"", lpar_label(lpar), escape_label_value(lpar.guest)),
                   std::uint64_t{1});
    out.family("lparvisor_lpar_state", "gauge",
               "1 for the state the LPAR is in, 0 for the others.");
    for (const auto& lpar : stats.lpars)
        for (auto state : kStates)
            out.sample("lparvisor_lpar_state",
                       fmt::format("{},state=\"{}\"", lpar_label(lpar), state),
                       std::uint64_t{lpar.state == state ? 1u : 0u});
    per_lpar(
        out, stats, "lparvisor_lpar_storage_origin_bytes", "gauge",
        "Where the LPAR's storage starts in main storage (LPARs with storage only).",
        [](const LparStats& l) { return l.origin_mib * kMiB; }, true);
    per_lpar(
        out, stats, "lparvisor_lpar_storage_size_bytes", "gauge", "The LPAR's storage size.",
        [](const LparStats& l) { return l.size_mib * kMiB; }, true);
    per_lpar(
        out, stats, "lparvisor_lpar_virtio_mem_plugged_bytes", "gauge",
        "Storage the guest has plugged of its virtio-mem region (EXPAND).",
        [](const LparStats& l) { return l.plugged_mib * kMiB; }, true);
    per_lpar(out, stats, "lparvisor_lpar_ipl", "gauge",
             "Which IPL of the LPAR the per-IPL counters count (they start at 0 with each).",
             [](const LparStats& l) { return l.ipl; });
    out.family("lparvisor_lpar_vcpu_exits_total", "counter",
               "KVM_RUN exits of the LPAR's vCPUs since its IPL, by reason.");
    for (const auto& lpar : stats.lpars)
        for (const auto& exit : lpar.vcpu_exits)
            out.sample(
                "lparvisor_lpar_vcpu_exits_total",
                fmt::format("{},reason=\"{}\"", lpar_label(lpar), escape_label_value(exit.reason)),
                exit.count);
    per_lpar(out, stats, "lparvisor_lpar_vcpu_run_seconds_total", "counter",
             "Time the LPAR's vCPUs spent in KVM_RUN since its IPL, summed over its vCPUs.",
             [](const LparStats& l) { return seconds(l.vcpu_run_us); });
    per_lpar(out, stats, "lparvisor_lpar_disk_requests_total", "counter",
             "virtio-blk requests served since the IPL, all the LPAR's disks.",
             [](const LparStats& l) { return l.disk_requests; });
    per_lpar(out, stats, "lparvisor_lpar_disk_errors_total", "counter",
             "virtio-blk requests answered with an error since the IPL.",
             [](const LparStats& l) { return l.disk_errors; });
    per_lpar(out, stats, "lparvisor_lpar_disk_read_bytes_total", "counter",
             "Bytes the guest read from its disks since the IPL.",
             [](const LparStats& l) { return l.disk_read_bytes; });
    per_lpar(out, stats, "lparvisor_lpar_disk_written_bytes_total", "counter",
             "Bytes the guest wrote to its disks since the IPL.",
             [](const LparStats& l) { return l.disk_written_bytes; });
}

void write_operations(Writer& out, const SystemStats& stats) {
    out.family("lparvisor_operations_total", "counter",
               "Storage operations (mvstor, exchange, expand, shrink) by how they ended.");
    for (const auto& operation : stats.operations)
        for (const auto& outcome : operation.outcomes)
            out.sample("lparvisor_operations_total",
                       fmt::format("kind=\"{}\",outcome=\"{}\"", operation.kind, outcome.outcome),
                       outcome.count);
    out.family("lparvisor_operation_copied_bytes_total", "counter",
               "Bytes the successful operations copied (exchange: moved).");
    for (const auto& operation : stats.operations)
        out.sample("lparvisor_operation_copied_bytes_total",
                   fmt::format("kind=\"{}\"", operation.kind), operation.bytes_copied);
    out.family("lparvisor_operation_recopied_bytes_total", "counter",
               "Bytes a live MVSTOR copied again because the guest or a device wrote them.");
    for (const auto& operation : stats.operations)
        out.sample("lparvisor_operation_recopied_bytes_total",
                   fmt::format("kind=\"{}\"", operation.kind), operation.bytes_recopied);
    const auto& pauses = stats.pauses;
    out.family("lparvisor_pause_seconds", "histogram",
               "How long the guests were stopped: each MVSTOR stop and each EXCHANGE.");
    for (std::size_t i = 0; i < pauses.upper_us.size() && i < pauses.cumulative.size(); ++i)
        out.sample("lparvisor_pause_seconds_bucket",
                   fmt::format("le=\"{}\"", seconds(pauses.upper_us[i])), pauses.cumulative[i]);
    out.sample("lparvisor_pause_seconds_bucket", "le=\"+Inf\"", pauses.count);
    out.sample("lparvisor_pause_seconds_sum", "", seconds(pauses.sum_us));
    out.sample("lparvisor_pause_seconds_count", "", pauses.count);
}

void write_http(Writer& out, const HttpCounters& http) {
    out.family("lparvisor_http_responses_total", "counter",
               "Responses of the HTTP listener by status code.");
    for (const auto& [code, count] : http.responses)
        out.sample("lparvisor_http_responses_total", fmt::format("code=\"{}\"", code), count);
    out.family("lparvisor_http_connections", "gauge", "Open HTTP connections.");
    out.sample("lparvisor_http_connections", "", http.connections);
    out.family("lparvisor_http_event_streams", "gauge", "Open /events streams (SVP frame pages).");
    out.sample("lparvisor_http_event_streams", "", http.event_streams);
}

}  // namespace

std::string escape_label_value(std::string_view value) {
    std::string out;
    out.reserve(value.size());
    for (char c : value) {
        if (c == '\\' || c == '"') {
            out.push_back('\\');
            out.push_back(c);
        } else if (c == '\n') {
            out += "\\n";
        } else {
            out.push_back(c);
        }
    }
    return out;
}

std::string prometheus_text(const SystemStats& stats, const HttpCounters& http) {
    Writer out;
    write_storage(out, stats);
    write_lpars(out, stats);
    write_operations(out, stats);
    write_http(out, http);
    return out.take();
}

}  // namespace lparvisor::control
