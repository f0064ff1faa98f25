#include "lpar/config.hpp"

#include <fstream>
#include <set>
#include <tuple>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <lparvisor/abi.h>

#include "control/definition_json.hpp"
#include "storage/address.hpp"
#include "storage/storage_map.hpp"
#include "util/error.hpp"

namespace lparvisor {

namespace {

using nlohmann::json;

[[noreturn]] void refuse(const std::string& key, const std::string& why) {
    throw Error(ErrorKind::InvalidArgument,
                "configuration: " + key + (why.empty() ? "" : ": " + why));
}

void check_keys(const json& object, const std::string& where, const std::set<std::string>& known) {
    if (!object.is_object()) refuse(where.empty() ? "top level" : where, "expected an object");
    for (const auto& [key, value] : object.items()) {
        if (!known.contains(key)) {
            std::string list;
            for (const auto& k : known) {
                if (!list.empty()) list += ", ";
                list += k;
            }
            refuse(where.empty() ? key : fmt::format("{}.{}", where, key),
                   fmt::format("unknown key (known: {})", list));
        }
    }
}

std::uint64_t unsigned_value(const json& object, const std::string& key, const std::string& where,
                             std::uint64_t min, std::uint64_t max) {
    const json& v = object.at(key);
    std::string name = where.empty() ? key : where + "." + key;
    if (!v.is_number_integer() ||
        (v.is_number_integer() && !v.is_number_unsigned() && v.get<std::int64_t>() < 0))
        refuse(name, "expected a non-negative integer");
    auto n = v.get<std::uint64_t>();
    if (n < min || n > max) refuse(name, fmt::format("{} is out of range {}..{}", n, min, max));
    return n;
}

}  // namespace

void check_lpar_limit(std::size_t defined, const std::string& name) {
    if (defined >= kMaxLpars)
        throw Error(ErrorKind::Refused,
                    fmt::format("{}: cannot define it: {} LPARs are defined, the most there may be "
                                "(remove one first)",
                                name, defined));
}

// The definition schema's storage limit is the guest ABI's.
static_assert(control::kMaxLparStorageMib * kMiB == LPV_MAX_STORAGE);

SystemConfig fig3a_config() {
    SystemConfig config{509, {}};
    for (auto [name, origin, size] : {std::tuple{"LPAR1", 0, 128}, std::tuple{"LPAR2", 128, 256}}) {
        LparConfig lpar;
        lpar.name = name;
        lpar.origin_mib = origin;
        lpar.size_mib = size;
        if (std::string(name) == "LPAR1") lpar.max_size_mib = 256;  // Fig. 4B: room to grow
        config.lpars.push_back(lpar);
    }
    return config;
}

namespace {

// One LPAR of the file, `where` being "lpars[2]": its own "active" and an lpar.define definition
// (read and checked by the one parser every path uses) that fits in main storage.
LparConfig parse_lpar_entry(json entry, const std::string& where, std::uint64_t main_storage_mib) {
    if (!entry.is_object()) refuse(where, "expected an object");
    LparConfig lpar;
    if (auto active = entry.find("active"); active != entry.end()) {
        if (!active->is_boolean()) refuse(where + ".active", "expected true or false");
        lpar.active = active->get<bool>();
        entry.erase(active);
    }
    try {
        static_cast<control::LparDefinition&>(lpar) = control::parse_definition(entry);
    } catch (const std::invalid_argument& e) {
        refuse(fmt::format("{}.{}", where, e.what()), "");
    }
    if (lpar.size_mib > main_storage_mib)
        refuse(where + ".size_mib", fmt::format("{} MiB is more than main storage ({} MiB)",
                                                lpar.size_mib, main_storage_mib));
    if (lpar.origin_mib && *lpar.origin_mib + lpar.size_mib > main_storage_mib)
        refuse(where + ".origin_mib",
               fmt::format("{}-{} MiB ends beyond main storage ({} MiB)", *lpar.origin_mib,
                           *lpar.origin_mib + lpar.size_mib, main_storage_mib));
    return lpar;
}

// "lpars": an array of at most kMaxLpars entries (parse_lpar_entry).
std::vector<LparConfig> parse_lpar_list(const json& lpars, std::uint64_t main_storage_mib) {
    if (!lpars.is_array()) refuse("lpars", "expected an array");
    if (lpars.size() > kMaxLpars)
        refuse("lpars",
               fmt::format("{} LPARs: at most {} may be defined", lpars.size(), kMaxLpars));
    std::vector<LparConfig> result;
    for (std::size_t i = 0; i < lpars.size(); ++i)
        result.push_back(parse_lpar_entry(lpars[i], fmt::format("lpars[{}]", i), main_storage_mib));
    return result;
}

// Placement: the storage map's own checks (alignment, bounds, overlap, duplicate names).
// LPARs with an origin are placed now; first-fit ones when they are activated.
void check_placement(const SystemConfig& config) {
    StorageMap map(config.main_storage_mib * kMiB);
    std::set<std::string> names;
    for (const auto& lpar : config.lpars) {
        if (!names.insert(lpar.name).second)
            refuse("lpars", "'" + lpar.name + "': an LPAR of that name already exists");
        if (!lpar.active || !lpar.origin_mib) continue;
        try {
            map.add(lpar.name, {{*lpar.origin_mib * kMiB}, lpar.size_mib * kMiB});
        } catch (const Error& e) {
            throw Error(ErrorKind::InvalidArgument, std::string("configuration: ") + e.what());
        }
    }
}

}  // namespace

SystemConfig parse_config(const json& document) {
    check_keys(document, "", {"main_storage_mib", "lpars"});
    if (!document.contains("main_storage_mib")) refuse("main_storage_mib", "missing");
    SystemConfig config;
    // From 4 MiB to 1 TiB.
    config.main_storage_mib =
        unsigned_value(document, "main_storage_mib", "", 4, std::uint64_t{1024} * 1024);
    if (document.contains("lpars"))
        config.lpars = parse_lpar_list(document["lpars"], config.main_storage_mib);
    check_placement(config);
    return config;
}

SystemConfig load_config_file(const std::string& path) {
    std::ifstream in(path);
    if (!in)
        throw Error(ErrorKind::InvalidArgument, "configuration " + path + ": cannot be opened");
    json document;
    try {
        document = json::parse(in);
    } catch (const json::exception& e) {
        throw Error(ErrorKind::InvalidArgument, "configuration " + path + ": " + e.what());
    }
    return parse_config(document);
}

namespace {

// One LPAR as the configuration file has it: name, size_mib and vcpus always, each other field
// only when set (not empty, not zero, not its default).
json lpar_to_json(const LparConfig& l) {
    json entry = {{"name", l.name}, {"size_mib", l.size_mib}, {"vcpus", l.vcpus}};
    if (l.origin_mib) entry["origin_mib"] = *l.origin_mib;
    if (!l.active) entry["active"] = false;
    if (!l.firmware.empty()) entry["firmware"] = l.firmware;
    if (l.rewrite_pages_per_sec) entry["rewrite_pages_per_sec"] = l.rewrite_pages_per_sec;
    if (l.working_set_mib) entry["working_set_mib"] = l.working_set_mib;
    if (l.round_limit) entry["round_limit"] = l.round_limit;
    if (!l.kernel.empty()) entry["kernel"] = l.kernel;
    if (!l.initrd.empty()) entry["initrd"] = l.initrd;
    if (!l.cmdline.empty()) entry["cmdline"] = l.cmdline;
    if (!l.disks.empty()) entry["disks"] = control::disk_list_to_json(l.disks);
    if (!l.rng) entry["rng"] = false;
    if (l.max_size_mib) entry["max_size_mib"] = l.max_size_mib;
    const control::LparDefinition defaults;
    if (l.on_reboot != defaults.on_reboot) entry["on_reboot"] = control::to_string(l.on_reboot);
    if (l.on_poweroff != defaults.on_poweroff)
        entry["on_poweroff"] = control::to_string(l.on_poweroff);
    if (l.on_crash != defaults.on_crash) entry["on_crash"] = control::to_string(l.on_crash);
    return entry;
}

}  // namespace

json to_json(const SystemConfig& config) {
    json lpars = json::array();
    for (const auto& l : config.lpars) lpars.push_back(lpar_to_json(l));
    return {{"main_storage_mib", config.main_storage_mib}, {"lpars", lpars}};
}

}  // namespace lparvisor
