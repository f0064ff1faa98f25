// The daemon's core: main storage (the arena and its storage keys), the storage map, the LPARs
// and their lifecycle, events, and the LPAR controlling section that carries out MVSTOR
// (mvstor.cpp). Implements the control socket's Api.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "control/api.hpp"
#include "devices/console_log.hpp"
#include "devices/device.hpp"
#include "kvm/kvm.hpp"
#include "lpar/config.hpp"
#include "lpar/events.hpp"
#include "lpar/lpar.hpp"
#include "lpar/operation_counters.hpp"
#include "lpar/quiesce.hpp"
#include "storage/arena.hpp"
#include "storage/storage_keys.hpp"
#include "storage/storage_map.hpp"
#include "util/error.hpp"

namespace lparvisor {

struct HypervisorOptions {
    HugePagePolicy huge_pages = HugePagePolicy::Auto;
    std::string default_firmware;  // used by LPARs whose configuration names none
    std::string console_dir;       // when set, each LPAR's serial output also goes to DIR/NAME.log
    // NAME.log's cap: when it would grow past it, it becomes NAME.log.1 and a new one starts.
    std::uint64_t console_max_bytes = ConsoleLog::kDefaultFileMaxBytes;
};

class Hypervisor final : public control::Api {
  public:
    // Creates main storage, defines every configured LPAR and activates (IPLs) the active ones.
    Hypervisor(const SystemConfig& config, const HypervisorOptions& options);
    ~Hypervisor() override;

    control::SystemStatus list() override;
    control::SystemStats stats() override;  // stats.cpp
    control::MvstorResult mvstor(const control::MvstorRequest& request) override;
    control::ConsoleText console(const std::string& lpar, std::optional<std::uint64_t> since,
                                 std::size_t max_bytes) override;
    std::size_t console_write(const std::string& lpar, std::string_view bytes) override;
    // The most recent `max_bytes` of the LPAR's serial output since its IPL (for tests and tools).
    std::string console(const std::string& lpar, std::size_t max_bytes);

    control::LparStatus define(const control::LparDefinition& definition) override;
    control::LparStatus activate(const std::string& lpar) override;
    control::LparStatus stop(const std::string& lpar) override;
    control::LparStatus start(const std::string& lpar) override;
    control::LparStatus reset(const std::string& lpar) override;
    control::LparStatus deactivate(const std::string& lpar) override;
    void remove(const std::string& lpar) override;
    std::string system_config() override;
    void cancel_mvstor(const std::string& lpar) override;
    // The floor of any stop, for the benchmark: stop the LPAR's vCPUs, drain its devices,
    // re-map its window onto the place it already is, resume; nothing copied.
    control::StopTiming empty_stop(const std::string& lpar,
                                   std::chrono::milliseconds drain_timeout);
    std::unique_ptr<control::Subscription> subscribe(control::EventSink sink) override;
    control::ExchangeResult exchange(const control::ExchangeRequest& request) override;
    control::GrowPlanResult plan_grow(const std::string& lpar, std::uint64_t extra_mib) override;
    control::GrowPlanResult make_room(const std::string& lpar, std::uint64_t extra_mib,
                                      control::MvstorMode mode) override;
    control::ResizeResult expand(const control::ResizeRequest& request) override;
    control::ResizeResult shrink(const control::ResizeRequest& request) override;
    control::GrowResult grow(const control::ResizeRequest& request,
                             control::MvstorMode mode) override;

    // SIGTERM: a move before its first stop is cancelled, one past it copies the rest in its
    // stops without pre-copying (bounded by one copy of the LPAR), EXPAND and SHRINK stop
    // waiting for the guest and undo; new storage operations are refused. Returns at once.
    void request_shutdown();
    bool shutting_down() const noexcept { return shutting_down_.load(); }

    // The running LPAR of that name; throws NotFound (unknown) or Refused (only defined).
    Lpar& lpar(const std::string& name);
    const Arena& arena() const noexcept { return arena_; }
    StorageKeys& storage_keys() noexcept { return keys_; }
    std::vector<StorageRow> storage_table() const;

  private:
    struct Record {
        LparConfig definition;
        std::shared_ptr<Lpar> lpar;  // null while only defined
        // Counts this LPAR's IPLs (activate, reset, restart): names the console's offsets, and
        // tells a guest action queued for an earlier IPL that it is too late.
        std::uint64_t ipl = 0;
        // Set while the LPAR owns storage but has no running Lpar: "activating" (storage placed,
        // VM being built) or "deactivating" (VM gone, storage being scrubbed).
        const char* transition = nullptr;
    };
    Record& record(const std::string& name);  // throws NotFound naming the defined LPARs
    // The one way an LPAR gets defined (configuration and lpar.define): refuses one more than
    // kMaxLpars. The caller holds map_mutex_ (or is the constructor).
    void add_record(const LparConfig& definition);
    std::shared_ptr<Lpar> active_lpar(const std::string& name);  // throws if not active
    control::LparStatus status_of(const std::string& name);
    // Places, populates, builds and IPLs; the caller holds storage_operation_mutex_.
    // `restart`: a re-IPL in place, announced with lpar.restart (cause: `reason`).
    void activate_locked(Record& record, const std::string& reason = "activated",
                         bool restart = false);
    void deactivate_locked(Record& record);
    // A clear reset: deactivates and activates again at the same origin (the caller holds
    // storage_operation_mutex_); lpar.restart and lpar.state say `cause`.
    void reset_locked(Record& record, const std::string& cause);

    // The on_reboot / on_poweroff / on_crash actions. The listener (on the vCPU thread that saw
    // the guest's event) publishes lpar.guest_event and, for restart and deactivate, queues the
    // action for the action worker, which takes the storage operation lock like any operator
    // request (a vCPU thread cannot join itself, and must not wait for a relocation).
    struct GuestActionRequest {
        std::string lpar;
        std::uint64_t ipl = 0;  // the IPL whose guest asked: a later one cancels it
        control::GuestAction action = control::GuestAction::Stop;
        std::string cause;  // "guest reboot", ...
    };
    void on_guest_event(const std::string& lpar, std::uint64_t ipl, const LparConfig& definition,
                        GuestEvent event, const std::string& reason);
    void run_guest_actions();
    void carry_out(const GuestActionRequest& request);
    ArenaOffset first_fit(std::uint64_t size) const;  // caller holds map_mutex_
    std::unique_lock<std::mutex> begin_storage_operation(const std::string& lpar, const char* what);

    // The running or stopped LPAR an operation may change; throws Refused for a fenced one.
    std::shared_ptr<Lpar> operable_lpar(const std::string& name, const char* what);

    // The storage operations themselves; the public calls count each one (stats.cpp).
    control::MvstorResult run_mvstor(const control::MvstorRequest& request);
    control::ExchangeResult run_exchange(const control::ExchangeRequest& request);
    control::ResizeResult run_expand(const control::ResizeRequest& request);
    control::ResizeResult run_shrink(const control::ResizeRequest& request);

    // One MVSTOR in progress (mvstor.cpp): shared by the stop-and-copy and the live procedure.
    struct Move;
    struct Chunk;
    struct LiveMove;  // a live move's state from chunk to chunk
    void stop_and_copy(Move& move);
    void live_move(Move& move);
    // live_move's steps: the chunks in the overlap-safe order; the pre-copy rounds of one chunk
    // (returns how many); the stop that copies the rest of it and re-maps it.
    static std::vector<Chunk> plan_chunks(const Move& move);
    unsigned precopy_chunk(LiveMove& live, std::size_t index);
    void move_chunk_in_stop(LiveMove& live, std::size_t index, std::size_t count, bool precopied);
    static std::size_t chunks_per_stop(const LiveMove& live, std::size_t index);
    void populate_target(Move& move);
    // The first stop of a move: from here on it cannot be cancelled. Throws if it was.
    void begin_final_stop(Move& move);
    bool move_cancelled();  // by the operator or by a shutdown
    void throw_if_cancelled(Move& move);
    void stop_for_chunk(Move& move, std::optional<Quiesce>& stop, std::size_t index,
                        std::size_t count);
    [[noreturn]] void roll_back(Move& move, const std::vector<Chunk>& moved,
                                const std::optional<Chunk>& in_stop, std::optional<Quiesce>& stop,
                                const std::exception& cause);
    // Scrubs the target (LPAR whole at its old origin) or holds it (LPAR fenced); the error to
    // throw, saying which.
    Error failed_move(Move& move, const std::exception& cause);

    HypervisorOptions options_;
    const std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
    OperationCounters operation_counters_;
    kvm::System kvm_;
    Arena arena_;
    StorageKeys keys_;
    EventHub events_;
    // Which LPAR has which disk image open (its own lock): a second user is refused by name.
    std::shared_ptr<virtio::DiskUsers> disk_users_;

    // Guards map_, records_ and the MVSTOR bookkeeping below; never held across a copy, an IPL
    // or a vCPU pause, so lpar.list answers during any of them.
    mutable std::mutex map_mutex_;
    StorageMap map_;
    std::list<Record> records_;  // in definition order; a list so references stay valid
    std::string relocating_;     // the LPAR an MVSTOR is moving, shown as "relocating"
    bool cancel_requested_ = false;
    bool final_stop_begun_ = false;
    // Set once by request_shutdown(): operations end early (see there), new ones are refused.
    std::atomic<bool> shutting_down_{false};

    // Serializes operations that change storage ownership (activate, deactivate, reset, remove,
    // MVSTOR, EXCHANGE, EXPAND, shrink, the guest actions' restarts), so a range vacated by one is
    // scrubbed before another can take it.
    std::mutex storage_operation_mutex_;

    // The guest actions waiting for the worker (restart, deactivate), in the order guests asked.
    std::mutex actions_mutex_;
    std::condition_variable actions_changed_;
    std::deque<GuestActionRequest> actions_;
    bool actions_stopping_ = false;
    std::thread action_worker_;  // started last in the constructor, joined first
};

}  // namespace lparvisor
