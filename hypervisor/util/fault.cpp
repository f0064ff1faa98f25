#include "util/fault.hpp"

#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <stdexcept>

#include "util/error.hpp"

namespace lparvisor::fault {

namespace {

struct Arming {
    Action action = Action::Fail;
    unsigned countdown = 1;  // hits left until it fires (1: the next)
    unsigned fired = 0;
    bool held = false;      // a thread is blocked at the point now
    bool released = false;  // the test let the held thread go
};

struct Registry {
    std::mutex mutex;
    std::condition_variable changed;
    std::map<std::string, Arming, std::less<>> armed;
};

Registry& registry() {
    static Registry r;
    return r;
}

// Read on every hit: true while anything is armed or held.
std::atomic<bool> any_armed{false};

void check_name(std::string_view name) {
    for (const auto& p : kFaultPoints)
        if (name == p.name) return;
    std::string known;
    for (const auto& p : kFaultPoints) known += (known.empty() ? "" : ", ") + std::string(p.name);
    throw std::invalid_argument("unknown fault point '" + std::string(name) + "' (known: " + known +
                                ")");
}

// Caller holds the registry mutex.
void update_any_armed(Registry& r) {
    any_armed.store(!r.armed.empty(), std::memory_order_relaxed);
}

// True if the point fires on this hit; holds here first for Action::Hold.
bool hit(std::string_view name, Action& action) {
    if (!any_armed.load(std::memory_order_relaxed)) return false;
    auto& r = registry();
    std::unique_lock lock(r.mutex);
    auto it = r.armed.find(name);
    if (it == r.armed.end() || it->second.countdown == 0) return false;
    if (--it->second.countdown != 0) return false;
    ++it->second.fired;
    action = it->second.action;
    if (action == Action::Hold) {
        it->second.held = true;
        r.changed.notify_all();
        r.changed.wait(lock, [&] {
            auto now = r.armed.find(name);
            return now == r.armed.end() || now->second.released;
        });
        auto now = r.armed.find(name);
        if (now != r.armed.end()) now->second.held = false;
    }
    return true;
}

}  // namespace

void arm(std::string_view point, Action action, unsigned nth) {
    check_name(point);
    auto& r = registry();
    std::lock_guard lock(r.mutex);
    r.armed[std::string(point)] = Arming{action, nth == 0 ? 1 : nth, 0, false, false};
    update_any_armed(r);
    r.changed.notify_all();
}

void disarm(std::string_view point) {
    auto& r = registry();
    std::lock_guard lock(r.mutex);
    if (auto it = r.armed.find(point); it != r.armed.end()) r.armed.erase(it);
    update_any_armed(r);
    r.changed.notify_all();
}

void disarm_all() {
    auto& r = registry();
    std::lock_guard lock(r.mutex);
    r.armed.clear();
    update_any_armed(r);
    r.changed.notify_all();
}

void arm_from_spec(std::string_view spec) {
    while (!spec.empty()) {
        auto comma = spec.find(',');
        auto item = spec.substr(0, comma);
        spec = comma == std::string_view::npos ? std::string_view{} : spec.substr(comma + 1);
        if (item.empty()) continue;
        Action action = Action::Fail;
        if (auto colon = item.find(':'); colon != std::string_view::npos) {
            if (item.substr(colon + 1) != "hold")
                throw std::invalid_argument("fault spec '" + std::string(item) +
                                            "': the only action after ':' is 'hold'");
            action = Action::Hold;
            item = item.substr(0, colon);
        }
        unsigned nth = 1;
        if (auto at = item.find('@'); at != std::string_view::npos) {
            const std::string count(item.substr(at + 1));
            std::size_t used = 0;
            unsigned long value = 0;
            try {
                value = std::stoul(count, &used);
            } catch (const std::exception&) {
                used = 0;
            }
            if (used != count.size() || value == 0 || value > 1000000)
                throw std::invalid_argument("fault spec '" + std::string(item) +
                                            "': the count after @ must be a number from 1");
            nth = static_cast<unsigned>(value);
            item = item.substr(0, at);
        }
        arm(item, action, nth);
    }
}

bool wait_until_held(std::string_view point, std::chrono::milliseconds timeout) {
    auto& r = registry();
    std::unique_lock lock(r.mutex);
    return r.changed.wait_for(lock, timeout, [&] {
        auto it = r.armed.find(point);
        return it != r.armed.end() && it->second.held;
    });
}

void release(std::string_view point) {
    auto& r = registry();
    std::lock_guard lock(r.mutex);
    if (auto it = r.armed.find(point); it != r.armed.end()) it->second.released = true;
    r.changed.notify_all();
}

unsigned fired(std::string_view point) {
    auto& r = registry();
    std::lock_guard lock(r.mutex);
    auto it = r.armed.find(point);
    return it == r.armed.end() ? 0 : it->second.fired;
}

void point(std::string_view name) {
    Action action{};
    if (hit(name, action) && action == Action::Fail)
        throw Error(ErrorKind::System, "injected fault at " + std::string(name));
}

bool triggered(std::string_view name) {
    Action action{};
    return hit(name, action) && action == Action::Fail;
}

}  // namespace lparvisor::fault
