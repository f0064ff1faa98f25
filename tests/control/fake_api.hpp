// A test double for control::Api: records the calls, returns canned results (the patent's Fig. 3A
// by default), throws an Error when told to, and can hold storage.mvstor for a while so that
// tests can show the socket keeps answering during a relocation.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "control/api.hpp"
#include "util/error.hpp"

namespace lparvisor::control::test {

inline SystemStatus fig3a_status() {
    SystemStatus status;
    status.main_storage_mib = 509;
    status.free_mib = 125;
    status.lpars = {
        {"LPAR1", 0, 128, 0, "running", "", 1},
        {"LPAR2", 128, 256, 125, "running", "", 2},
    };
    return status;
}

inline MvstorResult lpar2_moved_to_192() {
    MvstorResult result;
    result.lpar = "LPAR2";
    result.old_origin_mib = 128;
    result.new_origin_mib = 192;
    result.bytes_copied = 256ull << 20;
    result.phases = {{"stop_vcpus", 120}, {"drain_io", 300}, {"check_target", 5}, {"copy", 30000},
                     {"remap", 600},      {"resume", 175},   {"scrub", 26800}};
    result.pause_us = 31200;
    result.total_us = 58000;
    return result;
}

class FakeApi : public Api {
  public:
    SystemStatus list() override {
        std::lock_guard lock(mutex_);
        ++list_calls;
        maybe_throw();
        return status;
    }

    MvstorResult mvstor(const MvstorRequest& request) override {
        std::chrono::milliseconds hold{0};
        {
            std::lock_guard lock(mutex_);
            mvstor_requests.push_back(request);
            ++mvstor_running;
            maybe_throw_and_count_down();
            hold = mvstor_hold;
        }
        changed_.notify_all();
        if (hold.count() > 0) std::this_thread::sleep_for(hold);
        std::lock_guard lock(mutex_);
        --mvstor_running;
        changed_.notify_all();
        MvstorResult result = mvstor_result;
        result.lpar = request.lpar;
        return result;
    }

    std::string console(const std::string& lpar, std::size_t max_bytes) override {
        std::lock_guard lock(mutex_);
        console_requests.emplace_back(lpar, max_bytes);
        maybe_throw();
        return console_text;
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

    void throw_next(ErrorKind kind, std::string message) {
        std::lock_guard lock(mutex_);
        error_ = Error(kind, std::move(message));
    }

    // Canned results, set before use.
    SystemStatus status = fig3a_status();
    MvstorResult mvstor_result = lpar2_moved_to_192();
    std::string console_text = "LPAR2 console\n";
    std::chrono::milliseconds mvstor_hold{0};

    // Recorded calls.
    int list_calls = 0;
    std::vector<MvstorRequest> mvstor_requests;
    std::vector<std::pair<std::string, std::size_t>> console_requests;

  private:
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
};

}  // namespace lparvisor::control::test
