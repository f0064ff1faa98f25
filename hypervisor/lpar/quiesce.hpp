// Steps 201-202 as one guard: stop an LPAR's vCPUs, then drain its devices; on every way out of
// the scope either resume both, or fence the LPAR when the operation left its storage in a state
// that could not be undone. Every storage operation that must quiesce an LPAR (stop-and-copy,
// each stop of a live move and its roll-back, EXCHANGE, SHRINK, EXPAND's undo) uses it, so that
// no path forgets a resume or resumes a half-moved guest (crosvm's VcpuSuspendGuard /
// DeviceSleepGuard).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "devices/quiescable.hpp"
#include "lpar/lpar.hpp"

namespace lparvisor {

// Step 202: tell every device to stop taking requests and wait until all are idle. Returns the
// names of those still busy at the deadline (empty: all idle). On a non-empty result the caller
// must call resume_devices(). The fault point "drain" makes it answer busy.
std::vector<std::string> drain_devices(const std::vector<std::shared_ptr<Quiescable>>& devices,
                                       std::chrono::milliseconds timeout);
void resume_devices(const std::vector<std::shared_ptr<Quiescable>>& devices);

class Quiesce {
  public:
    // Pauses the vCPUs, then drains the devices, each for at most `drain_timeout`. If a vCPU
    // does not stop or a device stays busy, the LPAR runs again before the constructor returns
    // and drained() is false (busy() says which).
    Quiesce(Lpar& lpar, std::chrono::milliseconds drain_timeout);
    // Resumes devices and vCPUs, or fences the LPAR if it is still at risk (see at_risk()).
    ~Quiesce();
    Quiesce(const Quiesce&) = delete;
    Quiesce& operator=(const Quiesce&) = delete;

    bool drained() const noexcept { return busy_.empty(); }
    const std::vector<std::string>& busy() const noexcept { return busy_; }
    std::string busy_names() const;
    std::uint64_t stop_vcpus_us() const noexcept { return stop_vcpus_us_; }
    std::uint64_t drain_us() const noexcept { return drain_us_; }
    // release(): resuming the devices and vCPUs until every vCPU has left its park.
    std::uint64_t resume_us() const noexcept { return resume_us_; }

    // From here until safe(), leaving the scope fences the LPAR with `reason`: the operation has
    // begun to change the LPAR's storage or window and has not (yet) made them agree again.
    void at_risk(std::string reason);
    // The storage and the window agree again (the step completed, or was undone).
    void safe() noexcept { risk_.clear(); }
    // Resumes now (devices first, then vCPUs) instead of at the end of the scope; idempotent.
    // Fences instead if still at risk.
    void release() noexcept;

  private:
    Lpar& lpar_;
    std::vector<std::shared_ptr<Quiescable>> devices_;
    std::vector<std::string> busy_;
    std::string risk_;
    bool released_ = false;
    std::uint64_t stop_vcpus_us_ = 0;
    std::uint64_t drain_us_ = 0;
    std::uint64_t resume_us_ = 0;
};

}  // namespace lparvisor
