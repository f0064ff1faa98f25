// Fault injection: make a chosen step of a storage operation fail, or hold it until a test lets
// it go, so that tests can force the failure paths and interleavings they check (FoundationDB's
// BUGGIFY, Cloud Hypervisor's migration tests with injected errors).
//
// Inert in normal runs: every injection point costs one relaxed atomic load while nothing is
// armed. Tests arm points through this API; the daemon arms them from the environment variable
// LPARVISOR_FAULTS (read once at start, logged loudly), for example
//   LPARVISOR_FAULTS="mvstor.remap@2,exchange.second_remap,mvstor.populate:hold"
// where "@N" fires on the N-th time the point is reached (default: the first) and ":hold" holds
// the thread there for good instead of failing (nothing releases it in the daemon: a stand-in for
// an operation that never ends, to test what a signal does then).
//
// A point is named "operation.step"; the list is kFaultPoints below (tests and the environment
// variable are checked against it, so a typo is an error, not a silently inert seam).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace lparvisor::fault {

// Every injection point, with where it is.
struct PointInfo {
    const char* name;
    const char* where;
};
inline constexpr PointInfo kFaultPoints[] = {
    {"mvstor.populate", "populating the target before a move's (first) stop"},
    {"mvstor.precopy", "a live move's pre-copy round, guest running"},
    {"mvstor.harvest", "harvesting the dirty log (live move)"},
    {"mvstor.copy", "copying a chunk inside a stop (stop-and-copy: the whole LPAR)"},
    {"mvstor.remap", "re-mapping (part of) the guest window onto the new origin"},
    {"mvstor.rollback", "moving already-moved chunks back after a failure (live move)"},
    {"exchange.copy", "swapping the two LPARs' storage"},
    {"exchange.first_remap", "re-mapping the first LPAR's window (EXCHANGE)"},
    {"exchange.second_remap", "re-mapping the second LPAR's window (EXCHANGE)"},
    {"exchange.rollback", "undoing a failed EXCHANGE inside its stops"},
    {"drain", "quiescing an LPAR's devices (step 202): reported as still busy"},
    {"expand.plug", "EXPAND waiting for the guest to plug: reported as not plugged"},
    {"shrink.unmap", "SHRINK unmapping the top of the window"},
    {"kvm.manual_dirty_log",
     "creating an LPAR's VM: KVM's manual dirty-log protection is taken as missing, so the LPAR "
     "uses the legacy KVM_GET_DIRTY_LOG (the fallback's test)"},
    {"vcpu.exit", "serving a vCPU exit (an exception thrown on the vCPU thread)"},
    {"firmware.console_flood",
     "booting a firmware LPAR: the firmware writes its console without end (a guest that "
     "floods its UART, for the console log's limits)"},
    {"firmware.reboot",
     "booting a firmware LPAR: after its round_limit the firmware reboots through the i8042 "
     "reset line instead of exiting (for on_reboot)"},
    {"firmware.triple_fault",
     "booting a firmware LPAR: after its round_limit the firmware triple-faults instead of "
     "exiting (for on_crash)"},
    {"device.forbidden_syscall",
     "a virtio device worker, woken by its queues, makes a system call no thread may make "
     "(socket(AF_INET)): the sandbox's test"},
};

enum class Action {
    Fail,  // the point throws lparvisor::Error(System, "injected fault at ...")
    Hold,  // the point blocks until release() (or disarm()), then carries on
};

// Arms `point` for its `nth` hit from now on (1: the next). Throws std::invalid_argument for a
// name not in kFaultPoints. Re-arming replaces the previous arming of that point.
void arm(std::string_view point, Action action = Action::Fail, unsigned nth = 1);
void disarm(std::string_view point);
void disarm_all();  // also releases every held point
// Parses "a,b@2,c:hold" (LPARVISOR_FAULTS's syntax) and arms each (Action::Fail unless ":hold").
void arm_from_spec(std::string_view spec);

// For Action::Hold: waits until some thread is held at `point` (false on timeout), and lets it go.
bool wait_until_held(std::string_view point, std::chrono::milliseconds timeout);
void release(std::string_view point);

// How often `point` fired (failed or held) since it was last armed.
unsigned fired(std::string_view point);

// The injection point itself. Costs one relaxed load unless something is armed.
void point(std::string_view name);
// A point that reports instead of throwing: true if it fired (for points whose fault is a
// condition, such as "drain" answering busy, rather than an exception).
bool triggered(std::string_view name);

}  // namespace lparvisor::fault
