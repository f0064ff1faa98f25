#include "live.hpp"

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <vector>

#include <fmt/format.h>

namespace lparvisor::svp {

std::optional<std::chrono::system_clock::time_point> parse_event_time(std::string_view text) {
    // Exactly the daemon's form: 27 characters, microseconds, Z.
    std::tm utc{};
    unsigned micros = 0;
    int used = 0;
    const std::string copy(text);
    if (copy.size() != 27 ||
        std::sscanf(copy.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d.%6uZ%n", &utc.tm_year, &utc.tm_mon,
                    &utc.tm_mday, &utc.tm_hour, &utc.tm_min, &utc.tm_sec, &micros, &used) != 7 ||
        used != 27) {
        return std::nullopt;
    }
    utc.tm_year -= 1900;
    utc.tm_mon -= 1;
    const std::time_t seconds = ::timegm(&utc);
    if (seconds == static_cast<std::time_t>(-1)) return std::nullopt;
    return std::chrono::system_clock::from_time_t(seconds) + std::chrono::microseconds(micros);
}

std::string format_event(const nlohmann::json& params, std::chrono::system_clock::time_point now) {
    if (auto it = params.find("time"); it != params.end() && it->is_string()) {
        if (auto when = parse_event_time(it->get_ref<const std::string&>())) now = *when;
    }
    const auto seconds = std::chrono::system_clock::to_time_t(now);
    const auto millis =
        std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()) % 1000;
    std::tm local{};
    ::localtime_r(&seconds, &local);
    char clock[16];
    std::strftime(clock, sizeof(clock), "%H:%M:%S", &local);

    const std::string type = params.value("event", std::string("?"));
    const std::string lpar = params.value("lpar", std::string("-"));
    std::string line = fmt::format("{}.{:03}  {:<15}  {:<8}", clock, millis.count(), type,
                                   lpar.empty() ? "-" : lpar);
    for (const auto& [key, value] : params.items()) {
        if (key == "event" || key == "lpar" || key == "time" || key == "monotonic_us") continue;
        line +=
            fmt::format(" {}={}", key,
                        value.is_string()
                            ? value.get<std::string>()
                            : value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
    }
    line.erase(line.find_last_not_of(' ') + 1);
    return line;
}

std::string progress_bar(std::uint64_t done_bytes, std::uint64_t total_bytes,
                         std::string_view label, std::size_t width) {
    constexpr std::uint64_t kMiB = std::uint64_t{1024} * 1024;
    // Before the copy reports its size (check_target, populate_target, stop_vcpus) there is
    // nothing to draw a bar of: show the phase alone.
    if (total_bytes == 0) return std::string(label);
    done_bytes = std::min(done_bytes, total_bytes);
    const std::size_t filled = static_cast<std::size_t>(
        static_cast<long double>(done_bytes) * width / static_cast<long double>(total_bytes));
    return fmt::format("[{}{}] {}/{} MiB {}", std::string(filled, '#'),
                       std::string(width - filled, '.'), done_bytes / kMiB, total_bytes / kMiB,
                       label);
}

}  // namespace lparvisor::svp
