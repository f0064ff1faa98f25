// libFuzzer target for the daemon's configuration file (lpar/config.*): the input is the file.
// It is read the way the daemon reads it, load_config_file() on a path (a memfd's
// /proc/self/fd/N), and parsed again from memory with parse_config().
//
// Invariants beyond "no crash, no sanitizer report": a refused file is refused with
// lparvisor::Error (nothing else escapes); the file and the in-memory parse agree; an accepted
// configuration survives to_json() and parse_config() unchanged.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "fuzz_support.hpp"
#include "lpar/config.hpp"
#include "util/error.hpp"

namespace {

using namespace lparvisor;

std::optional<nlohmann::json> parsed(const std::function<SystemConfig()>& parse) {
    try {
        return to_json(parse());
    } catch (const Error&) {
        return std::nullopt;
    }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    fuzz::quiet_logs();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static fuzz::MemFile file("fuzz-config");
    file.assign({data, size});
    const auto from_file = parsed([&] { return load_config_file(file.path()); });
    const auto document = nlohmann::json::parse(data, data + size, nullptr, false);
    const auto from_memory =
        document.is_discarded() ? std::nullopt : parsed([&] { return parse_config(document); });
    fuzz::check(from_file.has_value() == from_memory.has_value(),
                "the file and the in-memory parse disagree");
    if (!from_file) {
        fuzz::tally(document.is_discarded() ? "not JSON" : "refused");
        return 0;
    }
    fuzz::check(*from_file == *from_memory, "the file and the in-memory parse differ");
    const auto again = parsed([&] { return parse_config(*from_file); });
    fuzz::check(again.has_value() && *again == *from_file,
                "an accepted configuration does not survive to_json and parse_config");
    fuzz::tally("accepted");
    return 0;
}
