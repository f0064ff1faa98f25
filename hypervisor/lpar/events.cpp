#include "lpar/events.hpp"

#include <atomic>
#include <set>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "control/event_json.hpp"

namespace lparvisor {

namespace {

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

void EventHub::set_mismatch_handler(MismatchHandler handler) {
    g_mismatch_handler = handler;
}

void EventHub::publish(const std::string& type, const std::string& lpar,
                       const control::EventData& data) {
    control::SerializedEventData serialized = control::serialize_event_data(type, data);
    if (!serialized.mismatch.empty()) {
        MismatchHandler handler = g_mismatch_handler.load();
        (handler != nullptr ? handler : log_mismatch_once)(type, serialized.mismatch);
    }
    control::Event event{type, lpar, std::move(serialized.json)};
    // Sinks are called with the lock held so that an unsubscribe returns only once its sink can
    // no longer run; sinks are quick and never call back into the hub.
    std::lock_guard lock(state_->mutex);
    for (const auto& [id, sink] : state_->sinks) sink(event);
}

}  // namespace lparvisor
