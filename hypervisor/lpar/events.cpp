#include "lpar/events.hpp"

#include <atomic>
#include <set>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "control/protocol_schema.hpp"

namespace lparvisor {

namespace {

bool has_type(const nlohmann::json& value, control::FieldType type) {
    switch (type) {
        case control::FieldType::String:
            return value.is_string();
        case control::FieldType::Integer:
            return value.is_number_integer();
        case control::FieldType::Boolean:
            return value.is_boolean();
        case control::FieldType::Array:
            return value.is_array();
        case control::FieldType::Object:
            return value.is_object();
    }
    return false;
}

void log_mismatch_once(const std::string& type, const std::string& mismatch) {
    static std::mutex mutex;
    static std::set<std::string> reported;
    std::lock_guard lock(mutex);
    if (!reported.insert(type).second) return;
    spdlog::error(
        "event {} does not match its description in system.describe: {} (a bug: "
        "please report it)",
        type, mismatch);
}

std::atomic<EventHub::MismatchHandler> g_mismatch_handler{nullptr};

class HubSubscription final : public control::Subscription {
  public:
    explicit HubSubscription(std::function<void()> cancel) : cancel_(std::move(cancel)) {}
    ~HubSubscription() override { cancel_(); }

  private:
    std::function<void()> cancel_;
};

}  // namespace

std::unique_ptr<control::Subscription> EventHub::subscribe(control::EventSink sink) {
    std::uint64_t id;
    {
        std::lock_guard lock(state_->mutex);
        id = state_->next_id++;
        state_->sinks.emplace(id, std::move(sink));
    }
    std::weak_ptr<State> weak = state_;
    return std::make_unique<HubSubscription>([weak, id] {
        if (auto state = weak.lock()) {
            std::lock_guard lock(state->mutex);
            state->sinks.erase(id);
        }
    });
}

std::string EventHub::schema_mismatch(const std::string& type, const nlohmann::json& data) {
    const control::EventSchema* schema = control::find_event_schema(type);
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

void EventHub::set_mismatch_handler(MismatchHandler handler) {
    g_mismatch_handler = handler;
}

void EventHub::publish(const std::string& type, const std::string& lpar,
                       const nlohmann::json& data) {
    if (auto mismatch = schema_mismatch(type, data); !mismatch.empty()) {
        MismatchHandler handler = g_mismatch_handler.load();
        (handler != nullptr ? handler : log_mismatch_once)(type, mismatch);
    }
    control::Event event{type, lpar,
                         data.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)};
    // Sinks are called with the lock held so that an unsubscribe returns only once its sink can
    // no longer run; sinks are quick and never call back into the hub.
    std::lock_guard lock(state_->mutex);
    for (const auto& [id, sink] : state_->sinks) sink(event);
}

}  // namespace lparvisor
