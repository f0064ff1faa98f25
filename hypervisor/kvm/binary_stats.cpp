#include "kvm/binary_stats.hpp"

#include <linux/kvm.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "util/error.hpp"

namespace lparvisor::kvm {

namespace {

// Reads exactly `size` bytes at `offset`; false on a short read (errno set on an error).
bool pread_all(int fd, void* into, std::size_t size, std::uint64_t offset) {
    auto* p = static_cast<char*>(into);
    while (size > 0) {
        ssize_t n = ::pread(fd, p, size, static_cast<off_t>(offset));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return false;
        p += n;
        size -= static_cast<std::size_t>(n);
        offset += static_cast<std::uint64_t>(n);
    }
    return true;
}

// struct kvm_stats_desc less its name: <linux/kvm.h>'s flexible array member has a different
// size and offset in C++ (an empty struct is one byte there), the kernel's layout is this one.
struct RawDescriptor {
    std::uint32_t flags;
    std::int16_t exponent;
    std::uint16_t size;
    std::uint32_t offset;
    std::uint32_t bucket_size;
};
static_assert(sizeof(RawDescriptor) == 16);

bool is_scalar(const BinaryStats::Descriptor& d) {
    const std::uint32_t type = d.flags & KVM_STATS_TYPE_MASK;
    return d.size == 1 && (type == KVM_STATS_TYPE_CUMULATIVE || type == KVM_STATS_TYPE_INSTANT);
}

}  // namespace

BinaryStats::BinaryStats(Fd fd, std::string what) : fd_(std::move(fd)), what_(std::move(what)) {
    kvm_stats_header header{};
    if (!pread_all(fd_.get(), &header, sizeof header, 0))
        throw_errno(what_ + ": reading the KVM stats header");
    if (header.name_size == 0 || header.name_size > 4096 || header.num_desc > 65536)
        throw Error(ErrorKind::System, what_ + ": implausible KVM stats header (name_size " +
                                           std::to_string(header.name_size) + ", " +
                                           std::to_string(header.num_desc) + " descriptors)");
    std::string id(header.name_size, '\0');
    if (!pread_all(fd_.get(), id.data(), id.size(), header.id_offset))
        throw_errno(what_ + ": reading the KVM stats id");
    id_ = id.c_str();
    data_offset_ = header.data_offset;
    read_descriptors(header.name_size, header.num_desc, header.desc_offset);
    read_data();  // once here, so that a broken file fails at open
}

void BinaryStats::read_descriptors(std::uint32_t name_size, std::uint32_t count,
                                   std::uint32_t offset) {
    const std::size_t stride = sizeof(RawDescriptor) + name_size;
    std::vector<char> raw(stride * count);
    if (!pread_all(fd_.get(), raw.data(), raw.size(), offset))
        throw_errno(what_ + ": reading " + std::to_string(count) + " KVM stats descriptors");
    descriptors_.reserve(count);
    for (std::uint32_t i = 0; i < count; ++i) {
        RawDescriptor desc{};
        std::memcpy(&desc, raw.data() + i * stride, sizeof desc);
        const char* name = raw.data() + i * stride + sizeof desc;
        Descriptor d{std::string(name, ::strnlen(name, name_size)), desc.flags, desc.offset,
                     desc.size};
        data_words_ = std::max<std::size_t>(data_words_, d.offset / 8 + d.size);
        descriptors_.push_back(std::move(d));
    }
}

std::vector<std::uint64_t> BinaryStats::read_data() const {
    std::vector<std::uint64_t> words(data_words_);
    if (!pread_all(fd_.get(), words.data(), words.size() * sizeof(std::uint64_t), data_offset_))
        throw_errno(what_ + ": reading the KVM stats data");
    return words;
}

StatValues BinaryStats::read() const {
    const auto words = read_data();
    StatValues values;
    for (const auto& d : descriptors_)
        if (is_scalar(d)) values[d.name] = words[d.offset / 8];
    return values;
}

KvmStats::KvmStats(BinaryStats vm, std::vector<BinaryStats> vcpus)
    : vm_(std::move(vm)), vcpus_(std::move(vcpus)) {
}

KvmStatsSnapshot KvmStats::read() const {
    KvmStatsSnapshot snapshot;
    snapshot.vm = vm_.read();
    snapshot.vcpu_count = static_cast<unsigned>(vcpus_.size());
    for (const auto& vcpu : vcpus_)
        for (const auto& [name, value] : vcpu.read()) snapshot.vcpus[name] += value;
    return snapshot;
}

}  // namespace lparvisor::kvm
