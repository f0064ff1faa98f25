// Reading a boot file (firmware, kernel, initrd) that the operator or a client named: only a
// regular file, only up to a limit, checked before any of it is read. Opened without blocking
// (a FIFO would otherwise hang the open), checked with fstat on that descriptor, and read from
// the same descriptor, so what was checked is what is read.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "util/error.hpp"
#include "util/fd.hpp"

namespace lparvisor::boot {

// The limits, in one place. The loaders' own limits are no smaller: the firmware's segments
// must fit below 2 MiB but its ELF file may carry debug information; a kernel and an initrd
// must fit the LPAR's storage, which may be up to LPV_MAX_STORAGE.
inline constexpr std::uint64_t kMaxFirmwareBytes = 64ull << 20;
inline constexpr std::uint64_t kMaxKernelBytes = 256ull << 20;
inline constexpr std::uint64_t kMaxInitrdBytes = 1ull << 30;

// "64 MiB", "1 GiB", or bytes when not a whole MiB.
inline std::string describe_bytes(std::uint64_t bytes) {
    if (bytes >= (1ull << 30) && bytes % (1ull << 30) == 0)
        return fmt::format("{} GiB", bytes >> 30);
    if (bytes >= (1ull << 20) && bytes % (1ull << 20) == 0)
        return fmt::format("{} MiB", bytes >> 20);
    return fmt::format("{} bytes", bytes);
}

// The whole file, or Error(InvalidArgument) naming the LPAR, what it is, the path and the limit:
// "LPAR1: kernel /dev/zero is not a regular file". `lpar` may be empty (no prefix).
inline std::vector<std::uint8_t> read_boot_file(const std::string& lpar, const char* what,
                                                const std::string& path, std::uint64_t limit) {
    const std::string name = fmt::format("{}{} {}", lpar.empty() ? "" : lpar + ": ", what, path);
    auto refuse = [&](const std::string& why) {
        return Error(ErrorKind::InvalidArgument, name + " " + why);
    };
    Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY));
    if (!fd.valid()) throw refuse(fmt::format("cannot be opened: {}", std::strerror(errno)));
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) throw refuse(fmt::format("{}", std::strerror(errno)));
    if (!S_ISREG(st.st_mode))
        throw refuse(fmt::format("is not a regular file (the {} must be one, at most {})", what,
                                 describe_bytes(limit)));
    const auto size = static_cast<std::uint64_t>(st.st_size);
    if (size > limit)
        throw refuse(fmt::format("is {}, more than the {} limit of {}", describe_bytes(size), what,
                                 describe_bytes(limit)));
    std::vector<std::uint8_t> bytes(size);
    std::size_t done = 0;
    while (done < bytes.size()) {
        const ssize_t n = ::read(fd.get(), bytes.data() + done, bytes.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) throw refuse(fmt::format("could not be read: {}", std::strerror(errno)));
        if (n == 0) break;  // it shrank since fstat: what is there
        done += static_cast<std::size_t>(n);
    }
    bytes.resize(done);
    return bytes;
}

}  // namespace lparvisor::boot
