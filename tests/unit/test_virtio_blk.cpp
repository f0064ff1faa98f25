// virtio-blk driven the way a guest driver drives it: descriptors and avail ring written into
// guest memory, a notify, then a wait for the used ring. Guest memory is one part of a larger
// host buffer; the bytes right after it stand for the next LPAR and must never change, whatever
// the driver writes into its rings.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <future>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "devices/virtio/virtio_blk.hpp"
#include "precopy_seam.hpp"
#include "util/error.hpp"
#include "virtio_test_driver.hpp"

using namespace lparvisor;
using namespace lparvisor::virtio;
using lparvisor::virtio::testing::page_dirty;
using lparvisor::virtio::testing::PrecopySeam;
using namespace std::chrono_literals;

namespace {

constexpr std::uint64_t kLparBytes = 1024 * 1024;
constexpr std::uint64_t kNeighbourBytes = 64 * 1024;
constexpr std::uint16_t kQueueSize = 16;
constexpr GuestPhysAddr kHeaders{0x3000};  // 16 bytes per request
constexpr GuestPhysAddr kStatus{0x4000};   // 1 byte per request
constexpr std::uint64_t kImageSectors = 128;

std::uint8_t neighbour_pattern(std::size_t i) {
    return static_cast<std::uint8_t>(i * 7 + 3);
}
std::uint8_t image_pattern(std::size_t i) {
    return static_cast<std::uint8_t>(i / 512 + i * 13);
}

struct Storage {
    Storage() : host(kLparBytes + kNeighbourBytes), memory(host.data(), kLparBytes) {
        for (std::size_t i = 0; i < kNeighbourBytes; ++i)
            host[kLparBytes + i] = neighbour_pattern(i);
    }
    bool neighbour_intact() const {
        for (std::size_t i = 0; i < kNeighbourBytes; ++i)
            if (host[kLparBytes + i] != neighbour_pattern(i)) return false;
        return true;
    }
    std::vector<std::uint8_t> host;
    GuestMemory memory;
};

// A raw image in /tmp, filled with image_pattern, removed when the test ends.
struct TempImage {
    explicit TempImage(std::uint64_t bytes = kImageSectors * 512,
                       const char* name_template = "/tmp/lparvisor-blk-test-XXXXXX") {
        std::string buffer = name_template;
        fd = ::mkstemp(buffer.data());
        REQUIRE(fd >= 0);
        path = buffer;
        std::vector<std::uint8_t> bytes_out(bytes);
        for (std::size_t i = 0; i < bytes; ++i) bytes_out[i] = image_pattern(i);
        REQUIRE(::pwrite(fd, bytes_out.data(), bytes, 0) == static_cast<ssize_t>(bytes));
    }
    ~TempImage() {
        ::close(fd);
        ::unlink(path.c_str());
    }
    std::vector<std::uint8_t> contents() const {
        std::vector<std::uint8_t> bytes(static_cast<std::size_t>(::lseek(fd, 0, SEEK_END)));
        REQUIRE(::pread(fd, bytes.data(), bytes.size(), 0) == static_cast<ssize_t>(bytes.size()));
        return bytes;
    }
    bool unchanged() const {
        auto bytes = contents();
        for (std::size_t i = 0; i < bytes.size(); ++i)
            if (bytes[i] != image_pattern(i)) return false;
        return true;
    }
    int fd = -1;
    std::string path;
};

// Records what the device signals.
struct Recorder {
    std::atomic<int> used_buffer{0};
    std::atomic<int> config_change{0};
    InterruptSink sink() {
        return {[this](std::uint16_t) { used_buffer.fetch_add(1); },
                [this] { config_change.fetch_add(1); }};
    }
};

bool wait_for(const std::function<bool()>& condition, std::chrono::milliseconds timeout = 5s) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!condition()) {
        if (std::chrono::steady_clock::now() > deadline) return false;
        std::this_thread::sleep_for(1ms);
    }
    return true;
}

struct Buffer {
    std::uint64_t addr;
    std::uint32_t len;
    bool device_writable;
};

// The guest driver's side of the request queue.
struct BlkDriver : testing::QueueDriver {
    explicit BlkDriver(const GuestMemory& guest) : QueueDriver(guest, kQueueSize) {}

    // Header, data buffers, status byte: returns the request number (for status()).
    int submit(std::uint32_t type, std::uint64_t sector, const std::vector<Buffer>& data) {
        const int request = next_request;
        push(prepare(type, sector, data));
        return request;
    }
    // submit() without making the chain available: returns its head, for push(). A test that
    // breaks a chain does it here, before the device can see it, never after publishing.
    std::uint16_t prepare(std::uint32_t type, std::uint64_t sector,
                          const std::vector<Buffer>& data) {
        const int request = next_request++;
        const GuestPhysAddr header{kHeaders.value + 16ull * (request % 64)};
        const GuestPhysAddr status{kStatus.value + static_cast<std::uint64_t>(request % 64)};
        REQUIRE(memory.write_object(header, VirtioBlkHeader{type, 0, sector}));
        REQUIRE(memory.write_object(status, std::uint8_t{0xff}));
        std::vector<Buffer> chain{{header.value, 16, false}};
        chain.insert(chain.end(), data.begin(), data.end());
        chain.push_back({status.value, 1, true});
        const std::uint16_t head = next_desc;
        for (std::size_t i = 0; i < chain.size(); ++i) {
            const std::uint16_t index = next_desc;
            next_desc = static_cast<std::uint16_t>((next_desc + 1) % kQueueSize);
            const bool last = i + 1 == chain.size();
            set_desc(index, chain[i].addr, chain[i].len,
                     static_cast<std::uint16_t>((last ? 0 : kDescFlagNext) |
                                                (chain[i].device_writable ? kDescFlagWrite : 0)),
                     next_desc);
        }
        return head;
    }
    std::uint8_t status(int request) const {
        return memory
            .read_object<std::uint8_t>(
                GuestPhysAddr{kStatus.value + static_cast<std::uint64_t>(request % 64)})
            .value();
    }

    int next_request = 0;
};

// A device, its driver and a recording interrupt sink, activated on a fresh LPAR.
struct Rig {
    explicit Rig(DiskSpec spec)
        : device(std::make_unique<VirtioBlk>("virtio-blk0", storage.memory, std::move(spec))),
          driver(storage.memory) {}
    bool activate() {
        return device->activate(device->device_features(), {driver.config()}, recorder.sink());
    }
    // Submits, notifies and waits for the request's used entry; returns its status.
    std::uint8_t run(std::uint32_t type, std::uint64_t sector, const std::vector<Buffer>& data) {
        const std::uint16_t used_before = driver.used_idx();
        const int request = driver.submit(type, sector, data);
        device->notify(0);
        REQUIRE(wait_for([&] { return driver.used_idx() != used_before; }));
        return driver.status(request);
    }

    Storage storage;
    Recorder recorder;
    std::unique_ptr<VirtioBlk> device;
    BlkDriver driver;
};

std::vector<std::uint8_t> guest_bytes(const Storage& storage, std::uint64_t gpa, std::size_t len) {
    return {storage.host.begin() + static_cast<std::ptrdiff_t>(gpa),
            storage.host.begin() + static_cast<std::ptrdiff_t>(gpa + len)};
}

}  // namespace

TEST_CASE("virtio-blk refuses an image it cannot use, naming it", "[virtio_blk]") {
    Storage storage;
    try {
        VirtioBlk device("virtio-blk0", storage.memory, {"/nonexistent/disk.img"});
        FAIL("no error for a missing image");
    } catch (const Error& error) {
        CHECK_THAT(error.what(),
                   Catch::Contains("/nonexistent/disk.img") && Catch::Contains("No such file"));
    }
    TempImage odd(1000);
    try {
        VirtioBlk device("virtio-blk0", storage.memory, {odd.path});
        FAIL("no error for a 1000-byte image");
    } catch (const Error& error) {
        CHECK_THAT(error.what(), Catch::Contains(odd.path) && Catch::Contains("multiple of 512"));
    }
}

TEST_CASE("virtio-blk offers its features and configuration space", "[virtio_blk]") {
    TempImage image;
    Storage storage;
    VirtioBlk device("virtio-blk0", storage.memory, {image.path});
    CHECK(device.device_type() == DeviceType::Block);
    CHECK(device.queue_count() == 1);
    CHECK(device.queue_max_size() == 256);
    const std::uint64_t features = device.device_features();
    CHECK((features & kFeatureVersion1) != 0);
    CHECK((features & kBlkFeatureFlush) != 0);
    CHECK((features & kBlkFeatureSegMax) != 0);
    CHECK((features & kBlkFeatureBlkSize) != 0);
    CHECK((features & kBlkFeatureRo) == 0);

    // SAFETY: each integer's own bytes (sizeof capacity, or 4 of a uint32_t), as the device's
    // config space writes them.
    std::uint64_t capacity = 0;
    device.read_config(kBlkConfigCapacity,
                       {reinterpret_cast<std::uint8_t*>(&capacity), sizeof capacity});
    CHECK(capacity == kImageSectors);
    std::uint32_t blk_size = 0, seg_max = 0;
    device.read_config(kBlkConfigBlkSize, {reinterpret_cast<std::uint8_t*>(&blk_size), 4});
    device.read_config(kBlkConfigSegMax, {reinterpret_cast<std::uint8_t*>(&seg_max), 4});
    CHECK(blk_size == 512);
    CHECK(seg_max == 254);
    std::uint8_t beyond[8];
    std::memset(beyond, 0xee, sizeof beyond);
    device.read_config(kBlkConfigBytes - 2, beyond);
    CHECK(beyond[2] == 0);
    CHECK(beyond[7] == 0);
    device.read_config(0xffffffffu, beyond);
    CHECK(beyond[0] == 0);

    TempImage other;  // not `image`: a read-only disk cannot share an image with a writer
    VirtioBlk read_only("virtio-blk1", storage.memory, {other.path, true});
    CHECK((read_only.device_features() & kBlkFeatureRo) != 0);
}

TEST_CASE("a writable disk image has one user: a second LPAR is refused, naming both",
          "[virtio_blk][disk_lock]") {
    TempImage image;
    Storage storage;
    auto users = std::make_shared<DiskUsers>();
    auto disk = [&](const std::string& lpar, bool read_only) {
        return DiskSpec{image.path, read_only, 0, lpar, users};
    };
    const auto error_of = [&](auto&& make) -> std::string {
        try {
            make();
        } catch (const Error& e) {
            CHECK(e.kind() == ErrorKind::Refused);
            return e.what();
        }
        FAIL("not refused");
        return {};
    };

    SECTION("another LPAR, writable or read-only") {
        VirtioBlk a("virtio-blk0", storage.memory, disk("A", false));
        CHECK(error_of([&] { VirtioBlk b("virtio-blk0", storage.memory, disk("B", false)); }) ==
              "B: disk " + image.path + " is already in use by LPAR A (its virtio-blk0)");
        CHECK_THAT(error_of([&] { VirtioBlk b("virtio-blk0", storage.memory, disk("B", true)); }),
                   Catch::StartsWith("B: disk " + image.path + " is already in use by LPAR A"));
        CHECK(users->count() == 1);
    }
    SECTION("the same image twice in one LPAR") {
        VirtioBlk a("virtio-blk0", storage.memory, disk("A", false));
        CHECK(error_of([&] { VirtioBlk b("virtio-blk1", storage.memory, disk("A", false)); }) ==
              "A: disk " + image.path + " is already in use by LPAR A itself (its virtio-blk0)");
    }
    SECTION("another path to the same file is the same image") {
        VirtioBlk a("virtio-blk0", storage.memory, disk("A", false));
        const std::string link = image.path + ".link";
        REQUIRE(::symlink(image.path.c_str(), link.c_str()) == 0);
        auto spec = disk("B", false);
        spec.path = link;
        const std::string message =
            error_of([&] { VirtioBlk b("virtio-blk0", storage.memory, spec); });
        ::unlink(link.c_str());
        CHECK_THAT(message, Catch::Contains("already in use by LPAR A"));
    }
    SECTION("a writer is refused where a reader is") {
        VirtioBlk a("virtio-blk0", storage.memory, disk("A", true));
        CHECK_THAT(error_of([&] { VirtioBlk b("virtio-blk0", storage.memory, disk("B", false)); }),
                   Catch::Contains("already in use by LPAR A (its virtio-blk0, read-only)"));
    }
    SECTION("read-only users share") {
        VirtioBlk a("virtio-blk0", storage.memory, disk("A", true));
        VirtioBlk b("virtio-blk0", storage.memory, disk("B", true));
        CHECK(users->count() == 2);
    }
    SECTION("the image is free again once its user is gone or closed") {
        { VirtioBlk a("virtio-blk0", storage.memory, disk("A", false)); }
        VirtioBlk b("virtio-blk0", storage.memory, disk("B", false));
        b.close_image();
        CHECK(users->count() == 0);
        VirtioBlk c("virtio-blk0", storage.memory, disk("C", false));
        CHECK(users->count() == 1);
    }
    SECTION("a refused device leaves no claim behind") {
        VirtioBlk a("virtio-blk0", storage.memory, disk("A", false));
        (void)error_of([&] { VirtioBlk b("virtio-blk0", storage.memory, disk("B", false)); });
        CHECK(users->count() == 1);
    }
}

TEST_CASE("a disk image locked by another process is refused as such", "[virtio_blk][disk_lock]") {
    TempImage image;
    Storage storage;
    // Another open file description stands for the other process: flock conflicts between
    // descriptions, whoever holds them.
    const int other = ::open(image.path.c_str(), O_RDONLY | O_CLOEXEC);
    REQUIRE(other >= 0);
    REQUIRE(::flock(other, LOCK_SH) == 0);
    auto users = std::make_shared<DiskUsers>();
    try {
        VirtioBlk b("virtio-blk0", storage.memory, {image.path, false, 0, "B", users});
        FAIL("not refused");
    } catch (const Error& e) {
        CHECK(e.kind() == ErrorKind::Refused);
        CHECK_THAT(e.what(), Catch::StartsWith("B: disk " + image.path +
                                               " is already in use by another process"));
    }
    CHECK(users->count() == 0);
    // A reader may join a reader.
    VirtioBlk reader("virtio-blk0", storage.memory, {image.path, true, 0, "B", users});
    ::close(other);
}

TEST_CASE("virtio-blk reads, writes, flushes and reports its id", "[virtio_blk]") {
    TempImage image;
    Rig rig({image.path});
    REQUIRE(rig.activate());

    // Write sectors 2..3 from two guest buffers, then read them back into a third.
    std::vector<std::uint8_t> payload(1024);
    for (std::size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<std::uint8_t>(~i);
    std::memcpy(rig.storage.host.data() + 0x10000, payload.data(), 512);
    std::memcpy(rig.storage.host.data() + 0x11000, payload.data() + 512, 512);
    CHECK(rig.run(kBlkTypeOut, 2, {{0x10000, 512, false}, {0x11000, 512, false}}) == kBlkStatusOk);
    CHECK(rig.driver.used_elem(0).len == 1);  // only the status byte written

    auto on_disk = image.contents();
    CHECK(std::equal(payload.begin(), payload.end(), on_disk.begin() + 1024));
    CHECK(on_disk[1023] == image_pattern(1023));
    CHECK(on_disk[2048] == image_pattern(2048));

    CHECK(rig.run(kBlkTypeFlush, 0, {}) == kBlkStatusOk);

    CHECK(rig.run(kBlkTypeIn, 2, {{0x20000, 1024, true}}) == kBlkStatusOk);
    CHECK(guest_bytes(rig.storage, 0x20000, 1024) == payload);
    CHECK(rig.driver.used_elem(2).len == 1025);

    // A sector nobody wrote reads back as the image was made.
    CHECK(rig.run(kBlkTypeIn, 100, {{0x30000, 512, true}}) == kBlkStatusOk);
    CHECK(rig.storage.host[0x30000 + 17] == image_pattern(100 * 512 + 17));

    CHECK(rig.run(kBlkTypeGetId, 0, {{0x40000, 20, true}}) == kBlkStatusOk);
    const std::string basename = image.path.substr(image.path.rfind('/') + 1);
    // SAFETY: 20 bytes at 0x40000 of the rig's storage (far larger), as chars.
    const std::string id(reinterpret_cast<const char*>(rig.storage.host.data() + 0x40000), 20);
    CHECK(id == basename.substr(0, 20));
    CHECK(rig.driver.used_elem(4).len == 21);

    const BlkStats stats = rig.device->stats();
    CHECK(stats.requests == 5);
    CHECK(stats.errors == 0);
    CHECK(stats.bytes_written == 1024);
    CHECK(stats.bytes_read == 1024 + 512);
    CHECK(rig.recorder.used_buffer == 5);
    CHECK(rig.recorder.config_change == 0);
    CHECK_FALSE(rig.device->needs_reset());
    CHECK(rig.storage.neighbour_intact());
}

TEST_CASE("virtio-blk answers bad requests with an error status and keeps serving",
          "[virtio_blk]") {
    TempImage image;
    Rig rig({image.path});
    REQUIRE(rig.activate());
    const std::uint64_t max = std::numeric_limits<std::uint64_t>::max();

    // Beyond the disk: the last sector plus one, a sector far beyond, a sector count that
    // would wrap.
    CHECK(rig.run(kBlkTypeIn, kImageSectors - 1, {{0x10000, 1024, true}}) == kBlkStatusIoErr);
    CHECK(rig.run(kBlkTypeIn, kImageSectors, {{0x10000, 512, true}}) == kBlkStatusIoErr);
    CHECK(rig.run(kBlkTypeOut, max / 512, {{0x10000, 512, false}}) == kBlkStatusIoErr);
    CHECK(rig.run(kBlkTypeOut, max, {{0x10000, 512, false}}) == kBlkStatusIoErr);
    // Data buffers in the wrong direction, and a length that is not whole sectors.
    CHECK(rig.run(kBlkTypeIn, 0, {{0x10000, 512, false}}) == kBlkStatusIoErr);
    CHECK(rig.run(kBlkTypeOut, 0, {{0x10000, 512, true}}) == kBlkStatusIoErr);
    CHECK(rig.run(kBlkTypeOut, 0, {{0x10000, 100, false}}) == kBlkStatusIoErr);
    CHECK(rig.run(kBlkTypeGetId, 0, {{0x10000, 20, false}}) == kBlkStatusIoErr);
    CHECK(rig.run(77, 0, {{0x10000, 512, true}}) == kBlkStatusUnsupp);
    CHECK(rig.device->stats().errors == 9);

    // A header that is device-writable or too short.
    const int request = rig.driver.submit(kBlkTypeIn, 0, {{0x10000, 512, true}});
    rig.driver.set_desc(static_cast<std::uint16_t>(rig.driver.next_desc - 3), kHeaders.value, 8,
                        kDescFlagNext, static_cast<std::uint16_t>(rig.driver.next_desc - 2));
    rig.device->notify(0);
    REQUIRE(wait_for([&] { return rig.driver.used_idx() == 10; }));
    CHECK(rig.driver.status(request) == kBlkStatusIoErr);

    // The disk is untouched and the device still works.
    CHECK(image.unchanged());
    CHECK_FALSE(rig.device->needs_reset());
    CHECK(rig.run(kBlkTypeIn, kImageSectors - 1, {{0x10000, 512, true}}) == kBlkStatusOk);
    CHECK(rig.storage.host[0x10000] == image_pattern((kImageSectors - 1) * 512));

    // A read-only disk refuses writes (its own image: it may not share one with a writer).
    TempImage read_only_image;
    Rig read_only({read_only_image.path, true});
    REQUIRE(read_only.activate());
    CHECK(read_only.run(kBlkTypeOut, 0, {{0x10000, 512, false}}) == kBlkStatusIoErr);
    CHECK(read_only.run(kBlkTypeIn, 0, {{0x10000, 512, true}}) == kBlkStatusOk);
    CHECK(read_only_image.unchanged());
    CHECK(image.unchanged());
    CHECK(rig.storage.neighbour_intact());
}

TEST_CASE("virtio-blk refuses rings outside storage at activation", "[virtio_blk]") {
    TempImage image;
    Rig rig({image.path});
    const auto refused = [&](QueueConfig config) {
        return !rig.device->activate(rig.device->device_features(), {config}, rig.recorder.sink());
    };
    QueueConfig config = rig.driver.config();
    config.desc_table = GuestPhysAddr{kLparBytes - 64};
    CHECK(refused(config));
    config = rig.driver.config();
    config.used_ring = GuestPhysAddr{kLparBytes};
    CHECK(refused(config));
    config = rig.driver.config();
    config.avail_ring = GuestPhysAddr{std::numeric_limits<std::uint64_t>::max() - 1};
    CHECK(refused(config));
    config = rig.driver.config();
    config.size = 512;
    CHECK(refused(config));
    config.size = 12;
    CHECK(refused(config));
    // Features: VERSION_1 is required, nothing we did not offer is accepted.
    CHECK_FALSE(rig.device->activate(kBlkFeatureFlush, {rig.driver.config()}, {}));
    CHECK_FALSE(rig.device->activate(rig.device->device_features() | (1ull << 28),
                                     {rig.driver.config()}, {}));
    CHECK(rig.device->needs_reset());

    rig.device->reset();
    CHECK_FALSE(rig.device->needs_reset());
    REQUIRE(rig.activate());
    // Twice without a reset: refused and NEEDS_RESET, without touching the queue under the
    // running worker (TSan checks that part).
    CHECK_FALSE(rig.activate());
    CHECK(rig.device->needs_reset());
    rig.device->reset();
    CHECK_FALSE(rig.device->needs_reset());
    REQUIRE(rig.activate());
    CHECK(rig.run(kBlkTypeIn, 0, {{0x10000, 512, true}}) == kBlkStatusOk);
    CHECK(rig.storage.neighbour_intact());
}

TEST_CASE("virtio-blk stops at a hostile queue until reset, touching nothing outside storage",
          "[virtio_blk]") {
    const std::uint64_t max = std::numeric_limits<std::uint64_t>::max();
    struct Hostile {
        const char* what;
        std::function<void(BlkDriver&)> set_up;
    };
    // Each one a request whose data descriptor (index 1 of the chain at head 0) is bad, or a
    // broken ring.
    const auto with_data = [](std::uint32_t type, std::uint64_t addr, std::uint32_t len,
                              bool writable) {
        return [=](BlkDriver& driver) { driver.submit(type, 0, {{addr, len, writable}}); };
    };
    const std::vector<Hostile> cases = {
        {"data address outside storage", with_data(kBlkTypeIn, 4 * kLparBytes, 512, true)},
        {"data address + length overflowing u64", with_data(kBlkTypeIn, max - 255, 512, true)},
        {"read into the neighbour LPAR", with_data(kBlkTypeIn, kLparBytes, 512, true)},
        {"read straddling into the neighbour", with_data(kBlkTypeIn, kLparBytes - 512, 1024, true)},
        {"write from the neighbour LPAR", with_data(kBlkTypeOut, kLparBytes, 4096, false)},
        {"a chain that loops",
         [](BlkDriver& driver) {
             const std::uint16_t head = driver.prepare(kBlkTypeIn, 0, {{0x10000, 512, true}});
             driver.set_desc(2, kStatus.value, 1, kDescFlagWrite | kDescFlagNext, 0);
             driver.push(head);
         }},
        {"a chain longer than the queue",
         [](BlkDriver& driver) {
             for (std::uint16_t i = 0; i < kQueueSize; ++i)
                 driver.set_desc(i, 0x10000 + 512ull * i, 512, kDescFlagNext,
                                 static_cast<std::uint16_t>((i + 1) % kQueueSize));
             driver.push(0);
         }},
        {"avail.idx jumping more than the queue size",
         [](BlkDriver& driver) {
             // Published in one step: were the request made available first, the worker
             // could serve it before the jump.
             driver.prepare(kBlkTypeIn, 0, {{0x10000, 512, true}});
             driver.set_avail_idx(kQueueSize + 2);
         }},
        {"head index out of range", [](BlkDriver& driver) { driver.push(kQueueSize); }},
        {"next index out of range",
         [](BlkDriver& driver) {
             const std::uint16_t head = driver.prepare(kBlkTypeIn, 0, {{0x10000, 512, true}});
             driver.set_desc(1, 0x10000, 512, kDescFlagWrite | kDescFlagNext, 0xffff);
             driver.push(head);
         }},
    };
    for (const Hostile& hostile : cases) {
        INFO(hostile.what);
        TempImage image;
        Rig rig({image.path});
        REQUIRE(rig.activate());
        hostile.set_up(rig.driver);
        rig.device->notify(0);
        // NEEDS_RESET shows first, then the interrupt, then the worker lets go of the chain.
        CHECK(wait_for([&] {
            return rig.device->needs_reset() && rig.recorder.config_change > 0 &&
                   rig.device->idle();
        }));
        CHECK(rig.recorder.config_change == 1);
        CHECK(rig.driver.used_idx() == 0);
        CHECK(rig.storage.neighbour_intact());
        CHECK(image.unchanged());
        CHECK(rig.device->idle());

        // Nothing more is served until the reset, then the device works again.
        rig.driver.avail_idx = 0;
        rig.driver.next_desc = 0;
        rig.driver.set_avail_idx(0);
        const int stalled = rig.driver.submit(kBlkTypeIn, 1, {{0x10000, 512, true}});
        rig.device->notify(0);
        std::this_thread::sleep_for(50ms);
        CHECK(rig.driver.used_idx() == 0);
        CHECK(rig.driver.status(stalled) == 0xff);

        rig.device->reset();
        CHECK_FALSE(rig.device->needs_reset());
        rig.driver.avail_idx = 0;
        rig.driver.next_desc = 0;
        rig.driver.set_avail_idx(0);
        REQUIRE(rig.activate());
        CHECK(rig.run(kBlkTypeIn, 1, {{0x10000, 512, true}}) == kBlkStatusOk);
        CHECK(rig.storage.host[0x10000 + 5] == image_pattern(512 + 5));
        CHECK(rig.recorder.config_change == 1);
        CHECK(rig.storage.neighbour_intact());
    }
}

TEST_CASE("the MVSTOR drain waits out a slow request and remembers notifies", "[virtio_blk]") {
    TempImage image;
    Rig rig({image.path, false, 300});
    REQUIRE(rig.activate());
    // The worker looks at every queue once when it starts (idle() is false for that moment):
    // wait for that, not for a fast machine.
    REQUIRE(wait_for([&] { return rig.device->idle(); }));

    const auto submitted = std::chrono::steady_clock::now();
    const int slow = rig.driver.submit(kBlkTypeIn, 3, {{0x10000, 512, true}});
    rig.device->notify(0);
    REQUIRE(wait_for([&] { return !rig.device->idle(); }));
    // Past the pop, into the request's latency (idle() turns false just before the pop).
    std::this_thread::sleep_for(50ms);
    rig.device->stop_accepting();
    // The request in flight goes on; idle() says so until it ends.
    CHECK_FALSE(rig.device->idle());
    CHECK(rig.driver.used_idx() == 0);
    REQUIRE(wait_for([&] { return rig.device->idle(); }));
    CHECK(rig.driver.used_idx() == 1);
    CHECK(rig.driver.status(slow) == kBlkStatusOk);
    CHECK(std::chrono::steady_clock::now() - submitted >= 290ms);

    // A notify while stopped is not served ...
    const int held = rig.driver.submit(kBlkTypeIn, 4, {{0x11000, 512, true}});
    rig.device->notify(0);
    std::this_thread::sleep_for(500ms);
    CHECK(rig.device->idle());
    CHECK(rig.driver.used_idx() == 1);
    CHECK(rig.driver.status(held) == 0xff);
    // ... until the device accepts again.
    rig.device->resume_accepting();
    REQUIRE(wait_for([&] { return rig.driver.used_idx() == 2; }));
    CHECK(rig.driver.status(held) == kBlkStatusOk);
    CHECK(rig.storage.host[0x11000] == image_pattern(4 * 512));
    CHECK(rig.device->idle());
}

TEST_CASE("reset and destruction cut a slow request short", "[virtio_blk]") {
    TempImage image;
    Rig rig({image.path, false, 20000});
    REQUIRE(rig.activate());
    const int request = rig.driver.submit(kBlkTypeIn, 0, {{0x10000, 512, true}});
    rig.device->notify(0);
    REQUIRE(wait_for([&] { return !rig.device->idle(); }));
    auto started = std::chrono::steady_clock::now();
    rig.device->reset();
    CHECK(std::chrono::steady_clock::now() - started < 2s);
    CHECK(rig.device->idle());
    // Dropped, not completed: the driver has forgotten the queue.
    CHECK(rig.driver.used_idx() == 0);
    CHECK(rig.driver.status(request) == 0xff);

    rig.driver.avail_idx = 0;
    rig.driver.set_avail_idx(0);
    REQUIRE(rig.activate());
    rig.driver.submit(kBlkTypeIn, 0, {{0x10000, 512, true}});
    rig.device->notify(0);
    REQUIRE(wait_for([&] { return !rig.device->idle(); }));
    started = std::chrono::steady_clock::now();
    rig.device.reset();
    CHECK(std::chrono::steady_clock::now() - started < 2s);
}

TEST_CASE("a write to the queue's eventfd (the guest's ioeventfd notify) wakes the device",
          "[virtio_blk]") {
    TempImage image;
    Rig rig({image.path});
    const int fd = rig.device->queue_event_fd(0);
    REQUIRE(fd >= 0);
    CHECK(rig.device->queue_event_fd(1) == -1);
    REQUIRE(rig.activate());
    const int request = rig.driver.submit(kBlkTypeIn, 7, {{0x10000, 512, true}});
    REQUIRE(::eventfd_write(fd, 1) == 0);
    REQUIRE(wait_for([&] { return rig.driver.used_idx() == 1; }));
    CHECK(rig.driver.status(request) == kBlkStatusOk);
    CHECK(rig.storage.host[0x10000 + 9] == image_pattern(7 * 512 + 9));
}

TEST_CASE("a pre-copy harvest in the middle of a virtio-blk read does not lose the data",
          "[virtio_blk][dirty]") {
    TempImage image;
    Storage storage;
    // Two sectors into a buffer across a page boundary, held at the seam before pread() fills it.
    const std::uint64_t buffer = 0x20000 - 512;
    auto log = std::make_shared<DeviceDirtyLog>(kLparBytes);
    PrecopySeam seam(log, kLparBytes, GuestPhysAddr{buffer});
    const GuestMemory memory(storage.host.data(), kLparBytes, log);
    VirtioBlk device("virtio-blk0", memory, {image.path});
    BlkDriver driver(memory);
    REQUIRE(device.activate(device.device_features(), {driver.config()}, seam.sink()));
    const int request = driver.submit(kBlkTypeIn, 3, {{buffer, 1024, true}});
    (void)seam.harvest();  // the relocation starts: what the driver wrote is copied in round 1

    device.notify(0);
    const auto precopy = seam.harvest_while_buffer_held();
    seam.wait_for_completion();
    CHECK(driver.status(request) == kBlkStatusOk);
    CHECK(guest_bytes(storage, buffer + 600, 1)[0] == image_pattern(3 * 512 + 600));

    // The final stop: both pages of the buffer must be there to be copied again.
    const auto final_stop = seam.harvest();
    CHECK_FALSE(page_dirty(precopy, buffer));  // nothing had landed when the round ran
    CHECK(page_dirty(final_stop, buffer));
    CHECK(page_dirty(final_stop, buffer + 1023));
}
