// system.stats: the counters of the storage operations (counted here, once per public call) and
// of the LPARs (their vCPUs and disks, read from each running Lpar). A failed EXCHANGE, EXPAND or
// SHRINK is also announced here (exchange.failed ...), so that a client watching the events sees
// every operation end, as it sees mvstor.failed.
#include <algorithm>
#include <exception>
#include <utility>

#include <nlohmann/json.hpp>

#include "lpar/hypervisor.hpp"
#include "util/time.hpp"

namespace lparvisor {

namespace {

// Runs `operation` and counts its outcome: "ok" with what the result says it copied and paused
// (`account`), or the kind of the error it threw, which is thrown on after `failed` has been told
// the message.
template <class Operation, class Account, class Failed>
auto metered(OperationCounters& counters, OperationCounters::Kind kind, Operation&& operation,
             Account&& account, Failed&& failed) {
    try {
        auto result = operation();
        account(result);
        return result;
    } catch (const Error& error) {
        counters.failed(kind, OperationCounters::outcome_index(error.kind()));
        failed(error.what());
        throw;
    } catch (const std::exception& error) {
        counters.failed(kind, OperationCounters::outcome_index(ErrorKind::System));
        failed(error.what());
        throw;
    }
}

}  // namespace

control::MvstorResult Hypervisor::mvstor(const control::MvstorRequest& request) {
    return metered(
        operation_counters_, OperationCounters::Kind::Mvstor, [&] { return run_mvstor(request); },
        [&](const control::MvstorResult& result) {
            operation_counters_.succeeded(OperationCounters::Kind::Mvstor, result.bytes_copied,
                                          result.bytes_recopied, result.stops_us);
        },
        [](const char*) {});  // failed_move() publishes mvstor.failed where the move had begun
}

control::ExchangeResult Hypervisor::exchange(const control::ExchangeRequest& request) {
    return metered(
        operation_counters_, OperationCounters::Kind::Exchange,
        [&] { return run_exchange(request); },
        [&](const control::ExchangeResult& result) {
            const std::uint64_t pause[] = {result.pause_us};
            operation_counters_.succeeded(OperationCounters::Kind::Exchange, result.bytes_moved, 0,
                                          pause);
        },
        [&](const char* message) {
            events_.publish("exchange.failed", request.a, control::OperationFailed{message});
        });
}

control::ResizeResult Hypervisor::expand(const control::ResizeRequest& request) {
    return metered(
        operation_counters_, OperationCounters::Kind::Expand, [&] { return run_expand(request); },
        [&](const control::ResizeResult&) {
            operation_counters_.succeeded(OperationCounters::Kind::Expand, 0, 0, {});
        },
        [&](const char* message) {
            events_.publish("expand.failed", request.lpar, control::OperationFailed{message});
        });
}

control::ResizeResult Hypervisor::shrink(const control::ResizeRequest& request) {
    return metered(
        operation_counters_, OperationCounters::Kind::Shrink, [&] { return run_shrink(request); },
        [&](const control::ResizeResult&) {
            operation_counters_.succeeded(OperationCounters::Kind::Shrink, 0, 0, {});
        },
        [&](const char* message) {
            events_.publish("shrink.failed", request.lpar, control::OperationFailed{message});
        });
}

control::SystemStats Hypervisor::stats() {
    const auto status = list();
    control::SystemStats stats;
    stats.main_storage_mib = status.main_storage_mib;
    stats.free_mib = status.free_mib;
    stats.uptime_us = microseconds_since(started_);
    // The gaps: below the first LPAR, and after each (lpar.list's gap_mib).
    bool first = true;
    for (const auto& lpar : status.lpars) {
        if (!lpar.has_storage) continue;
        if (first) stats.largest_free_gap_mib = lpar.origin_mib;
        first = false;
        stats.largest_free_gap_mib = std::max(stats.largest_free_gap_mib, lpar.gap_mib);
    }
    if (first) stats.largest_free_gap_mib = status.main_storage_mib;

    for (const auto& lpar : status.lpars) {
        control::LparStats row;
        row.name = lpar.name;
        row.state = lpar.state;
        row.guest = lpar.guest;
        row.has_storage = lpar.has_storage;
        row.origin_mib = lpar.has_storage ? lpar.origin_mib : 0;
        row.size_mib = lpar.size_mib;
        row.plugged_mib = lpar.plugged_mib;
        std::shared_ptr<Lpar> running;
        {
            std::lock_guard lock(map_mutex_);
            for (const auto& r : records_) {
                if (r.definition.name != lpar.name) continue;
                running = r.lpar;
                row.ipl = r.ipl;
            }
        }
        Lpar::RunStats counters;
        if (running) counters = running->run_stats();
        for (std::size_t i = 0; i < kvm::kExitKindNames.size(); ++i)
            row.vcpu_exits.push_back({std::string(kvm::kExitKindNames[i]), counters.exits[i]});
        row.vcpu_run_us = counters.run_us;
        row.disk_requests = counters.disk_requests;
        row.disk_errors = counters.disk_errors;
        row.disk_read_bytes = counters.disk_read_bytes;
        row.disk_written_bytes = counters.disk_written_bytes;
        stats.lpars.push_back(std::move(row));
    }
    stats.operations = operation_counters_.operations();
    stats.pauses = operation_counters_.pauses();
    return stats;
}

}  // namespace lparvisor
