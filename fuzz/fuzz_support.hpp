// What the libFuzzer targets share: a reader over the fuzzer's bytes, an LPAR's storage with a
// guard region standing for the neighbour, a descriptor-chain decoder for the virtio device
// targets, a fake PCI platform that checks the transport's bookkeeping, memfd helpers for the
// parsers that take a path, and counters a target prints at exit (LPARVISOR_FUZZ_REPORT=1) so
// that a seed corpus can be shown to reach a path. Header-only; each target includes it once.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <spdlog/spdlog.h>

#include "devices/pci/pci_platform.hpp"
#include "devices/virtio/virtqueue.hpp"
#include "storage/guest_memory.hpp"

namespace lparvisor::fuzz {

using virtio::Descriptor;
using virtio::DescriptorChain;

// An invariant broke: say which, then abort so that libFuzzer saves the input.
[[noreturn]] inline void fail(const char* what) {
    std::fprintf(stderr, "fuzz invariant violated: %s\n", what);
    std::abort();
}
inline void check(bool condition, const char* what) {
    if (!condition) fail(what);
}

// The daemon's log is noise here (and slow): only errors get through.
inline void quiet_logs() {
    spdlog::set_level(spdlog::level::off);
}

// Little-endian values from the front of the input; past the end everything reads as zero, so
// every input is a valid (if short) program.
class Input {
  public:
    Input(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}
    template <typename T>
    T take() {
        T value{};
        const std::size_t n = std::min(sizeof(T), size_);
        std::memcpy(&value, data_, n);
        data_ += n;
        size_ -= n;
        return value;
    }
    std::span<const std::uint8_t> bytes(std::size_t n) {
        n = std::min(n, size_);
        std::span<const std::uint8_t> out(data_, n);
        data_ += n;
        size_ -= n;
        return out;
    }
    std::span<const std::uint8_t> rest() { return bytes(size_); }
    bool empty() const { return size_ == 0; }
    std::size_t size() const { return size_; }

  private:
    const std::uint8_t* data_;
    std::size_t size_;
};

// An LPAR's storage followed by a guard region (the neighbour LPAR) that must never change.
class GuardedStorage {
  public:
    static constexpr std::uint8_t kGuardByte = 0x5a;
    explicit GuardedStorage(std::uint64_t bytes, std::uint64_t guard = 4096)
        : bytes_(bytes), host_(bytes + guard, 0) {
        std::fill(host_.begin() + static_cast<std::ptrdiff_t>(bytes_), host_.end(), kGuardByte);
    }
    // Zeros, then `image` from address 0 (the rest of the input, truncated to the storage).
    void load(std::span<const std::uint8_t> image) {
        std::fill(host_.begin(), host_.begin() + static_cast<std::ptrdiff_t>(bytes_), 0);
        if (!image.empty())
            std::memcpy(host_.data(), image.data(), std::min<std::size_t>(image.size(), bytes_));
    }
    GuestMemory memory() { return GuestMemory(host_.data(), bytes_); }
    std::uint8_t* data() { return host_.data(); }
    std::uint64_t size() const { return bytes_; }
    void check_guard() const {
        for (std::size_t i = bytes_; i < host_.size(); ++i)
            check(host_[i] == kGuardByte, "a device wrote past the LPAR's storage");
    }

  private:
    std::uint64_t bytes_;
    std::vector<std::uint8_t> host_;
};

// One chain as pop() hands it out, decoded from the input: u8 count (1-16), then per descriptor
// u16 address, u16 length, u8 flags (bit 0: device-writable). Addresses and lengths are kept
// inside `storage` bytes, as pop() guarantees; the chain's total length is their sum.
inline DescriptorChain take_chain(Input& in, std::uint64_t storage, std::uint16_t head) {
    DescriptorChain chain;
    chain.head = head;
    const unsigned count = in.take<std::uint8_t>() % 16 + 1;
    for (unsigned i = 0; i < count; ++i) {
        const std::uint64_t addr = in.take<std::uint16_t>() % storage;
        const std::uint64_t len = std::min<std::uint64_t>(in.take<std::uint16_t>(), storage - addr);
        const bool writable = (in.take<std::uint8_t>() & 1) != 0;
        chain.descriptors.push_back(
            {GuestPhysAddr{addr}, static_cast<std::uint32_t>(len), writable});
        chain.total_len += static_cast<std::uint32_t>(len);
    }
    return chain;
}

inline std::uint64_t writable_bytes(const DescriptorChain& chain) {
    std::uint64_t total = 0;
    for (const Descriptor& d : chain.descriptors)
        if (d.device_writable) total += d.len;
    return total;
}

// Every byte that differs between `before` and `now` lies in a device-writable descriptor.
inline void check_only_writable_changed(const std::vector<std::uint8_t>& before,
                                        const std::uint8_t* now, const DescriptorChain& chain) {
    if (std::memcmp(before.data(), now, before.size()) == 0) return;
    std::vector<std::uint8_t> writable(before.size(), 0);
    for (const Descriptor& d : chain.descriptors)
        if (d.device_writable && d.addr.value < before.size())
            std::fill_n(writable.begin() + static_cast<std::ptrdiff_t>(d.addr.value),
                        std::min<std::uint64_t>(d.len, before.size() - d.addr.value), 1);
    for (std::size_t i = 0; i < before.size(); ++i)
        if (before[i] != now[i] && !writable[i])
            fail("the device wrote outside the chain's device-writable buffers");
}

// A memfd holding `bytes`, reachable by path as /proc/self/fd/N (for parsers that take a path).
class MemFile {
  public:
    explicit MemFile(const char* name) : fd_(::memfd_create(name, MFD_CLOEXEC)) {
        if (fd_ < 0) fail("memfd_create");
    }
    ~MemFile() { ::close(fd_); }
    MemFile(const MemFile&) = delete;
    MemFile& operator=(const MemFile&) = delete;
    void assign(std::span<const std::uint8_t> bytes) {
        if (::ftruncate(fd_, 0) != 0) fail("ftruncate");
        std::size_t done = 0;
        while (done < bytes.size()) {
            const ssize_t n =
                ::pwrite(fd_, bytes.data() + done, bytes.size() - done, static_cast<off_t>(done));
            if (n <= 0) fail("pwrite to a memfd");
            done += static_cast<std::size_t>(n);
        }
    }
    void resize(std::uint64_t bytes) {
        if (::ftruncate(fd_, 0) != 0 || ::ftruncate(fd_, static_cast<off_t>(bytes)) != 0)
            fail("ftruncate");
    }
    std::string path() const { return "/proc/self/fd/" + std::to_string(fd_); }

  private:
    int fd_;
};

// Counters shown at exit when LPARVISOR_FUZZ_REPORT is set: how often each named event (a
// request type that succeeded, a plug that was acknowledged ...) happened over the run. Used to
// show that the seed corpus reaches a path: `fuzz_x -runs=0 corpus` with the variable set.
class Tally {
  public:
    static Tally& instance() {
        static Tally* tally = [] {
            auto* t = new Tally;  // never destroyed: printed from atexit
            if (std::getenv("LPARVISOR_FUZZ_REPORT") != nullptr) {
                t->enabled_ = true;
                std::atexit([] { instance().print(); });
            }
            return t;
        }();
        return *tally;
    }
    void count(const std::string& what) {
        if (!enabled_) return;
        std::lock_guard lock(mutex_);
        ++counts_[what];
    }

  private:
    void print() {
        std::lock_guard lock(mutex_);
        for (const auto& [what, n] : counts_)
            std::fprintf(stderr, "tally: %s %llu\n", what.c_str(),
                         static_cast<unsigned long long>(n));
    }
    bool enabled_ = false;
    std::mutex mutex_;
    std::map<std::string, unsigned long long> counts_;
};
inline void tally(const std::string& what) {
    Tally::instance().count(what);
}

// The PCI platform without KVM: hands out GSIs, and checks what the transport does with them
// (every irqfd on an allocated GSI, routes only for allocated GSIs, ioeventfds registered once
// and removed once). leaks() says what is still held once the devices are gone.
class FakePciPlatform final : public pci::PciPlatform {
  public:
    std::uint32_t allocate_gsi() override {
        std::lock_guard lock(mutex_);
        const std::uint32_t gsi = next_gsi_++;
        allocated_.insert(gsi);
        return gsi;
    }
    void release_gsi(std::uint32_t gsi) noexcept override {
        std::lock_guard lock(mutex_);
        check(allocated_.erase(gsi) == 1, "release_gsi of a GSI not allocated");
        check(irqfds_.count(gsi) == 0, "GSI released with its irqfd attached");
        check(routes_.count(gsi) == 0, "GSI released with an MSI route");
    }
    void attach_irqfd(std::uint32_t gsi, int eventfd) override {
        std::lock_guard lock(mutex_);
        check(allocated_.count(gsi) == 1, "irqfd on a GSI not allocated");
        check(irqfds_.emplace(gsi, eventfd).second, "second irqfd on one GSI");
    }
    void detach_irqfd(std::uint32_t gsi, int eventfd) noexcept override {
        std::lock_guard lock(mutex_);
        auto it = irqfds_.find(gsi);
        check(it != irqfds_.end() && it->second == eventfd, "detach of an irqfd not attached");
        irqfds_.erase(it);
    }
    bool set_msi_route(std::uint32_t gsi, std::uint64_t address,
                       std::uint32_t data) noexcept override {
        std::lock_guard lock(mutex_);
        check(allocated_.count(gsi) == 1, "MSI route for a GSI not allocated");
        if (refuse_routes_) return false;
        routes_[gsi] = {address, data};
        return true;
    }
    void clear_msi_route(std::uint32_t gsi) noexcept override {
        std::lock_guard lock(mutex_);
        routes_.erase(gsi);
    }
    bool register_ioeventfd(GuestPhysAddr gpa, std::uint32_t length,
                            int eventfd) noexcept override {
        std::lock_guard lock(mutex_);
        check(length == 2, "ioeventfd of an unexpected width");
        // KVM refuses a second ioeventfd on one address (EEXIST): two BARs moved on top of each
        // other by the guest.
        if (refuse_ioeventfds_) return false;
        return ioeventfds_.emplace(gpa, eventfd).second;
    }
    void unregister_ioeventfd(GuestPhysAddr gpa, std::uint32_t, int eventfd) noexcept override {
        std::lock_guard lock(mutex_);
        auto it = ioeventfds_.find(gpa);
        check(it != ioeventfds_.end() && it->second == eventfd,
              "unregister of an ioeventfd not registered");
        ioeventfds_.erase(it);
    }

    void set_refusals(bool routes, bool ioeventfds) {
        std::lock_guard lock(mutex_);
        refuse_routes_ = routes;
        refuse_ioeventfds_ = ioeventfds;
    }
    std::vector<GuestPhysAddr> ioeventfd_addresses() {
        std::lock_guard lock(mutex_);
        std::vector<GuestPhysAddr> out;
        for (const auto& [gpa, fd] : ioeventfds_) out.push_back(gpa);
        return out;
    }
    void check_nothing_held() {
        std::lock_guard lock(mutex_);
        check(allocated_.empty(), "GSIs still allocated after the devices went");
        check(irqfds_.empty(), "irqfds still attached after the devices went");
        check(routes_.empty(), "MSI routes left after the devices went");
        check(ioeventfds_.empty(), "ioeventfds left after the devices went");
    }

  private:
    std::mutex mutex_;
    std::uint32_t next_gsi_ = pci::kFirstMsiGsi;
    std::set<std::uint32_t> allocated_;
    std::map<std::uint32_t, int> irqfds_;
    std::map<std::uint32_t, std::pair<std::uint64_t, std::uint32_t>> routes_;
    std::map<GuestPhysAddr, int> ioeventfds_;
    bool refuse_routes_ = false;
    bool refuse_ioeventfds_ = false;
};

}  // namespace lparvisor::fuzz
