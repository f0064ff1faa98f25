// storage.grow planning: "give LPAR1 64 MiB more". Finds the cheapest sequence of MVSTORs of
// OTHER LPARs after which the storage directly above the growing LPAR (from its end, for the
// extra size) is free, so that the patent's EXPAND (claim 6) can follow. The growing LPAR
// itself never moves (it keeps running; only its neighbours pay a pause).
//
// Cost model: bytes copied, i.e. the sum of the moved LPARs' sizes, one size per move: an
// MVSTOR copies the whole LPAR however far it goes. Ties are broken by fewer moves, then by the
// shorter total distance (Fig. 3A: LPAR2 128 -> 192, not 128 -> 252).
//
// Every step is a valid MVSTOR at its point of the sequence: inside main storage, 2 MiB
// aligned, overlapping no other LPAR of the layout at that moment (overlapping its own old
// range is fine: the copy runs in the overlap-safe order). Replaying the steps on a StorageMap
// with StorageMap::move succeeds.
//
// Algorithm (see planner.cpp for the argument):
//  1. Exact feasibility: a plan exists iff the window fits inside main storage and the other
//     LPARs can be split between the storage below the growing LPAR and the storage above the
//     window (a subset-sum over their sizes). Otherwise the result says what is missing.
//  2. A* over layouts (uniform-cost search with an admissible, consistent heuristic: the LPARs
//     still in the window must each move at least once more). A step moves one LPAR to an
//     origin where it is packed against something: main storage's start or end, the window's
//     upper edge, or the start or end of another LPAR in the current layout.
//  3. Pruned by the cost of a constructive plan (push the chain above the window up just far
//     enough). The search stops after kMaxLayouts layouts; then that constructive plan is
//     returned with a reason saying it may not be the cheapest (not seen for the layouts of a
//     16-LPAR machine in the tests, but a bound, not a proof).
// Limits: exact within the candidate set above; tests/unit/test_planner.cpp checks the result
// against an exhaustive search over all aligned origins on many random small layouts.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "storage/storage_map.hpp"

namespace lparvisor {

struct PlanStep {
    std::string lpar;
    ArenaOffset from;         // origin before the step
    ArenaOffset to;           // origin after the step
    std::uint64_t bytes = 0;  // copied by this step (the LPAR's size)
};

struct GrowPlan {
    bool possible = false;
    std::vector<PlanStep> steps;  // in order; empty when the storage above is already free
    std::uint64_t bytes_copied = 0;
    std::string reason;  // why not (with what is missing), or a note on the plan; may be empty
};

// `areas` is the current layout (as StorageMap::areas(); validated like StorageMap::add, which
// throws on a bad layout). Throws NotFound for an unknown `lpar`, InvalidArgument for
// `extra_bytes` 0 or not a multiple of 2 MiB.
GrowPlan plan_grow(std::uint64_t main_storage, const std::vector<StorageArea>& areas,
                   const std::string& lpar, std::uint64_t extra_bytes);

}  // namespace lparvisor
