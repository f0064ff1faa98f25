// What every virtio device model shares, written once: the queues, one eventfd per queue, the
// worker thread that serves them, driver-error handling (NEEDS_RESET) and the MVSTOR drain.
// A device derives from VirtioDeviceBase and implements handle_chain() for one request plus its
// identity, features and configuration space.
//
// Threads: vCPU threads call activate/reset/notify/stop_accepting/idle/resume_accepting
// concurrently with the worker. activate() and reset() are serialised by a mutex; the others
// are lock-free. The worker is the only thread that touches the queues while it runs.
//
// A derived class must call stop_worker() first thing in its destructor: the worker calls the
// derived handle_chain(), which must not run while the derived part is being destroyed.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "devices/virtio/virtio_device.hpp"
#include "devices/virtio/virtqueue.hpp"
#include "storage/guest_memory.hpp"
#include "util/fd.hpp"

namespace lparvisor::virtio {

class VirtioDeviceBase : public VirtioDevice {
  public:
    // Creates the queue eventfds (throws lparvisor::Error if the host refuses one).
    VirtioDeviceBase(std::string name, GuestMemory memory, std::uint16_t queue_count,
                     std::uint16_t queue_max_size);
    ~VirtioDeviceBase() override;
    VirtioDeviceBase(const VirtioDeviceBase&) = delete;
    VirtioDeviceBase& operator=(const VirtioDeviceBase&) = delete;

    std::string name() const override { return name_; }
    std::uint16_t queue_count() const override {
        return static_cast<std::uint16_t>(queues_.size());
    }
    std::uint16_t queue_max_size() const override { return queue_max_size_; }

    // Checks features (a subset of ours, VERSION_1 included) and every ready queue's size and
    // rings, then starts the worker. False, with a warning logged, if any of it is unusable or
    // the device is already active.
    [[nodiscard]] bool activate(std::uint64_t driver_features, std::vector<QueueConfig> queues,
                                InterruptSink sink) override;
    // Stops the worker (a request waiting out its latency is cut short and not completed),
    // forgets queues and features and clears NEEDS_RESET. The MVSTOR drain state is kept.
    void reset() override;
    bool needs_reset() const override { return needs_reset_.load(); }

    int queue_event_fd(std::uint16_t queue) const override;
    void notify(std::uint16_t queue) override;

    void stop_accepting() override;
    bool idle() const override;
    void resume_accepting() override;

    void set_log_limiter(std::shared_ptr<LogRateLimiter> limiter) override;

  protected:
    struct ChainResult {
        std::uint32_t written_len = 0;  // bytes the device wrote into the chain's buffers
    };
    // Serves one request on the worker thread; never throws for anything the guest controls.
    // The base then returns the chain to the driver, unless the device is shutting down (the
    // handler may then return early without writing anything).
    virtual ChainResult handle_chain(std::uint16_t queue_index, Queue& queue,
                                     DescriptorChain& chain) = 0;

    const GuestMemory& memory() const noexcept { return memory_; }
    std::uint64_t driver_features() const noexcept { return driver_features_; }
    // For every log line the guest can cause.
    LogRateLimiter& log_limiter() const noexcept { return *log_limiter_; }
    // Sleeps for `duration` unless the device is stopping; false if it was cut short.
    [[nodiscard]] bool wait_unless_stopping(std::chrono::milliseconds duration);
    bool stopping() const noexcept { return stopping_.load(); }
    // Stops and joins the worker (idempotent). Derived destructors call it first.
    void stop_worker();

  private:
    void worker_loop();
    // The worker's turn at the queues a notify (or a start or resume) marked pending.
    void serve_pending(std::vector<bool>& pending);
    void wake_worker();
    // Pops and serves chains from one queue while accepting; false once the device needs reset.
    bool serve_queue(std::uint16_t queue_index);
    void enter_needs_reset(const std::string& reason);

    const std::string name_;
    const GuestMemory memory_;
    const std::uint16_t queue_max_size_;
    std::vector<Fd> queue_events_;  // one per queue, alive as long as the device
    Fd control_event_;              // wakes the worker for stop and resume
    std::shared_ptr<LogRateLimiter> log_limiter_;

    std::mutex lifecycle_mutex_;  // activate/reset
    std::vector<Queue> queues_;
    InterruptSink sink_;
    std::uint64_t driver_features_ = 0;
    std::thread worker_;

    std::atomic<bool> stopping_{false};
    std::atomic<bool> accepting_{true};
    std::atomic<bool> recheck_all_{false};  // set by resume_accepting()
    std::atomic<bool> needs_reset_{false};
    std::atomic<int> in_flight_{0};

    std::mutex stop_mutex_;  // with stop_cv_: interrupts wait_unless_stopping()
    std::condition_variable stop_cv_;
};

}  // namespace lparvisor::virtio
