// virtio-blk (device type 2) backed by a raw image file: one request queue, read, write, flush
// and get-id. Everything about a request the guest can get wrong (header, sector range, buffer
// directions, a read-only disk) ends the request with VIRTIO_BLK_S_IOERR and the device goes on
// serving; only a broken queue (see virtqueue.hpp) is a driver error.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>

#include "devices/virtio/virtio_device_base.hpp"
#include "util/fd.hpp"

namespace lparvisor::virtio {

// Feature bits (virtio 1.2, 5.2.3).
inline constexpr std::uint64_t kBlkFeatureSegMax = 1ull << 2;
inline constexpr std::uint64_t kBlkFeatureRo = 1ull << 5;
inline constexpr std::uint64_t kBlkFeatureBlkSize = 1ull << 6;
inline constexpr std::uint64_t kBlkFeatureFlush = 1ull << 9;

// Request types and status values (5.2.6).
inline constexpr std::uint32_t kBlkTypeIn = 0;
inline constexpr std::uint32_t kBlkTypeOut = 1;
inline constexpr std::uint32_t kBlkTypeFlush = 4;
inline constexpr std::uint32_t kBlkTypeGetId = 8;
inline constexpr std::uint8_t kBlkStatusOk = 0;
inline constexpr std::uint8_t kBlkStatusIoErr = 1;
inline constexpr std::uint8_t kBlkStatusUnsupp = 2;

inline constexpr std::uint64_t kBlkSectorSize = 512;
inline constexpr std::uint32_t kBlkIdBytes = 20;
inline constexpr std::uint16_t kBlkQueueMaxSize = 256;

// struct virtio_blk_req's header.
struct VirtioBlkHeader {
    std::uint32_t type;
    std::uint32_t reserved;
    std::uint64_t sector;
};
static_assert(sizeof(VirtioBlkHeader) == 16);

// Offsets in struct virtio_blk_config of the fields this device fills.
inline constexpr std::uint32_t kBlkConfigCapacity = 0;  // le64, in 512-byte sectors
inline constexpr std::uint32_t kBlkConfigSegMax = 12;   // le32
inline constexpr std::uint32_t kBlkConfigBlkSize = 20;  // le32
inline constexpr std::uint32_t kBlkConfigBytes = 36;    // up to and including num_queues

struct DiskSpec {
    std::string path;
    bool read_only = false;
    std::uint32_t latency_ms = 0;  // added to every request: emulates slow storage
};

// A snapshot of the counters.
struct BlkStats {
    std::uint64_t requests = 0;  // every chain served, failed ones included
    std::uint64_t errors = 0;    // requests answered with IOERR or UNSUPP
    std::uint64_t bytes_read = 0;
    std::uint64_t bytes_written = 0;
};

class VirtioBlk final : public VirtioDeviceBase {
  public:
    // Opens the image; throws lparvisor::Error naming the path if it cannot be opened or its
    // size is not a whole number of sectors.
    VirtioBlk(std::string name, GuestMemory memory, DiskSpec disk);
    ~VirtioBlk() override;

    DeviceType device_type() const override { return DeviceType::Block; }
    std::uint64_t device_features() const override;
    void read_config(std::uint32_t offset, std::span<std::uint8_t> data) override;
    void write_config(std::uint32_t offset, std::span<const std::uint8_t> data) override;

    std::uint64_t capacity_sectors() const noexcept { return capacity_sectors_; }
    const DiskSpec& disk() const noexcept { return disk_; }
    BlkStats stats() const noexcept;

    // Serves one request synchronously (no latency): reads the header, does the I/O, writes
    // the status byte. Returns the bytes written into device-writable buffers. What the worker
    // runs per chain; public for the fuzzer.
    std::uint32_t serve_request(const DescriptorChain& chain);

  protected:
    ChainResult handle_chain(std::uint16_t queue_index, Queue& queue,
                             DescriptorChain& chain) override;

  private:
    const DiskSpec disk_;
    Fd file_;
    std::uint64_t capacity_sectors_ = 0;
    char id_[kBlkIdBytes] = {};  // the image's basename, truncated, NUL-padded

    std::atomic<std::uint64_t> requests_{0};
    std::atomic<std::uint64_t> errors_{0};
    std::atomic<std::uint64_t> bytes_read_{0};
    std::atomic<std::uint64_t> bytes_written_{0};
};

}  // namespace lparvisor::virtio
