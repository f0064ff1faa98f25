// lparvisor-bench: MVSTOR of a running firmware LPAR, stop-and-copy and live, beside the
// physical bound (memmove of the same bytes in the same run). Not a test: it measures and
// reports; the guest's own `verify ok` lines are still checked so a broken move is visible.
//
// Per case (size x rate x mode) it builds a fresh Hypervisor with one LPAR, waits until the
// firmware has written all its storage (first `verify ok round=1`), measures the guest's
// throughput, runs the warmup and the measured moves (out and back by an overlapping delta,
// every 5th and the last disjoint), measures again, and records every stop's pause, in
// populations (stop-and-copy; live: chunk and final) with n and nearest-rank percentiles.
// Also: the environment (KVM kind, CPU, kernel, commit, hugetlb pool), each case's real
// backing (hugetlb or shmem), KVM's binary stats before/after the measured moves, and the
// guest's own view from the firmware's progress lines (largest gap per move, bytes per 100 ms).
// docs/PERFORMANCE.md, "What each figure means".
//
// Guest throughput: the bench polls the LPAR's console and timestamps each new `verify ok
// round=N` line (poll period 5 ms). "rounds/s" in a window = rounds completed in the window /
// window length. One round = verify the whole test area + rewrite the working set (paced at the
// configured rate). verified_MBps = rounds/s x test-area bytes.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <sys/mman.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "kvm/binary_stats.hpp"
#include "lpar/hypervisor.hpp"
#include "support/guest_console.hpp"
#include "util/error.hpp"

using namespace lparvisor;
using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

namespace {

constexpr std::uint64_t kBenchMiB = 1024 * 1024;
constexpr std::uint64_t kTestAreaOffset = 2 * kBenchMiB;  // LPV_TEST_AREA_GPA

double seconds_since(Clock::time_point t0, Clock::time_point t) {
    return std::chrono::duration<double>(t - t0).count();
}

// ----------------------------------------------------------------------- workload
struct Workload {
    std::string label;            // "idle", "25000", "max"
    std::uint64_t pages_per_sec;  // 0 = as fast as it can
    std::uint64_t working_set_mib;
};

// "idle": the firmware cannot stop writing altogether and keep verifying, so idle is the
// smallest working set (1 MiB) rewritten at 256 pages/s (1 MiB/s); the guest still reads
// (verifies) its whole storage every round, which dirties nothing.
Workload parse_rate(const std::string& s, std::uint64_t ws_mib) {
    if (s == "idle") return {s, 256, 1};
    if (s == "max") return {s, 0, ws_mib};
    std::size_t used = 0;
    unsigned long long v = std::stoull(s, &used);
    if (used != s.size() || v == 0) throw std::invalid_argument("bad rate: " + s);
    return {s, v, ws_mib};
}

// ----------------------------------------------------------------------- round monitor
// Polls the console in its own thread and timestamps each new highest verified round.
class RoundMonitor {
  public:
    RoundMonitor(Hypervisor& hv, std::string lpar) : hv_(hv), lpar_(std::move(lpar)) {
        thread_ = std::thread([this] { loop(); });
    }
    ~RoundMonitor() {
        stop_ = true;
        thread_.join();
    }
    struct Event {
        unsigned long round;
        Clock::time_point at;
    };
    std::vector<Event> events() {
        std::lock_guard lock(mutex_);
        return events_;
    }
    unsigned long round() {
        std::lock_guard lock(mutex_);
        return events_.empty() ? 0 : events_.back().round;
    }
    std::string failure() {
        std::lock_guard lock(mutex_);
        return failure_;
    }
    // The firmware's "progress bytes=B max_gap_us=G cpu=C" lines (LPV_BOOT_FLAG_REPORT_PROGRESS),
    // each stamped when the monitor saw it.
    struct Progress {
        std::uint64_t bytes;
        std::uint64_t max_gap_us;
        unsigned cpu;
        Clock::time_point at;
    };
    std::vector<Progress> progress() {
        std::lock_guard lock(mutex_);
        return progress_;
    }
    // Waits until the verified round reaches `target` (or a FAIL, or the timeout).
    bool wait_round(unsigned long target, std::chrono::seconds timeout) {
        auto deadline = Clock::now() + timeout;
        while (Clock::now() < deadline) {
            if (round() >= target) return true;
            if (!failure().empty()) return false;
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
        return round() >= target;
    }
    // Rounds completed in [t0, t1] / (t1 - t0).
    double rate(Clock::time_point t0, Clock::time_point t1, unsigned* count = nullptr) {
        unsigned n = 0;
        for (const auto& e : events())
            if (e.at >= t0 && e.at <= t1) ++n;
        if (count) *count = n;
        double dt = std::chrono::duration<double>(t1 - t0).count();
        return dt > 0 ? n / dt : 0.0;
    }

  private:
    void loop() {
        while (!stop_) {
            std::string text;
            try {
                text = hv_.console(lpar_, 8192);
            } catch (const std::exception&) {
            }
            auto now = Clock::now();
            read_progress_lines(now);
            auto progress = test::parse_firmware_console(text);
            {
                std::lock_guard lock(mutex_);
                auto it = progress.round_by_cpu.find(0);
                unsigned long r = it == progress.round_by_cpu.end() ? 0 : it->second;
                unsigned long last = events_.empty() ? 0 : events_.back().round;
                if (r > last) events_.push_back({r, now});  // several at once: one stamp
                if (failure_.empty() && !progress.first_failure.empty())
                    failure_ = progress.first_failure;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
    }
    // The console from offset_ on: complete lines only, "progress" lines kept.
    void read_progress_lines(Clock::time_point now) {
        control::ConsoleText t;
        try {
            t = hv_.console(lpar_, offset_, 1 << 16);
        } catch (const std::exception&) {
            return;
        }
        if (t.start > offset_) partial_.clear();  // lost some: drop the torn line
        partial_ += t.text;
        offset_ = t.start + t.text.size();
        std::size_t begin = 0;
        for (std::size_t end; (end = partial_.find('\n', begin)) != std::string::npos;
             begin = end + 1) {
            unsigned long long bytes = 0, gap = 0;
            unsigned cpu = 0;
            const std::string line = partial_.substr(begin, end - begin);
            if (std::sscanf(line.c_str(), "progress bytes=%llu max_gap_us=%llu cpu=%u", &bytes,
                            &gap, &cpu) == 3) {
                std::lock_guard lock(mutex_);
                progress_.push_back({bytes, gap, cpu, now});
            }
        }
        partial_.erase(0, begin);
    }

    Hypervisor& hv_;
    std::string lpar_;
    std::uint64_t offset_ = 0;
    std::string partial_;
    std::vector<Progress> progress_;
    std::mutex mutex_;
    std::vector<Event> events_;
    std::string failure_;
    std::atomic<bool> stop_{false};
    std::thread thread_;
};

// ----------------------------------------------------------------------- statistics
std::uint64_t percentile(std::vector<std::uint64_t> v, double p) {  // nearest rank
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    auto rank = static_cast<std::size_t>(std::ceil(p / 100.0 * static_cast<double>(v.size())));
    return v[std::clamp<std::size_t>(rank, 1, v.size()) - 1];
}

// A population of stops (microseconds): n and nearest-rank percentiles.
json population_json(const std::vector<std::uint64_t>& v) {
    return {{"n", v.size()},
            {"p50", percentile(v, 50)},
            {"p90", percentile(v, 90)},
            {"p99", percentile(v, 99)},
            {"max", percentile(v, 100)}};
}

// ----------------------------------------------------------------------- environment
bool path_exists(const char* path) {
    return ::access(path, F_OK) == 0;
}

std::string first_line(const std::string& path) {
    std::ifstream in(path);
    std::string line;
    std::getline(in, line);
    return line;
}

struct CpuInfo {
    std::string model;
    unsigned processors = 0;
    bool hypervisor_flag = false;  // "hypervisor" in the flags: this kernel runs in a VM
};

CpuInfo read_cpuinfo() {
    CpuInfo info;
    std::ifstream in("/proc/cpuinfo");
    for (std::string line; std::getline(in, line);) {
        auto colon = line.find(':');
        std::string value = colon == std::string::npos ? "" : line.substr(colon + 1);
        if (!value.empty() && value[0] == ' ') value.erase(0, 1);
        if (line.rfind("processor", 0) == 0)
            ++info.processors;
        else if (info.model.empty() && line.rfind("model name", 0) == 0)
            info.model = value;
        else if (line.rfind("flags", 0) == 0 && !info.hypervisor_flag)
            info.hypervisor_flag = (" " + value + " ").find(" hypervisor ") != std::string::npos;
    }
    return info;
}

// pvm | hardware | nested (KVM inside a VM with hardware virtualization) | what
// LPARVISOR_BENCH_KVM_KIND says (bench/run.sh: "nested-tcg" inside scripts/nested-kvm) | unknown.
std::string kvm_kind(const CpuInfo& cpu) {
    if (const char* env = std::getenv("LPARVISOR_BENCH_KVM_KIND"); env && *env) return env;
    if (path_exists("/sys/module/kvm_pvm")) return "pvm";
    if (path_exists("/sys/module/kvm_amd") || path_exists("/sys/module/kvm_intel"))
        return cpu.hypervisor_flag ? "nested" : "hardware";
    return "unknown";
}

// The 2 MiB hugetlb pool: sysfs, else /proc/meminfo's HugePages_Total/Free.
json hugetlb_pool_json() {
    const std::string dir = "/sys/kernel/mm/hugepages/hugepages-2048kB/";
    auto number = [](const std::string& text) -> std::uint64_t {
        try {
            return std::stoull(text);
        } catch (const std::exception&) {
            return 0;
        }
    };
    if (path_exists(dir.c_str()))
        return {{"page_kib", 2048},
                {"nr_hugepages", number(first_line(dir + "nr_hugepages"))},
                {"free_hugepages", number(first_line(dir + "free_hugepages"))}};
    json j = {{"page_kib", 2048}, {"nr_hugepages", 0}, {"free_hugepages", 0}};
    std::ifstream in("/proc/meminfo");
    for (std::string line; std::getline(in, line);) {
        auto value = line.substr(line.find(':') + 1);
        if (line.rfind("HugePages_Total:", 0) == 0) j["nr_hugepages"] = number(value);
        if (line.rfind("HugePages_Free:", 0) == 0) j["free_hugepages"] = number(value);
    }
    return j;
}

json environment_json() {
    const CpuInfo cpu = read_cpuinfo();
    struct utsname u {};
    ::uname(&u);
    const char* source = std::getenv("BENCH_SOURCE");
    return {{"kvm_kind", kvm_kind(cpu)},
            {"cpu_model", cpu.model},
            {"cores",
             {{"hardware_concurrency", std::thread::hardware_concurrency()},
              {"cpuinfo_processors", cpu.processors}}},
            {"kernel", {{"release", u.release}, {"version", u.version}}},
            {"commit", source && *source ? source : "unknown"},
            {"hugetlb_pool", hugetlb_pool_json()}};
}

// ----------------------------------------------------------------------- KVM's statistics
// The stats the bench keeps (where this kernel has them; tests/kvm/test_kvm_stats.cpp and
// `python3` on KVM_GET_STATS_FD list them all): vCPU stats summed over the vCPUs, VM stats.
const std::vector<std::string> kVcpuStatNames{
    "exits",     "io_exits",  "mmio_exits", "halt_exits",    "irq_exits", "signal_exits",
    "pf_taken",  "pf_fixed",  "pf_fast",    "pf_spurious",   "pf_guest",  "pf_emulate",
    "pf_parked", "tlb_flush", "invlpg",     "insn_emulation"};
const std::vector<std::string> kVmStatNames{"remote_tlb_flush",  "remote_tlb_flush_requests",
                                            "mmu_shadow_zapped", "mmu_pte_write",
                                            "mmu_cache_miss",    "mmu_recycled",
                                            "mmu_flooded",       "pages_4k",
                                            "pages_2m",          "pages_1g",
                                            "nx_lpage_splits"};

json chosen_stats(const kvm::StatValues& values, const std::vector<std::string>& names) {
    json j = json::object();
    for (const auto& name : names)
        if (auto it = values.find(name); it != values.end()) j[name] = it->second;
    return j;
}

json stats_json(const kvm::KvmStatsSnapshot& s) {
    return {{"vcpu", chosen_stats(s.vcpus, kVcpuStatNames)},
            {"vm", chosen_stats(s.vm, kVmStatNames)}};
}

// after - before per kept name (signed: an instant stat such as pages_4k may fall).
json stats_delta(const json& before, const json& after) {
    json d = json::object();
    for (const auto& group : {"vcpu", "vm"}) {
        d[group] = json::object();
        for (const auto& [name, value] : after[group].items())
            if (before[group].contains(name))
                d[group][name] = static_cast<std::int64_t>(
                    value.get<std::uint64_t>() - before[group][name].get<std::uint64_t>());
    }
    return d;
}

json stat_names_json(const kvm::KvmStatsSnapshot& s) {
    json j = {{"vcpu", json::array()}, {"vm", json::array()}};
    for (const auto& [name, value] : s.vcpus) j["vcpu"].push_back(name);
    for (const auto& [name, value] : s.vm) j["vm"].push_back(name);
    return j;
}

// ----------------------------------------------------------------------- memmove bound
struct MemmoveBound {
    double up_ms = 0, down_ms = 0, disjoint_ms = 0;
};

MemmoveBound measure_memmove(std::uint64_t size_mib, std::uint64_t delta_mib, unsigned repeats) {
    const std::uint64_t total = (2 * size_mib + 64) * kBenchMiB;
    void* p = ::mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw_errno("mmap memmove buffer");
    ::madvise(p, total, MADV_HUGEPAGE);
    auto* buf = static_cast<unsigned char*>(p);
    std::memset(buf, 0x5a, total);  // populated, as the arena is
    const std::uint64_t size = size_mib * kBenchMiB, delta = delta_mib * kBenchMiB;
    auto best = [&](unsigned char* dst, unsigned char* src) {
        double b = 1e30;
        for (unsigned i = 0; i < repeats; ++i) {
            auto t0 = Clock::now();
            std::memmove(dst, src, size);
            auto t1 = Clock::now();
            b = std::min(b, seconds_since(t0, t1) * 1e3);
        }
        return b;
    };
    MemmoveBound r;
    r.up_ms = best(buf + delta, buf);
    r.down_ms = best(buf, buf + delta);
    r.disjoint_ms = best(buf + size + 64 * kBenchMiB, buf);
    ::munmap(p, total);
    return r;
}

// ----------------------------------------------------------------------- one case
struct CaseSpec {
    std::uint64_t size_mib;
    Workload work;
    control::MvstorMode mode;
    unsigned moves;   // measured moves; 0: auto_moves()
    unsigned warmup;  // moves before them, not counted
    std::string firmware;
    double window_s;
    unsigned empty_stops;  // measured before the moves, the floor of any stop
};

json phases_json(const std::vector<control::PhaseTiming>& phases) {
    json j = json::object();
    for (const auto& p : phases) j[p.phase] = j.value(p.phase, 0ull) + p.microseconds;
    return j;
}

json stop_json(const control::StopTiming& t) {
    return {{"pause_us", t.pause_us}, {"stop_vcpus_us", t.stop_vcpus_us},
            {"drain_us", t.drain_us}, {"harvest_us", t.harvest_us},
            {"copy_us", t.copy_us},   {"keys_us", t.keys_us},
            {"remap_us", t.remap_us}, {"resume_us", t.resume_us},
            {"bytes", t.bytes},       {"chunks", t.chunks}};
}

// The median of each phase over some stops.
json phase_medians(const std::vector<control::StopTiming>& stops) {
    auto median = [&](std::uint64_t control::StopTiming::*field) {
        std::vector<std::uint64_t> v;
        for (const auto& t : stops) v.push_back(t.*field);
        return percentile(v, 50);
    };
    return {{"n", stops.size()},
            {"pause_us", median(&control::StopTiming::pause_us)},
            {"stop_vcpus_us", median(&control::StopTiming::stop_vcpus_us)},
            {"drain_us", median(&control::StopTiming::drain_us)},
            {"harvest_us", median(&control::StopTiming::harvest_us)},
            {"copy_us", median(&control::StopTiming::copy_us)},
            {"keys_us", median(&control::StopTiming::keys_us)},
            {"remap_us", median(&control::StopTiming::remap_us)},
            {"resume_us", median(&control::StopTiming::resume_us)}};
}

// The memmove paired with a move: the LPAR's bytes copied into free storage of the same arena
// (the same memory, the same backing), right before the move. Free storage is the top of main
// storage above the LPAR or below it, whichever holds `bytes`; the bench's layout always has one.
std::uint64_t paired_memmove_us(Hypervisor& hv, std::uint64_t origin_mib, std::uint64_t size_mib) {
    const std::uint64_t bytes = size_mib * kBenchMiB;
    const std::uint64_t lpar_start = origin_mib * kBenchMiB, lpar_end = lpar_start + bytes;
    const std::uint64_t arena = hv.arena().size();
    std::uint64_t free_start = 0;
    if (arena - lpar_end >= bytes)
        free_start = arena - bytes;
    else if (lpar_start >= bytes)
        free_start = 0;
    else
        return 0;
    auto src = hv.arena().bytes({ArenaOffset{lpar_start}, bytes});
    auto dst = hv.arena().bytes({ArenaOffset{free_start}, bytes});
    const auto t0 = Clock::now();
    std::memmove(dst.data(), src.data(), bytes);
    return static_cast<std::uint64_t>(seconds_since(t0, Clock::now()) * 1e6);
}

json throughput_json(double rounds_per_s, unsigned rounds, std::uint64_t area_bytes,
                     std::uint64_t ws_bytes) {
    return {{"rounds_per_s", rounds_per_s},
            {"rounds", rounds},
            {"verified_MBps", rounds_per_s * static_cast<double>(area_bytes) / 1e6},
            {"rewritten_pages_per_s", rounds_per_s * static_cast<double>(ws_bytes / 4096)}};
}

// ----------------------------------------------------------------------- the moves of a case
// Overlapping moves go out from an edge of main storage by delta and back (up/down); every
// kDisjointEvery-th measured move, and the last, goes to the other side, disjoint: from the
// low side (origin 0 or delta) to origin size + 64, from the high side (size + 64 or that less
// delta) to 0. delta <= 64 MiB keeps those disjoint wherever an overlapping move left the LPAR.
constexpr unsigned kDisjointEvery = 5;
constexpr std::uint64_t kMinChunkStops = 200;  // live chunk stops per case, by default
constexpr unsigned kMinMoves = 30;             // measured moves per case, by default

struct PlannedMove {
    std::uint64_t target;
    std::string kind;  // up | down | disjoint
};

bool is_disjoint(unsigned measured_index, unsigned measured_moves) {
    return measured_moves > 1 && (measured_index % kDisjointEvery == kDisjointEvery - 1 ||
                                  measured_index == measured_moves - 1);
}

PlannedMove plan_move(std::uint64_t origin, std::uint64_t size, std::uint64_t delta,
                      bool disjoint) {
    const std::uint64_t high = size + 64;
    const bool low_side = origin <= delta;
    if (disjoint) return {low_side ? high : 0, "disjoint"};
    const std::uint64_t edge = low_side ? 0 : high;
    if (origin == edge)
        return low_side ? PlannedMove{delta, "up"} : PlannedMove{high - delta, "down"};
    return {edge, low_side ? "down" : "up"};
}

// The default number of measured moves of a case: at least kMinMoves, and enough overlapping
// moves for kMinChunkStops live chunk stops (a live move by delta stops once per chunk of
// delta: size / delta stops).
unsigned auto_moves(std::uint64_t size, std::uint64_t delta) {
    const std::uint64_t chunks = std::max<std::uint64_t>(1, (size + delta - 1) / delta);
    for (unsigned m = kMinMoves;; ++m) {
        unsigned overlapping = 0;
        for (unsigned i = 0; i < m; ++i) overlapping += !is_disjoint(i, m);
        if (overlapping * chunks >= kMinChunkStops) return m;
    }
}

// Which population a stop belongs to: stop-and-copy; live: "chunk" (a stop of an overlapping,
// chunked move) or "final" (the single stop of a disjoint move).
std::string population_of(control::MvstorMode mode, const std::string& kind) {
    if (mode != control::MvstorMode::Live) return "stop-and-copy";
    return kind == "disjoint" ? "final" : "chunk";
}

struct MoveTotals {
    std::vector<std::uint64_t> stops;  // measured moves only
    std::map<std::string, std::vector<std::uint64_t>> populations;
    std::uint64_t total_us = 0, copied = 0, recopied = 0, pause_sum = 0;
    unsigned measured = 0;
    std::map<std::string, std::vector<control::StopTiming>> stop_timings;  // by population
    std::vector<std::uint64_t> memmove_us;  // paired with each measured move
};

std::uint64_t plan_size_mib(Hypervisor& hv, const std::string& name) {
    for (const auto& l : hv.list().lpars)
        if (l.name == name) return l.size_mib;
    return 0;
}

// One MVSTOR: its JSON (with "error" if it failed); updates origin and, unless warmup, totals.
json run_move(Hypervisor& hv, const std::string& name, control::MvstorMode mode,
              const PlannedMove& plan, bool warmup, std::uint64_t& origin, MoveTotals& totals) {
    control::MvstorRequest req;
    req.lpar = name;
    req.origin_mib = plan.target;
    req.mode = mode;
    json m = {{"kind", plan.kind}, {"from_mib", origin}, {"to_mib", plan.target}};
    if (warmup) m["warmup"] = true;
    const std::uint64_t memmove_us = paired_memmove_us(hv, origin, plan_size_mib(hv, name));
    auto t0 = Clock::now();
    try {
        auto res = hv.mvstor(req);
        auto wall_us = static_cast<std::uint64_t>(seconds_since(t0, Clock::now()) * 1e6);
        std::vector<std::uint64_t> s = res.stops_us;
        if (s.empty()) s.push_back(res.pause_us);
        const std::string population = population_of(mode, plan.kind);
        if (!warmup) {
            totals.stops.insert(totals.stops.end(), s.begin(), s.end());
            auto& pop = totals.populations[population];
            pop.insert(pop.end(), s.begin(), s.end());
            totals.total_us += res.total_us;
            totals.copied += res.bytes_copied;
            totals.recopied += res.bytes_recopied;
            totals.pause_sum += res.pause_us;
            ++totals.measured;
        }
        origin = res.new_origin_mib;
        m.update({{"result_mode", res.mode},
                  {"population", population},
                  {"pause_us", res.pause_us},
                  {"stops_us", s},
                  {"total_us", res.total_us},
                  {"wall_us", wall_us},
                  {"bytes_copied", res.bytes_copied},
                  {"bytes_recopied", res.bytes_recopied},
                  {"rounds", res.rounds},
                  {"policy_branch", res.policy_branch},
                  {"phases_us", phases_json(res.phases)},
                  {"dirty_log", res.dirty_log},
                  {"paired_memmove_us", memmove_us},
                  {"stops", json::array()}});
        for (const auto& t : res.stops) m["stops"].push_back(stop_json(t));
        if (!warmup) {
            totals.stop_timings[population].insert(totals.stop_timings[population].end(),
                                                   res.stops.begin(), res.stops.end());
            totals.memmove_us.push_back(memmove_us);
        }
        std::fprintf(
            stderr, "   %-8s %5llu -> %5llu MiB: %zu stop(s), pause %.3f ms, total %.1f ms, %s%s\n",
            plan.kind.c_str(), static_cast<unsigned long long>(m["from_mib"].get<std::uint64_t>()),
            static_cast<unsigned long long>(plan.target), s.size(), res.pause_us / 1e3,
            res.total_us / 1e3, res.policy_branch.c_str(), warmup ? " (warmup)" : "");
    } catch (const std::exception& e) {
        m["error"] = e.what();
        std::fprintf(stderr, "   %-8s -> %llu MiB: FAILED: %s\n", plan.kind.c_str(),
                     static_cast<unsigned long long>(plan.target), e.what());
    }
    return m;
}

// ----------------------------------------------------------------------- the guest's own view
using ProgressLines = std::vector<RoundMonitor::Progress>;
using Interval = std::pair<Clock::time_point, Clock::time_point>;

// The largest max_gap_us of the progress lines seen in [t0, t1]; -1 when there were none.
std::int64_t guest_max_gap(const ProgressLines& lines, const Interval& when) {
    std::int64_t gap = -1;
    for (const auto& l : lines)
        if (l.at >= when.first && l.at <= when.second)
            gap = std::max(gap, static_cast<std::int64_t>(l.max_gap_us));
    return gap;
}

// Guest throughput at 100 ms resolution: bytes verified + rewritten per 100 ms between two
// consecutive progress lines of vCPU 0 both seen in [t0, t1] (timed by when the bench saw them).
json bytes_per_100ms(const ProgressLines& lines, const Interval& when) {
    std::vector<std::uint64_t> v;
    const RoundMonitor::Progress* prev = nullptr;
    for (const auto& l : lines) {
        if (l.cpu != 0 || l.at < when.first || l.at > when.second) continue;
        if (prev && l.bytes >= prev->bytes) {
            double dt = seconds_since(prev->at, l.at);
            if (dt > 0)
                v.push_back(static_cast<std::uint64_t>(static_cast<double>(l.bytes - prev->bytes) *
                                                       0.1 / dt));
        }
        prev = &l;
    }
    return {{"n", v.size()},
            {"min", percentile(v, 0)},
            {"p10", percentile(v, 10)},
            {"p50", percentile(v, 50)},
            {"max", percentile(v, 100)}};
}

// Per move, "guest_max_gap_us": the largest gap the guest saw in the lines printed from the
// move's request to 200 ms after its result; per population, those of the measured moves.
json guest_view(json& moves, const std::vector<Interval>& move_times, const ProgressLines& lines,
                const std::map<std::string, Interval>& windows) {
    std::map<std::string, std::vector<std::uint64_t>> gaps;
    for (std::size_t i = 0; i < moves.size() && i < move_times.size(); ++i) {
        Interval w{move_times[i].first, move_times[i].second + std::chrono::milliseconds(200)};
        const std::int64_t gap = guest_max_gap(lines, w);
        moves[i]["guest_max_gap_us"] = gap;
        if (gap >= 0 && !moves[i].contains("warmup") && moves[i].contains("population"))
            gaps[moves[i]["population"].get<std::string>()].push_back(
                static_cast<std::uint64_t>(gap));
    }
    json g = {{"lines", lines.size()}, {"guest_max_gap_us", json::object()}};
    for (const auto& [population, v] : gaps) g["guest_max_gap_us"][population] = population_json(v);
    std::vector<std::uint64_t> baseline;
    if (auto it = windows.find("before"); it != windows.end())
        for (const auto& l : lines)
            if (l.at >= it->second.first && l.at <= it->second.second)
                baseline.push_back(l.max_gap_us);
    g["baseline_max_gap_us"] = population_json(baseline);
    for (const auto& [what, w] : windows) g["bytes_per_100ms"][what] = bytes_per_100ms(lines, w);
    return g;
}

json run_case(const CaseSpec& spec, const MemmoveBound& bound) {
    const std::string name = "BENCH";
    const std::uint64_t size = spec.size_mib;
    const std::uint64_t delta = std::min<std::uint64_t>(64, size / 4);
    const std::string mode_name = spec.mode == control::MvstorMode::Live ? "live" : "stop-and-copy";
    const unsigned measured_moves = spec.moves ? spec.moves : auto_moves(size, delta);
    json c = {{"system", "lparvisor"},
              {"size_mib", size},
              {"rate", spec.work.label},
              {"pages_per_sec", spec.work.pages_per_sec},
              {"working_set_mib", spec.work.working_set_mib},
              {"mode", mode_name},
              {"delta_mib", delta},
              {"moves_measured", measured_moves},
              {"warmup_moves", spec.warmup}};
    std::fprintf(stderr, "== lparvisor %llu MiB rate=%s mode=%s: %u move(s) + %u warmup\n",
                 static_cast<unsigned long long>(size), spec.work.label.c_str(), mode_name.c_str(),
                 measured_moves, spec.warmup);

    SystemConfig config;
    config.main_storage_mib = 2 * size + 64;
    LparConfig l;
    l.name = name;
    l.origin_mib = 0;
    l.size_mib = size;
    l.vcpus = 1;
    l.rewrite_pages_per_sec = spec.work.pages_per_sec;
    l.working_set_mib = spec.work.working_set_mib;
    l.report_progress = true;  // the guest's own view: progress lines every ~100 ms
    config.lpars.push_back(l);
    HypervisorOptions options;
    options.huge_pages = HugePagePolicy::Auto;
    options.default_firmware = spec.firmware;

    auto t_create = Clock::now();
    Hypervisor hv(config, options);
    // Auto falls back to 4 KiB shmem when the pool is short: say which one this case measured.
    c["backing"] = hv.arena().hugetlb() ? "hugetlb" : "shmem";
    RoundMonitor monitor(hv, name);
    const auto area_bytes = size * kBenchMiB - kTestAreaOffset;
    const auto ws_bytes = std::min(spec.work.working_set_mib * kBenchMiB, area_bytes);

    // All storage written: round 1 verified. Then one more round so the rewrite loop is steady.
    if (!monitor.wait_round(2, std::chrono::seconds(600))) {
        c["error"] =
            "firmware did not verify round 2: " + monitor.failure() + " / " + hv.console(name, 600);
        return c;
    }
    c["setup_s"] = seconds_since(t_create, Clock::now());
    std::optional<kvm::KvmStats> kvm_stats;
    try {
        kvm_stats.emplace(hv.lpar(name).open_kvm_stats());
    } catch (const std::exception& e) {
        c["kvm_stats"] = {{"error", e.what()}};
    }

    auto window =
        std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(spec.window_s));
    std::map<std::string, Interval> windows;  // before / during / after
    auto measure_window = [&](const char* what) {
        auto t0 = Clock::now();
        std::this_thread::sleep_for(window);
        // A round may take longer than the window under emulation: wait for at least 2.
        auto r0 = [&] {
            unsigned n = 0;
            monitor.rate(t0, Clock::now(), &n);
            return n;
        };
        auto limit = t0 + std::chrono::seconds(30);
        while (r0() < 2 && Clock::now() < limit)
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        auto t1 = Clock::now();
        unsigned n = 0;
        double r = monitor.rate(t0, t1, &n);
        c["throughput"][what] = throughput_json(r, n, area_bytes, ws_bytes);
        c["throughput"][what]["window_s"] = seconds_since(t0, t1);
        windows[what] = {t0, t1};
    };
    measure_window("before");

    // The floor of any stop, in the same run: stop, drain, re-map in place, resume.
    std::vector<control::StopTiming> empty;
    for (unsigned i = 0; i < spec.empty_stops; ++i) {
        try {
            empty.push_back(hv.empty_stop(name, std::chrono::seconds(10)));
        } catch (const std::exception& e) {
            c["empty_stop"] = {{"error", e.what()}};
            break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (!empty.empty()) {
        std::vector<std::uint64_t> pauses;
        for (const auto& t : empty) pauses.push_back(t.pause_us);
        c["empty_stop"] = population_json(pauses);
        c["empty_stop"]["phases_p50"] = phase_medians(empty);
    }

    // The moves: the warmup first (not counted), then the measured ones.
    MoveTotals totals;
    json moves = json::array();
    std::uint64_t origin = 0;
    json stats_before;
    std::vector<Interval> move_times;
    auto t_moves0 = Clock::now();
    const unsigned all_moves = spec.warmup + measured_moves;
    for (unsigned j = 0; j < all_moves; ++j) {
        const bool warmup = j < spec.warmup;
        if (j == spec.warmup) {  // the first measured move
            if (kvm_stats) stats_before = stats_json(kvm_stats->read());
            t_moves0 = Clock::now();
        }
        const bool disjoint = !warmup && is_disjoint(j - spec.warmup, measured_moves);
        auto plan = plan_move(origin, size, delta, disjoint);
        auto t_request = Clock::now();
        moves.push_back(run_move(hv, name, spec.mode, plan, warmup, origin, totals));
        move_times.emplace_back(t_request, Clock::now());
        std::this_thread::sleep_for(
            std::chrono::milliseconds(200));  // let the guest run between moves
    }
    auto t_moves1 = Clock::now();
    if (kvm_stats) {
        auto after = kvm_stats->read();
        json stats_after = stats_json(after);
        c["kvm_stats"] = {{"vcpus", after.vcpu_count},
                          {"before", stats_before},
                          {"after", stats_after},
                          {"delta", stats_delta(stats_before, stats_after)}};
        c["kvm_stat_names"] = stat_names_json(after);  // main() keeps the first case's
    }
    {
        unsigned n = 0;
        double r = monitor.rate(t_moves0, t_moves1, &n);
        c["throughput"]["during"] = throughput_json(r, n, area_bytes, ws_bytes);
        c["throughput"]["during"]["window_s"] = seconds_since(t_moves0, t_moves1);
    }
    // The witness: two more clean rounds after the last move (one whole pass began after it).
    unsigned long round_end = monitor.round();
    bool verified = monitor.wait_round(round_end + 2, std::chrono::seconds(300));
    measure_window("after");
    c["verified_after"] = verified && monitor.failure().empty();
    windows["during"] = {t_moves0, t_moves1};
    c["guest_progress"] = guest_view(moves, move_times, monitor.progress(), windows);
    if (!monitor.failure().empty()) c["failure"] = monitor.failure();

    const auto& stops = totals.stops;
    c["moves"] = moves;
    c["stops"] = stops.size();
    c["pause_us"] = {{"n", stops.size()},
                     {"p50", percentile(stops, 50)},
                     {"p90", percentile(stops, 90)},
                     {"p99", percentile(stops, 99)},
                     {"max", percentile(stops, 100)},
                     {"sum", totals.pause_sum}};
    c["populations"] = json::object();
    for (const auto& [population, values] : totals.populations)
        c["populations"][population] = population_json(values);
    for (const auto& [population, timings] : totals.stop_timings)
        c["populations"][population]["phases_p50"] = phase_medians(timings);
    if (!totals.memmove_us.empty()) c["paired_memmove_us"] = population_json(totals.memmove_us);
    c["total_ms"] = totals.total_us / 1e3;
    c["bytes_copied"] = totals.copied;
    c["bytes_recopied"] = totals.recopied;
    double overlap_ms = std::min(bound.up_ms, bound.down_ms);
    c["memmove_overlap_ms"] = overlap_ms;
    c["pause_max_over_memmove"] = overlap_ms > 0 ? percentile(stops, 100) / 1e3 / overlap_ms : 0.0;
    std::string branches;
    for (const auto& m : moves)
        if (m.contains("policy_branch") && !m.contains("warmup")) {
            auto b = m["policy_branch"].get<std::string>();
            if (branches.find(b) == std::string::npos)
                branches += (branches.empty() ? "" : "; ") + b;
        }
    c["policy_branches"] = branches.empty() ? std::string("-") : branches;
    return c;
}

std::string host_description() {
    std::string cpu;
    std::ifstream in("/proc/cpuinfo");
    for (std::string line; std::getline(in, line);)
        if (line.rfind("model name", 0) == 0) {
            cpu = line.substr(line.find(':') + 2);
            break;
        }
    struct utsname u {};
    ::uname(&u);
    return fmt::format("{} {} | {} | {} CPUs", u.sysname, u.release, cpu,
                       std::thread::hardware_concurrency());
}

std::string fmt_rate(const json& c, const char* w) {
    if (!c.contains("throughput") || !c["throughput"].contains(w)) return "-";
    return fmt::format("{:.2f}", c["throughput"][w]["rounds_per_s"].get<double>());
}

void print_environment(const json& doc) {
    const auto& e = doc["environment"];
    const auto& pool = e["hugetlb_pool"];
    std::printf("environment: kvm=%s | %s | %u cores (%u in /proc/cpuinfo) | kernel %s %s\n",
                e["kvm_kind"].get<std::string>().c_str(), e["cpu_model"].get<std::string>().c_str(),
                e["cores"]["hardware_concurrency"].get<unsigned>(),
                e["cores"]["cpuinfo_processors"].get<unsigned>(),
                e["kernel"]["release"].get<std::string>().c_str(),
                e["kernel"]["version"].get<std::string>().c_str());
    std::printf("             commit %s | hugetlb pool at start: %llu x 2 MiB, %llu free\n",
                e["commit"].get<std::string>().c_str(),
                static_cast<unsigned long long>(pool["nr_hugepages"].get<std::uint64_t>()),
                static_cast<unsigned long long>(pool["free_hugepages"].get<std::uint64_t>()));
}

void print_memmove(const json& doc) {
    std::printf("\nmemmove bound (best of %u, populated buffer):\n",
                doc["memmove_repeats"].get<unsigned>());
    std::printf("%8s %6s %10s %10s %10s %9s\n", "size", "delta", "up ms", "down ms", "disj ms",
                "GB/s");
    for (const auto& m : doc["memmove"])
        std::printf("%6lluMi %4lluMi %10.2f %10.2f %10.2f %9.2f\n",
                    static_cast<unsigned long long>(m["size_mib"].get<std::uint64_t>()),
                    static_cast<unsigned long long>(m["delta_mib"].get<std::uint64_t>()),
                    m["up_ms"].get<double>(), m["down_ms"].get<double>(),
                    m["disjoint_ms"].get<double>(), m["overlap_GBps"].get<double>());
}

std::string case_label(const json& c) {
    return fmt::format("{:5}M {:>7} {:<13}", c["size_mib"].get<std::uint64_t>(),
                       c["rate"].get<std::string>(), c["mode"].get<std::string>());
}

void print_case_row(const json& c) {
    const auto& p = c["pause_us"];
    std::string check = c["verified_after"].get<bool>() ? "ok" : "NOT VERIFIED";
    unsigned errors = 0;
    for (const auto& m : c["moves"]) errors += m.contains("error");
    if (errors) check += fmt::format(" {} move(s) failed", errors);
    // A shmem case is not what the design recommends: it must stand out, never blend in.
    std::string backing = c.value("backing", std::string("?"));
    if (backing != "hugetlb") backing += "!";
    std::printf(
        "%s %-7s %5zu %9.3f %9.3f %9.3f %10.1f %8.2f %9.1f %9.1f %-20s %s | %s\n",
        case_label(c).c_str(), backing.c_str(), c["stops"].get<std::size_t>(),
        p["p50"].get<std::uint64_t>() / 1e3, p["p99"].get<std::uint64_t>() / 1e3,
        p["max"].get<std::uint64_t>() / 1e3, c["total_ms"].get<double>(),
        c["pause_max_over_memmove"].get<double>(), c["bytes_copied"].get<std::uint64_t>() / 1e6,
        c["bytes_recopied"].get<std::uint64_t>() / 1e6,
        (fmt_rate(c, "before") + "/" + fmt_rate(c, "during") + "/" + fmt_rate(c, "after")).c_str(),
        c["policy_branches"].get<std::string>().c_str(), check.c_str());
}

void print_populations(const json& doc) {
    std::printf("\nstop populations (nearest rank; measured moves only, warmup excluded)\n");
    std::printf("%s %-7s %-13s %6s %9s %9s %9s %9s\n", "  size    rate mode         ", "back",
                "population", "n", "p50 ms", "p90 ms", "p99 ms", "max ms");
    for (const auto& c : doc["cases"]) {
        if (!c.contains("populations")) continue;
        std::string backing = c.value("backing", std::string("?"));
        if (backing != "hugetlb") backing += "!";
        for (const auto& [population, p] : c["populations"].items())
            std::printf("%s %-7s %-13s %6llu %9.3f %9.3f %9.3f %9.3f\n", case_label(c).c_str(),
                        backing.c_str(), population.c_str(),
                        static_cast<unsigned long long>(p["n"].get<std::uint64_t>()),
                        p["p50"].get<std::uint64_t>() / 1e3, p["p90"].get<std::uint64_t>() / 1e3,
                        p["p99"].get<std::uint64_t>() / 1e3, p["max"].get<std::uint64_t>() / 1e3);
    }
}

void print_kvm_stats(const json& doc) {
    static const std::vector<std::pair<const char*, const char*>> columns{
        {"vcpu", "exits"},    {"vcpu", "halt_exits"}, {"vcpu", "pf_taken"},
        {"vcpu", "pf_fixed"}, {"vcpu", "tlb_flush"},  {"vm", "remote_tlb_flush"},
        {"vm", "pages_4k"},   {"vm", "pages_2m"}};
    std::printf("\nKVM binary stats, delta over the measured moves (- = not on this kernel)\n");
    std::printf("%s", "  size    rate mode         ");
    for (const auto& [group, name] : columns) std::printf(" %16s", name);
    std::printf("\n");
    for (const auto& c : doc["cases"]) {
        if (!c.contains("kvm_stats")) continue;
        std::printf("%s", case_label(c).c_str());
        const auto& k = c["kvm_stats"];
        if (!k.contains("delta")) {
            std::printf(" %s\n", k.value("error", std::string("-")).c_str());
            continue;
        }
        for (const auto& [group, name] : columns)
            if (k["delta"][group].contains(name))
                std::printf(" %16lld",
                            static_cast<long long>(k["delta"][group][name].get<std::int64_t>()));
            else
                std::printf(" %16s", "-");
        std::printf("\n");
    }
}

void print_guest_view(const json& doc) {
    std::printf(
        "\nguest's view (firmware progress lines): largest gap between two checkpoints per move "
        "(request .. result + 200 ms), ms; baseline = lines before the moves; MB per 100 ms p50 "
        "(min) before/during/after\n");
    std::printf("%s %-13s %5s %9s %9s %9s %12s  %s\n", "  size    rate mode         ", "population",
                "moves", "p50 ms", "max ms", "base p50", "base max", "MB/100ms b/d/a");
    for (const auto& c : doc["cases"]) {
        if (!c.contains("guest_progress")) continue;
        const auto& g = c["guest_progress"];
        const auto& b = g["baseline_max_gap_us"];
        std::string tput;
        for (const char* w : {"before", "during", "after"}) {
            if (!g["bytes_per_100ms"].contains(w)) continue;
            const auto& t = g["bytes_per_100ms"][w];
            tput += fmt::format("{}{:.1f} ({:.1f})", tput.empty() ? "" : " / ",
                                t["p50"].get<std::uint64_t>() / 1e6,
                                t["min"].get<std::uint64_t>() / 1e6);
        }
        for (const auto& [population, p] : g["guest_max_gap_us"].items())
            std::printf("%s %-13s %5llu %9.3f %9.3f %9.3f %12.3f  %s\n", case_label(c).c_str(),
                        population.c_str(),
                        static_cast<unsigned long long>(p["n"].get<std::uint64_t>()),
                        p["p50"].get<std::uint64_t>() / 1e3, p["max"].get<std::uint64_t>() / 1e3,
                        b["p50"].get<std::uint64_t>() / 1e3, b["max"].get<std::uint64_t>() / 1e3,
                        tput.c_str());
    }
}

// Each population's median stop, phase by phase, beside the empty stop and the paired memmove.
void print_stop_phases(const json& doc) {
    std::printf(
        "\nstops phase by phase (p50, ms; empty = stop, drain, re-map in place, resume; memmove = "
        "the whole LPAR, paired with each move, on the arena's free storage)\n");
    std::printf("%s %-13s %6s %8s %8s %8s %8s %8s %8s %8s %8s %9s\n",
                "  size    rate mode         ", "population", "n", "pause", "stop", "drain",
                "harvest", "copy", "keys", "remap", "resume", "memmove");
    auto row = [](const std::string& label, const std::string& population, const json& p,
                  double memmove_ms) {
        auto ms = [&](const char* k) { return p.value(k, std::uint64_t{0}) / 1e3; };
        std::printf("%s %-13s %6llu %8.3f %8.3f %8.3f %8.3f %8.3f %8.3f %8.3f %8.3f %9.3f\n",
                    label.c_str(), population.c_str(),
                    static_cast<unsigned long long>(p.value("n", std::uint64_t{0})), ms("pause_us"),
                    ms("stop_vcpus_us"), ms("drain_us"), ms("harvest_us"), ms("copy_us"),
                    ms("keys_us"), ms("remap_us"), ms("resume_us"), memmove_ms);
    };
    for (const auto& c : doc["cases"]) {
        const double memmove_ms = c.contains("paired_memmove_us")
                                      ? c["paired_memmove_us"].value("p50", std::uint64_t{0}) / 1e3
                                      : 0.0;
        if (c.contains("empty_stop") && c["empty_stop"].contains("phases_p50"))
            row(case_label(c), "empty", c["empty_stop"]["phases_p50"], memmove_ms);
        if (!c.contains("populations")) continue;
        for (const auto& [population, p] : c["populations"].items())
            if (p.contains("phases_p50"))
                row(case_label(c), population, p["phases_p50"], memmove_ms);
    }
}

void print_table(const json& doc) {
    print_environment(doc);
    print_memmove(doc);
    print_stop_phases(doc);
    std::printf(
        "\nMVSTOR (pause = vCPUs stopped -> running, per stop, measured moves; throughput = guest "
        "rounds/s before/during/after; back = main storage backing, shmem! = not hugetlb)\n");
    std::printf("%6s %7s %-13s %-7s %5s %9s %9s %9s %10s %8s %9s %9s %-20s %s\n", "size", "rate",
                "mode", "back", "stops", "p50 ms", "p99 ms", "max ms", "total ms", "max/mm",
                "MB copied", "MB recop", "rounds/s b/d/a", "branch / check");
    for (const auto& c : doc["cases"]) {
        if (c.contains("error") && !c.contains("pause_us")) {
            std::printf("%s ERROR: %s\n", case_label(c).c_str(),
                        c["error"].get<std::string>().substr(0, 200).c_str());
            continue;
        }
        print_case_row(c);
    }
    print_populations(doc);
    print_kvm_stats(doc);
    print_guest_view(doc);
    std::fflush(stdout);
}

std::string default_firmware() {
    if (const char* env = std::getenv("LPARVISOR_FIRMWARE")) return env;
#ifdef LPARVISOR_BENCH_FIRMWARE
    return LPARVISOR_BENCH_FIRMWARE;
#else
    return "lparvisor-firmware";
#endif
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"lparvisor-bench: MVSTOR pause and throughput beside the memmove bound"};
    std::vector<std::uint64_t> sizes{64, 256, 1024};
    std::vector<std::string> rates{"idle", "25000", "200000", "max"};
    std::vector<std::string> modes{"stop-and-copy", "live"};
    unsigned moves = 0;
    unsigned warmup = 1;
    std::string json_path;
    bool quick = false;
    std::string firmware = default_firmware();
    std::uint64_t ws_mib = 64;
    double window_s = 0;
    unsigned repeats = 5;
    unsigned empty_stops = 0;
    app.add_option("--sizes", sizes, "LPAR sizes in MiB")->delimiter(',');
    app.add_option("--rates", rates, "idle | pages/s | max")->delimiter(',');
    app.add_option("--modes", modes, "stop-and-copy | live")->delimiter(',');
    app.add_option("--moves", moves,
                   "measured moves per case: up/down by an overlapping delta, every 5th and the "
                   "last disjoint (default: >= 30 and >= 200 live chunk stops; quick 4)");
    app.add_option("--warmup", warmup, "moves before the measured ones, not counted")
        ->default_val(1);
    app.add_option("--json", json_path,
                   "write the results as JSON to FILE ('-': stdout between markers)");
    app.add_flag("--quick", quick, "64 and 256 MiB only, fewer moves, shorter windows");
    app.add_option("--firmware", firmware,
                   "test firmware (default $LPARVISOR_FIRMWARE or the built one)");
    app.add_option("--working-set", ws_mib, "working set of the rate cases, MiB")->default_val(64);
    app.add_option("--window", window_s, "throughput window in s (default 2, quick 1)");
    app.add_option("--memmove-repeats", repeats, "memmove: best of N")->default_val(5);
    app.add_option("--empty-stops", empty_stops,
                   "empty stops per case, the floor of any stop (default 30, quick 10)");
    CLI11_PARSE(app, argc, argv);
    if (quick) {
        sizes.erase(std::remove_if(sizes.begin(), sizes.end(), [](auto s) { return s > 256; }),
                    sizes.end());
        if (moves == 0) moves = 4;
        if (window_s == 0) window_s = 1;
        if (empty_stops == 0) empty_stops = 10;
    }
    if (empty_stops == 0) empty_stops = 30;
    if (window_s == 0) window_s = 2;
    spdlog::set_level(spdlog::level::warn);

    std::vector<control::MvstorMode> mode_list;
    for (const auto& m : modes) {
        if (m == "stop-and-copy")
            mode_list.push_back(control::MvstorMode::StopAndCopy);
        else if (m == "live")
            mode_list.push_back(control::MvstorMode::Live);
        else {
            std::fprintf(stderr, "unknown mode %s\n", m.c_str());
            return 2;
        }
    }
    std::vector<Workload> works;
    for (const auto& r : rates) works.push_back(parse_rate(r, ws_mib));

    json doc = {{"tool", "lparvisor-bench"},
                {"host", host_description()},
                {"kvm", ::access("/dev/kvm", R_OK | W_OK) == 0 ? "/dev/kvm" : "missing"},
                {"firmware", firmware},
                {"environment", environment_json()},
                {"moves_per_case", moves ? json(moves) : json("auto")},
                {"warmup_moves", warmup},
                {"window_s", window_s},
                {"memmove_repeats", repeats},
                {"memmove", json::array()},
                {"cases", json::array()}};
    auto started = Clock::now();
    for (auto size : sizes) {
        const std::uint64_t delta = std::min<std::uint64_t>(64, size / 4);
        auto bound = measure_memmove(size, delta, repeats);
        double best = std::min(bound.up_ms, bound.down_ms);
        doc["memmove"].push_back(
            {{"size_mib", size},
             {"delta_mib", delta},
             {"up_ms", bound.up_ms},
             {"down_ms", bound.down_ms},
             {"disjoint_ms", bound.disjoint_ms},
             {"overlap_GBps", static_cast<double>(size * kBenchMiB) / (best / 1e3) / 1e9}});
        std::fprintf(stderr, "memmove %llu MiB: up %.2f ms, down %.2f ms, disjoint %.2f ms\n",
                     static_cast<unsigned long long>(size), bound.up_ms, bound.down_ms,
                     bound.disjoint_ms);
        for (const auto& work : works)
            for (auto mode : mode_list) {
                json c;
                try {
                    c = run_case({size, work, mode, moves, warmup, firmware, window_s, empty_stops},
                                 bound);
                } catch (const std::exception& e) {
                    c = {{"system", "lparvisor"},
                         {"size_mib", size},
                         {"rate", work.label},
                         {"mode", mode == control::MvstorMode::Live ? "live" : "stop-and-copy"},
                         {"error", e.what()}};
                    std::fprintf(stderr, "   case failed: %s\n", e.what());
                }
                if (c.contains("kvm_stat_names")) {
                    if (!doc.contains("kvm_stat_names"))
                        doc["kvm_stat_names"] = c["kvm_stat_names"];
                    c.erase("kvm_stat_names");
                }
                doc["cases"].push_back(c);
            }
    }
    doc["elapsed_s"] = seconds_since(started, Clock::now());
    print_table(doc);
    if (json_path == "-") {
        std::printf("LPARVISOR-BENCH-JSON-BEGIN\n%s\nLPARVISOR-BENCH-JSON-END\n",
                    doc.dump(1).c_str());
        std::fflush(stdout);
    } else if (!json_path.empty()) {
        std::ofstream(json_path) << doc.dump(2) << "\n";
    }
    return 0;
}
