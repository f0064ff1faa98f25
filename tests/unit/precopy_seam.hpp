// A pre-copy round racing a device's write, made deterministic: the device's worker stops at the
// dirty log's hand-out seam once it holds `buffer` (before it writes), the test harvests there,
// then lets it go on. Used by the virtio-blk and virtio-rng "write, then mark" tests. Header-only.
#pragma once

#include <catch2/catch.hpp>

#include <chrono>
#include <cstdint>
#include <future>
#include <memory>

#include "devices/virtio/virtio_device.hpp"
#include "storage/dirty_bitmap.hpp"
#include "storage/guest_memory.hpp"

namespace lparvisor::virtio::testing {

class PrecopySeam {
  public:
    // Tracking on, the hook set on `log` before any device uses it; `buffer` is the guest address
    // of the request's writable buffer (other hand-outs, the used ring and status, pass freely).
    PrecopySeam(std::shared_ptr<DeviceDirtyLog> log, std::uint64_t lpar_bytes, GuestPhysAddr buffer)
        : log_(std::move(log)), lpar_bytes_(lpar_bytes), released_future_(released_.get_future()) {
        log_->set_tracking(true);
        log_->set_hand_out_hook_for_testing([this, buffer](GuestPhysAddr gpa, std::uint64_t) {
            if (gpa != buffer) return;
            taken_.set_value();
            released_future_.wait();
        });
    }

    // The interrupt sink to activate the device with: its first interrupt completes the request.
    InterruptSink sink() {
        return InterruptSink{[this](std::uint16_t) {
                                 if (!completed_set_) completed_set_ = true, completed_.set_value();
                             },
                             [] {}};
    }

    // One pre-copy round's harvest: the pages marked since the last one.
    DirtyBitmap harvest() {
        DirtyBitmap bitmap(lpar_bytes_);
        log_->harvest_into(bitmap);
        return bitmap;
    }

    // Waits until the device holds the buffer, harvests right there, then lets it write.
    DirtyBitmap harvest_while_buffer_held() {
        using namespace std::chrono_literals;
        REQUIRE(taken_.get_future().wait_for(10s) == std::future_status::ready);
        auto bitmap = harvest();
        released_.set_value();
        return bitmap;
    }

    void wait_for_completion() {
        using namespace std::chrono_literals;
        REQUIRE(completed_.get_future().wait_for(10s) == std::future_status::ready);
    }

  private:
    std::shared_ptr<DeviceDirtyLog> log_;
    std::uint64_t lpar_bytes_;
    std::promise<void> taken_, released_, completed_;
    std::future<void> released_future_;
    bool completed_set_ = false;  // only the worker thread interrupts
};

inline bool page_dirty(const DirtyBitmap& bitmap, std::uint64_t gpa) {
    return bitmap.test(gpa / kPageSize);
}

}  // namespace lparvisor::virtio::testing
