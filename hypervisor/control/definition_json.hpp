// An LPAR definition as JSON, for every path that takes one: lpar.define, each LPAR of the
// configuration file, and (through check_definition) a definition made in code. One parser and
// one validator, with the limits of one table (protocol_schema.hpp's lpar.define), so that a bad
// value gets the same words wherever it comes from. Header-only so that the daemon's
// configuration parser (lpar/) and the JSON-RPC layer (control/) use it without a link between
// them; errors are std::invalid_argument("key: why") that each caller wraps in its own error.
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>
#include <regex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "control/api.hpp"
#include "control/protocol_schema.hpp"

namespace lparvisor::control {

[[noreturn]] inline void refuse_param(std::string_view key, std::string_view why) {
    throw std::invalid_argument(fmt::format("{}: {}", key, why));
}

// Throws std::invalid_argument("KEY: expected ...") when `value` is outside the Integer
// parameter's range or not a multiple of its unit.
inline void check_schema_integer(const ParamSchema& spec, std::uint64_t value) {
    if (value < spec.min || value > spec.max)
        refuse_param(spec.name,
                     fmt::format("expected an integer from {} to {}", spec.min, spec.max));
    if (spec.multiple_of > 1 && value % spec.multiple_of != 0) {
        refuse_param(spec.name, spec.multiple_why.empty()
                                    ? fmt::format("expected a multiple of {}", spec.multiple_of)
                                    : fmt::format("expected a multiple of {} ({})",
                                                  spec.multiple_of, spec.multiple_why));
    }
}

// An Integer parameter from JSON. nlohmann stores 0..2^64-1 as unsigned, negatives as signed,
// and anything else (fractions, exponents, integers beyond 64 bits) as double: only the first
// is acceptable.
inline std::uint64_t schema_integer(const ParamSchema& spec, const nlohmann::json& value) {
    if (value.is_number_unsigned()) {
        check_schema_integer(spec, value.get<std::uint64_t>());
        return value.get<std::uint64_t>();
    }
    if (value.is_number_integer() && value.get<std::int64_t>() >= 0) {
        const auto number = static_cast<std::uint64_t>(value.get<std::int64_t>());
        check_schema_integer(spec, number);
        return number;
    }
    if (value.is_number_float()) {
        const double number = value.get<double>();
        if (std::isfinite(number) && number >= 0 && std::floor(number) == number &&
            number > static_cast<double>(spec.max)) {  // an integer too large for 64 bits
            refuse_param(spec.name,
                         fmt::format("expected an integer from {} to {}", spec.min, spec.max));
        }
    }
    refuse_param(spec.name, "expected a non-negative integer");
}

// A Choice parameter from JSON: the index of its value in the schema's choices.
inline std::uint64_t schema_choice(const ParamSchema& spec, const nlohmann::json& value) {
    std::string known;
    for (std::size_t i = 0; i < spec.choices.size(); ++i) {
        if (value.is_string() && value.get<std::string>() == spec.choices[i]) return i;
        known += fmt::format("{}\"{}\"",
                             i == 0                         ? ""
                             : i + 1 == spec.choices.size() ? " or "
                                                            : ", ",
                             spec.choices[i]);
    }
    refuse_param(spec.name, "expected " + known);
}

inline std::string_view to_string(GuestAction action) {
    return kGuestActions[static_cast<std::size_t>(action)];
}

// One disk given as an object: {"path": "b.img", "read_only": true, "latency_ms": 5}. `where`
// names it in messages ("disks[1]").
inline DiskDefinition parse_disk_object(const nlohmann::json& entry, const std::string& where) {
    DiskDefinition disk;
    for (const auto& [k, v] : entry.items()) {
        if (k == "path") {
            if (!v.is_string()) refuse_param(where + ".path", "expected a string");
            disk.path = v.get<std::string>();
        } else if (k == "read_only") {
            if (!v.is_boolean()) refuse_param(where + ".read_only", "expected true or false");
            disk.read_only = v.get<bool>();
        } else if (k == "latency_ms") {
            if (!v.is_number_unsigned() || v.get<std::uint64_t>() > 60'000)
                refuse_param(where + ".latency_ms", "expected an integer 0..60000");
            disk.latency_ms = static_cast<std::uint32_t>(v.get<std::uint64_t>());
        } else {
            refuse_param(fmt::format("{}.{}", where, k),
                         "unknown key (known: latency_ms, path, read_only)");
        }
    }
    return disk;
}

// One entry of a disk list: an image path or an object (parse_disk_object); either way with a
// path of 1 to kMaxPathBytes bytes.
inline DiskDefinition parse_disk_entry(const nlohmann::json& entry, const std::string& where) {
    DiskDefinition disk;
    if (entry.is_string()) {
        disk.path = entry.get<std::string>();
    } else if (entry.is_object()) {
        disk = parse_disk_object(entry, where);
    } else {
        refuse_param(where, "expected an image path or an object {path, read_only, latency_ms}");
    }
    if (disk.path.empty() || disk.path.size() > kMaxPathBytes)
        refuse_param(where + ".path", "expected a non-empty path of at most 4096 bytes");
    return disk;
}

// "disks": ["a.img", {"path": "b.img", "read_only": true, "latency_ms": 5}]
inline std::vector<DiskDefinition> parse_disk_list(const nlohmann::json& value,
                                                   const std::string& key) {
    if (!value.is_array())
        refuse_param(key, "expected an array of image paths or {path, ...} objects");
    if (value.size() > kMaxDisksPerLpar)
        refuse_param(key, fmt::format("at most {} disks per LPAR", kMaxDisksPerLpar));
    std::vector<DiskDefinition> disks;
    for (std::size_t i = 0; i < value.size(); ++i)
        disks.push_back(parse_disk_entry(value[i], fmt::format("{}[{}]", key, i)));
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
}

inline const ParamSchema& define_param(std::string_view name) {
    const ParamSchema* spec = find_param(*find_method_schema("lpar.define"), name);
    if (spec == nullptr) throw std::logic_error(fmt::format("lpar.define has no {}", name));
    return *spec;
}

// The one validator of an LPAR definition, whatever it came from: every number within the
// lpar.define schema's range and unit, the name's characters, the rules between fields, the
// boot source and the disks. Throws std::invalid_argument("key: why").
inline void check_definition(const LparDefinition& d) {
    static const std::regex kNamePattern("[A-Za-z0-9_.-]{1,31}");
    if (!std::regex_match(d.name, kNamePattern))
        refuse_param("name",
                     fmt::format("'{}' must be 1-31 letters, digits, '_', '.' or '-'", d.name));
    check_schema_integer(define_param("size_mib"), d.size_mib);
    if (d.origin_mib) check_schema_integer(define_param("origin_mib"), *d.origin_mib);
    check_schema_integer(define_param("vcpus"), d.vcpus);
    check_schema_integer(define_param("rewrite_pages_per_sec"), d.rewrite_pages_per_sec);
    check_schema_integer(define_param("working_set_mib"), d.working_set_mib);
    check_schema_integer(define_param("round_limit"), d.round_limit);
    check_schema_integer(define_param("max_size_mib"), d.max_size_mib);
    if (d.working_set_mib > d.size_mib)
        refuse_param("working_set_mib", fmt::format("{} MiB is more than size_mib ({} MiB)",
                                                    d.working_set_mib, d.size_mib));
    if (d.max_size_mib != 0 && d.max_size_mib < d.size_mib)
        refuse_param("max_size_mib", fmt::format("{} MiB is below size_mib ({} MiB): 0 (cannot "
                                                 "grow) or size_mib and up",
                                                 d.max_size_mib, d.size_mib));
    for (auto [key, text] : {std::pair{"firmware", &d.firmware}, std::pair{"kernel", &d.kernel},
                             std::pair{"initrd", &d.initrd}, std::pair{"cmdline", &d.cmdline}}) {
        if (text->size() > define_param(key).max)
            refuse_param(key, fmt::format("longer than {} bytes", define_param(key).max));
    }
    if (d.disks.size() > kMaxDisksPerLpar)
        refuse_param("disks", fmt::format("at most {} disks per LPAR", kMaxDisksPerLpar));
    check_boot_source(d);
}

// The one parser of an LPAR definition in JSON (lpar.define's params, an LPAR of the
// configuration file without its "active"): every key must be one lpar.define takes, each value
// of its type and within its range, then check_definition. Throws std::invalid_argument.
inline LparDefinition parse_definition(const nlohmann::json& object) {
    if (!object.is_object()) refuse_param("definition", "expected an object");
    const MethodSchema& schema = *find_method_schema("lpar.define");
    for (const auto& [key, value] : object.items())
        if (find_param(schema, key) == nullptr) refuse_param(key, "unknown parameter");
    for (const ParamSchema& param : schema.params) {
        if (param.required && !object.contains(param.name)) {
            refuse_param(param.name, param.type == ParamType::Integer
                                         ? "missing (expected a non-negative integer)"
                                         : "missing (expected a string)");
        }
    }
    const auto string_of = [&](std::string_view key) -> std::string {
        auto it = object.find(key);
        if (it == object.end()) return {};
        if (!it->is_string()) refuse_param(key, "expected a string");
        return it->get<std::string>();
    };
    const auto integer_of = [&](std::string_view key) -> std::optional<std::uint64_t> {
        auto it = object.find(key);
        if (it == object.end()) return std::nullopt;
        return schema_integer(define_param(key), *it);
    };
    // An absent parameter with a default takes the schema's.
    const auto integer_or_default = [&](std::string_view key) {
        return integer_of(key).value_or(define_param(key).fallback);
    };
    LparDefinition d;
    d.name = string_of("name");
    if (d.name.empty()) refuse_param("name", "expected a non-empty string");
    d.size_mib = *integer_of("size_mib");
    d.origin_mib = integer_of("origin_mib");
    d.vcpus = static_cast<unsigned>(integer_or_default("vcpus"));
    d.firmware = string_of("firmware");
    d.rewrite_pages_per_sec = integer_or_default("rewrite_pages_per_sec");
    d.working_set_mib = integer_or_default("working_set_mib");
    d.round_limit = integer_or_default("round_limit");
    d.kernel = string_of("kernel");
    d.initrd = string_of("initrd");
    d.cmdline = string_of("cmdline");
    if (auto it = object.find("disks"); it != object.end()) d.disks = parse_disk_list(*it, "disks");
    d.rng = define_param("rng").fallback != 0;
    if (auto it = object.find("rng"); it != object.end()) {
        if (!it->is_boolean()) refuse_param("rng", "expected true or false");
        d.rng = it->get<bool>();
    }
    d.max_size_mib = integer_or_default("max_size_mib");
    const auto action_of = [&](std::string_view key) {
        const ParamSchema& spec = define_param(key);
        auto it = object.find(key);
        if (it == object.end()) return static_cast<GuestAction>(spec.fallback);
        return static_cast<GuestAction>(schema_choice(spec, *it));
    };
    d.on_reboot = action_of("on_reboot");
    d.on_poweroff = action_of("on_poweroff");
    d.on_crash = action_of("on_crash");
    check_definition(d);
    return d;
}

}  // namespace lparvisor::control
