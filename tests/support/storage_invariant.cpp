#include "support/storage_invariant.hpp"

#include <algorithm>
#include <map>
#include <set>
#include <sstream>

#include <catch2/catch.hpp>

#include "util/error.hpp"

namespace lparvisor::test {

namespace {

std::string describe(const std::vector<StorageRow>& rows, const control::SystemStatus& status) {
    std::ostringstream out;
    out << "storage map (main storage " << status.main_storage_mib << " MiB):\n";
    for (const auto& row : rows)
        out << "  " << row.lpar << " at " << row.origin.value / kMiB << "-"
            << (row.origin.value + row.size) / kMiB << " MiB (" << row.size / kMiB << " MiB, gap "
            << row.gap / kMiB << " MiB)\n";
    out << "LPARs:\n";
    for (const auto& l : status.lpars)
        out << "  " << l.name << ": " << l.state << (l.reason.empty() ? "" : " (" + l.reason + ")")
            << (l.has_storage ? "" : ", no storage") << "\n";
    return out.str();
}

bool inside(const StorageRow& row, ArenaOffset offset, std::uint64_t length) {
    return row.origin <= offset && offset + length <= row.origin + row.size;
}

}  // namespace

void require_storage_invariant(Hypervisor& hv) {
    const auto status = hv.list();
    const auto rows = hv.storage_table();
    const std::uint64_t main_storage = status.main_storage_mib * kMiB;
    INFO(describe(rows, status));

    // 1. Rows inside main storage, 2 MiB units, no two overlapping (rows come sorted by origin,
    // but do not rely on it).
    auto sorted = rows;
    std::sort(sorted.begin(), sorted.end(),
              [](const StorageRow& a, const StorageRow& b) { return a.origin < b.origin; });
    std::map<std::string, std::vector<StorageRow>> holding;
    for (std::size_t i = 0; i < sorted.size(); ++i) {
        const auto& row = sorted[i];
        INFO("row " << row.lpar << " at " << row.origin.value << " bytes, size " << row.size);
        REQUIRE(row.size > 0);
        REQUIRE(row.origin.value % kOriginAlignment == 0);
        REQUIRE(row.size % kOriginAlignment == 0);
        REQUIRE(row.origin.value < main_storage);
        REQUIRE(row.size <= main_storage - row.origin.value);  // inside main storage, no overflow
        if (i > 0) {
            const auto& below = sorted[i - 1];
            INFO("overlaps the row below: " << below.lpar << " at " << below.origin.value / kMiB
                                            << "-" << (below.origin.value + below.size) / kMiB
                                            << " MiB");
            REQUIRE(below.origin + below.size <= row.origin);
        }
        holding[row.lpar].push_back(row);
    }

    // 2. States, and who holds rows.
    std::set<std::string> listed;
    for (const auto& l : status.lpars) {
        listed.insert(l.name);
        INFO("LPAR " << l.name << " state '" << l.state << "' reason '" << l.reason << "'");
        if (!l.has_storage) {
            REQUIRE(l.state == "defined");
            REQUIRE(holding.count(l.name) == 0);  // a defined LPAR owns no storage
            continue;
        }
        const bool known_state =
            l.state == "running" || l.state == "stopped" || l.state == "failed";
        REQUIRE(known_state);
        if (l.state == "failed") REQUIRE_FALSE(l.reason.empty());
        REQUIRE(holding.count(l.name) == 1);
        if (l.state != "failed") {
            INFO("an LPAR that is not failed holds exactly one row");
            REQUIRE(holding[l.name].size() == 1);
        } else {
            INFO("a failed LPAR holds at most two rows");
            REQUIRE(holding[l.name].size() <= 2);
        }
    }
    for (const auto& [name, own] : holding) {
        INFO("the map has rows for " << name << ", which list() does not show");
        REQUIRE(listed.count(name) == 1);
    }

    // 3. Every guest window maps only its own holding: unit by unit.
    for (const auto& l : status.lpars) {
        if (!l.has_storage) continue;
        const auto& own = holding[l.name];
        Lpar* lpar = nullptr;
        try {
            lpar = &hv.lpar(l.name);
        } catch (const Error& e) {
            INFO(l.name << " is " << l.state << " with storage, but hv.lpar() says: " << e.what());
            // A failed LPAR may have lost its VM (nothing maps its holding then); any other
            // LPAR with storage must have one.
            REQUIRE(l.state == "failed");
            continue;
        }
        const GuestWindow& window = lpar->window();
        const std::uint64_t storage = window.storage_size();
        INFO(l.name << ": window storage size " << storage / kMiB << " MiB");
        REQUIRE(storage % kOriginAlignment == 0);
        std::uint64_t held = 0;
        for (const auto& row : own) held += row.size;
        REQUIRE(storage <= held);
        const bool whole = l.state != "failed";
        if (whole) REQUIRE(storage == own.front().size);
        for (std::uint64_t unit = 0; unit * kOriginAlignment < storage; ++unit) {
            const std::uint64_t gpa = unit * kOriginAlignment;
            const ArenaOffset offset = window.arena_offset_of(GuestPhysAddr{gpa});
            INFO(l.name << ": guest unit " << unit << " (guest " << gpa / kMiB
                        << " MiB) maps main storage at " << offset.value << " bytes ("
                        << offset.value / kMiB << " MiB)");
            const bool own_unit = std::any_of(own.begin(), own.end(), [&](const StorageRow& r) {
                return inside(r, offset, kOriginAlignment);
            });
            REQUIRE(own_unit);
            if (whole) {
                INFO("expected the window to map its row in order: "
                     << own.front().origin.value / kMiB << " MiB + unit");
                REQUIRE(offset == own.front().origin + gpa);
            }
        }
    }
}

std::vector<std::string> failed_lpars(Hypervisor& hv) {
    std::vector<std::string> failed;
    for (const auto& l : hv.list().lpars)
        if (l.state == "failed") failed.push_back(l.name);
    return failed;
}

}  // namespace lparvisor::test
