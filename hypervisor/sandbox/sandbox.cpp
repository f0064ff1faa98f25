#include "sandbox/sandbox.hpp"

#include <linux/filter.h>
#include <linux/seccomp.h>
#include <malloc.h>
#include <seccomp.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <csignal>
#include <cstring>
#include <deque>
#include <future>
#include <memory>
#include <mutex>
#include <set>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "util/error.hpp"
#include "util/fd.hpp"

namespace lparvisor::sandbox {

namespace {

constexpr int kViolationExitStatus = 128 + SIGSYS;
constexpr std::size_t kClassCount = 5;

// How a rule narrows a call by its arguments (several rules for one call: any may match).
enum class Condition {
    None,
    KvmIoctl,       // ioctl whose request is one of KVM's (_IOC type 0xAE)
    NonblockIoctl,  // ioctl(FIONBIO) and ioctl(FIONREAD): what Asio asks of its sockets
    OwnProcess,     // tgkill(getpid(), ...): signals to our own threads only (vCPU kicks)
    ThreadSetup,    // prctl(PR_SET_NAME) and prctl(PR_SET_NO_NEW_PRIVS)
};

struct Rule {
    const char* call;
    Condition condition = Condition::None;
};

// What every thread does whatever its class: memory (malloc, thread stacks), locks and condition
// variables, clocks, logging to stderr and closing what it owns, signals to our own threads, and
// ending itself or the process.
constexpr Rule kEveryThread[] = {
    {"futex"},
    {"mmap"},
    {"munmap"},
    {"mprotect"},
    {"madvise"},
    {"brk"},
    {"mremap"},
    {"rt_sigreturn"},
    {"rt_sigprocmask"},
    {"sigaltstack"},
    {"restart_syscall"},
    {"exit"},
    {"exit_group"},
    {"gettid"},
    {"getpid"},
    {"clock_gettime"},
    {"clock_nanosleep"},
    {"nanosleep"},
    {"sched_yield"},
    {"write"},
    {"writev"},
    {"close"},
    {"tgkill", Condition::OwnProcess},
};

// glibc's setresuid/setresgid/setgroups make every thread call them (a --user drop).
constexpr Rule kCredentialCalls[] = {{"setresuid"}, {"setresgid"}, {"setgroups"}};

// A vCPU thread: KVM_RUN and the register and interrupt ioctls its exits need; eventfds (a queue
// notify wakes a device worker) and reading them; rotating the console log the UART writes
// (devices/console_log.hpp: a copy between two open files, no path operations); and publishing
// the events a guest causes (a stop, a reboot): handing one to a subscribed client wakes the
// control socket's io_context, whose reactor re-arms its interrupter with epoll_ctl.
constexpr Rule kVcpu[] = {
    {"ioctl", Condition::KvmIoctl}, {"read"}, {"ftruncate"}, {"copy_file_range"}, {"epoll_ctl"},
};

// A virtio device worker: waits on its queues' eventfds, reads and writes its disk image, flushes
// it, and raises interrupts (irqfd writes; KVM ioctls for MSI and lines).
constexpr Rule kDeviceWorker[] = {
    {"ioctl", Condition::KvmIoctl},
    {"poll"},
    {"ppoll"},
    {"getrandom"},  // virtio-rng
    {"read"},
    {"pread64"},
    {"pwrite64"},
    {"preadv"},
    {"pwritev"},
    {"fdatasync"},
    {"fsync"},
    {"fallocate"},
    {"lseek"},
};

// The control socket's workers: activating an LPAR opens and checks its files (firmware, kernel,
// disk images, console log), creates the KVM VM and its vCPUs, eventfds and mappings; storage
// operations re-map memory slots and populate the target.
constexpr Rule kControl[] = {
    {"ioctl", Condition::KvmIoctl},
    {"ioctl", Condition::NonblockIoctl},
    {"openat"},
    {"read"},
    {"pread64"},
    {"pwrite64"},
    {"lseek"},
    {"fstat"},
    {"newfstatat"},
    {"statx"},
    {"fcntl"},
    {"flock"},
    {"eventfd2"},
    {"epoll_ctl"},  // handing a result to the io_context wakes its reactor
    {"poll"},
    {"ppoll"},
    {"ftruncate"},
    {"copy_file_range"},
    {"fallocate"},
    {"fdatasync"},
    {"fsync"},
    {"rename"},
    {"renameat"},
    {"unlink"},
    {"unlinkat"},
    {"getdents64"},
    {"readlink"},
    {"sched_getaffinity"},
};

// The main thread: the io_context that accepts control clients (checking their credentials),
// reads and writes them, its timers and signals; at shutdown it stops the LPARs and removes the
// socket.
constexpr Rule kMain[] = {
    {"ioctl", Condition::KvmIoctl},
    {"ioctl", Condition::NonblockIoctl},
    {"epoll_wait"},
    {"epoll_pwait"},
    {"epoll_ctl"},
    {"accept"},
    {"accept4"},
    {"read"},
    {"recvfrom"},
    {"recvmsg"},
    {"sendto"},
    {"sendmsg"},
    {"getsockopt"},
    {"shutdown"},
    {"fcntl"},
    {"timerfd_settime"},
    {"rt_sigaction"},
    {"newfstatat"},  // removing the socket at shutdown
    {"ftruncate"},   // the last flush of a console log at shutdown may rotate it
    {"copy_file_range"},
    {"unlink"},
    {"unlinkat"},
    {"poll"},
    {"ppoll"},
};

// The launcher: makes threads, which name and confine themselves before they run their body.
constexpr Rule kLauncherOwn[] = {
    {"clone"},   {"clone3"}, {"set_robust_list"}, {"rseq"}, {"prctl", Condition::ThreadSetup},
    {"seccomp"},
};

std::vector<Rule> rules_for(ThreadClass thread_class, const Options& options) {
    std::vector<Rule> rules(std::begin(kEveryThread), std::end(kEveryThread));
    if (options.will_drop_user)
        rules.insert(rules.end(), std::begin(kCredentialCalls), std::end(kCredentialCalls));
    auto add = [&](const auto& more) {
        rules.insert(rules.end(), std::begin(more), std::end(more));
    };
    switch (thread_class) {
        case ThreadClass::Main:
            add(kMain);
            break;
        case ThreadClass::Control:
            add(kControl);
            break;
        case ThreadClass::Vcpu:
            add(kVcpu);
            break;
        case ThreadClass::DeviceWorker:
            add(kDeviceWorker);
            break;
        case ThreadClass::Launcher:
            // Every thread it starts inherits its filter before installing its own, and stacked
            // filters intersect: so it allows what every class allows.
            add(kMain);
            add(kControl);
            add(kVcpu);
            add(kDeviceWorker);
            add(kLauncherOwn);
            break;
    }
    return rules;
}

struct FilterContext {
    scmp_filter_ctx ctx;
    explicit FilterContext(std::uint32_t default_action) : ctx(seccomp_init(default_action)) {
        if (ctx == nullptr) throw Error(ErrorKind::System, "sandbox: seccomp_init failed");
    }
    ~FilterContext() { seccomp_release(ctx); }
    FilterContext(const FilterContext&) = delete;
    FilterContext& operator=(const FilterContext&) = delete;
};

void add_rule(scmp_filter_ctx ctx, const Rule& rule, std::string_view class_label) {
    const int call = seccomp_syscall_resolve_name(rule.call);
    if (call == __NR_SCMP_ERROR)
        throw Error(ErrorKind::System, fmt::format("sandbox: {} filter: unknown system call '{}'",
                                                   class_label, rule.call));
    int rc = 0;
    switch (rule.condition) {
        case Condition::None:
            rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, call, 0);
            break;
        case Condition::KvmIoctl:
            // The request's _IOC type byte (bits 8-15) is KVMIO.
            rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, call, 1,
                                  SCMP_A1(SCMP_CMP_MASKED_EQ, 0xff00, 0xAE00));
            break;
        case Condition::NonblockIoctl:
            rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, call, 1, SCMP_A1(SCMP_CMP_EQ, FIONBIO));
            if (rc == 0)
                rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, call, 1, SCMP_A1(SCMP_CMP_EQ, FIONREAD));
            break;
        case Condition::OwnProcess:
            rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, call, 1,
                                  SCMP_A0(SCMP_CMP_EQ, static_cast<scmp_datum_t>(::getpid())));
            break;
        case Condition::ThreadSetup:
            rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, call, 1, SCMP_A0(SCMP_CMP_EQ, PR_SET_NAME));
            if (rc == 0)
                rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, call, 1,
                                      SCMP_A0(SCMP_CMP_EQ, PR_SET_NO_NEW_PRIVS));
            break;
    }
    // -EEXIST: the same unconditional rule twice (the launcher's union): fine.
    if (rc != 0 && rc != -EEXIST)
        throw Error(ErrorKind::System, fmt::format("sandbox: {} filter: cannot allow {}: {}",
                                                   class_label, rule.call, std::strerror(-rc)));
}

// Builds the class's filter with libseccomp and exports its BPF program, so that a thread
// confines itself later with one system call and no allocation.
std::vector<sock_filter> build_program(ThreadClass thread_class, const Options& options) {
    FilterContext filter(options.audit_only ? SCMP_ACT_LOG : SCMP_ACT_TRAP);
    // We set no_new_privs ourselves, per thread, right before loading.
    seccomp_attr_set(filter.ctx, SCMP_FLTATR_CTL_NNP, 0);
    for (const Rule& rule : rules_for(thread_class, options))
        add_rule(filter.ctx, rule, class_name(thread_class));

    Fd memory(static_cast<int>(::syscall(SYS_memfd_create, "seccomp-bpf", MFD_CLOEXEC)));
    if (!memory.valid()) throw_errno("sandbox: memfd_create");
    if (int rc = seccomp_export_bpf(filter.ctx, memory.get()); rc != 0)
        throw Error(ErrorKind::System, fmt::format("sandbox: exporting the {} filter: {}",
                                                   class_name(thread_class), std::strerror(-rc)));
    const off_t bytes = ::lseek(memory.get(), 0, SEEK_END);
    if (bytes <= 0 || bytes % static_cast<off_t>(sizeof(sock_filter)) != 0)
        throw Error(ErrorKind::System, "sandbox: the exported filter has an odd size");
    std::vector<sock_filter> program(static_cast<std::size_t>(bytes) / sizeof(sock_filter));
    if (::pread(memory.get(), program.data(), static_cast<std::size_t>(bytes), 0) != bytes)
        throw_errno("sandbox: reading the exported filter");
    return program;
}

// Set once by enable(), read-only afterwards.
std::atomic<bool> g_enabled{false};
std::array<std::vector<sock_filter>, kClassCount> g_programs;
// System call names by number, for the violation report (which may not allocate).
constexpr long kNamedCalls = 512;
std::array<const char*, kNamedCalls> g_call_names{};

// What a violation report says about the thread; set when it confines itself.
thread_local char t_name[16] = "?";
thread_local ThreadClass t_class = ThreadClass::Main;

// Async-signal-safe line building: no allocation, no locks.
struct ReportLine {
    char text[320];
    std::size_t length = 0;
    void add(std::string_view part) {
        std::size_t n = std::min(part.size(), sizeof text - 1 - length);
        std::memcpy(text + length, part.data(), n);
        length += n;
    }
    void add_number(long value) {
        char digits[24];
        std::size_t n = 0;
        unsigned long magnitude =
            value < 0 ? 0UL - static_cast<unsigned long>(value) : static_cast<unsigned long>(value);
        do {
            digits[n++] = static_cast<char>('0' + magnitude % 10);
            magnitude /= 10;
        } while (magnitude != 0 && n < sizeof digits);
        if (value < 0) add("-");
        while (n > 0) add(std::string_view(&digits[--n], 1));
    }
};

void on_violation(int, siginfo_t* info, void*) {
    const long call = info->si_syscall;
    ReportLine line;
    line.add("lparvisor: sandbox: thread '");
    line.add(t_name);
    line.add("' (");
    line.add(class_name(t_class));
    line.add(" thread) made the forbidden system call ");
    line.add(call >= 0 && call < kNamedCalls && g_call_names[static_cast<std::size_t>(call)]
                 ? g_call_names[static_cast<std::size_t>(call)]
                 : "?");
    line.add(" (");
    line.add_number(call);
    line.add("); lparvisor ends now with status 159 (docs/threat-model.md)\n");
    // Nothing to do if stderr is gone: the exit status still says it.
    [[maybe_unused]] auto written = ::write(STDERR_FILENO, line.text, line.length);
    ::syscall(SYS_exit_group, kViolationExitStatus);
}

void name_this_thread(std::string_view name) {
    std::size_t n = std::min(name.size(), sizeof t_name - 1);
    std::memcpy(t_name, name.data(), n);
    t_name[n] = '\0';
    ::prctl(PR_SET_NAME, t_name, 0, 0, 0);
}

void load_program(ThreadClass thread_class) {
    const auto& program = g_programs[static_cast<std::size_t>(thread_class)];
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) throw_errno("sandbox: PR_SET_NO_NEW_PRIVS");
    sock_fprog fprog{static_cast<unsigned short>(program.size()),
                     const_cast<sock_filter*>(program.data())};
    if (::syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &fprog) != 0)
        throw_errno(fmt::format("sandbox: loading the {} filter", class_name(thread_class)));
    t_class = thread_class;
}

// Starts every thread once the sandbox is on (see the header). Never destroyed: it lives until
// the process exits, and threads may ask it for new threads until then.
class Launcher {
  public:
    // The launcher thread is detached: nothing joins it, because it serves until exit.
    Launcher() {
        std::thread([this] { run(); }).detach();
    }

    std::thread launch(ThreadClass thread_class, std::string name, std::function<void()> body) {
        Request request{thread_class, std::move(name), std::move(body), {}};
        auto result = request.result.get_future();
        {
            std::lock_guard lock(mutex_);
            queue_.push_back(&request);
        }
        wake_.notify_one();
        return result.get();  // rethrows the launcher's std::system_error
    }

  private:
    struct Request {
        ThreadClass thread_class;
        std::string name;
        std::function<void()> body;
        std::promise<std::thread> result;
    };

    void run() {
        try {
            confine_this_thread(ThreadClass::Launcher, "launcher");
        } catch (const std::exception& error) {
            spdlog::critical("{}; lparvisor cannot run unconfined threads and ends", error.what());
            spdlog::default_logger()->flush();
            std::_Exit(1);
        }
        for (;;) {
            Request* request = nullptr;
            {
                std::unique_lock lock(mutex_);
                wake_.wait(lock, [this] { return !queue_.empty(); });
                request = queue_.front();
                queue_.pop_front();
            }
            try {
                request->result.set_value(
                    std::thread([thread_class = request->thread_class,
                                 name = std::move(request->name), body = std::move(request->body)] {
                        try {
                            confine_this_thread(thread_class, name);
                        } catch (const std::exception& error) {
                            spdlog::critical(
                                "{}; a thread that cannot confine itself must not run: lparvisor "
                                "ends",
                                error.what());
                            spdlog::default_logger()->flush();
                            std::_Exit(1);
                        }
                        body();
                    }));
            } catch (...) {
                request->result.set_exception(std::current_exception());
            }
        }
    }

    std::mutex mutex_;
    std::condition_variable wake_;
    std::deque<Request*> queue_;
};

Launcher* g_launcher = nullptr;

}  // namespace

std::string_view class_name(ThreadClass thread_class) {
    switch (thread_class) {
        case ThreadClass::Main:
            return "main";
        case ThreadClass::Control:
            return "control";
        case ThreadClass::Vcpu:
            return "vCPU";
        case ThreadClass::DeviceWorker:
            return "device worker";
        case ThreadClass::Launcher:
            return "launcher";
    }
    return "?";
}

void enable(const Options& options) {
    if (g_enabled.load()) throw Error(ErrorKind::System, "sandbox: enabled twice");
    // glibc's malloc reads /sys/devices/system/cpu/online (get_nprocs) the first time a thread
    // needs a ninth arena, on whatever thread that is: a vCPU thread did, and was ended for the
    // openat. Setting the limit now, to glibc's own default (8 per core), means it never asks.
    const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
    if (::mallopt(M_ARENA_MAX, static_cast<int>(8 * cores)) != 1)
        throw Error(ErrorKind::System, "sandbox: mallopt(M_ARENA_MAX) refused");
    for (std::size_t i = 0; i < kClassCount; ++i)
        g_programs[i] = build_program(static_cast<ThreadClass>(i), options);
    for (long call = 0; call < kNamedCalls; ++call) {
        // Kept for the life of the process: the violation report reads them.
        g_call_names[static_cast<std::size_t>(call)] =
            seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, static_cast<int>(call));
    }
    struct sigaction action = {};
    action.sa_sigaction = on_violation;
    action.sa_flags = SA_SIGINFO;
    sigemptyset(&action.sa_mask);
    if (::sigaction(SIGSYS, &action, nullptr) != 0) throw_errno("sandbox: sigaction(SIGSYS)");
    g_enabled.store(true);
    g_launcher = new Launcher();  // never deleted: see Launcher
}

bool enabled() {
    return g_enabled.load();
}

std::thread spawn(ThreadClass thread_class, std::string name, std::function<void()> body) {
    if (!g_enabled.load()) {
        return std::thread([name = std::move(name), body = std::move(body)] {
            name_this_thread(name);
            body();
        });
    }
    return g_launcher->launch(thread_class, std::move(name), std::move(body));
}

void confine_this_thread(ThreadClass thread_class, std::string_view name) {
    name_this_thread(name);
    if (!g_enabled.load()) return;
    load_program(thread_class);
}

std::vector<std::string> allowed_syscalls(ThreadClass thread_class, const Options& options) {
    std::set<std::string> names;
    for (const Rule& rule : rules_for(thread_class, options)) names.insert(rule.call);
    return {names.begin(), names.end()};
}

void make_forbidden_syscall() {
    const long fd = ::syscall(SYS_socket, AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0) ::close(static_cast<int>(fd));
}

}  // namespace lparvisor::sandbox
