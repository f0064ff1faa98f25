#include "lpar/quiesce.hpp"

#include <thread>

#include <spdlog/spdlog.h>

#include "util/fault.hpp"
#include "util/time.hpp"

namespace lparvisor {

std::vector<std::string> drain_devices(const std::vector<std::shared_ptr<Quiescable>>& devices,
                                       std::chrono::milliseconds timeout) {
    for (const auto& d : devices) d->stop_accepting();
    if (fault::triggered("drain")) return {"(injected fault: drain)"};
    auto deadline = Clock::now() + timeout;
    for (;;) {
        std::vector<std::string> busy;
        for (const auto& d : devices)
            if (!d->idle()) busy.push_back(d->name());
        if (busy.empty() || Clock::now() >= deadline) return busy;
        std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
}

void resume_devices(const std::vector<std::shared_ptr<Quiescable>>& devices) {
    for (const auto& d : devices) d->resume_accepting();
}

Quiesce::Quiesce(Lpar& lpar, std::chrono::milliseconds drain_timeout)
    : lpar_(lpar), devices_(lpar.devices()) {
    auto t = Clock::now();
    const bool stopped = lpar_.pause(drain_timeout);  // step 201
    stop_vcpus_us_ = microseconds_since(t);
    if (!stopped) {
        // pause() has let them run again: nothing was stopped, nothing is to resume.
        busy_ = {"vCPU(s) of " + lpar_.name() + " (did not stop)"};
        released_ = true;
        return;
    }
    t = Clock::now();
    busy_ = drain_devices(devices_, drain_timeout);  // step 202
    drain_us_ = microseconds_since(t);
    if (!busy_.empty()) release();
}

Quiesce::~Quiesce() {
    release();
}

std::string Quiesce::busy_names() const {
    std::string names;
    for (const auto& b : busy_) names += (names.empty() ? "" : ", ") + b;
    return names;
}

void Quiesce::at_risk(std::string reason) {
    risk_ = std::move(reason);
}

void Quiesce::release() noexcept {
    if (released_) return;
    released_ = true;
    const auto started = Clock::now();
    try {
        if (!risk_.empty()) {
            // The devices stay stopped: nothing may write into storage that is half-moved.
            lpar_.fence(risk_);
        } else {
            resume_devices(devices_);
        }
    } catch (const std::exception& e) {
        spdlog::error("{}: after a stop: {}", lpar_.name(), e.what());
    }
    // A fenced LPAR's vCPUs stay parked (it is not running); the others go on (step 210).
    lpar_.resume();
    try {
        if (!lpar_.wait_until_unparked(std::chrono::seconds(1)))
            spdlog::warn("{}: vCPU(s) still parked 1 s after a resume", lpar_.name());
    } catch (const std::exception& e) {
        spdlog::error("{}: waiting for the vCPUs to run again: {}", lpar_.name(), e.what());
    }
    resume_us_ = microseconds_since(started);
}

}  // namespace lparvisor
