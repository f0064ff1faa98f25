// Storage keys: one byte per 4 KiB frame of main storage (access key, fetch-protect, reference,
// change; the layout is in lparvisor/abi.h). The hypervisor keeps them; guests read and set them
// through the paravirtual storage-key port; MVSTOR moves each key with its page (steps 205-207).
//
// Concurrency: an LPAR's keys are touched by its own vCPU threads (while it runs) or by the
// relocation (while its vCPUs are stopped), never both; LPARs own disjoint frames. The pause and
// resume hand-off orders the two, so the array needs no lock of its own.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "storage/address.hpp"

namespace lparvisor {

class StorageKeys {
  public:
    explicit StorageKeys(std::uint64_t main_storage_bytes);

    std::uint64_t frame_count() const noexcept { return keys_.size(); }
    // The keys of the frames in `range` (4 KiB aligned, inside main storage; throws otherwise).
    std::span<std::uint8_t> frames(ArenaRange range);
    std::span<const std::uint8_t> frames(ArenaRange range) const;

    void clear(ArenaRange range);

  private:
    std::vector<std::uint8_t> keys_;
};

}  // namespace lparvisor
