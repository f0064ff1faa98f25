// A test double for control::Api: records the calls, returns canned results (the patent's Fig. 3A
// by default), throws an Error when told to, and can hold storage.mvstor for a while (or until it
// is cancelled or released) so that tests can show the socket keeps answering during a
// relocation. The lifecycle methods keep simple in-memory states (defined / running / stopped) in
// `status`; emit() sends an Event to every subscriber, and mvstor emits its events when asked.
// expand / shrink / grow change `status` as the hypervisor would (size, plugged, gaps) and refuse
// by the hypervisor's own rules (lpar/resize_rules.hpp and StorageMap::check_resize, applied to
// `status`), so their messages are the daemon's; their events come from its serializer.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "control/api.hpp"
#include "control/event_json.hpp"
#include "lpar/resize_rules.hpp"
#include "storage/storage_map.hpp"
#include "util/error.hpp"

namespace lparvisor::control::test {

inline SystemStatus fig3a_status() {
    SystemStatus status;
    status.main_storage_mib = 509;
    status.free_mib = 125;
    // max_size_mib == size_mib, as the hypervisor reports an LPAR without a virtio-mem region.
    status.lpars = {
        {"LPAR1", 0, 128, 0, "running", true, "", 1, "firmware", 128, 0},
        {"LPAR2", 128, 256, 125, "running", true, "", 2, "firmware", 256, 0},
    };
    return status;
}

inline MvstorResult lpar2_moved_to_192() {
    MvstorResult result;
    result.lpar = "LPAR2";
    result.old_origin_mib = 128;
    result.new_origin_mib = 192;
    result.bytes_copied = 256ull << 20;
    // A stop-and-copy's phases, in the order and with the names hypervisor/lpar/mvstor.cpp gives.
    result.phases = {{"check_target", 5}, {"populate_target", 900}, {"stop_vcpus", 120},
                     {"drain_io", 300},   {"copy", 30000},          {"remap", 600},
                     {"resume", 175},     {"scrub", 26800}};
    result.pause_us = 31200;
    result.total_us = 58000;
    return result;
}

class FakeApi : public Api {
  public:
    SystemStatus list() override {
        std::chrono::milliseconds delay{0};
        {
            std::lock_guard lock(mutex_);
            delay = query_delay;
        }
        if (delay.count() > 0) std::this_thread::sleep_for(delay);
        std::lock_guard lock(mutex_);
        ++list_calls;
        maybe_throw();
        return status;
    }

    // The counters a test sets (`stats`), with the storage figures of `status`.
    SystemStats stats() override {
        std::lock_guard lock(mutex_);
        ++stats_calls;
        maybe_throw();
        SystemStats out = stats_template;
        out.main_storage_mib = status.main_storage_mib;
        out.free_mib = status.free_mib;
        return out;
    }

    MvstorResult mvstor(const MvstorRequest& request) override {
        std::chrono::milliseconds hold{0};
        bool emit_events = false;
        MvstorResult result;
        {
            std::lock_guard lock(mutex_);
            mvstor_requests.push_back(request);
            ++mvstor_running;
            maybe_throw_and_count_down();
            hold = mvstor_hold;
            emit_events = mvstor_emits_events;
            result = mvstor_result;
            result.lpar = request.lpar;
            mvstor_lpars_.push_back(request.lpar);
        }
        changed_.notify_all();
        if (hold.count() > 0) std::this_thread::sleep_for(hold);
        bool cancelled = false;
        {
            std::unique_lock lock(mutex_);
            changed_.wait(lock,
                          [&] { return !mvstor_gate_closed || cancel_requested(request.lpar); });
            cancelled = cancel_requested(request.lpar);
            cancelled_.erase(request.lpar);
            mvstor_lpars_.erase(
                std::find(mvstor_lpars_.begin(), mvstor_lpars_.end(), request.lpar));
            --mvstor_running;
        }
        changed_.notify_all();
        if (cancelled) {
            if (emit_events) emit({"mvstor.failed", request.lpar, R"({"message":"cancelled"})"});
            throw Error(ErrorKind::Busy, request.lpar + ": MVSTOR cancelled");
        }
        // Like the hypervisor, the final event always goes out before the answer; the phases
        // and progress only when asked.
        emit_mvstor_events(result, emit_events);
        return result;
    }

    LparStatus define(const LparDefinition& definition) override {
        std::lock_guard lock(mutex_);
        defined.push_back(definition);
        maybe_throw();
        if (find(definition.name) != nullptr) {
            throw Error(ErrorKind::Refused, definition.name + ": already defined");
        }
        LparStatus lpar;
        lpar.name = definition.name;
        lpar.origin_mib = definition.origin_mib.value_or(0);
        lpar.size_mib = definition.size_mib;
        lpar.state = "defined";
        lpar.has_storage = false;
        lpar.vcpus = definition.vcpus;
        lpar.guest = definition.kernel.empty() ? "firmware" : "linux";
        lpar.max_size_mib = std::max(definition.max_size_mib, definition.size_mib);
        status.lpars.push_back(lpar);
        recompute();
        return *find(definition.name);
    }

    LparStatus activate(const std::string& name) override {
        return transition(name, "activate", {"defined"}, [this](LparStatus& lpar) {
            if (!place(lpar)) {
                throw Error(ErrorKind::Refused,
                            lpar.name + ": no room for " + std::to_string(lpar.size_mib) + " MiB");
            }
            lpar.has_storage = true;
            lpar.state = "running";
        });
    }
    LparStatus stop(const std::string& name) override {
        return transition(name, "stop", {"running"}, [](LparStatus& lpar) {
            lpar.state = "stopped";
            lpar.reason = "operator stop";
        });
    }
    LparStatus start(const std::string& name) override {
        return transition(name, "start", {"stopped"}, [](LparStatus& lpar) {
            lpar.state = "running";
            lpar.reason.clear();
        });
    }
    LparStatus reset(const std::string& name) override {
        return transition(name, "reset", {"running", "stopped"}, [](LparStatus& lpar) {
            lpar.state = "running";
            lpar.reason.clear();
        });
    }
    LparStatus deactivate(const std::string& name) override {
        return transition(name, "deactivate", {"running", "stopped"}, [](LparStatus& lpar) {
            lpar.state = "defined";
            lpar.reason.clear();
            lpar.has_storage = false;
        });
    }
    void remove(const std::string& name) override {
        std::lock_guard lock(mutex_);
        lifecycle_calls.push_back("remove " + name);
        maybe_throw();
        LparStatus* lpar = find(name);
        if (lpar == nullptr) throw Error(ErrorKind::NotFound, name + ": no such LPAR");
        if (lpar->state != "defined") {
            throw Error(ErrorKind::Refused, name + ": is " + lpar->state + ", deactivate it first");
        }
        status.lpars.erase(status.lpars.begin() + (lpar - status.lpars.data()));
        recompute();
    }

    std::string system_config() override {
        std::lock_guard lock(mutex_);
        maybe_throw();
        return config_json;
    }

    ExchangeResult exchange(const ExchangeRequest& request) override {
        std::lock_guard lock(mutex_);
        maybe_throw();
        exchange_requests.push_back(request);
        const std::string a = request.a;
        if (operations_emit_events) {
            emit({"exchange.phase", a, R"({"phase":"check","us":20})"});
            emit({"exchange.phase", a, R"({"phase":"stop_vcpus","us":100})"});
            emit({"exchange.progress", a, R"({"copied":268435456,"total":536870912})"});
            emit({"exchange.progress", a, R"({"copied":536870912,"total":536870912})"});
            emit({"exchange.phase", a, R"({"phase":"exchange","us":1200})"});
            emit({"exchange.phase", a, R"({"phase":"remap","us":150})"});
            emit({"exchange.phase", a, R"({"phase":"resume","us":50})"});
        }
        emit({"exchange.done", a,
              R"({"a":")" + a + R"(","b":")" + request.b +
                  R"(","a_new_origin_mib":128,"b_new_origin_mib":0,"pause_us":1500})"});
        return ExchangeResult{request.a, request.b, 0, 128, 128, 0, 256ull << 20, 1500, 2000, {}};
    }
    GrowPlanResult plan_grow(const std::string& name, std::uint64_t extra_mib) override {
        std::lock_guard lock(mutex_);
        maybe_throw();
        GrowPlanResult plan{name,         extra_mib, true,  {{"LPAR2", 128, 192, 256}},
                            256ull << 20, "",        false, {}};
        return plan;
    }
    GrowPlanResult make_room(const std::string& name, std::uint64_t extra_mib,
                             MvstorMode) override {
        auto plan = plan_grow(name, extra_mib);
        std::lock_guard lock(mutex_);
        plan.carried_out = true;
        plan.moves.push_back(mvstor_result);
        return plan;
    }

    ResizeResult expand(const ResizeRequest& request) override {
        std::lock_guard lock(mutex_);
        expand_requests.push_back(request);
        maybe_throw();
        return resize_locked(request, true);
    }
    ResizeResult shrink(const ResizeRequest& request) override {
        std::lock_guard lock(mutex_);
        shrink_requests.push_back(request);
        maybe_throw();
        return resize_locked(request, false);
    }
    // The fake's plan: when the gap above is too small, the LPAR directly above moves up by what
    // is missing (if its own gap allows), then the EXPAND.
    GrowResult grow(const ResizeRequest& request, MvstorMode mode) override {
        std::lock_guard lock(mutex_);
        grow_requests.emplace_back(request, mode);
        maybe_throw();
        // Like the hypervisor, refuse an LPAR that cannot grow before moving anybody for it.
        check_resize_request(request, "grow");
        const LparStatus& lpar = placed(request.lpar);
        check_resizable(lpar.name, can_resize(lpar));
        check_within_maximum(lpar.name, lpar.size_mib * kMiB, request.mib * kMiB,
                             lpar.max_size_mib * kMiB);
        GrowResult result;
        result.plan.lpar = request.lpar;
        result.plan.extra_mib = request.mib;
        result.plan.possible = true;
        result.plan.carried_out = true;
        if (lpar.gap_mib < request.mib) {
            const std::uint64_t missing = request.mib - lpar.gap_mib;
            const std::uint64_t top = lpar.origin_mib + lpar.size_mib + lpar.gap_mib;
            LparStatus* above = nullptr;
            for (auto& other : status.lpars) {
                if (other.has_storage && other.origin_mib == top) above = &other;
            }
            if (above == nullptr || above->gap_mib < missing) {
                throw Error(ErrorKind::Refused, request.lpar + ": no MVSTORs free " +
                                                    std::to_string(request.mib) + " MiB above it");
            }
            GrowPlanStep step{above->name, above->origin_mib, above->origin_mib + missing,
                              above->size_mib};
            MvstorResult move = mvstor_result;
            move.lpar = step.lpar;
            move.old_origin_mib = step.from_mib;
            move.new_origin_mib = step.to_mib;
            move.bytes_copied = step.size_mib << 20;
            move.mode = mode == MvstorMode::Live ? "live" : "stop-and-copy";
            result.plan.steps.push_back(step);
            result.plan.bytes_copied = move.bytes_copied;
            result.plan.moves.push_back(move);
            above->origin_mib = step.to_mib;
            recompute();
        }
        result.expansion = resize_locked(request, true);
        return result;
    }

    void cancel_mvstor(const std::string& name) override {
        {
            std::lock_guard lock(mutex_);
            cancel_calls.push_back(name);
            maybe_throw();
            if (std::find(mvstor_lpars_.begin(), mvstor_lpars_.end(), name) ==
                mvstor_lpars_.end()) {
                throw Error(ErrorKind::NotFound, name + ": no MVSTOR is running");
            }
            cancelled_[name] = true;
        }
        changed_.notify_all();
    }

    std::unique_ptr<Subscription> subscribe(EventSink sink) override {
        std::lock_guard lock(subscribers_->mutex);
        const std::uint64_t id = subscribers_->next_id++;
        subscribers_->sinks.emplace(id, std::move(sink));
        return std::make_unique<FakeSubscription>(subscribers_, id);
    }

    // Calls every subscriber's sink on this thread, like a hypervisor thread would.
    void emit(const Event& event) {
        std::lock_guard lock(subscribers_->mutex);
        for (auto& [id, sink] : subscribers_->sinks) sink(event);
    }

    std::size_t subscriber_count() {
        std::lock_guard lock(subscribers_->mutex);
        return subscribers_->sinks.size();
    }

    bool wait_for_subscribers(std::size_t count, std::chrono::milliseconds timeout) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        while (std::chrono::steady_clock::now() < deadline) {
            if (subscriber_count() >= count) return true;
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
        return subscriber_count() >= count;
    }

    // Lets held mvstors (mvstor_gate_closed) finish.
    void release_mvstor() {
        {
            std::lock_guard lock(mutex_);
            mvstor_gate_closed = false;
        }
        changed_.notify_all();
    }

    void close_mvstor_gate() {
        std::lock_guard lock(mutex_);
        mvstor_gate_closed = true;
    }

    ConsoleText console(const std::string& lpar, std::optional<std::uint64_t> since,
                        std::size_t max_bytes) override {
        std::lock_guard lock(mutex_);
        console_requests.emplace_back(lpar, max_bytes);
        maybe_throw();
        if (lpar != "LPAR1" && lpar != "LPAR2")
            throw Error(ErrorKind::NotFound, "unknown LPAR '" + lpar + "'");
        // console_text is all the output of this IPL; the ring keeps its last console_ring_bytes.
        const std::size_t size = console_text.size();
        const std::size_t oldest = size - std::min(size, console_ring_bytes);
        const std::size_t start = since ? static_cast<std::size_t>(std::clamp<std::uint64_t>(
                                              *since, oldest, static_cast<std::uint64_t>(size)))
                                        : size - std::min(size - oldest, max_bytes);
        return {console_text.substr(start, max_bytes), start, console_ipl};
    }

    void append_console_text(const std::string& more) {
        std::lock_guard lock(mutex_);
        console_text += more;
    }
    void set_console_ring_bytes(std::size_t bytes) {
        std::lock_guard lock(mutex_);
        console_ring_bytes = bytes;
    }

    // Typed bytes come back in the output, as a terminal with echo shows them; at most
    // console_write_limit are taken per call (the UART's buffer, made small by a test).
    std::size_t console_write(const std::string& lpar, std::string_view bytes) override {
        std::lock_guard lock(mutex_);
        maybe_throw();
        if (lpar != "LPAR1" && lpar != "LPAR2")
            throw Error(ErrorKind::NotFound, "unknown LPAR '" + lpar + "'");
        const std::size_t taken = std::min(bytes.size(), console_write_limit);
        console_typed.append(bytes.substr(0, taken));
        console_text.append(bytes.substr(0, taken));
        return taken;
    }

    void set_console_write_limit(std::size_t bytes) {
        std::lock_guard lock(mutex_);
        console_write_limit = bytes;
    }

    std::string typed() {
        std::lock_guard lock(mutex_);
        return console_typed;
    }

    // A new IPL: the output starts again, offsets from 0.
    void restart_console(std::string text) {
        std::lock_guard lock(mutex_);
        console_text = std::move(text);
        ++console_ipl;
    }

    std::size_t console_request_count() {
        std::lock_guard lock(mutex_);
        return console_requests.size();
    }

    void set_console_text(std::string text) {
        std::lock_guard lock(mutex_);
        console_text = std::move(text);
    }

    // Blocks until an mvstor is inside the Api (or the timeout passes).
    bool wait_for_mvstor_running(std::chrono::milliseconds timeout) {
        std::unique_lock lock(mutex_);
        return changed_.wait_for(lock, timeout, [this] { return mvstor_running > 0; });
    }

    int running_mvstors() {
        std::lock_guard lock(mutex_);
        return mvstor_running;
    }

    // Orders the test thread's plain reads and writes of the fields below with the server's
    // threads for ThreadSanitizer, where the real order goes through a child process it cannot see.
    void sync() { std::lock_guard lock(mutex_); }

    // Back to `fresh` with nothing recorded, under the fake's lock: a call of an earlier client
    // may still be running (a notification gets no answer, so its connection can close first).
    void reset(SystemStatus fresh) {
        std::lock_guard lock(mutex_);
        status = std::move(fresh);
        mvstor_requests.clear();
        console_requests.clear();
        defined.clear();
        cancel_calls.clear();
        exchange_requests.clear();
        expand_requests.clear();
        shrink_requests.clear();
        grow_requests.clear();
    }

    void throw_next(ErrorKind kind, std::string message) {
        std::lock_guard lock(mutex_);
        error_ = Error(kind, std::move(message));
    }

    // Canned results, set before use.
    SystemStatus status = fig3a_status();
    MvstorResult mvstor_result = lpar2_moved_to_192();
    std::vector<ExchangeRequest> exchange_requests;
    std::string console_text = "LPAR2 console\n";
    std::string console_typed;
    std::size_t console_write_limit = 4096;
    std::size_t console_ring_bytes = std::size_t{1} << 20;
    std::uint64_t console_ipl = 1;
    std::chrono::milliseconds mvstor_hold{0};
    bool mvstor_emits_events = false;     // phase, progress and done events, like the hypervisor
    bool operations_emit_events = false;  // the same for exchange, expand and shrink
    std::string config_json =
        R"({"main_storage_mib":509,"lpars":[{"name":"LPAR1","origin_mib":0,"size_mib":128,"vcpus":1},)"
        R"({"name":"LPAR2","origin_mib":128,"size_mib":256,"vcpus":2}]})";
    // How long a query (list, console, stop ...) takes: for the query timeout.
    std::chrono::milliseconds query_delay{0};
    SystemStats stats_template;  // what stats() answers (storage figures from `status`)

    // Recorded calls.
    int list_calls = 0;
    int stats_calls = 0;
    std::vector<MvstorRequest> mvstor_requests;
    std::vector<std::pair<std::string, std::size_t>> console_requests;
    std::vector<LparDefinition> defined;
    std::vector<std::string> lifecycle_calls;  // "activate LPAR3", ...
    std::vector<std::string> cancel_calls;
    std::vector<ResizeRequest> expand_requests;
    std::vector<ResizeRequest> shrink_requests;
    std::vector<std::pair<ResizeRequest, MvstorMode>> grow_requests;
    std::uint64_t resize_total_us = 4200;  // every expand/shrink's total_us

  private:
    struct Subscribers {
        std::mutex mutex;  // held while sinks run, so that no sink runs after unsubscribing
        std::map<std::uint64_t, EventSink> sinks;
        std::uint64_t next_id = 1;
    };
    class FakeSubscription : public Subscription {
      public:
        FakeSubscription(std::shared_ptr<Subscribers> subscribers, std::uint64_t id)
            : subscribers_(std::move(subscribers)), id_(id) {}
        ~FakeSubscription() override {
            std::lock_guard lock(subscribers_->mutex);
            subscribers_->sinks.erase(id_);
        }

      private:
        std::shared_ptr<Subscribers> subscribers_;
        std::uint64_t id_;
    };

    bool cancel_requested(const std::string& lpar) const {
        auto it = cancelled_.find(lpar);
        return it != cancelled_.end() && it->second;
    }

    void emit_mvstor_events(const MvstorResult& result, bool with_phases) {
        for (const auto& phase : with_phases ? result.phases : std::vector<PhaseTiming>{}) {
            if (phase.phase == "copy") {
                const std::uint64_t total = result.bytes_copied;
                for (std::uint64_t quarter = 1; quarter <= 4; ++quarter) {
                    emit({"mvstor.progress", result.lpar,
                          R"({"copied":)" + std::to_string(total * quarter / 4) + R"(,"total":)" +
                              std::to_string(total) + "}"});
                }
            }
            emit({"mvstor.phase", result.lpar,
                  R"({"phase":")" + phase.phase + R"(","us":)" +
                      std::to_string(phase.microseconds) + "}"});
        }
        emit({"mvstor.done", result.lpar,
              R"({"old_origin_mib":)" + std::to_string(result.old_origin_mib) +
                  R"(,"new_origin_mib":)" + std::to_string(result.new_origin_mib) + "}"});
    }

    LparStatus* find(const std::string& name) {
        for (auto& lpar : status.lpars) {
            if (lpar.name == name) return &lpar;
        }
        return nullptr;
    }

    template <typename Change>
    LparStatus transition(const std::string& name, const std::string& operation,
                          std::initializer_list<std::string_view> from, Change change) {
        std::chrono::milliseconds delay{0};
        {
            std::lock_guard lock(mutex_);
            delay = query_delay;
        }
        if (delay.count() > 0) std::this_thread::sleep_for(delay);
        LparStatus row;
        {
            std::lock_guard lock(mutex_);
            lifecycle_calls.push_back(operation + " " + name);
            maybe_throw();
            LparStatus* lpar = find(name);
            if (lpar == nullptr) throw Error(ErrorKind::NotFound, name + ": no such LPAR");
            if (std::find(from.begin(), from.end(), lpar->state) == from.end()) {
                throw Error(ErrorKind::Refused,
                            name + ": cannot " + operation + " an LPAR that is " + lpar->state);
            }
            change(*lpar);
            recompute();
            row = *find(name);
        }
        emit({"lpar.state", row.name,
              R"({"state":")" + row.state + R"(","reason":")" + row.reason + R"("})"});
        return row;
    }

    // An LPAR that has storage, or the hypervisor's refusal.
    LparStatus& placed(const std::string& name) {
        LparStatus* lpar = find(name);
        if (lpar == nullptr) throw Error(ErrorKind::NotFound, name + ": no such LPAR");
        if (!lpar->has_storage) {
            throw Error(ErrorKind::Refused, name + ": is defined, activate it first");
        }
        return *lpar;
    }

    // Sends `data` as the hypervisor's EventHub does: serialized by control/event_json.hpp.
    void emit_data(const std::string& type, const std::string& lpar, const EventData& data) {
        SerializedEventData serialized = serialize_event_data(type, data);
        if (!serialized.mismatch.empty())
            throw std::logic_error("FakeApi: " + type + ": " + serialized.mismatch);
        emit({type, lpar, std::move(serialized.json)});
    }

    // expand.* / shrink.* and storage.expanded / storage.shrunk, as the hypervisor sends them.
    void emit_resize_events(const ResizeResult& result, bool grow, std::uint64_t mib,
                            bool with_phases) {
        const std::string op = grow ? "expand" : "shrink";
        if (with_phases) {
            emit_data(op + ".phase", result.lpar, PhaseDone{grow ? "populate" : "unplug", 300});
            for (const std::uint64_t done : {mib / 2, mib}) {
                if (grow) {
                    emit_data("expand.progress", result.lpar, PlugAdvanced{done, mib});
                } else {
                    emit_data("shrink.progress", result.lpar, UnplugAdvanced{done, mib});
                }
            }
            emit_data(op + ".phase", result.lpar, PhaseDone{grow ? "plug" : "remove", 4000});
        }
        emit_data(grow ? "storage.expanded" : "storage.shrunk", result.lpar, result);
    }

    // The hypervisor's figures for an LPAR of `status`: it booted with what was not plugged, and
    // has a virtio-mem region when its maximum lies above that.
    static std::uint64_t boot_bytes(const LparStatus& lpar) {
        return (lpar.size_mib - lpar.plugged_mib) * kMiB;
    }
    static bool can_resize(const LparStatus& lpar) {
        return lpar.max_size_mib * kMiB > boot_bytes(lpar);
    }

    // `status` as the hypervisor's storage map, for its rule that EXPAND needs the storage
    // directly above free (StorageMap::check_resize).
    StorageMap storage_map() const {
        StorageMap map(status.main_storage_mib * kMiB);
        for (const auto& lpar : status.lpars) {
            if (lpar.has_storage)
                map.add(lpar.name, {ArenaOffset{lpar.origin_mib * kMiB}, lpar.size_mib * kMiB});
        }
        return map;
    }

    // EXPAND (grow) or shrink by request.mib, refused by the hypervisor's rules in its order
    // (lpar/expand.cpp).
    ResizeResult resize_locked(const ResizeRequest& request, bool grow) {
        check_resize_request(request, grow ? "expand" : "shrink");
        LparStatus& lpar = placed(request.lpar);
        check_resizable(lpar.name, can_resize(lpar));
        const std::uint64_t size = lpar.size_mib * kMiB;
        const std::uint64_t bytes = request.mib * kMiB;
        ResizeResult result{request.lpar, lpar.size_mib, 0, 0, resize_total_us};
        if (grow) {
            check_within_maximum(lpar.name, size, bytes, lpar.max_size_mib * kMiB);
            storage_map().check_resize(lpar.name, size + bytes);  // free directly above
            lpar.size_mib += request.mib;
            lpar.plugged_mib += request.mib;
        } else {
            check_shrinkable(lpar.name, size, boot_bytes(lpar), bytes);
            lpar.size_mib -= request.mib;
            lpar.plugged_mib -= request.mib;
        }
        result.new_size_mib = lpar.size_mib;
        result.plugged_mib = lpar.plugged_mib;
        recompute();
        emit_resize_events(result, grow, request.mib, operations_emit_events);
        return result;
    }

    // First fit (or the defined origin) among the LPARs that have storage.
    bool place(LparStatus& lpar) {
        auto fits = [&](std::uint64_t origin) {
            if (origin + lpar.size_mib > status.main_storage_mib) return false;
            for (const auto& other : status.lpars) {
                if (&other == &lpar || !other.has_storage) continue;
                if (origin < other.origin_mib + other.size_mib &&
                    other.origin_mib < origin + lpar.size_mib) {
                    return false;
                }
            }
            return true;
        };
        for (const auto& definition : defined) {
            if (definition.name == lpar.name && definition.origin_mib) {
                lpar.origin_mib = *definition.origin_mib;
                return fits(lpar.origin_mib);
            }
        }
        std::vector<std::uint64_t> candidates{0};
        for (const auto& other : status.lpars) {
            if (&other != &lpar && other.has_storage)
                candidates.push_back(other.origin_mib + other.size_mib);
        }
        std::sort(candidates.begin(), candidates.end());
        for (auto origin : candidates) {
            if (fits(origin)) {
                lpar.origin_mib = origin;
                return true;
            }
        }
        return false;
    }

    // Gaps, free storage and the order by origin, as the hypervisor reports them.
    void recompute() {
        std::stable_sort(status.lpars.begin(), status.lpars.end(),
                         [](const LparStatus& a, const LparStatus& b) {
                             if (a.has_storage != b.has_storage) return a.has_storage;
                             return a.origin_mib < b.origin_mib;
                         });
        std::uint64_t used = 0;
        for (std::size_t i = 0; i < status.lpars.size(); ++i) {
            auto& lpar = status.lpars[i];
            if (!lpar.has_storage) {
                lpar.gap_mib = 0;
                continue;
            }
            used += lpar.size_mib;
            std::uint64_t next = status.main_storage_mib;
            if (i + 1 < status.lpars.size() && status.lpars[i + 1].has_storage)
                next = status.lpars[i + 1].origin_mib;
            lpar.gap_mib = next - (lpar.origin_mib + lpar.size_mib);
        }
        status.free_mib = status.main_storage_mib - used;
    }

    void maybe_throw() {
        if (error_) {
            Error error = *error_;
            error_.reset();
            throw error;
        }
    }
    void maybe_throw_and_count_down() {
        if (error_) {
            --mvstor_running;
            maybe_throw();
        }
    }

    std::mutex mutex_;
    std::condition_variable changed_;
    int mvstor_running = 0;
    std::optional<Error> error_;
    std::vector<std::string> mvstor_lpars_;  // whose mvstor is inside the Api
    std::map<std::string, bool> cancelled_;  // storage.cancel asked for it
    std::shared_ptr<Subscribers> subscribers_ = std::make_shared<Subscribers>();

  public:
    bool mvstor_gate_closed = false;  // held mvstors wait for release_mvstor() or a cancel
};

}  // namespace lparvisor::control::test
