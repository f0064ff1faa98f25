// The parts of an LPAR definition that the configuration file and lpar.define share beyond
// plain integers: the boot source (firmware or kernel) and the disk list. Header-only so that
// both the daemon's configuration parser and the JSON-RPC layer use the same rules; errors are
// std::invalid_argument("key: why") that each caller wraps in its own error type.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "control/api.hpp"
#include "control/protocol_schema.hpp"

namespace lparvisor::control {

// "disks": ["a.img", {"path": "b.img", "read_only": true, "latency_ms": 5}]
inline std::vector<DiskDefinition> parse_disk_list(const nlohmann::json& value,
                                                   const std::string& key) {
    auto fail = [&](const std::string& where, const std::string& why) {
        throw std::invalid_argument(where + ": " + why);
    };
    if (!value.is_array()) fail(key, "expected an array of image paths or {path, ...} objects");
    if (value.size() > kMaxDisksPerLpar)
        fail(key, "at most " + std::to_string(kMaxDisksPerLpar) + " disks per LPAR");
    std::vector<DiskDefinition> disks;
    for (std::size_t i = 0; i < value.size(); ++i) {
        const auto& entry = value[i];
        const std::string where = key + "[" + std::to_string(i) + "]";
        DiskDefinition disk;
        if (entry.is_string()) {
            disk.path = entry.get<std::string>();
        } else if (entry.is_object()) {
            for (const auto& [k, v] : entry.items()) {
                if (k == "path") {
                    if (!v.is_string()) fail(where + ".path", "expected a string");
                    disk.path = v.get<std::string>();
                } else if (k == "read_only") {
                    if (!v.is_boolean()) fail(where + ".read_only", "expected true or false");
                    disk.read_only = v.get<bool>();
                } else if (k == "latency_ms") {
                    if (!v.is_number_unsigned() || v.get<std::uint64_t>() > 60'000)
                        fail(where + ".latency_ms", "expected an integer 0..60000");
                    disk.latency_ms = static_cast<std::uint32_t>(v.get<std::uint64_t>());
                } else {
                    fail(where + "." + k, "unknown key (known: latency_ms, path, read_only)");
                }
            }
        } else {
            fail(where, "expected an image path or an object {path, read_only, latency_ms}");
        }
        if (disk.path.empty() || disk.path.size() > kMaxPathBytes)
            fail(where + ".path", "expected a non-empty path of at most 4096 bytes");
        disks.push_back(std::move(disk));
    }
    return disks;
}

inline nlohmann::json disk_list_to_json(const std::vector<DiskDefinition>& disks) {
    auto list = nlohmann::json::array();
    for (const auto& d : disks) {
        if (!d.read_only && d.latency_ms == 0) {
            list.push_back(d.path);
            continue;
        }
        nlohmann::json entry = {{"path", d.path}};
        if (d.read_only) entry["read_only"] = true;
        if (d.latency_ms) entry["latency_ms"] = d.latency_ms;
        list.push_back(entry);
    }
    return list;
}

// A kernel excludes a firmware; initrd and cmdline need a kernel.
inline void check_boot_source(const LparDefinition& d) {
    if (!d.kernel.empty() && !d.firmware.empty())
        throw std::invalid_argument("kernel: give either a kernel or a firmware, not both");
    if (d.kernel.empty() && (!d.initrd.empty() || !d.cmdline.empty()))
        throw std::invalid_argument(std::string(d.initrd.empty() ? "cmdline" : "initrd") +
                                    ": only with a kernel");
    if (d.cmdline.size() > kMaxCmdlineBytes)
        throw std::invalid_argument("cmdline: at most 2048 bytes");
}

}  // namespace lparvisor::control
