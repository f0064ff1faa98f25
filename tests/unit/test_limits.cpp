// The resource limits a guest or a client could otherwise exhaust: the console file's cap and
// rotation, the console's memory, the per-LPAR log rate limit, boot files (regular, bounded,
// never blocking) and the number of LPARs.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "boot/boot_file.hpp"
#include "boot/firmware_loader.hpp"
#include "boot/linux_loader.hpp"
#include "devices/console_log.hpp"
#include "lpar/config.hpp"
#include "storage/arena.hpp"
#include "support/temp_dir.hpp"
#include "util/error.hpp"
#include "util/rate_limit.hpp"

using namespace lparvisor;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

std::string contents(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), {}};
}

// The default logger writes into a string while this lives.
struct CapturedLog {
    explicit CapturedLog(spdlog::level::level_enum level = spdlog::level::debug)
        : previous(spdlog::default_logger()) {
        auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out);
        auto logger = std::make_shared<spdlog::logger>("captured", sink);
        logger->set_pattern("%l %v");
        logger->set_level(level);
        spdlog::set_default_logger(logger);
    }
    ~CapturedLog() { spdlog::set_default_logger(previous); }
    std::size_t count(const std::string& needle) const {
        const std::string text = out.str();
        std::size_t n = 0;
        for (auto at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1))
            ++n;
        return n;
    }
    std::ostringstream out;
    std::shared_ptr<spdlog::logger> previous;
};

struct FakeClock {
    std::chrono::steady_clock::time_point now{};
    SteadyClock clock() {
        return [this] { return now; };
    }
};

}  // namespace

// --- the console ---

TEST_CASE("the console file stays at its cap and rotates to NAME.log.1", "[limits][console]") {
    test::TempDir dir("limits");
    const std::string path = dir.file("LPAR1.log");
    constexpr std::uint64_t kCap = 4096;
    std::string last;
    {
        ConsoleLog console("LPAR1", 1024, path, kCap);
        for (int i = 0; i < 5000; ++i) {  // about 100 KiB: 25 times the cap
            last = "line " + std::to_string(i) + " of the console flood\n";
            console.append(last);
            if (i % 100 == 0) REQUIRE(fs::file_size(path) <= kCap);
        }
        console.flush();
        CHECK(console.total_bytes() > 20 * kCap);
        CHECK(console.tail(4096).size() == 1024);  // the ring: its capacity, no more
    }
    CHECK(fs::file_size(path) <= kCap);
    REQUIRE(fs::exists(path + ".1"));
    CHECK(fs::file_size(path + ".1") <= kCap);
    CHECK(fs::file_size(path + ".1") > kCap / 2);
    CHECK_FALSE(fs::exists(path + ".2"));  // one old generation only
    const std::string now = contents(path);
    CHECK(now.ends_with(last));
    // Whole lines on both sides of the rotation (each chunk written whole).
    CHECK(now.starts_with("line "));
    CHECK(contents(path + ".1").ends_with("flood\n"));
}

TEST_CASE("a console file over its cap from an earlier run rotates at the first write",
          "[limits][console]") {
    test::TempDir dir("limits");
    const std::string path = dir.file("L.log");
    { std::ofstream(path) << std::string(10000, 'x'); }
    ConsoleLog console("L", 64, path, 4096);
    console.append("fresh\n");
    CHECK(contents(path) == "fresh\n");
    CHECK(fs::file_size(path + ".1") == 10000);
}

TEST_CASE("when NAME.log.1 cannot be used the console file is truncated in place, said once",
          "[limits][console]") {
    test::TempDir dir("limits");
    const std::string path = dir.file("L.log");
    // NAME.log.1 is a directory: it cannot be opened as the file the bytes are copied to.
    fs::create_directory(path + ".1");
    std::ofstream(path + ".1/keep") << "x";
    CapturedLog log(spdlog::level::info);
    std::string last;
    {
        ConsoleLog console("L", 64, path, 2048);
        for (int i = 0; i < 1000; ++i) {
            last = "line " + std::to_string(i) + "\n";
            console.append(last);
        }
    }
    CHECK(fs::file_size(path) <= 2048);
    CHECK(contents(path).ends_with(last));
    CHECK(fs::exists(path + ".1/keep"));
    CHECK(log.count("for rotation") == 1);
    CHECK(log.count("truncating it in place") == 1);
}

TEST_CASE("a console file that is a FIFO is refused without blocking", "[limits][console]") {
    test::TempDir dir("limits");
    const std::string fifo = dir.file("L.log");
    REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
    // A blocking open would wait for a writer for ever (ctest's timeout would fail it).
    CHECK_THROWS_WITH(ConsoleLog("L", 64, fifo, 4096),
                      Catch::Contains("L: ") && Catch::Contains(fifo));
}

TEST_CASE("a line without end keeps the console's memory bounded and is logged in pieces",
          "[limits][console]") {
    CapturedLog log;
    auto limiter = std::make_shared<LogRateLimiter>("L", 1000, 1.0);
    ConsoleLog console("L", 256, {}, ConsoleLog::kDefaultFileMaxBytes, limiter);
    const std::string chunk(1000, 'y');
    for (int i = 0; i < 1000; ++i) {  // 1 MB, no newline
        console.append(chunk);
        REQUIRE(console.pending_line_bytes() < ConsoleLog::kMaxLineBytes);
    }
    CHECK(console.tail(1 << 20).size() == 256);
    // 1,000,000 / 1024 pieces, each a log line (within the limiter's burst).
    CHECK(log.count("L| ") == 1000000 / ConsoleLog::kMaxLineBytes);
    CHECK(log.count("L| " + std::string(ConsoleLog::kMaxLineBytes, 'y') + "\n") ==
          1000000 / ConsoleLog::kMaxLineBytes);
    console.append("\n");  // the rest: 1,000,000 % 1024 bytes
    CHECK(console.pending_line_bytes() == 0);
    CHECK(log.count("L| ") == 1000000 / ConsoleLog::kMaxLineBytes + 1);
}

TEST_CASE("console lines a guest floods are rate-limited per LPAR", "[limits][console]") {
    CapturedLog log;
    FakeClock clock;
    auto limiter = std::make_shared<LogRateLimiter>("L", 10, 5.0, clock.clock());
    ConsoleLog console("L", 256, {}, ConsoleLog::kDefaultFileMaxBytes, limiter);
    for (int i = 0; i < 1000; ++i) console.append("flood\n");
    CHECK(log.count("L| flood") == 10);
    clock.now += 1s;
    console.append("later\n");
    CHECK(log.count("L: 990 guest-triggered log line(s) suppressed") == 1);
    CHECK(log.count("L| later") == 1);
}

// --- the rate limiter ---

TEST_CASE("the token bucket passes a burst, drops the excess, reports it, and refills",
          "[limits][rate]") {
    FakeClock clock;
    LogRateLimiter limiter("LPAR1", 5, 2.0, clock.clock());
    for (int i = 0; i < 5; ++i) {
        auto a = limiter.admit();
        CHECK(a.pass);
        CHECK(a.suppressed == 0);
    }
    for (int i = 0; i < 10; ++i) CHECK_FALSE(limiter.admit().pass);
    CHECK(limiter.suppressed_now() == 10);

    clock.now += 400ms;  // 0.8 of a token: still nothing
    CHECK_FALSE(limiter.admit().pass);
    clock.now += 100ms;  // one token now (2/s over 0.5 s)
    auto a = limiter.admit();
    CHECK(a.pass);
    CHECK(a.suppressed == 11);  // said once, by the first line that passes again
    CHECK_FALSE(limiter.admit().pass);

    clock.now += 1h;  // refills to the burst, not beyond
    for (int i = 0; i < 5; ++i) CHECK(limiter.admit().pass);
    CHECK_FALSE(limiter.admit().pass);

    clock.now -= 10s;  // a clock that steps back gives nothing and breaks nothing
    CHECK_FALSE(limiter.admit().pass);
}

TEST_CASE("the log limiter writes the suppressed count before the next line it passes",
          "[limits][rate]") {
    CapturedLog log(spdlog::level::info);
    FakeClock clock;
    LogRateLimiter limiter("LPAR1", 3, 1.0, clock.clock());
    for (int i = 0; i < 20; ++i) limiter.log(spdlog::level::warn, "LPAR1: unhandled port {}", i);
    CHECK(log.count("unhandled port") == 3);
    // Lines the level hides cost no token.
    for (int i = 0; i < 20; ++i) limiter.log(spdlog::level::debug, "hidden {}", i);
    clock.now += 1s;
    limiter.log(spdlog::level::warn, "LPAR1: unhandled port {}", 99);
    const std::string text = log.out.str();
    const auto note = text.find("LPAR1: 17 guest-triggered log line(s) suppressed");
    REQUIRE(note != std::string::npos);
    CHECK(text.find("unhandled port 99") > note);
    CHECK(log.count("hidden") == 0);
}

// --- boot files ---

TEST_CASE("boot files must be regular files under their limit, checked before reading",
          "[limits][boot]") {
    test::TempDir dir("limits");
    auto error_of = [](auto&& load) -> std::string {
        try {
            load();
        } catch (const Error& e) {
            CHECK(e.kind() == ErrorKind::InvalidArgument);
            return e.what();
        }
        FAIL("not refused");
        return {};
    };
    Arena arena(8 * kMiB, HugePagePolicy::Off);
    GuestWindow window(arena, {{0}, 4 * kMiB});

    SECTION("/dev/zero as a kernel, at once") {
        boot::LinuxBootSpec spec;
        spec.lpar_name = "LPAR2";
        spec.kernel = "/dev/zero";
        // The storage check comes first: give it enough (nothing is touched).
        Arena big(64 * kMiB, HugePagePolicy::Off);
        GuestWindow big_window(big, {{0}, 64 * kMiB});
        // No clock (tests do not time the machine): reading /dev/zero could only end at the
        // size limit, with another message; this one comes from fstat, before any read.
        const auto message = error_of([&] { boot::load_linux(spec, big_window.memory()); });
        CHECK(message ==
              "LPAR2: kernel /dev/zero is not a regular file (the kernel must be one, at most "
              "256 MiB)");
    }
    SECTION("/dev/zero as firmware") {
        CHECK_THAT(error_of([&] { boot::load_firmware_elf("/dev/zero", window.memory(), "L1"); }),
                   Catch::StartsWith("L1: firmware /dev/zero is not a regular file"));
    }
    SECTION("a FIFO does not block") {
        const std::string fifo = dir.file("fifo");
        REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
        // A blocking open would wait for a writer for ever (ctest's timeout would fail it).
        CHECK_THAT(error_of([&] { boot::read_boot_file("L", "initrd", fifo, 1024); }),
                   Catch::Contains("initrd " + fifo + " is not a regular file"));
        CHECK_THAT(error_of([&] { boot::load_firmware_elf(fifo, window.memory(), "L1"); }),
                   Catch::Contains("is not a regular file"));
    }
    SECTION("a directory") {
        CHECK_THAT(error_of([&] { boot::read_boot_file("L", "kernel", dir.path.string(), 1); }),
                   Catch::Contains("is not a regular file"));
    }
    SECTION("over the limit (a sparse file: no disk used)") {
        const std::string big = dir.file("big");
        const int fd = ::open(big.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
        REQUIRE(fd >= 0);
        REQUIRE(::ftruncate(fd, static_cast<off_t>(boot::kMaxKernelBytes + 1)) == 0);
        ::close(fd);
        boot::LinuxBootSpec spec;
        spec.lpar_name = "LPAR2";
        spec.kernel = big;
        Arena storage(64 * kMiB, HugePagePolicy::Off);
        GuestWindow w(storage, {{0}, 64 * kMiB});
        CHECK(error_of([&] { boot::load_linux(spec, w.memory()); }) ==
              "LPAR2: kernel " + big +
                  " is 268435457 bytes, more than the kernel limit of 256 MiB");
        CHECK_THAT(error_of([&] { boot::load_firmware_elf(big, window.memory(), "L1"); }),
                   Catch::Contains("more than the firmware limit of 64 MiB"));
        // An initrd may be larger than a kernel, up to its own limit.
        REQUIRE(::truncate(big.c_str(), static_cast<off_t>(boot::kMaxInitrdBytes + 1)) == 0);
        CHECK_THAT(
            error_of([&] { boot::read_boot_file("LPAR2", "initrd", big, boot::kMaxInitrdBytes); }),
            Catch::Contains("is 1073741825 bytes, more than the initrd limit of 1 GiB"));
    }
    SECTION("a file that is not there") {
        CHECK_THAT(error_of([&] { boot::read_boot_file("L", "kernel", dir.file("none"), 1); }),
                   Catch::StartsWith("L: kernel " + dir.file("none") + " cannot be opened"));
    }
    SECTION("a valid file still loads") {
        const std::string small = dir.file("small");
        std::ofstream(small) << "0123456789";
        CHECK(boot::read_boot_file("L", "initrd", small, 10) ==
              std::vector<std::uint8_t>{'0', '1', '2', '3', '4', '5', '6', '7', '8', '9'});
        auto image = boot::load_firmware_elf(LPARVISOR_TEST_FIRMWARE, window.memory(), "L1");
        CHECK(image.entry != 0);
    }
}

// --- the number of LPARs ---

TEST_CASE("no more than kMaxLpars LPARs can be defined", "[limits][config]") {
    CHECK_NOTHROW(check_lpar_limit(kMaxLpars - 1, "L64"));
    try {
        check_lpar_limit(kMaxLpars, "L65");
        FAIL("not refused");
    } catch (const Error& e) {
        CHECK(e.kind() == ErrorKind::Refused);
        CHECK(std::string(e.what()) ==
              "L65: cannot define it: 64 LPARs are defined, the most there may be (remove one "
              "first)");
    }

    nlohmann::json document = {{"main_storage_mib", 4096}, {"lpars", nlohmann::json::array()}};
    for (std::size_t i = 0; i < kMaxLpars; ++i)
        document["lpars"].push_back(
            {{"name", "L" + std::to_string(i)}, {"size_mib", 4}, {"active", false}});
    CHECK(parse_config(document).lpars.size() == kMaxLpars);
    document["lpars"].push_back({{"name", "ONE_MORE"}, {"size_mib", 4}, {"active", false}});
    CHECK_THROWS_WITH(parse_config(document),
                      Catch::Contains("lpars: 65 LPARs: at most 64 may be defined"));
}

TEST_CASE("the console-flood test firmware flag reaches the boot info", "[limits][boot]") {
    Arena arena(8 * kMiB, HugePagePolicy::Off);
    GuestWindow window(arena, {{0}, 4 * kMiB});
    boot::FirmwareParams params;
    params.lpar_name = "FLOOD";
    boot::build_system_area(window.memory(), params);
    auto info = window.memory().read_object<lpv_boot_info>(GuestPhysAddr{LPV_BOOT_INFO_GPA});
    REQUIRE(info);
    CHECK((info->flags & LPV_BOOT_FLAG_CONSOLE_FLOOD) == 0);
    params.console_flood = true;
    boot::build_system_area(window.memory(), params);
    info = window.memory().read_object<lpv_boot_info>(GuestPhysAddr{LPV_BOOT_INFO_GPA});
    REQUIRE(info);
    CHECK((info->flags & LPV_BOOT_FLAG_CONSOLE_FLOOD) != 0);
}
