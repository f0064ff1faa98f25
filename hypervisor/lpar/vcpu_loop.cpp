// The vCPU loop: one thread per vCPU (the patent's logical instruction processor) enters
// KVM_RUN, serves the exit (exit_handlers.cpp) and parks when the LPAR is paused or stopped.
#include <chrono>

#include <fmt/format.h>

#include "devices/virtio/virtio_blk.hpp"
#include "lpar/lpar.hpp"
#include "util/fault.hpp"

namespace lparvisor {

void Lpar::vcpu_loop(unsigned index) {
    kvm::Vcpu& vcpu = *vcpus_[index];
    while (wait_until_may_run(vcpu)) {
        // Whatever goes wrong while serving this LPAR stops this LPAR, not the daemon: nothing
        // may throw through the loop (an escaping exception would end every LPAR).
        try {
            fault::point("vcpu.exit");
            const auto entered = std::chrono::steady_clock::now();
            const auto result = vcpu.run();
            count_run(result, std::chrono::steady_clock::now() - entered);
            handle_exit(vcpu, result);
        } catch (const std::exception& e) {
            fence(describe_fault(
                vcpu, fmt::format("internal error serving vCPU {}: {}", index, e.what())));
        } catch (...) {
            fence(fmt::format("internal error serving vCPU {} (unknown exception)", index));
        }
    }
}

bool Lpar::wait_until_may_run(kvm::Vcpu& vcpu) {
    std::unique_lock lock(mutex_);
    auto may_run = [&] {
        return exit_requested_ || (!pause_requested_ && state_ == LparState::Running);
    };
    if (!may_run()) {
        ++parked_;
        changed_.notify_all();
        changed_.wait(lock, may_run);
        // The last one out tells wait_until_unparked() that the stop is over.
        if (--parked_ == 0) changed_.notify_all();
    }
    if (exit_requested_) return false;
    vcpu.set_immediate_exit(false);
    return true;
}

void Lpar::count_run(const kvm::Vcpu::RunResult& result, std::chrono::nanoseconds in_kvm_run) {
    run_ns_.fetch_add(static_cast<std::uint64_t>(in_kvm_run.count()), std::memory_order_relaxed);
    exit_counts_[result.exit.index()].fetch_add(1, std::memory_order_relaxed);
}

Lpar::RunStats Lpar::run_stats() const {
    RunStats stats;
    for (std::size_t i = 0; i < exit_counts_.size(); ++i)
        stats.exits[i] = exit_counts_[i].load(std::memory_order_relaxed);
    stats.run_us = run_ns_.load(std::memory_order_relaxed) / 1000;
    for (const auto& device : virtio_devices_) {
        if (const auto* disk = dynamic_cast<const virtio::VirtioBlk*>(device.get())) {
            const auto blk = disk->stats();
            stats.disk_requests += blk.requests;
            stats.disk_errors += blk.errors;
            stats.disk_read_bytes += blk.bytes_read;
            stats.disk_written_bytes += blk.bytes_written;
        }
    }
    return stats;
}

}  // namespace lparvisor
