#include "lpar/events.hpp"

namespace lparvisor {

namespace {

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

void EventHub::publish(const std::string& type, const std::string& lpar,
                       const nlohmann::json& data) {
    control::Event event{type, lpar,
                         data.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)};
    // Sinks are called with the lock held so that an unsubscribe returns only once its sink can
    // no longer run; sinks are quick and never call back into the hub.
    std::lock_guard lock(state_->mutex);
    for (const auto& [id, sink] : state_->sinks) sink(event);
}

}  // namespace lparvisor
