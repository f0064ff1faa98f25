// One LPAR definition, one parser, one validator, one table of limits: a bad value gets the same
// words from lpar.define (JSON-RPC), from the configuration file and from a definition made in
// code (what Hypervisor::define checks), and a definition with every field survives the trip
// through system.config's format and back.
#include <catch2/catch.hpp>

#include <functional>
#include <stdexcept>
#include <string>
#include <variant>

#include <nlohmann/json.hpp>

#include "control/definition_json.hpp"
#include "control/json_rpc.hpp"
#include "lpar/config.hpp"
#include "util/error.hpp"

using namespace lparvisor;
using nlohmann::json;

namespace {

struct BadValue {
    std::string key;
    json value;                                         // as JSON (lpar.define, config file)
    std::function<void(control::LparDefinition&)> set;  // the same value, typed
    std::string message;                                // "key: why", the same on every path
};

control::LparDefinition base_definition() {
    control::LparDefinition d;
    d.name = "L1";
    d.size_mib = 64;
    return d;
}

json base_json() {
    return json{{"name", "L1"}, {"size_mib", 64}};
}

// What lpar.define answers (its error message and param), parsing only: no Api is reached.
std::pair<std::string, std::string> define_error(const json& params) {
    const json request{
        {"jsonrpc", "2.0"}, {"id", 1}, {"method", "lpar.define"}, {"params", params}};
    auto outcome = control::parse_request(request.dump());
    REQUIRE(std::holds_alternative<control::RejectedRequest>(outcome));
    const json error =
        json::parse(std::get<control::RejectedRequest>(outcome).response).at("error");
    CHECK(error.at("code") == -32602);
    return {error.at("message").get<std::string>(),
            error.at("data").at("param").get<std::string>()};
}

std::string config_error(const json& lpar) {
    try {
        (void)parse_config(json{{"main_storage_mib", 8192}, {"lpars", json::array({lpar})}});
    } catch (const Error& e) {
        CHECK(e.kind() == ErrorKind::InvalidArgument);
        return e.what();
    }
    FAIL("the configuration was accepted");
    return {};
}

std::string typed_error(const control::LparDefinition& d) {
    try {
        control::check_definition(d);
    } catch (const std::invalid_argument& e) {
        return e.what();
    }
    FAIL("the definition was accepted");
    return {};
}

}  // namespace

TEST_CASE("each bad value gets the same error from every path that defines an LPAR",
          "[definition]") {
    const std::string long_name(32, 'n');
    const std::vector<BadValue> cases = {
        {"name", "bad name", [](auto& d) { d.name = "bad name"; },
         "name: 'bad name' must be 1-31 letters, digits, '_', '.' or '-'"},
        {"name", long_name, [&](auto& d) { d.name = long_name; },
         "name: '" + long_name + "' must be 1-31 letters, digits, '_', '.' or '-'"},
        {"size_mib", 2, [](auto& d) { d.size_mib = 2; },
         "size_mib: expected an integer from 4 to 3584"},
        {"size_mib", 3586, [](auto& d) { d.size_mib = 3586; },
         "size_mib: expected an integer from 4 to 3584"},
        {"size_mib", 65, [](auto& d) { d.size_mib = 65; },
         "size_mib: expected a multiple of 2 (2 MiB units)"},
        {"origin_mib", 3, [](auto& d) { d.origin_mib = 3; },
         "origin_mib: expected a multiple of 2 (2 MiB units)"},
        {"vcpus", 0, [](auto& d) { d.vcpus = 0; }, "vcpus: expected an integer from 1 to 8"},
        {"vcpus", 9, [](auto& d) { d.vcpus = 9; }, "vcpus: expected an integer from 1 to 8"},
        {"rewrite_pages_per_sec", 100'000'001,
         [](auto& d) { d.rewrite_pages_per_sec = 100'000'001; },
         "rewrite_pages_per_sec: expected an integer from 0 to 100000000"},
        {"working_set_mib", 128, [](auto& d) { d.working_set_mib = 128; },
         "working_set_mib: 128 MiB is more than size_mib (64 MiB)"},
        {"round_limit", 1'000'000'001, [](auto& d) { d.round_limit = 1'000'000'001; },
         "round_limit: expected an integer from 0 to 1000000000"},
        {"max_size_mib", 32, [](auto& d) { d.max_size_mib = 32; },
         "max_size_mib: 32 MiB is below size_mib (64 MiB): 0 (cannot grow) or size_mib and up"},
        {"max_size_mib", 129, [](auto& d) { d.max_size_mib = 129; },
         "max_size_mib: expected a multiple of 2 (2 MiB units)"},
        {"max_size_mib", 4096, [](auto& d) { d.max_size_mib = 4096; },
         "max_size_mib: expected an integer from 0 to 3584"},
        {"cmdline", "quiet", [](auto& d) { d.cmdline = "quiet"; }, "cmdline: only with a kernel"},
        {"initrd", "/i", [](auto& d) { d.initrd = "/i"; }, "initrd: only with a kernel"},
        {"firmware", "/fw",
         [](auto& d) {
             d.kernel = "/k";
             d.firmware = "/fw";
         },
         "kernel: give either a kernel or a firmware, not both"},
        {"firmware", std::string(4097, 'f'), [](auto& d) { d.firmware = std::string(4097, 'f'); },
         "firmware: longer than 4096 bytes"},
    };
    for (const BadValue& bad : cases) {
        INFO(bad.key << " = " << bad.value.dump().substr(0, 60));
        json params = base_json();
        params[bad.key] = bad.value;
        if (bad.message.starts_with("kernel:")) params["kernel"] = "/k";
        control::LparDefinition typed = base_definition();
        bad.set(typed);

        const auto [rpc_message, rpc_param] = define_error(params);
        CHECK(rpc_message == bad.message);
        CHECK(rpc_param == bad.message.substr(0, bad.message.find(':')));
        CHECK(config_error(params) == "configuration: lpars[0]." + bad.message);
        CHECK(typed_error(typed) == bad.message);
    }

    // Errors only JSON can have: the same on both JSON paths.
    for (const auto& [key, value, message] :
         {std::tuple{"vcpus", json("2"), "vcpus: expected a non-negative integer"},
          std::tuple{"size_mib", json(-4), "size_mib: expected a non-negative integer"},
          std::tuple{"rng", json(1), "rng: expected true or false"},
          std::tuple{"kernel", json(5), "kernel: expected a string"},
          std::tuple{"colour", json("red"), "colour: unknown parameter"},
          std::tuple{"on_reboot", json("reboot"),
                     R"(on_reboot: expected "restart", "stop" or "deactivate")"},
          std::tuple{"on_crash", json(1),
                     R"(on_crash: expected "restart", "stop" or "deactivate")"}}) {
        INFO(key);
        json params = base_json();
        params[key] = value;
        CHECK(define_error(params).first == message);
        CHECK(config_error(params) == std::string("configuration: lpars[0].") + message);
    }
}

TEST_CASE("every field of a definition survives system.config's format and --config",
          "[definition]") {
    SystemConfig config;
    config.main_storage_mib = 4096;
    LparConfig linux;
    linux.name = "L1";
    linux.size_mib = 512;
    linux.origin_mib = 1024;
    linux.vcpus = 2;
    linux.kernel = "/k/bzImage";
    linux.initrd = "/k/initrd";
    linux.cmdline = "console=ttyS0 quiet";
    linux.disks = {{"/d/a.img", false, 0}, {"/d/b.img", true, 5}};
    linux.rng = false;
    linux.max_size_mib = 1024;
    linux.on_reboot = control::GuestAction::Stop;
    linux.on_poweroff = control::GuestAction::Deactivate;
    linux.on_crash = control::GuestAction::Restart;
    LparConfig firmware;
    firmware.name = "F1";
    firmware.size_mib = 64;
    firmware.firmware = "/fw.elf";
    firmware.rewrite_pages_per_sec = 5000;
    firmware.working_set_mib = 32;
    firmware.round_limit = 7;
    firmware.active = false;
    firmware.on_poweroff = control::GuestAction::Restart;
    config.lpars = {linux, firmware};

    const SystemConfig back = parse_config(to_json(config));
    REQUIRE(back.lpars.size() == 2);
    CHECK(back.main_storage_mib == 4096);
    CHECK(static_cast<const control::LparDefinition&>(back.lpars[0]) == linux);
    CHECK(back.lpars[0].active);
    CHECK(static_cast<const control::LparDefinition&>(back.lpars[1]) == firmware);
    CHECK(!back.lpars[1].active);
    // Defaults are left out of the file; the others are written by name.
    CHECK(to_json(config).at("lpars").at(0).at("on_reboot") == "stop");
    CHECK(!to_json(config).at("lpars").at(1).contains("on_reboot"));
    // And each LPAR of the file is exactly what lpar.define takes (but "active").
    json entry = to_json(config).at("lpars").at(1);
    entry.erase("active");
    CHECK(control::parse_definition(entry) == firmware);
}
