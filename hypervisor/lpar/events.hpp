// Fans events out to subscribers (the control socket's connections, the HTTP listener's event
// streams). publish() may run on any thread, vCPU threads included: it serializes the event once
// (control/event_json.hpp, the one serializer) and copies it into each sink, which must not
// block. Each event is held to its description in control/protocol_schema.hpp (what
// system.describe sends): one that does not match is still sent, and the mismatch handler is told
// (by default it logs an error once per event type; the KVM tests make it fail the test).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "control/api.hpp"

namespace lparvisor {

class EventHub {
  public:
    EventHub() : state_(std::make_shared<State>()) {}
    std::unique_ptr<control::Subscription> subscribe(control::EventSink sink);
    // `type` names the event (kEventSchemas); `data` is its payload.
    void publish(const std::string& type, const std::string& lpar, const control::EventData& data);

    // Called with the mismatch; nullptr restores the default (an error logged once per type).
    using MismatchHandler = void (*)(const std::string& type, const std::string& mismatch);
    static void set_mismatch_handler(MismatchHandler handler);

  private:
    struct State {
        std::mutex mutex;
        std::uint64_t next_id = 1;
        std::map<std::uint64_t, control::EventSink> sinks;
    };
    std::shared_ptr<State> state_;  // shared with live subscriptions, which may outlive the hub
};

}  // namespace lparvisor
