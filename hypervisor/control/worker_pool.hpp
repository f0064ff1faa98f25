// A few threads of the control sandbox class that run Api calls off an io_context (the control
// socket's query and long pools, the HTTP listener's pool).
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <spdlog/spdlog.h>

#include "sandbox/sandbox.hpp"

namespace lparvisor::control {

// A few threads that run Api calls off the io_context. Unlike asio::thread_pool, shutdown() drops
// the queued tasks on the caller's thread, so that no task (and the connection it holds) outlives
// the pool.
class WorkerPool {
  public:
    WorkerPool(std::size_t threads, std::string name) : name_(std::move(name)) {
        if (threads == 0) threads = 1;
        for (std::size_t i = 0; i < threads; ++i)
            threads_.push_back(
                sandbox::spawn(sandbox::ThreadClass::Control, name_, [this] { run(); }));
    }
    ~WorkerPool() { shutdown(); }
    WorkerPool(const WorkerPool&) = delete;
    WorkerPool& operator=(const WorkerPool&) = delete;

    // False once the pool is shut down: the task is not run.
    [[nodiscard]] bool submit(std::function<void()> task) {
        {
            std::lock_guard lock(mutex_);
            if (stopping_) return false;
            queue_.push_back(std::move(task));
        }
        wake_.notify_one();
        return true;
    }

    // Waits for the running tasks to return; queued tasks are dropped without running.
    void shutdown() {
        std::deque<std::function<void()>> dropped;
        {
            std::lock_guard lock(mutex_);
            stopping_ = true;
            dropped.swap(queue_);
        }
        wake_.notify_all();
        for (auto& thread : threads_) {
            if (thread.joinable() && thread.get_id() != std::this_thread::get_id()) thread.join();
        }
        if (!dropped.empty()) {
            spdlog::warn("control: {} queued request(s) dropped at shutdown", dropped.size());
        }
    }

  private:
    void run() {
        for (;;) {
            std::function<void()> task;
            {
                std::unique_lock lock(mutex_);
                wake_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
                if (stopping_) return;
                task = std::move(queue_.front());
                queue_.pop_front();
            }
            try {
                task();
            } catch (const std::exception& error) {
                spdlog::error("control: worker {}: {}", name_, error.what());
            }
        }
    }

    std::string name_;
    std::mutex mutex_;
    std::condition_variable wake_;
    std::deque<std::function<void()>> queue_;
    bool stopping_ = false;
    std::vector<std::thread> threads_;
};

}  // namespace lparvisor::control
