// The sandbox's filters and launcher (sandbox/sandbox.hpp), without KVM. The sandbox is turned on
// for good in a process, so each case that needs it runs in a forked child and reports through
// its exit status and stderr.
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <string>

#include <catch2/catch.hpp>

#include "sandbox/sandbox.hpp"

using namespace lparvisor;
using sandbox::ThreadClass;

namespace {

bool allows(ThreadClass thread_class, const std::string& call) {
    auto calls = sandbox::allowed_syscalls(thread_class);
    return std::find(calls.begin(), calls.end(), call) != calls.end();
}

struct ChildResult {
    int exit_status = -1;  // -1: did not exit normally
    std::string stderr_text;
};

// Runs `body` in a forked child with the sandbox on; the child exits 0 when `body` returns.
ChildResult run_sandboxed(const std::function<void()>& body) {
    int pipe_fds[2];
    REQUIRE(::pipe(pipe_fds) == 0);
    pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        ::dup2(pipe_fds[1], STDERR_FILENO);
        ::close(pipe_fds[0]);
        try {
            sandbox::enable({});
            body();
        } catch (const std::exception& error) {
            std::fprintf(stderr, "child: %s\n", error.what());
            std::_Exit(2);
        }
        std::_Exit(0);
    }
    ::close(pipe_fds[1]);
    ChildResult result;
    char buffer[512];
    for (ssize_t n; (n = ::read(pipe_fds[0], buffer, sizeof buffer)) > 0;)
        result.stderr_text.append(buffer, static_cast<std::size_t>(n));
    ::close(pipe_fds[0]);
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    if (WIFEXITED(status)) result.exit_status = WEXITSTATUS(status);
    return result;
}

}  // namespace

TEST_CASE("each thread class allows what it needs and no more") {
    // What no class may do.
    for (auto thread_class : {ThreadClass::Main, ThreadClass::Control, ThreadClass::Vcpu,
                              ThreadClass::DeviceWorker, ThreadClass::Launcher}) {
        INFO(sandbox::class_name(thread_class));
        for (const char* call : {"execve", "execveat", "fork", "vfork", "socket", "connect",
                                 "ptrace", "mount", "init_module", "bpf", "process_vm_writev"})
            CHECK_FALSE(allows(thread_class, call));
    }
    CHECK(allows(ThreadClass::Vcpu, "ioctl"));
    CHECK_FALSE(allows(ThreadClass::Vcpu, "openat"));
    CHECK_FALSE(allows(ThreadClass::Vcpu, "pwrite64"));
    CHECK_FALSE(allows(ThreadClass::Vcpu, "clone"));
    CHECK(allows(ThreadClass::DeviceWorker, "pwrite64"));
    CHECK_FALSE(allows(ThreadClass::DeviceWorker, "openat"));
    CHECK(allows(ThreadClass::Control, "openat"));
    CHECK_FALSE(allows(ThreadClass::Control, "accept4"));
    CHECK(allows(ThreadClass::Main, "accept4"));
    CHECK_FALSE(allows(ThreadClass::Main, "openat"));
    // Only the launcher makes threads.
    for (auto thread_class :
         {ThreadClass::Main, ThreadClass::Control, ThreadClass::Vcpu, ThreadClass::DeviceWorker})
        CHECK_FALSE(allows(thread_class, "clone3"));
    // The launcher's filter is inherited by every thread it starts: it must allow what they do.
    auto launcher = sandbox::allowed_syscalls(ThreadClass::Launcher);
    for (auto thread_class :
         {ThreadClass::Main, ThreadClass::Control, ThreadClass::Vcpu, ThreadClass::DeviceWorker}) {
        for (const auto& call : sandbox::allowed_syscalls(thread_class)) {
            INFO(sandbox::class_name(thread_class) << ": " << call);
            CHECK(std::find(launcher.begin(), launcher.end(), call) != launcher.end());
        }
    }
    // The credential calls only when a --user drop follows.
    CHECK_FALSE(allows(ThreadClass::Vcpu, "setresuid"));
    auto with_drop = sandbox::allowed_syscalls(ThreadClass::Vcpu, {.will_drop_user = true});
    CHECK(std::find(with_drop.begin(), with_drop.end(), "setresuid") != with_drop.end());
}

TEST_CASE("a forbidden system call ends the process with 159, naming the thread and the call") {
    auto result = run_sandboxed([] {
        auto worker = sandbox::spawn(ThreadClass::DeviceWorker, "virtio-blk7",
                                     [] { sandbox::make_forbidden_syscall(); });
        worker.join();
    });
    INFO(result.stderr_text);
    CHECK(result.exit_status == 159);
    CHECK(result.stderr_text.find("sandbox: thread 'virtio-blk7' (device worker thread) made the "
                                  "forbidden system call socket (41)") != std::string::npos);
}

TEST_CASE("a vCPU thread may not open files") {
    auto result = run_sandboxed([] {
        auto vcpu = sandbox::spawn(ThreadClass::Vcpu, "LPAR1 vcpu0", [] {
            int fd = ::open("/etc/hostname", O_RDONLY | O_CLOEXEC);
            if (fd >= 0) ::close(fd);
        });
        vcpu.join();
    });
    INFO(result.stderr_text);
    CHECK(result.exit_status == 159);
    CHECK(result.stderr_text.find("thread 'LPAR1 vcpu0' (vCPU thread) made the forbidden system "
                                  "call openat") != std::string::npos);
}

TEST_CASE("a thread started from a vCPU thread gets its own class's filter, not the vCPU's") {
    // A device worker is started on the vCPU thread that set DRIVER_OK. Were it created there, it
    // would inherit the vCPU's filter (no pwrite64) and die on its first disk write.
    char path[] = "/tmp/lparvisor-sandbox-test-XXXXXX";
    int fd = ::mkstemp(path);
    REQUIRE(fd >= 0);
    ::unlink(path);
    auto result = run_sandboxed([fd] {
        auto vcpu = sandbox::spawn(ThreadClass::Vcpu, "LPAR1 vcpu0", [fd] {
            auto worker = sandbox::spawn(ThreadClass::DeviceWorker, "virtio-blk0", [fd] {
                const char data[] = "block";
                if (::pwrite(fd, data, sizeof data, 512) != sizeof data) std::_Exit(3);
                if (::fdatasync(fd) != 0) std::_Exit(4);
            });
            worker.join();
        });
        vcpu.join();
    });
    ::close(fd);
    INFO(result.stderr_text);
    CHECK(result.exit_status == 0);
}

TEST_CASE("without enable() the sandbox confines nothing") {
    // This process never turns it on: spawn() is a plain thread and confining is a no-op.
    REQUIRE_FALSE(sandbox::enabled());
    bool opened = false;
    auto thread = sandbox::spawn(ThreadClass::Vcpu, "plain", [&opened] {
        sandbox::confine_this_thread(ThreadClass::Vcpu, "plain");
        int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
        opened = fd >= 0;
        if (fd >= 0) ::close(fd);
    });
    thread.join();
    CHECK(opened);
}
