// libFuzzer target for the Linux loader (boot::load_linux_bytes, the in-memory entry point
// load_linux uses once it has read the files): a bzImage or an ELF vmlinux, an optional initrd
// and a command line, loaded into a 32 MiB LPAR.
//
// Input: u8 flags (bit 0: an initrd is given), u8 vCPUs, u16 command-line length, u32 initrd
// length, then the command line, the initrd and, as the rest, the kernel file.
// Invariants beyond "no crash, no sanitizer report": a refused kernel is refused with
// lparvisor::Error (nothing else escapes); nothing past the LPAR's storage is written; an
// accepted kernel's entry point and extent lie inside the storage, above 1 MiB, the initrd
// lies page-aligned between the kernel's end and the end of storage, and the command line and
// zero page are where the result says.
#include <sys/mman.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "boot/linux_loader.hpp"
#include "fuzz_support.hpp"
#include "util/error.hpp"

namespace {

using namespace lparvisor;

constexpr std::uint64_t kStorage = boot::kLinuxMinStorage;
constexpr std::uint64_t kGuard = 4096;
constexpr std::uint8_t kGuardByte = 0x5a;

// 32 MiB of anonymous memory that madvise(MADV_DONTNEED) turns back into zeros cheaply: only the
// pages a load touched come back as fresh zero pages. A guard page follows.
struct Storage {
    Storage() {
        void* p = ::mmap(nullptr, kStorage + kGuard, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) fuzz::fail("mmap");
        base = static_cast<std::uint8_t*>(p);
        std::memset(base + kStorage, kGuardByte, kGuard);
    }
    void clear() {
        if (::madvise(base, kStorage, MADV_DONTNEED) != 0) fuzz::fail("madvise");
    }
    std::uint8_t* base = nullptr;
};

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    fuzz::quiet_logs();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static Storage storage;
    fuzz::Input in(data, size);
    const auto flags = in.take<std::uint8_t>();
    const auto vcpus = in.take<std::uint8_t>();
    const auto cmdline_len = in.take<std::uint16_t>();
    const auto initrd_len = in.take<std::uint32_t>();
    const auto cmdline = in.bytes(cmdline_len);
    const auto initrd = in.bytes(initrd_len);
    const auto kernel = in.rest();

    boot::LinuxBootSpec spec;
    spec.lpar_name = "FUZZ";
    spec.kernel = "fuzz-kernel";
    spec.initrd = (flags & 1) ? "fuzz-initrd" : "";
    spec.cmdline.assign(cmdline.begin(), cmdline.end());
    spec.vcpus = vcpus % 8 + 1;

    storage.clear();
    const GuestMemory memory(storage.base, kStorage);
    try {
        const boot::LinuxBootResult r = boot::load_linux_bytes(spec, kernel, initrd, memory);
        fuzz::check(r.kernel_start >= boot::kLinuxHighMemory && r.kernel_start <= r.kernel_end &&
                        r.kernel_end <= kStorage,
                    "an accepted kernel outside the storage");
        fuzz::check(r.entry < kStorage, "an entry point outside the storage");
        if (!spec.initrd.empty()) {
            fuzz::check(r.initrd_size == initrd.size() && r.initrd_start % 4096 == 0 &&
                            r.initrd_start >= r.kernel_end &&
                            r.initrd_start + r.initrd_size <= kStorage,
                        "the initrd is not between the kernel and the end of storage");
            fuzz::check(
                std::memcmp(storage.base + r.initrd_start, initrd.data(), initrd.size()) == 0,
                "the initrd is not where the result says");
        }
        fuzz::check(
            r.cmdline_size == cmdline.size() &&
                std::memcmp(storage.base + r.cmdline_gpa, cmdline.data(), cmdline.size()) == 0 &&
                storage.base[r.cmdline_gpa + cmdline.size()] == 0,
            "the command line is not where the result says");
        fuzz::tally("accepted " + r.kind + (spec.initrd.empty() ? "" : " with initrd"));
    } catch (const Error&) {
        fuzz::tally("refused");
    }
    for (std::uint64_t i = 0; i < kGuard; ++i)
        if (storage.base[kStorage + i] != kGuardByte) fuzz::fail("written past the storage");
    return 0;
}
