// The daemon's sandbox (docs/threat-model.md): once it is on, every thread of lparvisor runs under
// a seccomp filter of its class that allows only the system calls that class makes, with
// no_new_privs set. A forbidden call ends the process at once with status 159 (128 + SIGSYS),
// after one line on stderr naming the thread, its class and the call: a thread that makes a call
// its class never makes is assumed to be running code that is not ours, and every LPAR shares its
// address space, so no part of the process is kept running.
//
// Seccomp filters are inherited by new threads and stack (the strictest answer wins), so a
// device worker started by a vCPU thread would be held to the vCPU's filter as well as its own.
// With the sandbox on, every thread is therefore started by one launcher thread, whose filter is
// the union of every class's, and the new thread then installs its own class's filter before it
// runs its body (spawn()). The filters are built once with libseccomp when the sandbox is turned
// on; a thread confines itself with one prctl and one seccomp call, which allocate nothing.
//
// Off by default: tests and tools that embed the hypervisor run unconfined, and spawn() is then a
// plain std::thread that names itself. The daemon turns it on first thing (--no-sandbox keeps it
// off, and says so in the log).
//
// Threads: enable() from main() before any other thread exists; everything else from any thread.
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace lparvisor::sandbox {

enum class ThreadClass {
    Main,          // the io_context thread: accepts and reads control clients, signals, shutdown
    Control,       // the control socket's worker pools: run API calls (activate, MVSTOR, ...)
    Vcpu,          // one per vCPU: KVM_RUN and the exits it serves (port I/O, MMIO, UART)
    DeviceWorker,  // one per active virtio device: serves its queues (disk I/O, interrupts)
    Launcher,      // starts every other thread (its filter is the union of theirs)
};
std::string_view class_name(ThreadClass thread_class);

struct Options {
    // A --user drop follows enable(): glibc changes the credentials of every thread by making
    // each one call setresuid/setresgid/setgroups, so every filter allows those (harmless once
    // the process has no CAP_SETUID/CAP_SETGID left).
    bool will_drop_user = false;
    // For finding what a filter lacks (LPARVISOR_SANDBOX_AUDIT=1): a forbidden call is allowed
    // and the kernel logs it (dmesg: "audit: type=1326 ... comm=THREAD ... syscall=NR") instead
    // of ending the process. Never for production.
    bool audit_only = false;
};

// Turns the sandbox on: builds the filters, installs the SIGSYS handler that reports a violation
// and starts the launcher thread. Call once, before any other thread exists. Throws Error
// (System) when the kernel or libseccomp refuses.
void enable(const Options& options);
bool enabled();

// Starts a thread of class `thread_class` named `name` (the first 15 bytes become its comm, seen
// in /proc and in a violation report) that runs `body`. With the sandbox on, the thread confines
// itself before `body` runs; a thread that cannot confine itself ends the process (it must not
// run unconfined). Throws std::system_error like std::thread when no thread can be made.
std::thread spawn(ThreadClass thread_class, std::string name, std::function<void()> body);

// Confines the calling thread to `thread_class` (the daemon's main thread, once set-up is done).
// A no-op while the sandbox is off. Throws Error (System) when the kernel refuses.
void confine_this_thread(ThreadClass thread_class, std::string_view name);

// The system calls `thread_class` may make, by name, sorted (for the threat model and tests). A
// call listed with a condition (ioctl: only KVM's; tgkill: only this process) is listed by name.
std::vector<std::string> allowed_syscalls(ThreadClass thread_class, const Options& options = {});

// For tests: makes a system call that no class allows (socket(AF_INET, SOCK_STREAM)). With the
// sandbox on, this does not return. Without it, the socket is closed again at once.
void make_forbidden_syscall();

}  // namespace lparvisor::sandbox
