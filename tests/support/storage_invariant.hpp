// The storage invariant a test checks after every operation that may change who owns what
// (MVSTOR, EXCHANGE, EXPAND, shrink, lifecycle), refused, cancelled or carried out:
//  - every row of the storage map lies inside main storage and no two rows overlap (an LPAR in
//    state "failed", fenced after an operation could not be undone, may hold two rows: all rows
//    of one name are its holding);
//  - every 2 MiB unit of an active LPAR's guest window below its storage size maps into that
//    LPAR's own holding, so no guest reaches storage it does not own and no free gap is mapped
//    (the next activation never lands on storage someone still maps); an LPAR that is not
//    failed holds exactly one row and its window maps that row whole, in order;
//  - every LPAR with storage is running, stopped or failed (a failed one says why).
#pragma once

#include <string>
#include <vector>

#include "lpar/hypervisor.hpp"

namespace lparvisor::test {

// Catch2 REQUIREs; each failure's INFO says what broke and shows the storage map.
void require_storage_invariant(Hypervisor& hv);

// The LPARs that list() shows in state "failed".
std::vector<std::string> failed_lpars(Hypervisor& hv);

}  // namespace lparvisor::test
