// A seeded random stress test under real KVM. Three firmware LPARs, each with a virtio-blk disk
// and a virtio-rng, verify their memory and their disks; a Linux LPAR runs its workload; a spare
// firmware LPAR is defined. Then a series of operations drawn at random from the current state:
// MVSTOR (stop-and-copy and live; up, down, disjoint, next to a neighbour, or to a deliberately
// invalid origin), cancelled MVSTORs, EXCHANGE (equal sizes, neighbours, refused shapes),
// EXPAND, SHRINK and storage.grow (the planner's moves, then EXPAND), operator stop and start,
// and deactivating one LPAR to activate another (the spare, first fit, or a deactivated one at
// its configured origin).
// After every operation the storage invariant holds (support/storage_invariant.hpp), a refused
// one changed nothing, and no guest printed a FAIL line; every few operations every running
// guest verifies more rounds (and disk passes); at the end every guest verifies twice more and
// each firmware disk image is checked block by block.
//
//   LPARVISOR_STRESS_SEED  the seed (default 1, what CI runs); the first line printed names it
//   LPARVISOR_STRESS_OPS   how many operations (default 100)
// The same seed replays the same sequence (std::mt19937_64 and our own uniform helpers, whose
// output the C++ standard fixes) as long as the operations turn out the same. Each operation is
// printed as it starts ("stress: op N/M: ..."), so a failure shows its replay position.
// scripts/stress.sh runs it by hand: scripts/stress.sh --seed 7 --ops 1000.
#include <catch2/catch.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <future>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "kvm/kvm.hpp"
#include "lpar/hypervisor.hpp"
#include "support/disk_image_check.hpp"
#include "support/guest_console.hpp"
#include "support/linux_guest_image.hpp"
#include "support/lpar_checks.hpp"
#include "support/storage_invariant.hpp"
#include "support/temp_dir.hpp"
#include "util/error.hpp"
#include "util/fault.hpp"

using namespace lparvisor;
using namespace std::chrono_literals;

namespace {

// ---------------------------------------------------------------------------------------------
// Sizes: small LPARs in 1 GiB of main storage, so that the default run (100 operations) takes
// about 6 minutes inside the nested-KVM harness.
constexpr std::uint64_t kMainMib = 1024;
constexpr std::uint64_t kLinuxMib = 128, kLinuxMaxMib = 256;
constexpr std::uint64_t kDiskBytes = 1 * kMiB;  // the firmware tests min(capacity, 4 MiB)
constexpr std::uint64_t kLinuxDiskBytes = 8 * kMiB;
constexpr unsigned kCheckEvery = 4;  // operations between progress checks of every guest
const auto kGuestTimeout = 600s;     // for any one wait on a guest (nested runs are slow)
// EXPAND / SHRINK wait this long for the guest (the firmware plugs once per memory round).
// Linux unplugs a few MiB at a time under the harness and picks which blocks it gives back, while
// lparvisor takes back only the top, so its shrinks are kept small: one it does not finish in
// time is refused (Busy), and the rest of the series then differs from a replay of the seed.
const auto kResizeTimeout = 60s;
constexpr std::uint64_t kLinuxShrinkMaxMib = 48;

void say(const std::string& line) {
    std::printf("stress: %s\n", line.c_str());
    std::fflush(stdout);
}

// ---------------------------------------------------------------------------------------------
// Seeded randomness that is the same with every standard library: std::mt19937_64's output is
// fixed by the standard, the distributions' is not, so these helpers do their own.
class Random {
  public:
    explicit Random(std::uint64_t seed) : gen_(seed) {}
    // Uniform in [0, n), n > 0 (rejection sampling: no modulo bias).
    std::uint64_t below(std::uint64_t n) {
        constexpr std::uint64_t max = std::numeric_limits<std::uint64_t>::max();
        const std::uint64_t limit = max - max % n;
        std::uint64_t x;
        do x = gen_();
        while (x >= limit);
        return x % n;
    }
    std::uint64_t between(std::uint64_t lo, std::uint64_t hi) { return lo + below(hi - lo + 1); }
    bool percent(unsigned p) { return below(100) < p; }
    template <typename T>
    const T& pick(const std::vector<T>& items) {
        return items[below(items.size())];
    }

  private:
    std::mt19937_64 gen_;
};

std::uint64_t env_number(const char* name, std::uint64_t fallback) {
    const char* v = std::getenv(name);
    if (v == nullptr || *v == '\0') return fallback;
    char* end = nullptr;
    unsigned long long value = std::strtoull(v, &end, 0);
    INFO(name << "=" << v);
    REQUIRE((end != nullptr && *end == '\0'));
    return value;
}

// ---------------------------------------------------------------------------------------------
// The Linux guest image, as test_linux_guest.cpp finds it (there from the env file only: CI
// always builds the image, so its absence is a failure here, not a skip).
test::LinuxGuestImage guest_image() {
    const std::string env_file = test::env_or("LPARVISOR_LINUX_GUEST_ENV", "");
    if (env_file.empty() || !std::filesystem::exists(env_file))
        FAIL("the stress test needs the Linux guest image, and LPARVISOR_LINUX_GUEST_ENV "
             << (env_file.empty() ? std::string("is not set")
                                  : "names a file that does not exist: " + env_file)
             << ". Build it with scripts/build-linux-guest.sh (scripts/test.sh and CI do) and "
                "run the test through ctest, which sets the variable.");
    return test::linux_guest_image(env_file, false);
}

// ---------------------------------------------------------------------------------------------
// What a guest said, read incrementally (only the bytes added since the last look), so that
// polling costs little: the harness's one CPU runs the guests too.
struct ConsoleWatch {
    std::uint64_t seen = 0;                          // console bytes parsed so far
    std::string partial;                             // an incomplete last line
    std::map<unsigned, unsigned long> round_by_cpu;  // firmware: verify ok round=N cpu=K
    std::uint64_t disk_pass = 0;                     // firmware: DISK <name> pass <P> ok
    bool rng_ok = false;                             // firmware: RNG <name> ok
    std::uint64_t linux_round = 0;                   // Linux: LPARVISOR-WORKLOAD: round N ok
    std::string first_failure;                       // the first line with FAIL

    unsigned long min_round(unsigned vcpus) const {
        unsigned long lowest = ~0ul;
        for (unsigned cpu = 0; cpu < vcpus; ++cpu) {
            auto it = round_by_cpu.find(cpu);
            lowest = std::min(lowest, it == round_by_cpu.end() ? 0ul : it->second);
        }
        return lowest;
    }

    static std::uint64_t number_after(const std::string& line, const std::string& key,
                                      bool* found) {
        auto at = line.find(key);
        *found = false;
        if (at == std::string::npos) return 0;
        at += key.size();
        std::uint64_t n = 0;
        std::size_t digits = 0;
        while (at + digits < line.size() && line[at + digits] >= '0' && line[at + digits] <= '9')
            n = n * 10 + static_cast<std::uint64_t>(line[at + digits++] - '0');
        *found = digits > 0;
        return n;
    }

    void parse_line(const std::string& name, const std::string& line) {
        if (first_failure.empty() && line.find("FAIL") != std::string::npos) first_failure = line;
        bool found = false;
        if (line.find("verify ok round=") != std::string::npos) {
            auto round = number_after(line, "verify ok round=", &found);
            bool has_cpu = false;
            auto cpu = number_after(line, " cpu=", &has_cpu);
            if (found && has_cpu) {
                auto& r = round_by_cpu[static_cast<unsigned>(cpu)];
                r = std::max<unsigned long>(r, round);
            }
            return;
        }
        const std::string disk_key = "DISK " + name + " pass ";
        if (line.find(disk_key) != std::string::npos) {
            auto pass = number_after(line, disk_key, &found);
            if (found &&
                line.find(" ok", line.find(disk_key) + disk_key.size()) != std::string::npos)
                disk_pass = std::max(disk_pass, pass);
            return;
        }
        if (line.find("RNG " + name + " ok") != std::string::npos) rng_ok = true;
        const std::string round_key = "LPARVISOR-WORKLOAD: round ";
        if (line.find(round_key) != std::string::npos && line.find(" ok") != std::string::npos) {
            auto round = number_after(line, round_key, &found);
            if (found) linux_round = std::max(linux_round, round);
        }
    }

    void update(Lpar& lpar) {
        const std::uint64_t total = lpar.console().total_bytes();
        if (total <= seen) return;
        const std::uint64_t fresh = std::min<std::uint64_t>(total - seen, 1024 * 1024);
        std::string text = partial + lpar.console().tail(fresh);
        seen = total;
        std::size_t start = 0;
        for (;;) {
            auto nl = text.find('\n', start);
            if (nl == std::string::npos) break;
            parse_line(lpar.name(), text.substr(start, nl - start));
            start = nl + 1;
        }
        partial = text.substr(start);
        if (partial.size() > 4096) partial.erase(0, partial.size() - 4096);
    }
};

// ---------------------------------------------------------------------------------------------
struct Member {
    std::string name;
    bool is_linux = false;
    std::uint64_t boot_mib = 0;
    std::uint64_t max_mib = 0;  // 0: cannot grow
    unsigned vcpus = 1;
    std::string disk;                     // firmware: the image to check at the end
    std::optional<std::uint64_t> origin;  // where activate puts it (none: first fit)
};

struct Counts {
    unsigned succeeded = 0, refused = 0, cancelled = 0;
};

enum class Outcome { Succeeded, Refused, Cancelled };
// What the storage map says an operation should do: a deliberately invalid one must be refused;
// a valid one normally succeeds (a refusal is allowed, counted and noted); some cannot be told
// from the map (the planner's answer for storage.grow).
enum class Expect { Success, Refusal, Either };

const char* kind_name(ErrorKind kind) {
    switch (kind) {
        case ErrorKind::InvalidArgument:
            return "InvalidArgument";
        case ErrorKind::NotFound:
            return "NotFound";
        case ErrorKind::Refused:
            return "Refused";
        case ErrorKind::Busy:
            return "Busy";
        case ErrorKind::System:
            return "System";
    }
    return "?";
}

// The storage map without the gaps, to compare before and after.
using Layout = std::map<std::string, std::vector<std::pair<std::uint64_t, std::uint64_t>>>;

Layout layout_of(Hypervisor& hv) {
    Layout layout;
    for (const auto& row : hv.storage_table())
        layout[row.lpar].push_back({row.origin.value / kMiB, row.size / kMiB});
    return layout;
}

std::string describe(const Layout& layout) {
    std::string out;
    for (const auto& [name, rows] : layout)
        for (const auto& [origin, size] : rows)
            out += "  " + name + " " + std::to_string(origin) + "-" +
                   std::to_string(origin + size) + " MiB\n";
    return out;
}

// ---------------------------------------------------------------------------------------------
class Stress {
  public:
    Stress(Hypervisor& hv, std::vector<Member> members, std::uint64_t seed)
        : hv_(hv), members_(std::move(members)), random_(seed) {}

    void run(unsigned ops);
    void wait_for_progress(unsigned long rounds, std::uint64_t disk_passes, const char* why);
    void check_guests_said_no_fail();
    void finish();
    std::string summary() const;

  private:
    const Member& member(const std::string& name) const {
        for (const auto& m : members_)
            if (m.name == name) return m;
        FAIL("no member " << name);
        return members_.front();
    }
    ConsoleWatch& watch(const std::string& name) { return watches_[name]; }
    // What the guest last said about its virtio-mem device (a resize it did not finish in time).
    void say_memory_lines(const std::string& name) {
        const auto text = hv_.lpar(name).console().tail(64 * 1024);
        std::vector<std::string> lines;
        std::size_t start = 0;
        for (auto nl = text.find('\n'); nl != std::string::npos; nl = text.find('\n', start)) {
            auto line = text.substr(start, nl - start);
            start = nl + 1;
            if (line.find("virtio_mem") != std::string::npos ||
                line.find("MEM " + name) != std::string::npos ||
                line.find("MemTotal") != std::string::npos)
                lines.push_back(line);
        }
        const std::size_t first = lines.size() > 8 ? lines.size() - 8 : 0;
        for (std::size_t i = first; i < lines.size(); ++i) say("  " + name + " said: " + lines[i]);
    }
    control::SystemStatus status() { return hv_.list(); }
    static const control::LparStatus* find(const control::SystemStatus& s,
                                           const std::string& name) {
        for (const auto& l : s.lpars)
            if (l.name == name) return &l;
        return nullptr;
    }
    std::vector<std::string> names_where(
        const std::function<bool(const control::LparStatus&)>& predicate) {
        std::vector<std::string> names;
        for (const auto& l : status().lpars)
            if (predicate(l) && std::find(names.begin(), names.end(), l.name) == names.end())
                names.push_back(l.name);
        return names;
    }

    // Runs one operation: counts it, allows the refusal kinds, and fails on anything else.
    Outcome attempt(const std::string& kind, Expect expect, const std::function<void()>& body,
                    ErrorKind* refused_as = nullptr);
    Outcome attempt(const std::string& kind, bool invalid, const std::function<void()>& body,
                    ErrorKind* refused_as = nullptr) {
        return attempt(kind, invalid ? Expect::Refusal : Expect::Success, body, refused_as);
    }
    void after_operation(const std::string& kind, Outcome outcome, const Layout& before,
                         const Layout& expected_on_success, bool map_may_change_on_busy);

    // The operations; each prints its line and checks its own outcome.
    void op_mvstor(control::MvstorMode mode);
    void op_cancel(control::MvstorMode mode);
    void op_exchange();
    void op_expand();
    void op_shrink();
    void op_grow();
    void op_stop();
    void op_start();
    void op_swap_activation();

    struct Target {
        std::uint64_t origin_mib = 0;
        bool valid = false;
        std::string shape;
    };
    Target choose_target(const std::string& name, bool allow_invalid);

    Hypervisor& hv_;
    std::vector<Member> members_;
    Random random_;
    std::map<std::string, ConsoleWatch> watches_;
    std::map<std::string, Counts> counts_;
    unsigned op_index_ = 0, op_total_ = 0;
    unsigned unexpected_refusals_ = 0;
    std::string op_line_;
};

Outcome Stress::attempt(const std::string& kind, Expect expect, const std::function<void()>& body,
                        ErrorKind* refused_as) {
    auto& c = counts_[kind];
    try {
        body();
    } catch (const Error& e) {
        const bool allowed = e.kind() == ErrorKind::Refused ||
                             e.kind() == ErrorKind::InvalidArgument || e.kind() == ErrorKind::Busy;
        INFO("operation " << op_line_);
        INFO("failed with " << kind_name(e.kind()) << ": " << e.what());
        REQUIRE(allowed);
        say("  refused (" + std::string(kind_name(e.kind())) + "): " + e.what());
        if (expect == Expect::Success) {
            ++unexpected_refusals_;
            say("  note: this request looked valid from the storage map");
        }
        if (refused_as != nullptr) *refused_as = e.kind();
        ++c.refused;
        return Outcome::Refused;
    }
    INFO("operation " << op_line_);
    INFO("a request made deliberately invalid was carried out");
    REQUIRE(expect != Expect::Refusal);
    ++c.succeeded;
    return Outcome::Succeeded;
}

// After every operation: refusals and cancels changed nothing, a success did what it said, the
// storage invariant holds, no LPAR failed or stopped by itself, and no guest said FAIL.
void Stress::after_operation(const std::string& kind, Outcome outcome, const Layout& before,
                             const Layout& expected_on_success, bool map_may_change_on_busy) {
    const Layout after = layout_of(hv_);
    INFO("operation " << op_line_ << " (" << kind << ")");
    INFO("map before:\n" << describe(before) << "map after:\n" << describe(after));
    if (outcome == Outcome::Succeeded) {
        INFO("expected:\n" << describe(expected_on_success));
        REQUIRE(after == expected_on_success);
    } else if (!map_may_change_on_busy) {
        INFO("a refused or cancelled operation must change nothing");
        REQUIRE(after == before);
    }
    test::require_storage_invariant(hv_);
    auto failed = test::failed_lpars(hv_);
    INFO("no fault is injected, so no operation may leave an LPAR fenced ('failed')");
    REQUIRE(failed.empty());
    for (const auto& l : status().lpars) {
        if (l.state != "stopped") continue;
        INFO(l.name << " stopped by itself: " << l.reason);
        REQUIRE(l.reason == "operator stop");
    }
    check_guests_said_no_fail();
}

void Stress::check_guests_said_no_fail() {
    for (const auto& name : names_where([](const auto& l) { return l.has_storage; })) {
        auto& w = watch(name);
        w.update(hv_.lpar(name));
        INFO("operation " << op_line_);
        INFO(name << " console tail:\n" << hv_.lpar(name).console().tail(3000));
        INFO(name << " said: " << w.first_failure);
        REQUIRE(w.first_failure.empty());
    }
}

// Every running guest verifies `rounds` more memory rounds (and a firmware guest `disk_passes`
// more disk passes) beyond what it has reported now; all are watched together.
void Stress::wait_for_progress(unsigned long rounds, std::uint64_t disk_passes, const char* why) {
    struct Goal {
        std::string name;
        bool is_linux;
        unsigned vcpus;
        std::uint64_t round, disk;
    };
    std::vector<Goal> goals;
    for (const auto& name : names_where([](const auto& l) { return l.state == "running"; })) {
        const auto& m = member(name);
        auto& w = watch(name);
        w.update(hv_.lpar(name));
        goals.push_back({name, m.is_linux, m.vcpus,
                         (m.is_linux ? w.linux_round : w.min_round(m.vcpus)) + rounds,
                         w.disk_pass + (m.is_linux ? 0 : disk_passes)});
    }
    const auto started = std::chrono::steady_clock::now();
    const auto deadline = started + kGuestTimeout;
    for (;;) {
        bool all = true;
        for (const auto& g : goals) {
            Lpar& lpar = hv_.lpar(g.name);
            auto& w = watch(g.name);
            w.update(lpar);
            INFO(why << ": " << g.name << " console tail:\n" << lpar.console().tail(3000));
            REQUIRE(w.first_failure.empty());
            INFO(g.name << " stopped: " << lpar.stop_reason());
            REQUIRE(lpar.state() == LparState::Running);
            const std::uint64_t round = g.is_linux ? w.linux_round : w.min_round(g.vcpus);
            if (round < g.round || w.disk_pass < g.disk) all = false;
        }
        if (all) break;
        if (std::chrono::steady_clock::now() >= deadline) {
            for (const auto& g : goals) {
                auto& w = watch(g.name);
                const std::uint64_t round = g.is_linux ? w.linux_round : w.min_round(g.vcpus);
                INFO(why << ": " << g.name << " at round " << round << " of " << g.round
                         << ", disk pass " << w.disk_pass << " of " << g.disk << "; console:\n"
                         << hv_.lpar(g.name).console().tail(3000));
                CHECK((round >= g.round && w.disk_pass >= g.disk));
            }
            FAIL(why << ": the guests did not make progress within " << kGuestTimeout.count()
                     << " s");
        }
        std::this_thread::sleep_for(200ms);
    }
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                  std::chrono::steady_clock::now() - started)
                  .count();
    say(std::string(why) + ": " + std::to_string(goals.size()) + " running guest(s) verified " +
        std::to_string(rounds) + " more round(s)" +
        (disk_passes > 0 ? " and " + std::to_string(disk_passes) + " disk pass(es)" : "") + " in " +
        std::to_string(ms) + " ms");
}

Stress::Target Stress::choose_target(const std::string& name, bool allow_invalid) {
    const auto rows = hv_.storage_table();
    std::uint64_t origin = 0, size = 0;
    for (const auto& r : rows)
        if (r.lpar == name) origin = r.origin.value / kMiB, size = r.size / kMiB;
    auto free_for_me = [&](std::uint64_t o) {
        if (o + size > kMainMib) return false;
        for (const auto& r : rows)
            if (r.lpar != name && o < (r.origin.value + r.size) / kMiB &&
                r.origin.value / kMiB < o + size)
                return false;
        return true;
    };
    std::vector<std::uint64_t> up, down, disjoint, edge;
    for (std::uint64_t o = 0; o + size <= kMainMib; o += 2) {
        if (o == origin || !free_for_me(o)) continue;
        if (o > origin && o < origin + size)
            up.push_back(o);
        else if (o < origin && o + size > origin)
            down.push_back(o);
        else
            disjoint.push_back(o);
        // Right above or below another LPAR, or at either end of main storage: makes
        // neighbours for EXCHANGE and fills gaps exactly.
        bool touches = o == 0 || o + size == kMainMib;
        for (const auto& r : rows)
            if (r.lpar != name &&
                (o == (r.origin.value + r.size) / kMiB || o + size == r.origin.value / kMiB))
                touches = true;
        if (touches) edge.push_back(o);
    }
    const bool any_valid = !up.empty() || !down.empty() || !disjoint.empty();
    if ((allow_invalid && random_.percent(20)) || !any_valid) {
        if (!allow_invalid) return {};
        std::vector<std::string> others;
        for (const auto& r : rows)
            if (r.lpar != name) others.push_back(r.lpar);
        switch (random_.below(4)) {
            case 0:
                if (!others.empty()) {
                    const auto& other = random_.pick(others);
                    for (const auto& r : rows)
                        if (r.lpar == other) {
                            const std::uint64_t o = r.origin.value / kMiB;
                            return {o + 2 * random_.below(r.size / kMiB / 2), false,
                                    "invalid: overlaps " + other};
                        }
                }
                [[fallthrough]];
            case 1:
                return {kMainMib - size + 2 * random_.between(1, 8), false,
                        "invalid: ends beyond main storage"};
            case 2: {
                std::vector<std::uint64_t> all = up;
                all.insert(all.end(), down.begin(), down.end());
                all.insert(all.end(), disjoint.begin(), disjoint.end());
                const std::uint64_t o = all.empty() ? 0 : random_.pick(all);
                return {o + 1, false, "invalid: origin not a multiple of 2 MiB"};
            }
            default:
                return {origin, false, "invalid: already there"};
        }
    }
    std::vector<std::pair<const char*, const std::vector<std::uint64_t>*>> shapes;
    if (!up.empty()) shapes.push_back({"up, overlapping", &up});
    if (!down.empty()) shapes.push_back({"down, overlapping", &down});
    if (!disjoint.empty()) shapes.push_back({"disjoint", &disjoint});
    if (!edge.empty()) shapes.push_back({"next to a neighbour", &edge});
    const auto& [shape, candidates] = random_.pick(shapes);
    const std::uint64_t o = random_.pick(*candidates);
    std::string detail = shape;
    if (detail == "next to a neighbour")
        detail += o > origin ? (o < origin + size ? " (up, overlapping)" : " (up)")
                             : (o + size > origin ? " (down, overlapping)" : " (down)");
    return {o, true, detail};
}

control::MvstorRequest move_request(const std::string& name, std::uint64_t origin,
                                    control::MvstorMode mode) {
    control::MvstorRequest request{name, origin, 10s, mode};
    // Bounded so that a guest rewriting all its storage falls back quickly under the harness.
    request.policy.max_rounds = 8;
    request.policy.max_total = 10s;
    return request;
}

const char* mode_name(control::MvstorMode mode) {
    return mode == control::MvstorMode::Live ? "live" : "stop-and-copy";
}

void Stress::op_mvstor(control::MvstorMode mode) {
    const std::string kind = mode == control::MvstorMode::Live ? "mvstor-live" : "mvstor";
    auto name = random_.pick(names_where([](const auto& l) { return l.has_storage; }));
    auto target = choose_target(name, true);
    const auto before = layout_of(hv_);
    op_line_ = "MVSTOR " + name + " " + std::to_string(before.at(name).front().first) + " -> " +
               std::to_string(target.origin_mib) + " MiB " + mode_name(mode) + " (" + target.shape +
               ")";
    say("op " + std::to_string(op_index_) + "/" + std::to_string(op_total_) + ": " + op_line_);
    Layout expected = before;
    expected[name].front().first = target.origin_mib;
    ErrorKind refused_as{};
    auto outcome = attempt(
        kind, !target.valid,
        [&] {
            auto result = hv_.mvstor(move_request(name, target.origin_mib, mode));
            say("  done: pause " + std::to_string(result.pause_us) + " us in " +
                std::to_string(result.stops_us.size()) + " stop(s), total " +
                std::to_string(result.total_us / 1000) + " ms" +
                (result.policy_branch.empty() ? "" : ", " + result.policy_branch));
            INFO(op_line_);
            REQUIRE(result.new_origin_mib == target.origin_mib);
        },
        &refused_as);
    after_operation(kind, outcome, before, expected, false);
}

// A cancel that is deterministic: the move is held at a fault point before its first stop, the
// operator cancels, the move is let go and must fail with "cancelled", changing nothing.
void Stress::op_cancel(control::MvstorMode mode) {
    const bool live = mode == control::MvstorMode::Live;
    const std::string kind = live ? "cancel-live" : "cancel";
    const char* point = live ? "mvstor.precopy" : "mvstor.populate";
    auto name = random_.pick(names_where([](const auto& l) { return l.has_storage; }));
    auto target = choose_target(name, false);
    const auto before = layout_of(hv_);
    op_line_ = "CANCEL MVSTOR " + name + " " + std::to_string(before.at(name).front().first) +
               " -> " + std::to_string(target.origin_mib) + " MiB " + mode_name(mode) +
               " (held at " + point + ")";
    say("op " + std::to_string(op_index_) + "/" + std::to_string(op_total_) + ": " + op_line_);
    INFO(op_line_);
    if (!target.valid) {
        say("  no valid target: skipped");
        return;
    }
    auto& c = counts_[kind];
    fault::arm(point, fault::Action::Hold);
    auto move = std::async(std::launch::async,
                           [&] { return hv_.mvstor(move_request(name, target.origin_mib, mode)); });
    // Whatever happens below, the move is let go before `move` is waited for.
    struct Disarm {
        ~Disarm() { fault::disarm_all(); }
    } disarm;
    bool held = false;
    const auto deadline = std::chrono::steady_clock::now() + 60s;
    while (!held && std::chrono::steady_clock::now() < deadline &&
           move.wait_for(0s) != std::future_status::ready)
        held = fault::wait_until_held(point, 100ms);
    if (!held) {
        fault::disarm_all();
        std::string outcome = "it is still running";
        if (move.wait_for(60s) == std::future_status::ready) {
            try {
                move.get();
                outcome = "it succeeded";
            } catch (const std::exception& e) {
                outcome = std::string("it failed: ") + e.what();
            }
        }
        FAIL("the MVSTOR never reached the fault point " << point << " within 60 s; " << outcome);
    }
    hv_.cancel_mvstor(name);  // must not throw: the move is held before its first stop
    fault::release(point);
    try {
        auto result = move.get();
        FAIL("a cancelled MVSTOR was carried out: " << name << " now at " << result.new_origin_mib
                                                    << " MiB");
    } catch (const Error& e) {
        INFO("the cancelled move failed with " << kind_name(e.kind()) << ": " << e.what());
        CHECK(e.kind() == ErrorKind::Busy);
        REQUIRE_THAT(e.what(), Catch::Contains("cancelled"));
        say(std::string("  cancelled: ") + e.what());
    }
    ++c.cancelled;
    after_operation(kind, Outcome::Cancelled, before, before, false);
}

void Stress::op_exchange() {
    const auto rows = hv_.storage_table();
    auto active = names_where([](const auto& l) { return l.has_storage && l.state != "failed"; });
    auto defined = names_where([](const auto& l) { return !l.has_storage; });
    auto range_of = [&](const std::string& n) {
        for (const auto& r : rows)
            if (r.lpar == n) return std::pair{r.origin.value / kMiB, r.size / kMiB};
        return std::pair<std::uint64_t, std::uint64_t>{0, 0};
    };
    auto shape_of = [&](const std::string& a, const std::string& b) {
        auto [ao, as] = range_of(a);
        auto [bo, bs] = range_of(b);
        if (as == bs) return std::string("equal sizes");
        if (ao + as == bo || bo + bs == ao) return std::string("neighbours");
        return std::string();
    };
    std::vector<std::pair<std::string, std::string>> valid_pairs, all_pairs;
    for (const auto& a : active)
        for (const auto& b : active)
            if (a != b) {
                all_pairs.push_back({a, b});
                if (!shape_of(a, b).empty()) valid_pairs.push_back({a, b});
            }
    std::string a, b, shape;
    bool valid = false;
    const auto r = random_.below(100);
    if (r < 75 && !valid_pairs.empty()) {
        std::tie(a, b) = random_.pick(valid_pairs);
    } else if (r < 90 && !all_pairs.empty()) {
        std::tie(a, b) = random_.pick(all_pairs);
    } else if (r < 95 || defined.empty()) {
        a = b = random_.pick(active);
        shape = "invalid: with itself";
    } else {
        a = random_.pick(active);
        b = random_.pick(defined);
        shape = "invalid: " + b + " is only defined";
    }
    if (shape.empty()) {
        shape = shape_of(a, b);
        valid = !shape.empty();
        if (!valid) shape = "invalid: different sizes, not neighbours";
    }
    const auto before = layout_of(hv_);
    op_line_ = "EXCHANGE " + a + " " + b + " (" + shape + ")";
    say("op " + std::to_string(op_index_) + "/" + std::to_string(op_total_) + ": " + op_line_);
    Layout expected = before;
    if (valid) {
        auto [ao, as] = range_of(a);
        auto [bo, bs] = range_of(b);
        if (as == bs) {
            expected[a].front().first = bo;
            expected[b].front().first = ao;
        } else {
            const std::uint64_t lower = std::min(ao, bo);
            const std::uint64_t upper_size = ao < bo ? bs : as;
            // The upper one moves to the lower origin, the lower one follows it.
            expected[ao < bo ? b : a].front().first = lower;
            expected[ao < bo ? a : b].front().first = lower + upper_size;
        }
    }
    auto outcome = attempt("exchange", !valid, [&] {
        auto result = hv_.exchange({a, b, 10s});
        say("  done: pause " + std::to_string(result.pause_us) + " us, total " +
            std::to_string(result.total_us / 1000) + " ms");
    });
    after_operation("exchange", outcome, before, expected, false);
}

void Stress::op_expand() {
    const auto s = status();
    std::vector<std::string> growable, fixed;
    for (const auto& l : s.lpars) {
        if (l.state != "running") continue;
        (member(l.name).max_mib > 0 ? growable : fixed).push_back(l.name);
    }
    std::string name;
    std::uint64_t mib = 2;
    bool valid = false;
    std::string shape;
    if ((random_.percent(15) && !fixed.empty()) || growable.empty()) {
        if (fixed.empty()) return;
        name = random_.pick(fixed);
        mib = 2 * random_.between(1, 16);
        shape = "invalid: no virtio-mem region";
    } else {
        name = random_.pick(growable);
        const auto* l = find(s, name);
        const std::uint64_t room = member(name).max_mib - l->size_mib;
        if (room == 0 || random_.percent(15)) {
            mib = room + 2 * random_.between(1, 8);
            shape = "invalid: beyond max_size_mib";
        } else {
            mib = 2 * random_.between(1, room / 2);
            valid = mib <= l->gap_mib;
            shape = valid ? "into the free storage above"
                          : "invalid: only " + std::to_string(l->gap_mib) + " MiB free above";
        }
    }
    const auto before = layout_of(hv_);
    op_line_ = "EXPAND " + name + " " + std::to_string(mib) + " MiB (" + shape + ")";
    say("op " + std::to_string(op_index_) + "/" + std::to_string(op_total_) + ": " + op_line_);
    Layout expected = before;
    expected[name].front().second += mib;
    ErrorKind refused_as{};
    auto outcome = attempt(
        "expand", !valid,
        [&] {
            auto result = hv_.expand({name, mib, kResizeTimeout});
            say("  done: " + std::to_string(result.old_size_mib) + " -> " +
                std::to_string(result.new_size_mib) + " MiB, plugged " +
                std::to_string(result.plugged_mib) + " MiB, " +
                std::to_string(result.total_us / 1000) + " ms");
        },
        &refused_as);
    if (outcome == Outcome::Refused && refused_as == ErrorKind::Busy) say_memory_lines(name);
    // A guest that plugged only part of it in time keeps what it was given (expand.cpp).
    after_operation("expand", outcome, before, expected,
                    outcome == Outcome::Refused && refused_as == ErrorKind::Busy);
}

void Stress::op_shrink() {
    const auto s = status();
    std::vector<std::string> grown, others;
    for (const auto& l : s.lpars) {
        if (l.state != "running") continue;
        (l.size_mib > member(l.name).boot_mib ? grown : others).push_back(l.name);
    }
    std::string name;
    std::uint64_t mib = 2;
    bool valid = false;
    std::string shape;
    if ((random_.percent(15) && !others.empty()) || grown.empty()) {
        if (others.empty()) return;
        name = random_.pick(others);
        mib = 2 * random_.between(1, 8);
        shape = "invalid: nothing added by EXPAND";
    } else {
        name = random_.pick(grown);
        const std::uint64_t added = find(s, name)->size_mib - member(name).boot_mib;
        if (random_.percent(10)) {
            mib = added + 2 * random_.between(1, 4);
            shape = "invalid: more than EXPAND added";
        } else {
            const std::uint64_t most =
                member(name).is_linux ? std::min(added, kLinuxShrinkMaxMib) : added;
            mib = 2 * random_.between(1, most / 2);
            valid = true;
            shape = "of " + std::to_string(added) + " MiB added";
        }
    }
    const auto before = layout_of(hv_);
    op_line_ = "SHRINK " + name + " " + std::to_string(mib) + " MiB (" + shape + ")";
    say("op " + std::to_string(op_index_) + "/" + std::to_string(op_total_) + ": " + op_line_);
    Layout expected = before;
    expected[name].front().second -= std::min(mib, expected[name].front().second);
    ErrorKind refused_as{};
    auto outcome = attempt(
        "shrink", !valid,
        [&] {
            auto result = hv_.shrink({name, mib, kResizeTimeout});
            say("  done: " + std::to_string(result.old_size_mib) + " -> " +
                std::to_string(result.new_size_mib) + " MiB, " +
                std::to_string(result.total_us / 1000) + " ms");
        },
        &refused_as);
    if (outcome == Outcome::Refused && refused_as == ErrorKind::Busy) say_memory_lines(name);
    after_operation("shrink", outcome, before, expected, false);
}

// storage.grow: the planner's MVSTORs of other LPARs make room right above, then EXPAND.
void Stress::op_grow() {
    const auto s = status();
    std::vector<std::string> growable;
    for (const auto& l : s.lpars)
        if (l.state == "running" && member(l.name).max_mib > 0) growable.push_back(l.name);
    const auto name = random_.pick(growable);
    const std::uint64_t room = member(name).max_mib - find(s, name)->size_mib;
    const auto mode =
        random_.percent(50) ? control::MvstorMode::Live : control::MvstorMode::StopAndCopy;
    std::uint64_t mib;
    std::string shape;
    Expect expect = Expect::Refusal;
    if (room == 0 || random_.percent(10)) {
        mib = room + 2 * random_.between(1, 8);
        shape = "invalid: beyond max_size_mib";
    } else {
        mib = 2 * random_.between(1, room / 2);
        const bool free = find(s, name)->gap_mib >= mib;
        expect = free ? Expect::Success : Expect::Either;
        shape = free ? "room free already" : "moving others if the planner finds a way";
    }
    const auto before = layout_of(hv_);
    op_line_ =
        "GROW " + name + " " + std::to_string(mib) + " MiB " + mode_name(mode) + " (" + shape + ")";
    say("op " + std::to_string(op_index_) + "/" + std::to_string(op_total_) + ": " + op_line_);
    ErrorKind refused_as{};
    // The planner may find no way (Refused): only a plan that exists counts as expected.
    auto outcome = attempt(
        "grow", expect,
        [&] {
            auto result = hv_.grow({name, mib, kResizeTimeout}, mode);
            say("  done: " + std::to_string(result.plan.moves.size()) + " move(s), " +
                std::to_string(result.expansion.old_size_mib) + " -> " +
                std::to_string(result.expansion.new_size_mib) + " MiB");
        },
        &refused_as);
    // Success: it grew in place; the others may have moved, but kept their sizes.
    Layout expected = layout_of(hv_);
    for (const auto& [lpar, rows] : before) {
        auto& e = expected[lpar];
        if (e.size() != 1 || rows.size() != 1) continue;  // the comparison shows it
        e.front().second = rows.front().second;
        if (lpar == name) e.front() = {rows.front().first, rows.front().second + mib};
    }
    after_operation("grow", outcome, before, expected,
                    outcome == Outcome::Refused && refused_as == ErrorKind::Busy);
}

void Stress::op_stop() {
    auto name = random_.pick(names_where([](const auto& l) { return l.state == "running"; }));
    const auto before = layout_of(hv_);
    op_line_ = "STOP " + name;
    say("op " + std::to_string(op_index_) + "/" + std::to_string(op_total_) + ": " + op_line_);
    auto outcome = attempt("stop", false, [&] {
        auto s = hv_.stop(name);
        INFO(op_line_);
        REQUIRE(s.state == "stopped");
    });
    after_operation("stop", outcome, before, before, false);
}

void Stress::op_start() {
    auto name = random_.pick(names_where([](const auto& l) { return l.state == "stopped"; }));
    const auto before = layout_of(hv_);
    op_line_ = "START " + name;
    say("op " + std::to_string(op_index_) + "/" + std::to_string(op_total_) + ": " + op_line_);
    auto outcome = attempt("start", false, [&] {
        auto s = hv_.start(name);
        INFO(op_line_);
        REQUIRE(s.state == "running");
    });
    after_operation("start", outcome, before, before, false);
}

// Deactivates a firmware LPAR, then activates a defined one (the spare, or one deactivated
// earlier) into free storage: first fit for the spare, its configured origin for the others.
void Stress::op_swap_activation() {
    auto candidates = names_where([&](const auto& l) {
        return l.has_storage && l.state != "failed" && !member(l.name).is_linux;
    });
    auto name = random_.pick(candidates);
    auto before = layout_of(hv_);
    op_line_ = "DEACTIVATE " + name;
    say("op " + std::to_string(op_index_) + "/" + std::to_string(op_total_) + ": " + op_line_);
    Layout expected = before;
    expected.erase(name);
    auto outcome = attempt("deactivate", false, [&] { hv_.deactivate(name); });
    after_operation("deactivate", outcome, before, expected, false);
    if (outcome == Outcome::Succeeded) watches_.erase(name);

    // Another defined LPAR if there is one; if its configured origin is taken, the next one.
    auto defined = names_where([](const auto& l) { return !l.has_storage; });
    if (defined.size() > 1) std::erase(defined, name);
    std::string next;
    while (!defined.empty()) {
        next = defined[random_.below(defined.size())];
        std::erase(defined, next);
        const auto rows = hv_.storage_table();
        const std::uint64_t size = member(next).boot_mib;
        auto free_at = [&](std::uint64_t o) {
            if (o + size > kMainMib) return false;
            for (const auto& r : rows)
                if (o < (r.origin.value + r.size) / kMiB && r.origin.value / kMiB < o + size)
                    return false;
            return true;
        };
        bool valid = false;
        if (member(next).origin) {
            valid = free_at(*member(next).origin);
        } else {
            for (std::uint64_t o = 0; o + size <= kMainMib && !valid; o += 2) valid = free_at(o);
        }
        before = layout_of(hv_);
        op_line_ = "ACTIVATE " + next +
                   (member(next).origin ? " at its configured origin " +
                                              std::to_string(*member(next).origin) + " MiB"
                                        : std::string(" first fit")) +
                   (valid ? "" : " (invalid: no room)");
        say("op " + std::to_string(op_index_) + "/" + std::to_string(op_total_) + ": " + op_line_);
        outcome = attempt("activate", !valid, [&] { hv_.activate(next); });
        if (outcome == Outcome::Succeeded) break;
        after_operation("activate", outcome, before, before, false);
    }
    if (outcome != Outcome::Succeeded || next.empty()) return;
    watches_.erase(next);  // a new console
    expected = before;
    expected[next] = layout_of(hv_)[next];  // wherever it landed: the invariant checks it
    const auto& row = expected[next];
    {
        INFO(op_line_);
        REQUIRE(row.size() == 1);
        REQUIRE(row.front().second == member(next).boot_mib);
        if (member(next).origin) REQUIRE(row.front().first == *member(next).origin);
    }
    say("  activated at " + std::to_string(row.front().first) + " MiB");
    after_operation("activate", outcome, before, expected, false);
}

void Stress::run(unsigned ops) {
    op_total_ = ops;
    for (op_index_ = 1; op_index_ <= ops; ++op_index_) {
        const auto s = status();
        bool any_running = false, any_stopped = false, any_grown = false, any_growable = false;
        bool any_firmware = false, any_defined = false;
        unsigned active = 0;
        for (const auto& l : s.lpars) {
            if (!l.has_storage) {
                any_defined = true;
                continue;
            }
            ++active;
            any_running |= l.state == "running";
            any_stopped |= l.state == "stopped";
            if (l.state == "running" && member(l.name).max_mib > 0) {
                any_growable = true;
                any_grown |= l.size_mib > member(l.name).boot_mib;
            }
            any_firmware |= !member(l.name).is_linux;
        }
        // Two LPARs that can trade places (equal sizes or neighbours)? Otherwise EXCHANGE
        // is drawn less often: nearly every attempt would be refused.
        bool exchangeable = false;
        const auto rows = hv_.storage_table();
        for (const auto& a : rows)
            for (const auto& b : rows)
                exchangeable |=
                    a.lpar != b.lpar && (a.size == b.size || a.origin + a.size == b.origin);
        // Weights from the current state.
        std::vector<std::pair<std::function<void()>, unsigned>> choices = {
            {[&] { op_mvstor(control::MvstorMode::StopAndCopy); }, 18},
            {[&] { op_mvstor(control::MvstorMode::Live); }, 18},
            {[&] { op_cancel(control::MvstorMode::StopAndCopy); }, 4},
            {[&] { op_cancel(control::MvstorMode::Live); }, 4},
            {[&] { op_exchange(); }, active < 2     ? 0u
                                     : exchangeable ? 14u
                                                    : 3u},
            {[&] { op_expand(); }, any_growable ? 9u : 1u},
            {[&] { op_shrink(); }, any_grown ? 7u : 1u},
            {[&] { op_grow(); }, any_growable ? 3u : 0u},
            {[&] { op_stop(); }, any_running ? 3u : 0u},
            {[&] { op_start(); }, any_stopped ? 20u : 0u},
            {[&] { op_swap_activation(); }, any_firmware && any_defined ? 4u : 0u},
        };
        unsigned total = 0;
        for (const auto& [op, weight] : choices) total += weight;
        auto roll = random_.below(total);
        for (const auto& [op, weight] : choices) {
            if (roll < weight) {
                op();
                break;
            }
            roll -= weight;
        }
        if (op_index_ % kCheckEvery == 0)
            wait_for_progress(1, 1, ("after op " + std::to_string(op_index_)).c_str());
    }
}

void Stress::finish() {
    op_line_ = "the final checks";
    // Everyone runs again, verifies twice more (memory, keys, disk) and says no FAIL.
    for (const auto& name : names_where([](const auto& l) { return l.state == "stopped"; })) {
        say("final: START " + name);
        hv_.start(name);
    }
    test::require_storage_invariant(hv_);
    wait_for_progress(2, 2, "final");
    check_guests_said_no_fail();
    // Each firmware disk image holds exactly what its guest wrote.
    for (const auto& name : names_where([](const auto& l) { return l.has_storage; })) {
        const auto& m = member(name);
        if (m.is_linux) continue;
        hv_.stop(name);
        Lpar& lpar = hv_.lpar(name);
        auto devices = lpar.devices();
        REQUIRE(drain_devices(devices, 10s).empty());
        resume_devices(devices);
        auto& w = watch(name);
        w.update(lpar);
        say("final: " + name + " disk image: pass " + std::to_string(w.disk_pass) +
            " (or a prefix of the next)");
        test::require_firmware_disk_after_stop(m.disk, name, w.disk_pass, kDiskBytes);
    }
    test::require_storage_invariant(hv_);
}

std::string Stress::summary() const {
    unsigned ok = 0, refused = 0, cancelled = 0;
    std::string kinds;
    for (const auto& [kind, c] : counts_) {
        ok += c.succeeded;
        refused += c.refused;
        cancelled += c.cancelled;
        kinds += " " + kind + " " + std::to_string(c.succeeded) + "/" + std::to_string(c.refused) +
                 "/" + std::to_string(c.cancelled) + ";";
    }
    if (!kinds.empty()) kinds.pop_back();
    return "summary: " + std::to_string(ok) + " succeeded, " + std::to_string(refused) +
           " refused (" + std::to_string(unexpected_refusals_) + " of them looked valid), " +
           std::to_string(cancelled) + " cancelled; by kind (succeeded/refused/cancelled):" + kinds;
}

}  // namespace

TEST_CASE(
    "a seeded random series of storage operations on busy LPARs keeps every guest's "
    "storage intact",
    "[kvm][stress]") {
    if (kvm::detect_flavour() == kvm::Flavour::Pvm) {
        // The Linux LPAR needs hardware-backed KVM to boot to its workload (test_linux_guest).
        std::fprintf(stderr,
                     "\n*** SKIPPED: the stress test runs a Linux LPAR to its workload, which "
                     "needs hardware-backed KVM; this host's KVM is PVM ***\n\n");
        std::exit(LPARVISOR_SKIP_CODE);
    }
    const std::uint64_t seed = env_number("LPARVISOR_STRESS_SEED", 1);
    const auto ops = static_cast<unsigned>(env_number("LPARVISOR_STRESS_OPS", 100));
    say("seed " + std::to_string(seed) + ", " + std::to_string(ops) +
        " operations; replay with LPARVISOR_STRESS_SEED=" + std::to_string(seed) +
        " LPARVISOR_STRESS_OPS=" + std::to_string(ops));
    const auto started = std::chrono::steady_clock::now();
    auto image = guest_image();
    test::TempDir dir("stress");

    // The Linux LPAR first, alone: under the nested harness a busy firmware vCPU next to a
    // booting kernel once stalled the boot (test_linux_guest.cpp), so the firmware LPARs start
    // once its workload runs.
    auto linux_lpar = test::linux_lpar(image, "LINUX", 0, kLinuxMib, "LPV_MIB=24 LPV_LOOP=0");
    linux_lpar.max_size_mib = kLinuxMaxMib;
    linux_lpar.disks.push_back({test::make_disk(dir, "LINUX", kLinuxDiskBytes)});

    struct Firmware {
        const char* name;
        std::optional<std::uint64_t> origin;
        std::uint64_t size, max;
        unsigned vcpus;
        std::uint64_t rate, working_set;
        bool active;
    };
    // Equal sizes for EXCHANGE in place, one smaller; FW1 can grow. SPARE is only defined and
    // lands first-fit wherever storage is free when it is activated.
    const Firmware firmware[] = {{"FW1", 320, 48, 112, 2, 0, 4, true},
                                 {"FW2", 512, 48, 0, 1, 0, 0, true},
                                 {"FW3", 704, 16, 0, 1, 20000, 8, true},
                                 {"SPARE", std::nullopt, 48, 0, 1, 0, 4, false}};
    std::vector<Member> members{{"LINUX", true, kLinuxMib, kLinuxMaxMib, 1, "", 0}};
    for (const auto& f : firmware)
        members.push_back({f.name, false, f.size, f.max, f.vcpus,
                           test::make_disk(dir, f.name, kDiskBytes), f.origin});

    Hypervisor hv({kMainMib, {linux_lpar}}, test::firmware_options());
    Stress stress(hv, members, seed);
    {
        Lpar& lpar = hv.lpar("LINUX");
        ConsoleWatch w;
        const auto deadline = std::chrono::steady_clock::now() + kGuestTimeout;
        while (w.linux_round < 2 && w.first_failure.empty() && lpar.state() == LparState::Running &&
               std::chrono::steady_clock::now() < deadline) {
            std::this_thread::sleep_for(200ms);
            w.update(lpar);
        }
        INFO("LINUX console tail:\n" << lpar.console().tail(6000));
        REQUIRE(w.first_failure.empty());
        REQUIRE(w.linux_round >= 2);
        say("LINUX runs its workload (round " + std::to_string(w.linux_round) + ") after " +
            std::to_string(std::chrono::duration_cast<std::chrono::seconds>(
                               std::chrono::steady_clock::now() - started)
                               .count()) +
            " s");
    }
    for (std::size_t i = 0; i < std::size(firmware); ++i) {
        const auto& f = firmware[i];
        control::LparDefinition d;
        d.name = f.name;
        d.origin_mib = f.origin;
        d.size_mib = f.size;
        d.max_size_mib = f.max;
        d.vcpus = f.vcpus;
        d.rewrite_pages_per_sec = f.rate;
        d.working_set_mib = f.working_set;
        d.disks.push_back({members[i + 1].disk});
        hv.define(d);
        if (f.active) hv.activate(f.name);
    }
    test::require_storage_invariant(hv);
    stress.wait_for_progress(1, 1, "start");
    for (const char* name : {"FW1", "FW2", "FW3"}) {
        auto console = hv.lpar(name).console().tail(256 * 1024);
        INFO(console);
        CHECK_THAT(console, Catch::Contains(std::string("RNG ") + name + " ok"));
    }

    stress.run(ops);
    say("after " + std::to_string(ops) + " operations: " + stress.summary());
    stress.finish();
    say(stress.summary());
    say("seed " + std::to_string(seed) + ": passed in " +
        std::to_string(std::chrono::duration_cast<std::chrono::seconds>(
                           std::chrono::steady_clock::now() - started)
                           .count()) +
        " s");
}
