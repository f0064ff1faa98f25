// lparvisor-bench: MVSTOR of a running firmware LPAR, stop-and-copy and live, beside the
// physical bound (memmove of the same bytes in the same run). Not a test: it measures and
// reports; the guest's own `verify ok` lines are still checked so a broken move is visible.
//
// Per case (size x rate x mode) it builds a fresh Hypervisor with one LPAR, waits until the
// firmware has written all its storage (first `verify ok round=1`), measures the guest's
// throughput, runs the moves (alternating up and down by an overlapping delta, then one
// disjoint move), measures again, and records every stop's pause.
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
#include <mutex>
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
    Hypervisor& hv_;
    std::string lpar_;
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
    unsigned moves;
    std::string firmware;
    double window_s;
};

json phases_json(const std::vector<control::PhaseTiming>& phases) {
    json j = json::object();
    for (const auto& p : phases) j[p.phase] = j.value(p.phase, 0ull) + p.microseconds;
    return j;
}

json throughput_json(double rounds_per_s, unsigned rounds, std::uint64_t area_bytes,
                     std::uint64_t ws_bytes) {
    return {{"rounds_per_s", rounds_per_s},
            {"rounds", rounds},
            {"verified_MBps", rounds_per_s * static_cast<double>(area_bytes) / 1e6},
            {"rewritten_pages_per_s", rounds_per_s * static_cast<double>(ws_bytes / 4096)}};
}

json run_case(const CaseSpec& spec, const MemmoveBound& bound) {
    const std::string name = "BENCH";
    const std::uint64_t size = spec.size_mib;
    const std::uint64_t delta = std::min<std::uint64_t>(64, size / 4);
    const std::string mode_name = spec.mode == control::MvstorMode::Live ? "live" : "stop-and-copy";
    json c = {{"system", "lparvisor"},
              {"size_mib", size},
              {"rate", spec.work.label},
              {"pages_per_sec", spec.work.pages_per_sec},
              {"working_set_mib", spec.work.working_set_mib},
              {"mode", mode_name},
              {"delta_mib", delta}};
    std::fprintf(stderr, "== lparvisor %llu MiB rate=%s mode=%s\n",
                 static_cast<unsigned long long>(size), spec.work.label.c_str(), mode_name.c_str());

    SystemConfig config;
    config.main_storage_mib = 2 * size + 64;
    LparConfig l;
    l.name = name;
    l.origin_mib = 0;
    l.size_mib = size;
    l.vcpus = 1;
    l.rewrite_pages_per_sec = spec.work.pages_per_sec;
    l.working_set_mib = spec.work.working_set_mib;
    config.lpars.push_back(l);
    HypervisorOptions options;
    options.huge_pages = HugePagePolicy::Auto;
    options.default_firmware = spec.firmware;

    auto t_create = Clock::now();
    Hypervisor hv(config, options);
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

    auto window =
        std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(spec.window_s));
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
    };
    measure_window("before");

    // The moves.
    std::vector<std::uint64_t> stops;
    std::uint64_t total_us = 0, copied = 0, recopied = 0, pause_sum = 0;
    json moves = json::array();
    std::uint64_t origin = 0;
    auto t_moves0 = Clock::now();
    for (unsigned i = 0; i < spec.moves; ++i) {
        std::uint64_t target;
        std::string kind;
        if (spec.moves > 1 && i == spec.moves - 1) {
            target = size + 64;  // beyond the LPAR's current range: disjoint
            kind = "disjoint";
        } else if (i % 2 == 0) {
            target = origin + delta;
            kind = "up";
        } else {
            target = origin - delta;
            kind = "down";
        }
        control::MvstorRequest req;
        req.lpar = name;
        req.origin_mib = target;
        req.mode = spec.mode;
        json m = {{"kind", kind}, {"from_mib", origin}, {"to_mib", target}};
        auto t0 = Clock::now();
        try {
            auto res = hv.mvstor(req);
            auto wall_us = static_cast<std::uint64_t>(seconds_since(t0, Clock::now()) * 1e6);
            std::vector<std::uint64_t> s = res.stops_us;
            if (s.empty()) s.push_back(res.pause_us);
            stops.insert(stops.end(), s.begin(), s.end());
            total_us += res.total_us;
            copied += res.bytes_copied;
            recopied += res.bytes_recopied;
            pause_sum += res.pause_us;
            origin = res.new_origin_mib;
            m.update({{"result_mode", res.mode},
                      {"pause_us", res.pause_us},
                      {"stops_us", s},
                      {"total_us", res.total_us},
                      {"wall_us", wall_us},
                      {"bytes_copied", res.bytes_copied},
                      {"bytes_recopied", res.bytes_recopied},
                      {"rounds", res.rounds},
                      {"policy_branch", res.policy_branch},
                      {"phases_us", phases_json(res.phases)}});
            std::fprintf(
                stderr,
                "   %-8s %5llu -> %5llu MiB: %zu stop(s), pause %.3f ms, total %.1f ms, %s\n",
                kind.c_str(), static_cast<unsigned long long>(m["from_mib"].get<std::uint64_t>()),
                static_cast<unsigned long long>(target), s.size(), res.pause_us / 1e3,
                res.total_us / 1e3, res.policy_branch.c_str());
        } catch (const std::exception& e) {
            m["error"] = e.what();
            std::fprintf(stderr, "   %-8s -> %llu MiB: FAILED: %s\n", kind.c_str(),
                         static_cast<unsigned long long>(target), e.what());
        }
        moves.push_back(m);
        std::this_thread::sleep_for(
            std::chrono::milliseconds(200));  // let the guest run between moves
    }
    auto t_moves1 = Clock::now();
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
    if (!monitor.failure().empty()) c["failure"] = monitor.failure();

    c["moves"] = moves;
    c["stops"] = stops.size();
    c["pause_us"] = {{"p50", percentile(stops, 50)},
                     {"p99", percentile(stops, 99)},
                     {"max", percentile(stops, 100)},
                     {"sum", pause_sum}};
    c["total_ms"] = total_us / 1e3;
    c["bytes_copied"] = copied;
    c["bytes_recopied"] = recopied;
    double overlap_ms = std::min(bound.up_ms, bound.down_ms);
    c["memmove_overlap_ms"] = overlap_ms;
    c["pause_max_over_memmove"] = overlap_ms > 0 ? percentile(stops, 100) / 1e3 / overlap_ms : 0.0;
    std::string branches;
    for (const auto& m : moves)
        if (m.contains("policy_branch")) {
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

void print_table(const json& doc) {
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
    std::printf(
        "\nMVSTOR (pause = vCPUs stopped -> running, per stop; throughput = guest rounds/s "
        "before/during/after)\n");
    std::printf("%6s %7s %-13s %5s %9s %9s %9s %10s %8s %9s %9s %-20s %s\n", "size", "rate", "mode",
                "stops", "p50 ms", "p99 ms", "max ms", "total ms", "max/mm", "MB copied",
                "MB recop", "rounds/s b/d/a", "branch / check");
    for (const auto& c : doc["cases"]) {
        if (c.contains("error") && !c.contains("pause_us")) {
            std::printf("%5lluM %7s %-13s ERROR: %s\n",
                        static_cast<unsigned long long>(c["size_mib"].get<std::uint64_t>()),
                        c["rate"].get<std::string>().c_str(), c["mode"].get<std::string>().c_str(),
                        c["error"].get<std::string>().substr(0, 200).c_str());
            continue;
        }
        const auto& p = c["pause_us"];
        std::string check = c["verified_after"].get<bool>() ? "ok" : "NOT VERIFIED";
        unsigned errors = 0;
        for (const auto& m : c["moves"]) errors += m.contains("error");
        if (errors) check += fmt::format(" {} move(s) failed", errors);
        std::printf(
            "%5lluM %7s %-13s %5zu %9.3f %9.3f %9.3f %10.1f %8.2f %9.1f %9.1f %-20s %s | %s\n",
            static_cast<unsigned long long>(c["size_mib"].get<std::uint64_t>()),
            c["rate"].get<std::string>().c_str(), c["mode"].get<std::string>().c_str(),
            c["stops"].get<std::size_t>(), p["p50"].get<std::uint64_t>() / 1e3,
            p["p99"].get<std::uint64_t>() / 1e3, p["max"].get<std::uint64_t>() / 1e3,
            c["total_ms"].get<double>(), c["pause_max_over_memmove"].get<double>(),
            c["bytes_copied"].get<std::uint64_t>() / 1e6,
            c["bytes_recopied"].get<std::uint64_t>() / 1e6,
            (fmt_rate(c, "before") + "/" + fmt_rate(c, "during") + "/" + fmt_rate(c, "after"))
                .c_str(),
            c["policy_branches"].get<std::string>().c_str(), check.c_str());
    }
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
    std::string json_path;
    bool quick = false;
    std::string firmware = default_firmware();
    std::uint64_t ws_mib = 64;
    double window_s = 0;
    unsigned repeats = 5;
    app.add_option("--sizes", sizes, "LPAR sizes in MiB")->delimiter(',');
    app.add_option("--rates", rates, "idle | pages/s | max")->delimiter(',');
    app.add_option("--modes", modes, "stop-and-copy | live")->delimiter(',');
    app.add_option(
        "--moves", moves,
        "moves per case: up/down by an overlapping delta, the last disjoint (default 8, quick 4)");
    app.add_option("--json", json_path,
                   "write the results as JSON to FILE ('-': stdout between markers)");
    app.add_flag("--quick", quick, "64 and 256 MiB only, fewer moves, shorter windows");
    app.add_option("--firmware", firmware,
                   "test firmware (default $LPARVISOR_FIRMWARE or the built one)");
    app.add_option("--working-set", ws_mib, "working set of the rate cases, MiB")->default_val(64);
    app.add_option("--window", window_s, "throughput window in s (default 2, quick 1)");
    app.add_option("--memmove-repeats", repeats, "memmove: best of N")->default_val(5);
    CLI11_PARSE(app, argc, argv);
    if (quick) {
        sizes.erase(std::remove_if(sizes.begin(), sizes.end(), [](auto s) { return s > 256; }),
                    sizes.end());
        if (moves == 0) moves = 4;
        if (window_s == 0) window_s = 1;
    }
    if (moves == 0) moves = 8;
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
                {"moves_per_case", moves},
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
                    c = run_case({size, work, mode, moves, firmware, window_s}, bound);
                } catch (const std::exception& e) {
                    c = {{"system", "lparvisor"},
                         {"size_mib", size},
                         {"rate", work.label},
                         {"mode", mode == control::MvstorMode::Live ? "live" : "stop-and-copy"},
                         {"error", e.what()}};
                    std::fprintf(stderr, "   case failed: %s\n", e.what());
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
