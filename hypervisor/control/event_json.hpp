// The one serializer of event data: what lpar/ publishes (control::EventData) as the JSON object a
// client receives, held to the event's description in protocol_schema.hpp (what system.describe
// sends). An event that reports a result is that result's own JSON (json_rpc.hpp's to_json), less
// "lpar", which every event carries already.
#pragma once

#include <string>

#include <nlohmann/json_fwd.hpp>

#include "control/api.hpp"

namespace lparvisor::control {

struct SerializedEventData {
    std::string json;      // a JSON object
    std::string mismatch;  // empty, or how it differs from the event's description
};

[[nodiscard]] SerializedEventData serialize_event_data(const std::string& type,
                                                       const EventData& data);

// Empty when an event of `type` with `data` matches its description: a known type, and exactly
// the described fields, each of its type. Otherwise what differs.
[[nodiscard]] std::string event_schema_mismatch(const std::string& type,
                                                const nlohmann::json& data);

}  // namespace lparvisor::control
