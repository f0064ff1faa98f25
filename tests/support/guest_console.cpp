#include "support/guest_console.hpp"

#include <algorithm>
#include <cstdlib>
#include <regex>
#include <sstream>
#include <thread>

namespace lparvisor::test {

std::string firmware_path() {
    const char* env = std::getenv("LPARVISOR_FIRMWARE");
    return env != nullptr ? env : LPARVISOR_TEST_FIRMWARE;
}

unsigned long FirmwareProgress::min_round(unsigned vcpus) const {
    unsigned long lowest = ~0ul;
    for (unsigned cpu = 0; cpu < vcpus; ++cpu) {
        auto it = round_by_cpu.find(cpu);
        lowest = std::min(lowest, it == round_by_cpu.end() ? 0ul : it->second);
    }
    return lowest;
}

FirmwareProgress parse_firmware_console(const std::string& text) {
    static const std::regex verify(R"(verify ok round=(\d+) cpu=(\d+))");
    FirmwareProgress progress;
    std::istringstream lines(text);
    std::string line;
    while (std::getline(lines, line)) {
        std::smatch m;
        if (std::regex_search(line, m, verify)) {
            unsigned cpu = static_cast<unsigned>(std::stoul(m[2]));
            auto& r = progress.round_by_cpu[cpu];
            r = std::max(r, std::stoul(m[1]));
        }
        if (progress.first_failure.empty() && line.find("FAIL") != std::string::npos)
            progress.first_failure = line;
    }
    return progress;
}

FirmwareProgress wait_for_rounds(const std::function<std::string()>& read_console, unsigned vcpus,
                                 unsigned long round, std::chrono::seconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
        auto progress = parse_firmware_console(read_console());
        if (!progress.first_failure.empty() || progress.min_round(vcpus) >= round ||
            std::chrono::steady_clock::now() >= deadline)
            return progress;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
}

}  // namespace lparvisor::test
