// The only way hypervisor code touches an LPAR's RAM. Every access is checked for bounds and
// overflow (address + length) against that LPAR's storage size, so no guest-supplied address
// can reach host memory or another LPAR's storage.
//
// The view points at the LPAR's guest window (see GuestWindow), whose host address never
// changes when the LPAR moves: MVSTOR re-maps the window onto the new origin underneath. So each
// device keeps the view it was built with for life; none keeps a span across requests.
//
// Writes are marked in the device dirty log after they land, never before (see DeviceDirtyLog):
// write() copies and then marks, store_release() stores and then marks, and a device that fills
// a buffer itself takes a GuestWriteSpan, which marks when it is released. GuestMemory offers no
// other way to write.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "storage/address.hpp"
#include "storage/arena.hpp"
#include "storage/dirty_bitmap.hpp"
#include "util/mapping.hpp"

namespace lparvisor {

// Pages the hypervisor's own code wrote into guest memory (devices, paravirtual requests): KVM's
// dirty log only sees the guest's writes, so a live relocation ORs this in (as Firecracker and
// Cloud Hypervisor do).
//
// The rule: a page is marked AFTER its bytes are written, never when a buffer is handed out (as
// rust-vmm vm-memory marks after the copy). A live relocation harvests and re-copies while the
// devices run. Were the mark first, a harvest between the mark and the write would clear the
// bit and copy the old bytes, and no later harvest would see the page again: the guest would
// lose the device's write. Marked after, a harvest in between only misses a write that has not
// happened yet, and a later one (at the latest the final stop's, which follows the device
// drain) sees it. GuestMemory enforces the order: its writable ranges are GuestWriteSpans,
// which mark when they are released.
//
// Marking is lock-free and costs one relaxed load while tracking is off. A mark is a release
// and a harvest an acquire, so whoever harvests a bit also sees the bytes written before it.
class DeviceDirtyLog {
  public:
    using HandOutHook = std::function<void(GuestPhysAddr gpa, std::uint64_t length)>;

    explicit DeviceDirtyLog(std::uint64_t bytes) : words_((bytes / 4096 + 63) / 64) {}
    void set_tracking(bool on) { tracking_.store(on, std::memory_order_seq_cst); }
    // [gpa, gpa + length) has been written: call only once the bytes are in guest memory.
    void mark(GuestPhysAddr gpa, std::uint64_t length) noexcept {
        if (length == 0) return;
        // The bytes written before this mark must be visible before tracking_ is read: a write
        // that sees tracking off is then certain to be in memory when the relocation, which
        // turns tracking on first, takes its first copy (x86 may otherwise let the load pass the
        // stores still in the store buffer). One fence per written buffer, not per page.
        std::atomic_thread_fence(std::memory_order_seq_cst);
        if (!tracking_.load(std::memory_order_relaxed)) return;
        for (std::uint64_t page = gpa.value / 4096; page <= (gpa.value + length - 1) / 4096; ++page)
            words_[page / 64].fetch_or(std::uint64_t{1} << (page % 64), std::memory_order_release);
    }
    // ORs the marked pages into `bitmap` and clears them.
    void harvest_into(DirtyBitmap& bitmap) {
        auto words = bitmap.words();
        for (std::size_t i = 0; i < words_.size() && i < words.size(); ++i)
            words[i] |= words_[i].exchange(0, std::memory_order_acquire);
    }

    // Test seam: `hook` runs on the device's thread whenever GuestMemory hands out a writable
    // range, before anything is written into it, so a test can harvest (or block) right there.
    // Set it before any device uses the log and leave it; unset, as in every normal run, it
    // costs one acquire load (a plain load on x86).
    void set_hand_out_hook_for_testing(HandOutHook hook) {
        hand_out_hook_ = std::move(hook);
        hook_set_.store(static_cast<bool>(hand_out_hook_), std::memory_order_release);
    }
    void handed_out(GuestPhysAddr gpa, std::uint64_t length) const {
        if (hook_set_.load(std::memory_order_acquire)) hand_out_hook_(gpa, length);
    }

  private:
    std::atomic<bool> tracking_{false};
    std::vector<std::atomic<std::uint64_t>> words_;
    std::atomic<bool> hook_set_{false};
    HandOutHook hand_out_hook_;
};

// A range of guest memory for a device to fill. It marks the range in the device dirty log when
// it is released (destroyed, or overwritten by a move-assignment), i.e. after the device wrote
// it: keep it alive until the last byte has landed, and no longer than the request (like any
// span into guest memory, it is valid only while the LPAR's window exists). Move-only, so the
// duty to mark has exactly one owner; a moved-from span is empty and marks nothing.
class GuestWriteSpan {
  public:
    GuestWriteSpan(const GuestWriteSpan&) = delete;
    GuestWriteSpan& operator=(const GuestWriteSpan&) = delete;
    GuestWriteSpan(GuestWriteSpan&& other) noexcept
        : bytes_(std::exchange(other.bytes_, {})),
          address_(other.address_),
          dirty_(std::exchange(other.dirty_, nullptr)) {}
    GuestWriteSpan& operator=(GuestWriteSpan&& other) noexcept {
        if (this != &other) {
            release();
            bytes_ = std::exchange(other.bytes_, {});
            address_ = other.address_;
            dirty_ = std::exchange(other.dirty_, nullptr);
        }
        return *this;
    }
    ~GuestWriteSpan() { release(); }

    std::span<std::uint8_t> bytes() const noexcept { return bytes_; }
    std::uint8_t* data() const noexcept { return bytes_.data(); }
    std::size_t size() const noexcept { return bytes_.size(); }

  private:
    friend class GuestMemory;
    GuestWriteSpan(std::span<std::uint8_t> bytes, GuestPhysAddr address,
                   DeviceDirtyLog* dirty) noexcept
        : bytes_(bytes), address_(address), dirty_(dirty) {}
    void release() noexcept {
        if (dirty_) dirty_->mark(address_, bytes_.size());
        dirty_ = nullptr;
    }

    std::span<std::uint8_t> bytes_;
    GuestPhysAddr address_;
    DeviceDirtyLog* dirty_;  // the window's, which outlives every span; null: nothing to mark
};

class GuestMemory {
  public:
    GuestMemory() = default;
    GuestMemory(std::uint8_t* base, std::uint64_t size, std::shared_ptr<DeviceDirtyLog> dirty = {},
                std::shared_ptr<const std::atomic<std::uint64_t>> accessible = {})
        : base_(base), size_(size), dirty_(std::move(dirty)), accessible_(std::move(accessible)) {}

    // The LPAR's storage now: its boot storage plus what EXPAND added. An expandable LPAR's
    // view shares this limit with its window, so a shrink takes effect for every device at once.
    std::uint64_t size() const noexcept {
        return accessible_ ? std::min(size_, accessible_->load(std::memory_order_acquire)) : size_;
    }
    bool contains(GuestPhysAddr address, std::uint64_t length) const noexcept {
        const std::uint64_t limit = size();
        return address.value <= limit && length <= limit - address.value;
    }

    // [address, address + length) to write into, or nullopt if any byte is outside the LPAR's
    // storage. The range is marked in the device dirty log when the span is released, after the
    // caller has filled it (see DeviceDirtyLog for why never before).
    [[nodiscard]] std::optional<GuestWriteSpan> write_span(GuestPhysAddr address,
                                                           std::uint64_t length) const {
        auto bytes = view(address, length);
        if (!bytes) return std::nullopt;
        if (dirty_) dirty_->handed_out(address, length);
        return GuestWriteSpan(*bytes, address, dirty_.get());
    }

    // The same range for reading only: not marked written.
    [[nodiscard]] std::optional<std::span<const std::uint8_t>> read_slice(
        GuestPhysAddr address, std::uint64_t length) const {
        auto bytes = view(address, length);
        if (!bytes) return std::nullopt;
        return std::span<const std::uint8_t>(bytes->data(), bytes->size());
    }

    [[nodiscard]] bool read(GuestPhysAddr address, std::span<std::uint8_t> out) const {
        auto src = view(address, out.size());
        if (!src) return false;
        std::memcpy(out.data(), src->data(), out.size());
        return true;
    }
    // Copies first; the range is marked when `dst` is released, after the copy.
    [[nodiscard]] bool write(GuestPhysAddr address, std::span<const std::uint8_t> in) const {
        auto dst = write_span(address, in.size());
        if (!dst) return false;
        std::memcpy(dst->data(), in.data(), in.size());
        return true;
    }

    template <typename T>
    [[nodiscard]] std::optional<T> read_object(GuestPhysAddr address) const {
        static_assert(std::is_trivially_copyable_v<T>);
        T value;
        // SAFETY: T is trivially copyable; read() checks the guest range.
        if (!read(address, {reinterpret_cast<std::uint8_t*>(&value), sizeof(T)}))
            return std::nullopt;
        return value;
    }
    template <typename T>
    [[nodiscard]] bool write_object(GuestPhysAddr address, const T& value) const {
        static_assert(std::is_trivially_copyable_v<T>);
        // SAFETY: T is trivially copyable; write() checks the guest range (and marks after).
        return write(address, {reinterpret_cast<const std::uint8_t*>(&value), sizeof(T)});
    }

    // Shared ring fields (a virtqueue's avail.idx, used.idx, flags): a 2- or 4-byte load with
    // acquire / store with release semantics, so that the accesses ordered after an acquire (or
    // before a release) by the code are ordered for the other side too, as Linux's
    // virt_load_acquire / virt_store_release and QEMU's qatomic_*_acquire/release do. Bounds are
    // checked like read() / write(); nullopt / false if any byte is outside the LPAR's storage.
    // Atomic (std::atomic_ref) when the host address is naturally aligned, which every caller's
    // guest address is made to be (the virtqueue refuses misaligned rings on activation) and
    // the window's host base is page aligned; otherwise a plain copy behind a fence of the
    // same strength (still ordered, just not single-copy atomic). store_release marks the
    // device dirty log after the store, like write().
    template <typename T>
    [[nodiscard]] std::optional<T> load_acquire(GuestPhysAddr address) const {
        static_assert(std::is_same_v<T, std::uint16_t> || std::is_same_v<T, std::uint32_t>,
                      "2- or 4-byte unsigned ring fields only");
        auto src = view(address, sizeof(T));
        if (!src) return std::nullopt;
        if (aligned_for<T>(src->data()))
            // SAFETY: in range and aligned for T; guest memory is never a const object.
            return std::atomic_ref<T>(*reinterpret_cast<T*>(src->data()))
                .load(std::memory_order_acquire);
        T value;
        std::memcpy(&value, src->data(), sizeof(T));
        std::atomic_thread_fence(std::memory_order_acquire);
        return value;
    }
    template <typename T>
    [[nodiscard]] bool store_release(GuestPhysAddr address, T value) const {
        static_assert(std::is_same_v<T, std::uint16_t> || std::is_same_v<T, std::uint32_t>,
                      "2- or 4-byte unsigned ring fields only");
        // The span marks when it is released, after the store (see DeviceDirtyLog).
        auto dst = write_span(address, sizeof(T));
        if (!dst) return false;
        if (aligned_for<T>(dst->data())) {
            // SAFETY: in range and aligned for T.
            std::atomic_ref<T>(*reinterpret_cast<T*>(dst->data()))
                .store(value, std::memory_order_release);
        } else {
            std::atomic_thread_fence(std::memory_order_release);
            std::memcpy(dst->data(), &value, sizeof(T));
        }
        return true;
    }

  private:
    template <typename T>
    static bool aligned_for(const std::uint8_t* host) noexcept {
        // SAFETY: the address as a number, for its alignment only; nothing is dereferenced.
        return reinterpret_cast<std::uintptr_t>(host) % std::atomic_ref<T>::required_alignment == 0;
    }

    std::optional<std::span<std::uint8_t>> view(GuestPhysAddr address, std::uint64_t length) const {
        if (!contains(address, length)) return std::nullopt;
        // SAFETY: contains() proved address + length <= size_ without overflow.
        return std::span<std::uint8_t>(base_ + address.value, length);
    }

    std::uint8_t* base_ = nullptr;
    std::uint64_t size_ = 0;  // the most it can ever be (the window's reservation)
    std::shared_ptr<DeviceDirtyLog> dirty_;
    std::shared_ptr<const std::atomic<std::uint64_t>> accessible_;
};

// An LPAR's guest RAM as one fixed host-virtual window, MAP_SHARED|MAP_FIXED onto its range of
// the arena. The KVM memslot and the devices point at the window; relocation re-maps it onto the
// new origin (KVM follows through its MMU notifier), so neither ever sees a new host address.
class GuestWindow {
  public:
    // Maps `range` at guest-physical 0. `reserve_bytes` (>= range.size, 2 MiB units) is how far
    // the LPAR may grow (EXPAND): the window keeps that much address space, unmapped above the
    // storage, so that growing never moves it.
    GuestWindow(const Arena& arena, ArenaRange range, std::uint64_t reserve_bytes = 0);

    std::uint8_t* host_base() const noexcept { return mapping_.data(); }
    // The reservation: what the KVM memslot covers.
    std::uint64_t size() const noexcept { return mapping_.size(); }
    // The storage mapped now, from guest-physical 0 (boot storage plus expansions).
    std::uint64_t storage_size() const noexcept {
        return accessible_->load(std::memory_order_acquire);
    }
    // Where guest-physical 0 lives in main storage (the LPAR's origin once a move is complete).
    ArenaOffset origin() const noexcept { return units_.front(); }
    // Where a guest-physical address lives in main storage right now (parts of the window point
    // at different places in the middle of a chunked live move). `gpa` must be < storage_size().
    ArenaOffset arena_offset_of(GuestPhysAddr gpa) const noexcept {
        return ArenaOffset{units_[gpa.value / kOriginAlignment].value +
                           gpa.value % kOriginAlignment};
    }
    GuestMemory memory() const noexcept {
        return {mapping_.data(), mapping_.size(), dirty_, accessible_};
    }
    DeviceDirtyLog& device_dirty_log() noexcept { return *dirty_; }

    // Points the whole storage at the arena from `new_origin` on.
    void remap(ArenaOffset new_origin);
    // Points [gpa, +length) (2 MiB aligned) at the arena from `arena_offset` on.
    void remap_part(GuestPhysAddr gpa, std::uint64_t length, ArenaOffset arena_offset);

    // EXPAND: maps `bytes` more right above the storage onto the arena right above the LPAR's
    // range, then lets devices see them. SHRINK: the reverse; devices stop seeing the top first.
    void grow(std::uint64_t bytes);
    void shrink(std::uint64_t bytes);
    // Teardown: devices see no storage any more and the whole window becomes PROT_NONE, so a
    // holder of this LPAR that outlives its deactivation cannot reach the next owner's storage.
    void detach();

  private:
    const Arena& arena_;
    Mapping mapping_;
    std::vector<ArenaOffset> units_;  // arena offset of each 2 MiB unit of the window
    std::shared_ptr<DeviceDirtyLog> dirty_;
    std::shared_ptr<std::atomic<std::uint64_t>> accessible_;
};

}  // namespace lparvisor
