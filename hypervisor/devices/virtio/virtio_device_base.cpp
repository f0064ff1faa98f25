#include "devices/virtio/virtio_device_base.hpp"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <exception>
#include <system_error>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "sandbox/sandbox.hpp"
#include "util/error.hpp"
#include "util/fault.hpp"

namespace lparvisor::virtio {

namespace {

Fd make_eventfd(const std::string& what) {
    Fd fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!fd.valid()) throw_errno(what + ": eventfd");
    return fd;
}

void signal_eventfd(int fd) {
    const std::uint64_t one = 1;
    // EAGAIN means the counter is saturated: the reader wakes up anyway.
    while (::write(fd, &one, sizeof one) < 0 && errno == EINTR) {
    }
}

// Clears a (non-blocking) eventfd; true if it had been signalled.
bool drain_eventfd(int fd) {
    std::uint64_t count = 0;
    for (;;) {
        if (::read(fd, &count, sizeof count) == sizeof count) return true;
        if (errno != EINTR) return false;
    }
}

// After poll: marks pending each queue whose eventfd was signalled, and clears the control
// eventfd (its wake-up has done its work by ending the poll).
void collect_notifies(std::vector<pollfd>& fds, std::vector<bool>& pending) {
    const std::size_t count = pending.size();
    for (std::size_t i = 0; i < count; ++i)
        if ((fds[i].revents & POLLIN) && drain_eventfd(fds[i].fd)) pending[i] = true;
    if (fds[count].revents & POLLIN) drain_eventfd(fds[count].fd);
}

}  // namespace

VirtioDeviceBase::VirtioDeviceBase(std::string name, GuestMemory memory, std::uint16_t queue_count,
                                   std::uint16_t queue_max_size)
    : name_(std::move(name)),
      memory_(std::move(memory)),
      queue_max_size_(queue_max_size),
      control_event_(make_eventfd(name_ + " control")),
      log_limiter_(own_log_limiter(nullptr, name_)) {
    for (std::uint16_t i = 0; i < queue_count; ++i) {
        queue_events_.push_back(make_eventfd(fmt::format("{} queue {}", name_, i)));
        queues_.emplace_back(i, queue_max_size);
    }
}

VirtioDeviceBase::~VirtioDeviceBase() {
    stop_worker();
}

bool VirtioDeviceBase::activate(std::uint64_t driver_features, std::vector<QueueConfig> queues,
                                InterruptSink sink) {
    std::lock_guard lock(lifecycle_mutex_);
    // Only while no worker runs: it resets the queues.
    auto refuse = [&](const std::string& reason) {
        log_limiter_->log(spdlog::level::warn, "{}: activation refused: {}", name_, reason);
        for (Queue& queue : queues_) queue.reset();
        needs_reset_.store(true);
        return false;
    };
    if (worker_.joinable()) {
        // The running worker owns the queues (it pops and completes without the lifecycle
        // mutex), so this refusal leaves them alone: it only marks NEEDS_RESET, which the worker
        // sees before its next pop. The driver's reset then stops the worker and resets them.
        log_limiter_->log(spdlog::level::warn,
                          "{}: activation refused: already active (no reset since the last "
                          "activation)",
                          name_);
        needs_reset_.store(true);
        return false;
    }
    if (queues.size() != queues_.size())
        return refuse(
            fmt::format("{} queues configured, the device has {}", queues.size(), queues_.size()));
    if ((driver_features & kFeatureVersion1) == 0) return refuse("VIRTIO_F_VERSION_1 not accepted");
    if ((driver_features & ~device_features()) != 0)
        return refuse(
            fmt::format("features {:#x} not offered", driver_features & ~device_features()));
    for (std::size_t i = 0; i < queues.size(); ++i)
        if (auto error = queues_[i].activate(memory_, queues[i])) return refuse(error->message);

    sink_ = std::move(sink);
    driver_features_ = driver_features;
    needs_reset_.store(false);
    stopping_.store(false);
    try {
        worker_ =
            sandbox::spawn(sandbox::ThreadClass::DeviceWorker, name_, [this] { worker_loop(); });
    } catch (const std::system_error& error) {
        return refuse(fmt::format("cannot start the worker thread: {}", error.what()));
    }
    return true;
}

void VirtioDeviceBase::reset() {
    std::lock_guard lock(lifecycle_mutex_);
    stop_worker();
    for (Queue& queue : queues_) queue.reset();
    sink_ = InterruptSink{};
    driver_features_ = 0;
    needs_reset_.store(false);
    stopping_.store(false);
}

void VirtioDeviceBase::stop_worker() {
    {
        // Under the mutex so that a waiter between its predicate check and its sleep cannot
        // miss the notification.
        std::lock_guard lock(stop_mutex_);
        stopping_.store(true);
    }
    stop_cv_.notify_all();
    wake_worker();
    if (worker_.joinable()) worker_.join();
}

bool VirtioDeviceBase::wait_unless_stopping(std::chrono::milliseconds duration) {
    std::unique_lock lock(stop_mutex_);
    return !stop_cv_.wait_for(lock, duration, [this] { return stopping_.load(); });
}

int VirtioDeviceBase::queue_event_fd(std::uint16_t queue) const {
    return queue < queue_events_.size() ? queue_events_[queue].get() : -1;
}

void VirtioDeviceBase::notify(std::uint16_t queue) {
    if (queue < queue_events_.size()) signal_eventfd(queue_events_[queue].get());
}

void VirtioDeviceBase::wake_worker() {
    signal_eventfd(control_event_.get());
}

// The drain relies on sequentially consistent accesses to accepting_ and in_flight_ (the worker
// increments in_flight_ and then checks accepting_; stop_accepting() clears accepting_ and idle()
// then reads in_flight_): either the worker sees the stop, or idle() sees the request.
void VirtioDeviceBase::stop_accepting() {
    accepting_.store(false);
}

bool VirtioDeviceBase::idle() const {
    return in_flight_.load() == 0;
}

void VirtioDeviceBase::resume_accepting() {
    accepting_.store(true);
    recheck_all_.store(true);
    wake_worker();
}

void VirtioDeviceBase::set_log_limiter(std::shared_ptr<LogRateLimiter> limiter) {
    if (limiter) log_limiter_ = std::move(limiter);
}

void VirtioDeviceBase::enter_needs_reset(const std::string& reason) {
    if (needs_reset_.exchange(true)) return;
    log_limiter_->log(spdlog::level::warn, "{}: needs reset: {}", name_, reason);
    if (sink_.config_change) sink_.config_change();
}

bool VirtioDeviceBase::serve_queue(std::uint16_t queue_index) {
    Queue& queue = queues_[queue_index];
    for (;;) {
        if (stopping_.load() || needs_reset_.load()) return false;
        in_flight_.fetch_add(1);
        struct InFlight {
            std::atomic<int>& count;
            ~InFlight() { count.fetch_sub(1); }
        } in_flight{in_flight_};
        if (!accepting_.load()) return true;

        PopResult popped = queue.pop(memory_);
        if (std::holds_alternative<NoneAvailable>(popped)) return true;
        if (auto* error = std::get_if<DriverError>(&popped)) {
            enter_needs_reset(error->message);
            return false;
        }
        auto& chain = std::get<DescriptorChain>(popped);
        ChainResult result;
        try {
            result = handle_chain(queue_index, queue, chain);
        } catch (const std::exception& error) {
            // Not the guest's fault, but the request's fate is unknown: stop like for a
            // driver error rather than leave the guest waiting on a chain forever.
            enter_needs_reset(
                fmt::format("queue {}: request failed: {}", queue_index, error.what()));
            return false;
        }
        // A reset cut the request short: the driver has forgotten the queue, so no used entry.
        if (stopping_.load()) return false;
        if (auto error = queue.add_used(memory_, chain.head, result.written_len)) {
            enter_needs_reset(error->message);
            return false;
        }
        if (queue.needs_interrupt(memory_) && sink_.used_buffer) sink_.used_buffer(queue_index);
    }
}

// Serves each pending queue in turn, clearing its mark before serving it: a notify that comes
// meanwhile marks it again at the next poll. A notify while not accepting (or after a driver
// error) stays pending.
void VirtioDeviceBase::serve_pending(std::vector<bool>& pending) {
    if (!accepting_.load() || needs_reset_.load()) return;
    for (std::size_t i = 0; i < pending.size(); ++i) {
        if (!pending[i] || !accepting_.load()) continue;
        pending[i] = false;
        if (!serve_queue(static_cast<std::uint16_t>(i))) return;
    }
}

void VirtioDeviceBase::worker_loop() {
    const std::size_t count = queues_.size();
    // Check every queue once on start: the driver may have made buffers available before
    // DRIVER_OK, and notifies from before a reset are stale anyway.
    std::vector<bool> pending(count, true);
    std::vector<pollfd> fds(count + 1);
    for (std::size_t i = 0; i < count; ++i) fds[i] = {queue_events_[i].get(), POLLIN, 0};
    fds[count] = {control_event_.get(), POLLIN, 0};

    for (;;) {
        if (stopping_.load()) return;
        if (recheck_all_.exchange(false)) pending.assign(count, true);
        serve_pending(pending);
        if (::poll(fds.data(), fds.size(), -1) < 0) {
            if (errno == EINTR) continue;
            // Only a bad fd set can make poll fail; nothing sensible is left to do.
            enter_needs_reset(fmt::format("worker poll failed: {}", std::strerror(errno)));
            return;
        }
        collect_notifies(fds, pending);
        // The sandbox's test (tests/kvm/sandbox.sh): a device thread that turns hostile.
        if (fault::triggered("device.forbidden_syscall")) sandbox::make_forbidden_syscall();
    }
}

}  // namespace lparvisor::virtio
