// virtio-blk (device type 2) backed by a raw image file: one request queue, read, write, flush
// and get-id. Everything about a request the guest can get wrong (header, sector range, buffer
// directions, a read-only disk) ends the request with VIRTIO_BLK_S_IOERR and the device goes on
// serving; only a broken queue (see virtqueue.hpp) is a driver error.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

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

// Who has which disk image open in this process, by the file's identity (st_dev, st_ino, so
// two paths to one file are one image), so that a second user is refused with the first one's
// name. A writable image has one user; a read-only one any number of read-only users. The
// Hypervisor keeps one for all LPARs; flock() on the image (VirtioBlk) covers other processes.
class DiskUsers : public std::enable_shared_from_this<DiskUsers> {
  public:
    struct User {
        std::string lpar;    // empty outside an LPAR (tests)
        std::string device;  // "virtio-blk0"
        bool read_only = false;
    };
    // Held by the user; gives the image back when destroyed or reset.
    class Claim {
      public:
        Claim() = default;
        Claim(Claim&& other) noexcept { *this = std::move(other); }
        Claim& operator=(Claim&& other) noexcept;
        Claim(const Claim&) = delete;
        Claim& operator=(const Claim&) = delete;
        ~Claim() { reset(); }
        void reset() noexcept;
        bool held() const noexcept { return users_ != nullptr; }

      private:
        friend class DiskUsers;
        std::shared_ptr<DiskUsers> users_;
        std::pair<dev_t, ino_t> key_{};
        std::uint64_t id_ = 0;
    };

    // Records `user` as a user of the image; throws Error(Refused) if that conflicts with one
    // already there: "LPAR2: disk /x/y.img is already in use by LPAR LPAR1 (its virtio-blk0)".
    // Must be held by a shared_ptr.
    [[nodiscard]] Claim claim(dev_t dev, ino_t ino, const std::string& path, const User& user);
    std::size_t count() const;  // users of all images

  private:
    void release(std::pair<dev_t, ino_t> key, std::uint64_t id) noexcept;

    mutable std::mutex mutex_;
    std::uint64_t next_id_ = 1;
    std::map<std::pair<dev_t, ino_t>, std::vector<std::pair<std::uint64_t, User>>> images_;
};

struct DiskSpec {
    std::string path;
    bool read_only = false;
    std::uint32_t latency_ms = 0;  // added to every request: emulates slow storage
    // The LPAR the disk belongs to (for messages) and the registry of images in use; without
    // one, only the flock() on the image keeps two users apart.
    std::string lpar;
    std::shared_ptr<DiskUsers> users;
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
    // Opens the image and locks it: flock LOCK_EX (read-only: LOCK_SH), without waiting, and
    // a claim in disk.users. Throws lparvisor::Error naming the path if it cannot be opened,
    // its size is not a whole number of sectors, or another user has it (naming that LPAR, or
    // "another process" when only the flock says so).
    VirtioBlk(std::string name, GuestMemory memory, DiskSpec disk);
    ~VirtioBlk() override;

    DeviceType device_type() const override { return DeviceType::Block; }
    std::uint64_t device_features() const override;
    void read_config(std::uint32_t offset, std::span<std::uint8_t> data) override;
    void write_config(std::uint32_t offset, std::span<const std::uint8_t> data) override;

    std::uint64_t capacity_sectors() const noexcept { return capacity_sectors_; }
    const DiskSpec& disk() const noexcept { return disk_; }
    BlkStats stats() const noexcept;

    // Stops the worker, closes the image and gives up its lock and claim, so that the image
    // is free again even while something still holds this object. For the LPAR's teardown:
    // the device serves nothing afterwards.
    void close_image();

    // Serves one request synchronously (no latency): reads the header, does the I/O, writes
    // the status byte. Returns the bytes written into device-writable buffers. What the worker
    // runs per chain; public for the fuzzer.
    std::uint32_t serve_request(const DescriptorChain& chain);

  protected:
    ChainResult handle_chain(std::uint16_t queue_index, Queue& queue,
                             DescriptorChain& chain) override;

  private:
    // What serving a request came to: the status byte for the driver and the bytes written
    // into the chain's device-writable data buffers.
    struct Outcome {
        std::uint8_t status = kBlkStatusOk;
        std::uint64_t data_written = 0;
    };
    // The steps of serve_request: the request the header names, an IN or OUT and its segments
    // one by one, a GET_ID; then the status byte.
    Outcome execute(const std::vector<Descriptor>& descriptors);
    Outcome transfer(const VirtioBlkHeader& header, const std::vector<Descriptor>& segments);
    bool transfer_segment(const Descriptor& segment, std::uint64_t position, bool is_read);
    Outcome get_id(const std::vector<Descriptor>& segments);
    std::uint32_t complete(GuestPhysAddr status_addr, Outcome outcome);

    const DiskSpec disk_;
    Fd file_;
    DiskUsers::Claim claim_;
    std::uint64_t capacity_sectors_ = 0;
    char id_[kBlkIdBytes] = {};  // the image's basename, truncated, NUL-padded

    std::atomic<std::uint64_t> requests_{0};
    std::atomic<std::uint64_t> errors_{0};
    std::atomic<std::uint64_t> bytes_read_{0};
    std::atomic<std::uint64_t> bytes_written_{0};
};

}  // namespace lparvisor::virtio
