// The patent's resource managing section: which LPAR owns which range of main storage, and the
// adequacy check of step 203 (inside main storage, aligned, overlapping no other LPAR).
// Not thread-safe: the Hypervisor guards it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "storage/address.hpp"

namespace lparvisor {

struct StorageArea {
    std::string lpar;
    ArenaRange range;
};

// One line of the Fig. 3A table.
struct StorageRow {
    std::string lpar;
    ArenaOffset origin;
    std::uint64_t size = 0;  // bytes
    std::uint64_t gap = 0;   // free bytes up to the next LPAR or the end of main storage
};

class StorageMap {
  public:
    explicit StorageMap(std::uint64_t main_storage_bytes);

    std::uint64_t main_storage() const noexcept { return total_; }
    std::uint64_t free_bytes() const;

    // Adds an area; throws Error naming the problem (empty, misaligned, outside, overlap,
    // duplicate name). The map is unchanged on error.
    void add(const std::string& lpar, ArenaRange range);
    void remove(const std::string& lpar);  // every area the LPAR holds

    // A fenced LPAR (one whose storage operation could neither complete nor be undone) keeps
    // every range it may occupy until it is deactivated: `range` joins its holding, merged with
    // an area of its own that it overlaps or touches, else as a second area of the same name.
    // Throws, changing nothing, if `range` is outside main storage or overlaps another LPAR.
    void hold(const std::string& lpar, ArenaRange range);
    // Every range the LPAR holds (one, or two while it is fenced half-moved), by origin.
    std::vector<ArenaRange> ranges_of(const std::string& lpar) const;

    const StorageArea& find(const std::string& lpar) const;  // throws NotFound with the known names
    bool contains(const std::string& lpar) const;

    // Step 203: the range the LPAR would occupy at `new_origin`; throws Error naming the problem.
    ArenaRange check_move(const std::string& lpar, ArenaOffset new_origin) const;
    void move(const std::string& lpar, ArenaOffset new_origin);  // check_move, then commit

    // EXPAND / shrink (claim 6): the LPAR keeps its origin and ends at origin + new_size.
    // check_resize throws, naming the neighbour or the end of main storage, if it cannot.
    ArenaRange check_resize(const std::string& lpar, std::uint64_t new_size) const;
    void resize(const std::string& lpar, std::uint64_t new_size);

    // Gives `a` and `b` new origins at once (EXCHANGE); throws, changing nothing, if the result
    // would be invalid.
    void reassign(const std::string& a, ArenaOffset a_origin, const std::string& b,
                  ArenaOffset b_origin);

    std::vector<StorageRow> rows() const;  // sorted by origin
    std::vector<StorageArea> areas() const { return areas_; }

    // The first area other than `except` that overlaps `range`, if any.
    std::optional<StorageArea> first_overlap(ArenaRange range, const std::string& except) const;

  private:
    void check_placement(const std::string& lpar, ArenaRange range, const char* what) const;

    std::uint64_t total_;
    std::vector<StorageArea> areas_;
};

}  // namespace lparvisor
