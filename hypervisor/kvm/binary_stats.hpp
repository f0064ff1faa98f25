// KVM's binary statistics (KVM_GET_STATS_FD, KVM_CAP_BINARY_STATS_FD): a VM's or a vCPU's
// counters as KVM keeps them (exits, page faults, TLB flushes, MMU work), read without stopping
// the vCPUs. Documentation/virt/kvm/api.rst, "KVM_GET_STATS_FD".
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "util/fd.hpp"

namespace lparvisor::kvm {

// Stat name -> value.
using StatValues = std::map<std::string, std::uint64_t>;

// Owns one stats fd. The header and the descriptors are read once at construction; read()
// preads the data block and returns every scalar cumulative or instant stat (histograms and
// peaks are left out). Throws lparvisor::Error on a malformed or unreadable file.
class BinaryStats {
  public:
    BinaryStats(Fd fd, std::string what);

    struct Descriptor {
        std::string name;
        std::uint32_t flags = 0;   // KVM_STATS_TYPE_* | KVM_STATS_UNIT_* | KVM_STATS_BASE_*
        std::uint32_t offset = 0;  // of its values, in the data block
        std::uint16_t size = 0;    // number of u64 values
    };
    // KVM's id of the file ("kvm-1234", "kvm-1234/vcpu-0").
    const std::string& id() const noexcept { return id_; }
    const std::vector<Descriptor>& descriptors() const noexcept { return descriptors_; }
    StatValues read() const;

  private:
    void read_descriptors(std::uint32_t name_size, std::uint32_t count, std::uint32_t offset);
    std::vector<std::uint64_t> read_data() const;

    Fd fd_;
    std::string what_;
    std::string id_;
    std::uint32_t data_offset_ = 0;
    std::size_t data_words_ = 0;  // u64 words of the data block that the descriptors cover
    std::vector<Descriptor> descriptors_;
};

// One reading of an LPAR's VM and vCPUs.
struct KvmStatsSnapshot {
    StatValues vm;     // the VM's own stats (MMU, remote TLB flushes)
    StatValues vcpus;  // every vCPU's stats, summed over the vCPUs
    unsigned vcpu_count = 0;
};

// The stats files of one VM and its vCPUs, opened once (opening a vCPU's waits for it to leave
// KVM_RUN; reading never does).
class KvmStats {
  public:
    KvmStats(BinaryStats vm, std::vector<BinaryStats> vcpus);
    KvmStatsSnapshot read() const;

  private:
    BinaryStats vm_;
    std::vector<BinaryStats> vcpus_;
};

}  // namespace lparvisor::kvm
