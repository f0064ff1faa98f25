#include "devices/virtio/virtio_blk.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <cstring>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "util/error.hpp"

namespace lparvisor::virtio {

namespace {

static_assert(std::endian::native == std::endian::little,
              "virtio 1.x structures are little-endian; this host code copies them as they are");

// seg_max: the header and the status take one descriptor each.
constexpr std::uint32_t kSegMax = kBlkQueueMaxSize - 2;

// pread/pwrite until done: false on an error or on end of file (the image shrank under us).
bool pread_all(int fd, std::span<std::uint8_t> out, std::uint64_t offset) {
    while (!out.empty()) {
        const ssize_t n = ::pread(fd, out.data(), out.size(), static_cast<off_t>(offset));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return false;
        out = out.subspan(static_cast<std::size_t>(n));
        offset += static_cast<std::uint64_t>(n);
    }
    return true;
}

bool pwrite_all(int fd, std::span<const std::uint8_t> in, std::uint64_t offset) {
    while (!in.empty()) {
        const ssize_t n = ::pwrite(fd, in.data(), in.size(), static_cast<off_t>(offset));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return false;
        in = in.subspan(static_cast<std::size_t>(n));
        offset += static_cast<std::uint64_t>(n);
    }
    return true;
}

std::string describe_user(const DiskUsers::User& user) {
    return user.lpar.empty() ? user.device : user.lpar;
}

// A request's data buffers: whatever lies between the 16-byte header and the status byte, in
// any framing (VERSION_1 implies ANY_LAYOUT): the rest of the first descriptor, the middle
// descriptors that are not empty, the last descriptor but its final (status) byte. The caller
// has checked that the chain has a first descriptor of at least a header and a device-writable
// last one of at least a byte, so there are at least two descriptors (one cannot be both).
std::vector<Descriptor> data_segments(const std::vector<Descriptor>& descriptors) {
    const Descriptor& first = descriptors.front();
    const Descriptor& last = descriptors.back();
    std::vector<Descriptor> segments;
    segments.reserve(descriptors.size());
    if (first.len > sizeof(VirtioBlkHeader))
        segments.push_back({GuestPhysAddr{first.addr.value + sizeof(VirtioBlkHeader)},
                            static_cast<std::uint32_t>(first.len - sizeof(VirtioBlkHeader)),
                            false});
    for (std::size_t i = 1; i + 1 < descriptors.size(); ++i)
        if (descriptors[i].len > 0) segments.push_back(descriptors[i]);
    if (last.len > 1) segments.push_back({last.addr, last.len - 1, true});
    return segments;
}

// Whether every segment goes the one way: device-writable (the device fills them) or not.
bool all_segments(const std::vector<Descriptor>& segments, bool device_writable) {
    return std::all_of(segments.begin(), segments.end(), [&](const Descriptor& segment) {
        return segment.device_writable == device_writable;
    });
}

std::uint64_t data_length(const std::vector<Descriptor>& segments) {
    std::uint64_t length = 0;
    for (const Descriptor& segment : segments) length += segment.len;
    return length;
}

}  // namespace

// --- DiskUsers ---

DiskUsers::Claim& DiskUsers::Claim::operator=(Claim&& other) noexcept {
    if (this != &other) {
        reset();
        users_ = std::move(other.users_);
        key_ = other.key_;
        id_ = other.id_;
    }
    return *this;
}

void DiskUsers::Claim::reset() noexcept {
    if (auto users = std::move(users_)) users->release(key_, id_);
}

DiskUsers::Claim DiskUsers::claim(dev_t dev, ino_t ino, const std::string& path, const User& user) {
    std::lock_guard lock(mutex_);
    const auto key = std::make_pair(dev, ino);
    auto& users = images_[key];
    for (const auto& [id, other] : users) {
        if (user.read_only && other.read_only) continue;
        const std::string by =
            other.lpar.empty() ? other.device
            : other.lpar == user.lpar
                ? fmt::format("LPAR {} itself (its {})", other.lpar, other.device)
                : fmt::format("LPAR {} (its {}{})", other.lpar, other.device,
                              other.read_only ? ", read-only" : "");
        throw Error(
            ErrorKind::Refused,
            fmt::format("{}: disk {} is already in use by {}{}", describe_user(user), path, by,
                        user.read_only ? " (a read-only disk cannot share an image "
                                         "with a writable one)"
                                       : ""));
    }
    Claim claim;
    claim.users_ = shared_from_this();
    claim.key_ = key;
    claim.id_ = next_id_++;
    users.emplace_back(claim.id_, user);
    return claim;
}

std::size_t DiskUsers::count() const {
    std::lock_guard lock(mutex_);
    std::size_t n = 0;
    for (const auto& [key, users] : images_) n += users.size();
    return n;
}

void DiskUsers::release(std::pair<dev_t, ino_t> key, std::uint64_t id) noexcept {
    std::lock_guard lock(mutex_);
    auto it = images_.find(key);
    if (it == images_.end()) return;
    std::erase_if(it->second, [id](const auto& entry) { return entry.first == id; });
    if (it->second.empty()) images_.erase(it);
}

// --- VirtioBlk ---

VirtioBlk::VirtioBlk(std::string name, GuestMemory memory, DiskSpec disk)
    : VirtioDeviceBase(std::move(name), std::move(memory), 1, kBlkQueueMaxSize),
      disk_(std::move(disk)) {
    file_.reset(::open(disk_.path.c_str(), (disk_.read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC));
    if (!file_.valid())
        throw_errno(fmt::format("{}: cannot open disk image {}{}", this->name(), disk_.path,
                                disk_.read_only ? " read-only" : ""));
    // One writer, or any number of readers: first among this process's LPARs (so the message
    // can name the other one), then against other processes.
    const DiskUsers::User user{disk_.lpar, this->name(), disk_.read_only};
    if (disk_.users) {
        struct stat st {};
        if (::fstat(file_.get(), &st) != 0)
            throw_errno(fmt::format("{}: disk image {}", this->name(), disk_.path));
        claim_ = disk_.users->claim(st.st_dev, st.st_ino, disk_.path, user);
    }
    if (::flock(file_.get(), (disk_.read_only ? LOCK_SH : LOCK_EX) | LOCK_NB) != 0) {
        if (errno == EWOULDBLOCK)
            throw Error(ErrorKind::Refused,
                        fmt::format("{}: disk {} is already in use by another process (it holds "
                                    "a lock on the image that a{} disk cannot share)",
                                    describe_user(user), disk_.path,
                                    disk_.read_only ? " read-only" : " writable"));
        // A file system without flock (some network ones): nothing to enforce with.
        spdlog::warn("{}: disk {}: cannot lock the image ({}): another process could use it too",
                     describe_user(user), disk_.path, std::strerror(errno));
    }
    // lseek rather than fstat: st_size is 0 for a block device.
    const off_t size = ::lseek(file_.get(), 0, SEEK_END);
    if (size < 0)
        throw_errno(fmt::format("{}: cannot size disk image {}", this->name(), disk_.path));
    if (static_cast<std::uint64_t>(size) % kBlkSectorSize != 0)
        throw Error(ErrorKind::InvalidArgument,
                    fmt::format("{}: disk image {} is {} bytes, not a multiple of {}", this->name(),
                                disk_.path, size, kBlkSectorSize));
    capacity_sectors_ = static_cast<std::uint64_t>(size) / kBlkSectorSize;

    const auto slash = disk_.path.find_last_of('/');
    const std::string base = slash == std::string::npos ? disk_.path : disk_.path.substr(slash + 1);
    std::memcpy(id_, base.data(), std::min<std::size_t>(base.size(), kBlkIdBytes));
}

VirtioBlk::~VirtioBlk() {
    stop_worker();
}

void VirtioBlk::close_image() {
    stop_worker();
    claim_.reset();
    file_.reset();  // and with it the flock
}

std::uint64_t VirtioBlk::device_features() const {
    return kFeatureVersion1 | kBlkFeatureFlush | kBlkFeatureSegMax | kBlkFeatureBlkSize |
           (disk_.read_only ? kBlkFeatureRo : 0);
}

void VirtioBlk::read_config(std::uint32_t offset, std::span<std::uint8_t> data) {
    std::array<std::uint8_t, kBlkConfigBytes> config{};
    const std::uint32_t block_size = kBlkSectorSize;
    std::memcpy(config.data() + kBlkConfigCapacity, &capacity_sectors_, sizeof capacity_sectors_);
    std::memcpy(config.data() + kBlkConfigSegMax, &kSegMax, sizeof kSegMax);
    std::memcpy(config.data() + kBlkConfigBlkSize, &block_size, sizeof block_size);
    for (std::size_t i = 0; i < data.size(); ++i) {
        const std::uint64_t at = std::uint64_t{offset} + i;
        data[i] = at < config.size() ? config[at] : 0;
    }
}

// Nothing in our configuration space is writable (writeback needs CONFIG_WCE, not offered).
void VirtioBlk::write_config(std::uint32_t, std::span<const std::uint8_t>) {
}

BlkStats VirtioBlk::stats() const noexcept {
    return {requests_.load(), errors_.load(), bytes_read_.load(), bytes_written_.load()};
}

VirtioDeviceBase::ChainResult VirtioBlk::handle_chain(std::uint16_t, Queue&,
                                                      DescriptorChain& chain) {
    // The latency is cut short by a reset; the request is then dropped without a status.
    if (disk_.latency_ms > 0 && !wait_unless_stopping(std::chrono::milliseconds(disk_.latency_ms)))
        return {0};
    return {serve_request(chain)};
}

std::uint32_t VirtioBlk::serve_request(const DescriptorChain& chain) {
    requests_.fetch_add(1);
    const auto& descriptors = chain.descriptors;
    if (descriptors.empty()) return 0;
    const Descriptor& last = descriptors.back();
    // Without a device-writable last byte there is nowhere to report the failure.
    if (!last.device_writable || last.len == 0) {
        errors_.fetch_add(1);
        return 0;
    }
    const GuestPhysAddr status_addr{last.addr.value + last.len - 1};
    return complete(status_addr, execute(descriptors));
}

// Counts a failure, then writes the status byte: after the request's data, so that the driver
// sees it only once the data is in place.
std::uint32_t VirtioBlk::complete(GuestPhysAddr status_addr, Outcome outcome) {
    if (outcome.status != kBlkStatusOk) errors_.fetch_add(1);
    // pop() proved the descriptor inside storage, so the write cannot fail.
    if (!memory().write_object(status_addr, outcome.status))
        return static_cast<std::uint32_t>(outcome.data_written);
    return static_cast<std::uint32_t>(outcome.data_written + 1);
}

// Reads the header from the first descriptor and serves the request it names.
VirtioBlk::Outcome VirtioBlk::execute(const std::vector<Descriptor>& descriptors) {
    const Descriptor& first = descriptors.front();
    if (first.device_writable || first.len < sizeof(VirtioBlkHeader)) return {kBlkStatusIoErr, 0};
    const auto header = memory().read_object<VirtioBlkHeader>(first.addr);
    if (!header) return {kBlkStatusIoErr, 0};

    const std::vector<Descriptor> segments = data_segments(descriptors);
    switch (header->type) {
        case kBlkTypeIn:
        case kBlkTypeOut:
            return transfer(*header, segments);
        case kBlkTypeFlush:
            return {::fdatasync(file_.get()) == 0 ? kBlkStatusOk : kBlkStatusIoErr, 0};
        case kBlkTypeGetId:
            return get_id(segments);
        default:
            return {kBlkStatusUnsupp, 0};
    }
}

// IN (read) or OUT (write): whole sectors from header.sector on, all inside the image, into
// buffers that all go the request's way; a write to a read-only disk fails. Segment by segment,
// stopping at the first that fails; what a read filled up to then counts as written.
VirtioBlk::Outcome VirtioBlk::transfer(const VirtioBlkHeader& header,
                                       const std::vector<Descriptor>& segments) {
    const bool is_read = header.type == kBlkTypeIn;
    if (!is_read && disk_.read_only) return {kBlkStatusIoErr, 0};
    const std::uint64_t data_len = data_length(segments);
    if (!all_segments(segments, is_read) || data_len % kBlkSectorSize != 0)
        return {kBlkStatusIoErr, 0};
    if (header.sector > capacity_sectors_ ||
        data_len / kBlkSectorSize > capacity_sectors_ - header.sector)
        return {kBlkStatusIoErr, 0};
    std::uint64_t position = header.sector * kBlkSectorSize;
    std::uint64_t done = 0;
    for (const Descriptor& segment : segments) {
        if (!transfer_segment(segment, position, is_read))
            return {kBlkStatusIoErr, is_read ? done : 0};
        position += segment.len;
        done += segment.len;
        (is_read ? bytes_read_ : bytes_written_).fetch_add(segment.len);
    }
    return {kBlkStatusOk, is_read ? done : 0};
}

// One segment between guest memory and the image at byte `position`; false if the segment is
// outside guest memory or the I/O fails.
bool VirtioBlk::transfer_segment(const Descriptor& segment, std::uint64_t position, bool is_read) {
    if (is_read) {
        // The span marks the pages written when it goes, after pread has filled it.
        auto target = memory().write_span(segment.addr, segment.len);
        return target && pread_all(file_.get(), target->bytes(), position);
    }
    auto source = memory().read_slice(segment.addr, segment.len);
    return source && pwrite_all(file_.get(), *source, position);
}

// GET_ID: the image's id (kBlkIdBytes, NUL-padded) into device-writable buffers, as much as
// they hold.
VirtioBlk::Outcome VirtioBlk::get_id(const std::vector<Descriptor>& segments) {
    if (!all_segments(segments, true)) return {kBlkStatusIoErr, 0};
    std::uint64_t copied = 0;
    for (const Descriptor& segment : segments) {
        const std::uint64_t chunk = std::min<std::uint64_t>(segment.len, kBlkIdBytes - copied);
        if (chunk == 0) break;
        if (!memory().write(segment.addr,
                            std::span<const std::uint8_t>(
                                // SAFETY: id_ is kBlkIdBytes long and copied + chunk
                                // never exceeds that.
                                reinterpret_cast<const std::uint8_t*>(id_) + copied, chunk)))
            return {kBlkStatusIoErr, copied};
        copied += chunk;
    }
    return {kBlkStatusOk, copied};
}

}  // namespace lparvisor::virtio
