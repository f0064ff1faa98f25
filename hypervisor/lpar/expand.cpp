// EXPAND and shrink (the patent's claim 6) and storage.grow, the Fig. 3 -> Fig. 4 flow as one
// command. An expandable LPAR has a virtio-mem region right above its boot storage and a guest
// window that reserves address space up to its maximum; EXPAND maps the arena right above the
// LPAR into the window (so its storage stays one contiguous range of main storage), lets the
// guest plug that much, and waits until it has. Shrink asks the guest to unplug the top, waits
// until exactly the top is free, then unmaps, scrubs and returns it to the storage map.
#include <algorithm>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "devices/virtio/virtio_mem.hpp"
#include "lpar/hypervisor.hpp"
#include "storage/page_mover.hpp"
#include "util/error.hpp"
#include "util/time.hpp"

namespace lparvisor {

namespace {

void check_resize_request(const control::ResizeRequest& request, const char* what) {
    if (request.mib == 0 || request.mib % 2 != 0)
        throw Error(ErrorKind::InvalidArgument,
                    fmt::format("{}: {} by {} MiB: a positive multiple of 2 MiB", request.lpar,
                                what, request.mib));
}

// The usable region offered with `plugged_target` bytes requested: rounded up to Linux's memory
// block (128 MiB on x86-64), as QEMU's usable extent is. Linux adds hotplugged memory one whole
// block at a time and plugs nothing in a block that the usable region does not cover entirely,
// so an exact usable region of 64 MiB would get no plug at all. The guest still cannot plug
// beyond what the window maps: the LPAR's before_plug hook NACKs that (lpar.cpp).
std::uint64_t usable_extent(const virtio::VirtioMem& device, std::uint64_t plugged_target) {
    constexpr std::uint64_t kLinuxMemoryBlock = 128 * kMiB;
    const std::uint64_t rounded =
        (plugged_target + kLinuxMemoryBlock - 1) / kLinuxMemoryBlock * kLinuxMemoryBlock;
    return std::min(rounded, device.region().region_size);
}

virtio::VirtioMem& memory_device_of(Lpar& lpar) {
    auto* device = lpar.memory_device();
    if (device == nullptr)
        throw Error(ErrorKind::Refused,
                    lpar.name() +
                        " cannot grow or shrink: it has no virtio-mem region (define it "
                        "with max_size_mib above size_mib)");
    return *device;
}

}  // namespace

control::ResizeResult Hypervisor::expand(const control::ResizeRequest& request) {
    check_resize_request(request, "expand");
    auto accepted = Clock::now();
    auto operation = begin_storage_operation(request.lpar, "expand");
    auto lpar = active_lpar(request.lpar);
    auto& device = memory_device_of(*lpar);
    const std::uint64_t extra = request.mib * kMiB;
    const std::uint64_t boot = lpar->spec().storage.size;

    ArenaRange old_range, new_range;
    {
        std::lock_guard lock(map_mutex_);
        old_range = map_.find(request.lpar).range;
        if (old_range.size + extra > lpar->window().size())
            throw Error(ErrorKind::Refused,
                        fmt::format("{}: {} + {} MiB is more than its maximum of {} "
                                    "(max_size_mib)",
                                    request.lpar, format_mib(old_range.size), request.mib,
                                    format_mib(lpar->window().size())));
        // The patent's condition for EXPAND: the storage directly above is free.
        new_range = map_.check_resize(request.lpar, old_range.size + extra);
    }
    const ArenaRange added{ArenaOffset{old_range.end()}, extra};
    arena_.populate(added);  // fault it in now, not while the guest first touches it
    {
        std::lock_guard lock(map_mutex_);
        map_.resize(request.lpar, new_range.size);  // checked again: nothing moved in between
    }
    lpar->window().grow(extra);
    const std::uint64_t target = new_range.size - boot;
    device.set_usable_region_size(usable_extent(device, target));
    device.set_requested_size(target);
    spdlog::info("{}: EXPAND by {} MiB to {}: waiting for the guest to plug {}", request.lpar,
                 request.mib, format_mib(new_range.size), format_mib(target));

    control::ResizeResult result;
    result.lpar = request.lpar;
    result.old_size_mib = old_range.size / kMiB;
    if (!device.wait_for_plugged(target, request.timeout)) {
        const std::uint64_t plugged = device.plugged_size();
        if (plugged + boot <= old_range.size) {
            // The guest took none of it: everything goes back as it was.
            device.set_requested_size(old_range.size - boot);
            device.set_usable_region_size(usable_extent(device, old_range.size - boot));
            lpar->window().shrink(extra);
            {
                std::lock_guard lock(map_mutex_);
                map_.resize(request.lpar, old_range.size);
            }
            scrub(arena_, keys_, added);
            throw Error(ErrorKind::Busy,
                        fmt::format("{}: the guest did not plug the {} MiB within {} ms (does it "
                                    "drive its virtio-mem device?); nothing changed",
                                    request.lpar, request.mib, request.timeout.count()));
        }
        // Part of it is in use: the LPAR keeps what it was given, and says so.
        throw Error(
            ErrorKind::Busy,
            fmt::format("{}: the guest plugged only {} of {} within {} ms; the LPAR "
                        "keeps {} assigned (storage.shrink gives it back)",
                        request.lpar, format_mib(plugged - (old_range.size - boot)),
                        format_mib(extra), request.timeout.count(), format_mib(new_range.size)));
    }
    result.new_size_mib = new_range.size / kMiB;
    result.plugged_mib = device.plugged_size() / kMiB;
    result.total_us = microseconds_since(accepted);
    spdlog::info("{}: EXPAND done: {} -> {} MiB in {:.1f} ms", request.lpar, result.old_size_mib,
                 result.new_size_mib, result.total_us / 1000.0);
    events_.publish("storage.expanded", request.lpar,
                    {{"old_size_mib", result.old_size_mib},
                     {"new_size_mib", result.new_size_mib},
                     {"total_us", result.total_us}});
    return result;
}

control::ResizeResult Hypervisor::shrink(const control::ResizeRequest& request) {
    check_resize_request(request, "shrink");
    auto accepted = Clock::now();
    auto operation = begin_storage_operation(request.lpar, "shrink");
    auto lpar = active_lpar(request.lpar);
    auto& device = memory_device_of(*lpar);
    const std::uint64_t less = request.mib * kMiB;
    const std::uint64_t boot = lpar->spec().storage.size;

    ArenaRange old_range;
    {
        std::lock_guard lock(map_mutex_);
        old_range = map_.find(request.lpar).range;
    }
    if (old_range.size < boot + less)
        throw Error(ErrorKind::Refused,
                    fmt::format("{}: only {} was added by EXPAND; its boot storage ({}) cannot "
                                "shrink",
                                request.lpar, format_mib(old_range.size - boot), format_mib(boot)));
    const std::uint64_t old_target = old_range.size - boot;
    const std::uint64_t target = old_target - less;
    device.set_requested_size(target);
    spdlog::info("{}: shrink by {} MiB: waiting for the guest to unplug the top", request.lpar,
                 request.mib);
    // The guest chooses which blocks it gives back; only the top can leave the LPAR's range.
    auto deadline = Clock::now() + request.timeout;
    bool released = false;
    while (Clock::now() < deadline) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
        if (device.wait_for_plugged(target, std::max(left, std::chrono::milliseconds(1))) &&
            device.plugged_range_is_prefix()) {
            released = true;
            break;
        }
    }
    if (!released) {
        device.set_requested_size(old_target);  // the guest plugs back what it gave up
        throw Error(ErrorKind::Busy,
                    fmt::format("{}: the guest did not release the top {} MiB within {} ms; its "
                                "storage stays {}",
                                request.lpar, request.mib, request.timeout.count(),
                                format_mib(old_range.size)));
    }
    device.set_usable_region_size(usable_extent(device, target));
    lpar->window().shrink(less);
    const ArenaRange freed{ArenaOffset{old_range.end() - less}, less};
    {
        std::lock_guard lock(map_mutex_);
        map_.resize(request.lpar, old_range.size - less);
    }
    scrub(arena_, keys_, freed);  // nothing of this guest may reach the next owner

    control::ResizeResult result;
    result.lpar = request.lpar;
    result.old_size_mib = old_range.size / kMiB;
    result.new_size_mib = (old_range.size - less) / kMiB;
    result.plugged_mib = device.plugged_size() / kMiB;
    result.total_us = microseconds_since(accepted);
    spdlog::info("{}: shrink done: {} -> {} MiB, {} scrubbed", request.lpar, result.old_size_mib,
                 result.new_size_mib, format_range_mib(freed.start.value, freed.size));
    events_.publish("storage.shrunk", request.lpar,
                    {{"old_size_mib", result.old_size_mib},
                     {"new_size_mib", result.new_size_mib},
                     {"total_us", result.total_us}});
    return result;
}

control::GrowResult Hypervisor::grow(const control::ResizeRequest& request,
                                     control::MvstorMode mode) {
    check_resize_request(request, "grow");
    {
        // Refuse an LPAR that cannot grow before moving anybody for it.
        auto lpar = active_lpar(request.lpar);
        memory_device_of(*lpar);
        std::lock_guard lock(map_mutex_);
        auto size = map_.find(request.lpar).range.size;
        if (size + request.mib * kMiB > lpar->window().size())
            throw Error(ErrorKind::Refused,
                        fmt::format("{}: {} + {} MiB is more than its maximum of {} "
                                    "(max_size_mib)",
                                    request.lpar, format_mib(size), request.mib,
                                    format_mib(lpar->window().size())));
    }
    control::GrowResult result;
    result.plan = make_room(request.lpar, request.mib, mode);
    result.expansion = expand(request);
    return result;
}

}  // namespace lparvisor
