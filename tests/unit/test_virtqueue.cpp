// The split virtqueue against a driver that lays out rings by hand, good and hostile. Guest
// memory is one part of a larger host buffer; the bytes right after it stand for the next LPAR
// and must never change.
#include <catch2/catch.hpp>

#include <cstdint>
#include <cstring>
#include <limits>
#include <variant>
#include <vector>

#include "devices/virtio/virtqueue.hpp"
#include "virtio_test_driver.hpp"

using namespace lparvisor;
using namespace lparvisor::virtio;

namespace {

constexpr std::uint64_t kLparBytes = 1024 * 1024;
constexpr std::uint64_t kNeighbourBytes = 64 * 1024;

std::uint8_t neighbour_pattern(std::size_t i) {
    return static_cast<std::uint8_t>(i * 7 + 3);
}

// An LPAR's storage followed by its neighbour's, in one host buffer.
struct Storage {
    explicit Storage(std::uint64_t lpar_bytes = kLparBytes)
        : host(lpar_bytes + kNeighbourBytes), memory(host.data(), lpar_bytes) {
        for (std::size_t i = 0; i < kNeighbourBytes; ++i)
            host[lpar_bytes + i] = neighbour_pattern(i);
    }
    bool neighbour_intact() const {
        for (std::size_t i = 0; i < kNeighbourBytes; ++i)
            if (host[memory.size() + i] != neighbour_pattern(i)) return false;
        return true;
    }
    std::vector<std::uint8_t> host;
    GuestMemory memory;
};

using Driver = testing::QueueDriver;

QueueError error_of(const PopResult& result) {
    REQUIRE(std::holds_alternative<DriverError>(result));
    return std::get<DriverError>(result).kind;
}

}  // namespace

TEST_CASE("activation checks the size and places every ring inside storage", "[virtqueue]") {
    Storage storage;
    Queue queue(0, 256);
    Driver driver(storage.memory, 16);
    QueueConfig config = driver.config();
    CHECK_FALSE(queue.activate(storage.memory, config));
    CHECK(queue.ready());

    auto refused = [&](QueueConfig bad) {
        auto error = queue.activate(storage.memory, bad);
        CHECK_FALSE(queue.ready());
        return error ? error->kind : QueueError::NotReady;
    };
    for (std::uint16_t size : {0, 3, 24, 512}) {
        QueueConfig bad = config;
        bad.size = static_cast<std::uint16_t>(size);
        CHECK(refused(bad) == QueueError::BadSize);
    }
    QueueConfig bad = config;
    bad.desc_table = GuestPhysAddr{kLparBytes - 16 * 8};  // half the table beyond storage
    CHECK(refused(bad) == QueueError::RingOutsideStorage);
    bad = config;
    bad.avail_ring = GuestPhysAddr{kLparBytes};
    CHECK(refused(bad) == QueueError::RingOutsideStorage);
    bad = config;
    bad.used_ring = GuestPhysAddr{std::numeric_limits<std::uint64_t>::max() - 8};  // wraps
    CHECK(refused(bad) == QueueError::RingOutsideStorage);
    bad = config;
    bad.used_ring = GuestPhysAddr{0x2002};
    CHECK(refused(bad) == QueueError::RingMisaligned);

    // The last possible place for the used ring is fine.
    QueueConfig at_end = config;
    at_end.used_ring = GuestPhysAddr{kLparBytes - 136};  // 134 bytes, 4-aligned
    CHECK_FALSE(queue.activate(storage.memory, at_end));
    CHECK(queue.ready());

    // Not ready: accepted, and pop() finds nothing.
    QueueConfig unused = config;
    unused.ready = false;
    unused.desc_table = GuestPhysAddr{~0ull};
    CHECK_FALSE(queue.activate(storage.memory, unused));
    CHECK(std::holds_alternative<NoneAvailable>(queue.pop(storage.memory)));
}

TEST_CASE("pop returns the chains the driver made available and add_used returns them",
          "[virtqueue]") {
    Storage storage;
    Queue queue(0, 256);
    Driver driver(storage.memory, 8);
    REQUIRE_FALSE(queue.activate(storage.memory, driver.config()));
    CHECK(std::holds_alternative<NoneAvailable>(queue.pop(storage.memory)));

    driver.set_desc(5, 0x10000, 16, kDescFlagNext, 2);
    driver.set_desc(2, 0x11000, 512, kDescFlagNext | kDescFlagWrite, 7);
    driver.set_desc(7, 0x12000, 1, kDescFlagWrite);
    driver.push(5);
    driver.set_desc(0, 0x13000, 100, 0);
    driver.push(0);

    auto first = queue.pop(storage.memory);
    REQUIRE(std::holds_alternative<DescriptorChain>(first));
    const auto& chain = std::get<DescriptorChain>(first);
    CHECK(chain.head == 5);
    REQUIRE(chain.descriptors.size() == 3);
    CHECK(chain.descriptors[0].addr.value == 0x10000);
    CHECK(chain.descriptors[0].len == 16);
    CHECK_FALSE(chain.descriptors[0].device_writable);
    CHECK(chain.descriptors[1].addr.value == 0x11000);
    CHECK(chain.descriptors[1].device_writable);
    CHECK(chain.descriptors[2].len == 1);
    CHECK(chain.total_len == 529);

    auto second = queue.pop(storage.memory);
    REQUIRE(std::holds_alternative<DescriptorChain>(second));
    CHECK(std::get<DescriptorChain>(second).head == 0);
    CHECK(std::holds_alternative<NoneAvailable>(queue.pop(storage.memory)));

    CHECK(driver.used_idx() == 0);
    CHECK_FALSE(queue.add_used(storage.memory, 5, 513));
    CHECK(driver.used_idx() == 1);
    CHECK(driver.used_elem(0).id == 5);
    CHECK(driver.used_elem(0).len == 513);
    CHECK_FALSE(queue.add_used(storage.memory, 0, 0));
    CHECK(driver.used_idx() == 2);
    CHECK(driver.used_elem(1).id == 0);

    auto bad_head = queue.add_used(storage.memory, 8, 0);
    REQUIRE(bad_head);
    CHECK(bad_head->kind == QueueError::UsedHeadOutOfRange);
    CHECK(driver.used_idx() == 2);
    CHECK(storage.neighbour_intact());
}

TEST_CASE("the ring indexes wrap around 2^16", "[virtqueue]") {
    Storage storage;
    Queue queue(0, 256);
    Driver driver(storage.memory, 4);
    REQUIRE_FALSE(queue.activate(storage.memory, driver.config()));
    driver.set_desc(1, 0x10000, 64, kDescFlagWrite);
    for (int i = 0; i < 70000; ++i) {
        driver.push(1);
        auto popped = queue.pop(storage.memory);
        REQUIRE(std::holds_alternative<DescriptorChain>(popped));
        REQUIRE_FALSE(queue.add_used(storage.memory, 1, 64));
    }
    CHECK(driver.used_idx() == static_cast<std::uint16_t>(70000));
    CHECK(queue.next_avail() == static_cast<std::uint16_t>(70000));
    CHECK(std::holds_alternative<NoneAvailable>(queue.pop(storage.memory)));
}

TEST_CASE("the interrupt is suppressed only while the driver sets NO_INTERRUPT", "[virtqueue]") {
    Storage storage;
    Queue queue(0, 256);
    Driver driver(storage.memory, 4);
    REQUIRE_FALSE(queue.activate(storage.memory, driver.config()));
    CHECK(queue.needs_interrupt(storage.memory));
    driver.set_avail_flags(kAvailFlagNoInterrupt);
    CHECK_FALSE(queue.needs_interrupt(storage.memory));
    driver.set_avail_flags(0);
    CHECK(queue.needs_interrupt(storage.memory));
}

TEST_CASE("a hostile driver's rings are refused without touching anything outside storage",
          "[virtqueue]") {
    Storage storage;
    Queue queue(0, 256);
    const std::uint16_t size = 16;
    Driver driver(storage.memory, size);
    REQUIRE_FALSE(queue.activate(storage.memory, driver.config()));
    const std::uint64_t max = std::numeric_limits<std::uint64_t>::max();

    SECTION("avail.idx more than a ring ahead") {
        driver.set_avail_idx(size + 1);
        CHECK(error_of(queue.pop(storage.memory)) == QueueError::AvailIndexTooFarAhead);
        // A whole ring ahead is still legal.
        driver.set_avail_idx(size);
        for (std::uint16_t i = 0; i < size; ++i) driver.set_desc(i, 0x10000, 8, 0);
        CHECK(std::holds_alternative<DescriptorChain>(queue.pop(storage.memory)));
    }
    SECTION("avail.idx behind the device (wrapped: 65535 ahead)") {
        driver.set_avail_idx(0xffff);
        CHECK(error_of(queue.pop(storage.memory)) == QueueError::AvailIndexTooFarAhead);
    }
    SECTION("head index out of range") {
        driver.push(size);
        CHECK(error_of(queue.pop(storage.memory)) == QueueError::HeadOutOfRange);
        driver.avail_idx = 0;
        driver.push(0xffff);
        CHECK(error_of(queue.pop(storage.memory)) == QueueError::HeadOutOfRange);
    }
    SECTION("descriptor outside storage") {
        driver.set_desc(0, 2 * kLparBytes, 512, kDescFlagWrite);
        driver.push(0);
        CHECK(error_of(queue.pop(storage.memory)) == QueueError::DescriptorOutOfStorage);
    }
    SECTION("descriptor reaching into the neighbour LPAR") {
        driver.set_desc(0, kLparBytes - 256, 512, kDescFlagWrite);
        driver.push(0);
        CHECK(error_of(queue.pop(storage.memory)) == QueueError::DescriptorOutOfStorage);
        driver.set_desc(0, kLparBytes, 1, kDescFlagWrite);
        CHECK(error_of(queue.pop(storage.memory)) == QueueError::DescriptorOutOfStorage);
    }
    SECTION("descriptor address + length overflows") {
        driver.set_desc(0, max - 100, 512, kDescFlagWrite);
        driver.push(0);
        CHECK(error_of(queue.pop(storage.memory)) == QueueError::DescriptorOverflow);
    }
    SECTION("next index out of range") {
        driver.set_desc(0, 0x10000, 16, kDescFlagNext, size);
        driver.push(0);
        CHECK(error_of(queue.pop(storage.memory)) == QueueError::NextOutOfRange);
    }
    SECTION("a chain that loops on itself") {
        driver.set_desc(3, 0x10000, 16, kDescFlagNext, 3);
        driver.push(3);
        CHECK(error_of(queue.pop(storage.memory)) == QueueError::ChainTooLong);
    }
    SECTION("a chain through every descriptor and back: longer than the queue") {
        for (std::uint16_t i = 0; i < size; ++i)
            driver.set_desc(i, 0x10000, 16, kDescFlagNext,
                            static_cast<std::uint16_t>((i + 1) % size));
        driver.push(0);
        CHECK(error_of(queue.pop(storage.memory)) == QueueError::ChainTooLong);
        // The same chain ended at the last descriptor has exactly `size` entries: fine.
        driver.set_desc(size - 1, 0x10000, 16, 0);
        auto popped = queue.pop(storage.memory);
        REQUIRE(std::holds_alternative<DescriptorChain>(popped));
        CHECK(std::get<DescriptorChain>(popped).descriptors.size() == size);
    }
    SECTION("an indirect descriptor (not negotiated)") {
        driver.set_desc(0, 0x10000, 16, kDescFlagIndirect);
        driver.push(0);
        CHECK(error_of(queue.pop(storage.memory)) == QueueError::IndirectNotNegotiated);
    }
    // After an error the queue has not moved on.
    CHECK(driver.used_idx() == 0);
    CHECK(storage.neighbour_intact());
}

TEST_CASE("a chain whose total length passes 4 GiB is refused", "[virtqueue]") {
    // 256 descriptors of 32 MiB each (all over the same bytes) add up to 8 GiB.
    Storage storage(32 * 1024 * 1024);
    Queue queue(0, 256);
    Driver driver(storage.memory, 256);
    REQUIRE_FALSE(queue.activate(storage.memory, driver.config()));
    for (std::uint16_t i = 0; i < 256; ++i)
        driver.set_desc(i, 0, 32 * 1024 * 1024, i + 1 < 256 ? kDescFlagNext : 0,
                        static_cast<std::uint16_t>(i + 1));
    driver.push(0);
    CHECK(error_of(queue.pop(storage.memory)) == QueueError::ChainLengthOverflow);

    // 127 of them (just under 4 GiB) are fine.
    driver.set_desc(126, 0, 32 * 1024 * 1024, 0);
    auto popped = queue.pop(storage.memory);
    REQUIRE(std::holds_alternative<DescriptorChain>(popped));
    CHECK(std::get<DescriptorChain>(popped).total_len == 127u * 32 * 1024 * 1024);
    CHECK(storage.neighbour_intact());
}
