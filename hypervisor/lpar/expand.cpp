// EXPAND and shrink (the patent's claim 6) and storage.grow, the Fig. 3 -> Fig. 4 flow as one
// command. An expandable LPAR has a virtio-mem region right above its boot storage and a guest
// window that reserves address space up to its maximum; EXPAND maps the arena right above the
// LPAR into the window (so its storage stays one contiguous range of main storage), lets the
// guest plug that much, and waits until it has. Shrink asks the guest to unplug the top, waits
// until exactly the top is free, then unmaps, scrubs and returns it to the storage map.
#include <algorithm>
#include <functional>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "devices/virtio/virtio_mem.hpp"
#include "lpar/hypervisor.hpp"
#include "lpar/resize_rules.hpp"
#include "storage/page_mover.hpp"
#include "util/error.hpp"
#include "util/fault.hpp"
#include "util/time.hpp"

namespace lparvisor {

namespace {

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
    check_resizable(lpar.name(), device != nullptr);
    return *device;
}

// Called with the guest's plugged size whenever it changed during a wait.
using PluggedProgress = std::function<void(std::uint64_t plugged_bytes)>;

// Waits for the guest's virtio-mem driver, in short slices so that a shutdown ends the wait,
// and reports each change of the plugged size.
bool wait_for_plugged(virtio::VirtioMem& device, std::uint64_t target,
                      std::chrono::milliseconds timeout, const Hypervisor& hypervisor,
                      const PluggedProgress& progress = {}) {
    const auto deadline = Clock::now() + timeout;
    std::uint64_t seen = device.plugged_size();
    for (;;) {
        const auto now = Clock::now();
        if (now >= deadline || hypervisor.shutting_down()) return false;
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now);
        const bool reached = device.wait_for_plugged(
            target, std::clamp(left, std::chrono::milliseconds(1), std::chrono::milliseconds(100)));
        if (const std::uint64_t plugged = device.plugged_size(); plugged != seen) {
            seen = plugged;
            if (progress) progress(plugged);
        }
        if (reached) return true;
    }
}

}  // namespace

control::ResizeResult Hypervisor::run_expand(const control::ResizeRequest& request) {
    check_resize_request(request, "expand");
    auto accepted = Clock::now();
    auto operation = begin_storage_operation(request.lpar, "expand");
    auto lpar = operable_lpar(request.lpar, "expand");
    auto& device = memory_device_of(*lpar);
    const std::uint64_t extra = request.mib * kMiB;
    const std::uint64_t boot = lpar->spec().storage.size;

    ArenaRange old_range, new_range;
    {
        std::lock_guard lock(map_mutex_);
        old_range = map_.find(request.lpar).range;
        check_within_maximum(request.lpar, old_range.size, extra, lpar->window().size());
        // The patent's condition for EXPAND: the storage directly above is free.
        new_range = map_.check_resize(request.lpar, old_range.size + extra);
    }
    const ArenaRange added{ArenaOffset{old_range.end()}, extra};
    arena_.populate(added);  // fault it in now, not while the guest first touches it
    {
        std::lock_guard lock(map_mutex_);
        map_.resize(request.lpar, new_range.size);  // checked again: nothing moved in between
    }
    try {
        lpar->window().grow(extra);
    } catch (...) {
        {
            std::lock_guard lock(map_mutex_);
            map_.resize(request.lpar, old_range.size);
        }
        scrub(arena_, keys_, added);
        throw;
    }
    const std::uint64_t target = new_range.size - boot;
    // The fault point "expand.plug": a guest that never plugs (it is not even asked).
    const bool never_plugs = fault::triggered("expand.plug");
    events_.publish("expand.phase", request.lpar,
                    control::PhaseDone{"populate", microseconds_since(accepted)});
    const auto plug_started = Clock::now();
    const std::uint64_t plugged_before = old_range.size - boot;
    const PluggedProgress plug_progress = [&](std::uint64_t plugged) {
        const std::uint64_t done = plugged > plugged_before ? plugged - plugged_before : 0;
        events_.publish("expand.progress", request.lpar,
                        control::PlugAdvanced{std::min(done, extra) / kMiB, request.mib});
    };
    if (!never_plugs) {
        device.set_usable_region_size(usable_extent(device, target));
        device.set_requested_size(target);
    }
    spdlog::info("{}: EXPAND by {} MiB to {}: waiting for the guest to plug {}", request.lpar,
                 request.mib, format_mib(new_range.size), format_mib(target));

    control::ResizeResult result;
    result.lpar = request.lpar;
    result.old_size_mib = old_range.size / kMiB;
    if (never_plugs || !wait_for_plugged(device, target, request.timeout, *this, plug_progress)) {
        const std::uint64_t plugged = device.plugged_size();
        if (plugged + boot <= old_range.size) {
            // The guest took none of it: everything goes back as it was.
            // Unmapped with the LPAR quiesced: no device may be inside the range when it goes.
            device.set_requested_size(old_range.size - boot);
            device.set_usable_region_size(usable_extent(device, old_range.size - boot));
            {
                Quiesce stop(*lpar, request.timeout);
                stop.at_risk(fmt::format("EXPAND of {} by {} MiB could not be undone", request.lpar,
                                         request.mib));
                if (stop.drained() && device.plugged_size() + boot <= old_range.size) {
                    lpar->window().shrink(extra);
                    stop.safe();
                } else {
                    // It cannot be taken back safely now: the LPAR keeps it (consistent).
                    stop.safe();
                    throw Error(ErrorKind::Busy,
                                fmt::format("{}: the guest did not plug the {} MiB within {} ms, "
                                            "and it could not be taken back now; the LPAR keeps "
                                            "{} assigned (storage.shrink gives it back)",
                                            request.lpar, request.mib, request.timeout.count(),
                                            format_mib(new_range.size)));
                }
            }
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
    events_.publish("expand.phase", request.lpar,
                    control::PhaseDone{"plug", microseconds_since(plug_started)});
    result.new_size_mib = new_range.size / kMiB;
    result.plugged_mib = device.plugged_size() / kMiB;
    result.total_us = microseconds_since(accepted);
    spdlog::info("{}: EXPAND done: {} -> {} MiB in {:.1f} ms", request.lpar, result.old_size_mib,
                 result.new_size_mib, as_milliseconds(result.total_us));
    events_.publish("storage.expanded", request.lpar, result);
    return result;
}

control::ResizeResult Hypervisor::run_shrink(const control::ResizeRequest& request) {
    check_resize_request(request, "shrink");
    auto accepted = Clock::now();
    auto operation = begin_storage_operation(request.lpar, "shrink");
    auto lpar = operable_lpar(request.lpar, "shrink");
    auto& device = memory_device_of(*lpar);
    const std::uint64_t less = request.mib * kMiB;
    const std::uint64_t boot = lpar->spec().storage.size;

    ArenaRange old_range;
    {
        std::lock_guard lock(map_mutex_);
        old_range = map_.find(request.lpar).range;
    }
    check_shrinkable(request.lpar, old_range.size, boot, less);
    const std::uint64_t old_target = old_range.size - boot;
    const std::uint64_t target = old_target - less;
    device.set_requested_size(target);
    spdlog::info("{}: shrink by {} MiB: waiting for the guest to unplug the top", request.lpar,
                 request.mib);
    // The guest chooses which blocks it gives back; only the top can leave the LPAR's range.
    const auto unplug_started = Clock::now();
    const PluggedProgress unplug_progress = [&](std::uint64_t plugged) {
        const std::uint64_t done = plugged < old_target ? old_target - plugged : 0;
        events_.publish("shrink.progress", request.lpar,
                        control::UnplugAdvanced{std::min(done, less) / kMiB, request.mib});
    };
    auto deadline = Clock::now() + request.timeout;
    bool released = false;
    while (Clock::now() < deadline && !shutting_down()) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
        if (wait_for_plugged(device, target, std::max(left, std::chrono::milliseconds(1)), *this,
                             unplug_progress)) {
            if (device.plugged_range_is_prefix()) {
                released = true;
                break;
            }
            // The guest reached the size but kept part of the top (Linux picks the blocks it
            // unplugs): wait_for_plugged answers at once now, so look again a little later
            // instead of spinning until the deadline with the operation lock held.
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
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
    events_.publish("shrink.phase", request.lpar,
                    control::PhaseDone{"unplug", microseconds_since(unplug_started)});
    const auto remove_started = Clock::now();
    // The top leaves the window only while the LPAR is quiesced: a device that passed its
    // bounds check just before must not find the page gone (vCPUs paused, devices drained).
    {
        Quiesce stop(*lpar, request.timeout);
        if (!stop.drained()) {
            device.set_requested_size(old_target);
            throw Error(ErrorKind::Busy,
                        fmt::format("{}: shrink abandoned: device(s) still busy after {} ms: {}; "
                                    "its storage stays {}",
                                    request.lpar, request.timeout.count(), stop.busy_names(),
                                    format_mib(old_range.size)));
        }
        // The guest may have plugged again since: checked once more with everything stopped.
        const bool still_released =
            device.plugged_size() == target && device.plugged_range_is_prefix();
        try {
            if (!still_released)
                throw Error(ErrorKind::Busy, "the guest plugged part of the top again");
            fault::point("shrink.unmap");
            device.set_usable_region_size(usable_extent(device, target));
            lpar->window().shrink(less);
        } catch (const std::exception& e) {
            if (lpar->window().storage_size() != old_range.size) {
                stop.at_risk(fmt::format("{}: shrink failed while unmapping the top ({})",
                                         request.lpar, e.what()));
                throw;  // the guard fences the LPAR
            }
            device.set_usable_region_size(usable_extent(device, old_target));
            device.set_requested_size(old_target);  // the guest plugs back what it gave up
            throw Error(dynamic_cast<const Error*>(&e) ? dynamic_cast<const Error&>(e).kind()
                                                       : ErrorKind::System,
                        fmt::format("{}: shrink failed ({}); its storage stays {}", request.lpar,
                                    e.what(), format_mib(old_range.size)));
        }
    }
    const ArenaRange freed{ArenaOffset{old_range.end() - less}, less};
    {
        std::lock_guard lock(map_mutex_);
        map_.resize(request.lpar, old_range.size - less);
    }
    events_.publish("shrink.phase", request.lpar,
                    control::PhaseDone{"remove", microseconds_since(remove_started)});
    const auto scrub_started = Clock::now();
    scrub(arena_, keys_, freed);  // nothing of this guest may reach the next owner
    events_.publish("shrink.phase", request.lpar,
                    control::PhaseDone{"scrub", microseconds_since(scrub_started)});

    control::ResizeResult result;
    result.lpar = request.lpar;
    result.old_size_mib = old_range.size / kMiB;
    result.new_size_mib = (old_range.size - less) / kMiB;
    result.plugged_mib = device.plugged_size() / kMiB;
    result.total_us = microseconds_since(accepted);
    spdlog::info("{}: shrink done: {} -> {} MiB, {} scrubbed", request.lpar, result.old_size_mib,
                 result.new_size_mib, format_range_mib(freed.start.value, freed.size));
    events_.publish("storage.shrunk", request.lpar, result);
    return result;
}

control::GrowResult Hypervisor::grow(const control::ResizeRequest& request,
                                     control::MvstorMode mode) {
    check_resize_request(request, "grow");
    {
        // Refuse an LPAR that cannot grow before moving anybody for it.
        auto lpar = operable_lpar(request.lpar, "grow");
        memory_device_of(*lpar);
        std::lock_guard lock(map_mutex_);
        check_within_maximum(request.lpar, map_.find(request.lpar).range.size, request.mib * kMiB,
                             lpar->window().size());
    }
    control::GrowResult result;
    result.plan = make_room(request.lpar, request.mib, mode);
    result.expansion = expand(request);
    return result;
}

}  // namespace lparvisor
