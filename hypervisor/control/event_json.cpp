#include "control/event_json.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "control/json_rpc.hpp"
#include "control/protocol_schema.hpp"

namespace lparvisor::control {

using nlohmann::json;

namespace {

json data_json(const StateChange& e) {
    return {{"state", e.state}, {"reason", e.reason}};
}
json data_json(const GuestEventReport& e) {
    return {{"guest_event", e.guest_event}, {"action", e.action}, {"reason", e.reason}};
}
json data_json(const Restarted& e) {
    return {{"cause", e.cause}, {"origin_mib", e.origin_mib}};
}
json data_json(const MvstorStarted& e) {
    return {{"old_origin_mib", e.old_origin_mib},
            {"new_origin_mib", e.new_origin_mib},
            {"size_mib", e.size_mib},
            {"mode", e.mode}};
}
json data_json(const PhaseDone& e) {
    return {{"phase", e.phase}, {"us", e.us}};
}
json data_json(const CopyAdvanced& e) {
    return {{"copied", e.copied}, {"total", e.total}};
}
json data_json(const PlugAdvanced& e) {
    return {{"plugged_mib", e.plugged_mib}, {"total_mib", e.total_mib}};
}
json data_json(const UnplugAdvanced& e) {
    return {{"released_mib", e.released_mib}, {"total_mib", e.total_mib}};
}
json data_json(const OperationFailed& e) {
    return {{"message", e.message}};
}
// A result: the method's own answer, less the LPAR the event names already.
template <typename Result>
requires std::is_same_v<Result, MvstorResult> || std::is_same_v<Result, ResizeResult> json
data_json(const Result& result) {
    json out = to_json(result);
    out.erase("lpar");
    return out;
}
json data_json(const ExchangeResult& result) {
    return to_json(result);
}

bool has_type(const json& value, FieldType type) {
    switch (type) {
        case FieldType::String:
            return value.is_string();
        case FieldType::Integer:
            return value.is_number_integer();
        case FieldType::Boolean:
            return value.is_boolean();
        case FieldType::Array:
            return value.is_array();
        case FieldType::Object:
            return value.is_object();
    }
    return false;
}

}  // namespace

std::string event_schema_mismatch(const std::string& type, const json& data) {
    const EventSchema* schema = find_event_schema(type);
    if (schema == nullptr) return "no event of this name is described";
    if (!data.is_object()) return "its data is not an object";
    std::string out;
    for (const auto& field : schema->fields) {
        auto it = data.find(field.name);
        if (it == data.end()) {
            out += fmt::format("{}{} is missing", out.empty() ? "" : "; ", field.name);
        } else if (!has_type(*it, field.type)) {
            out += fmt::format("{}{} has the wrong type", out.empty() ? "" : "; ", field.name);
        }
    }
    for (const auto& [key, value] : data.items()) {
        bool described = false;
        for (const auto& field : schema->fields) described = described || field.name == key;
        if (!described) out += fmt::format("{}{} is not described", out.empty() ? "" : "; ", key);
    }
    return out;
}

SerializedEventData serialize_event_data(const std::string& type, const EventData& data) {
    const json object = std::visit([](const auto& e) { return data_json(e); }, data);
    return {object.dump(-1, ' ', false, json::error_handler_t::replace),
            event_schema_mismatch(type, object)};
}

}  // namespace lparvisor::control
