// Fans events out to subscribers (the control socket's connections). publish() may run on any
// thread, vCPU threads included: it only copies the event into each sink, which must not block.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>

#include <nlohmann/json.hpp>

#include "control/api.hpp"

namespace lparvisor {

class EventHub {
  public:
    EventHub() : state_(std::make_shared<State>()) {}
    std::unique_ptr<control::Subscription> subscribe(control::EventSink sink);
    void publish(const std::string& type, const std::string& lpar, const nlohmann::json& data);

  private:
    struct State {
        std::mutex mutex;
        std::uint64_t next_id = 1;
        std::map<std::uint64_t, control::EventSink> sinks;
    };
    std::shared_ptr<State> state_;  // shared with live subscriptions, which may outlive the hub
};

}  // namespace lparvisor
