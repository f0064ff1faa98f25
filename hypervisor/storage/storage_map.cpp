#include "storage/storage_map.hpp"

#include <algorithm>

#include "util/error.hpp"

namespace lparvisor {

StorageMap::StorageMap(std::uint64_t main_storage_bytes) : total_(main_storage_bytes) {
}

std::uint64_t StorageMap::free_bytes() const {
    std::uint64_t used = 0;
    for (const auto& area : areas_) used += area.range.size;
    return total_ - used;
}

bool StorageMap::contains(const std::string& lpar) const {
    return std::any_of(areas_.begin(), areas_.end(),
                       [&](const StorageArea& a) { return a.lpar == lpar; });
}

const StorageArea& StorageMap::find(const std::string& lpar) const {
    for (const auto& area : areas_)
        if (area.lpar == lpar) return area;
    std::string known;
    for (const auto& area : areas_) known += (known.empty() ? "" : ", ") + area.lpar;
    throw Error(ErrorKind::NotFound,
                "unknown LPAR '" + lpar + "' (defined: " + (known.empty() ? "none" : known) + ")");
}

std::optional<StorageArea> StorageMap::first_overlap(ArenaRange range,
                                                     const std::string& except) const {
    std::optional<StorageArea> first;
    for (const auto& area : areas_) {
        if (area.lpar == except || !area.range.overlaps(range)) continue;
        if (!first || area.range.start < first->range.start) first = area;
    }
    return first;
}

void StorageMap::check_placement(const std::string& lpar, ArenaRange range,
                                 const char* what) const {
    if (range.size == 0) throw Error(ErrorKind::InvalidArgument, lpar + ": size must be > 0");
    if (range.size % kOriginAlignment != 0)
        throw Error(ErrorKind::InvalidArgument,
                    lpar + ": size " + format_mib(range.size) + " is not a multiple of 2 MiB");
    if (range.start.value % kOriginAlignment != 0)
        throw Error(ErrorKind::InvalidArgument, lpar + ": origin " + format_mib(range.start.value) +
                                                    " is not a multiple of 2 MiB");
    if (range.start.value >= total_ || range.size > total_ - range.start.value)
        throw Error(ErrorKind::Refused,
                    lpar + ": " + what + " " + format_range_mib(range.start.value, range.size) +
                        " ends beyond main storage (" + format_mib(total_) + ")");
    if (auto other = first_overlap(range, lpar))
        throw Error(ErrorKind::Refused,
                    lpar + ": " + what + " " + format_range_mib(range.start.value, range.size) +
                        " overlaps " + other->lpar + " at " +
                        format_range_mib(other->range.start.value, other->range.size));
}

void StorageMap::add(const std::string& lpar, ArenaRange range) {
    if (lpar.empty()) throw Error(ErrorKind::InvalidArgument, "an LPAR needs a name");
    if (contains(lpar))
        throw Error(ErrorKind::InvalidArgument, lpar + ": an LPAR of that name already exists");
    check_placement(lpar, range, "area");
    areas_.push_back({lpar, range});
}

void StorageMap::remove(const std::string& lpar) {
    find(lpar);
    std::erase_if(areas_, [&](const StorageArea& a) { return a.lpar == lpar; });
}

void StorageMap::hold(const std::string& lpar, ArenaRange range) {
    find(lpar);
    if (range.size == 0) return;
    if (range.start.value >= total_ || range.size > total_ - range.start.value)
        throw Error(ErrorKind::Refused, lpar + ": cannot hold " +
                                            format_range_mib(range.start.value, range.size) +
                                            ": beyond main storage");
    if (auto other = first_overlap(range, lpar))
        throw Error(ErrorKind::Refused, lpar + ": cannot hold " +
                                            format_range_mib(range.start.value, range.size) +
                                            ": overlaps " + other->lpar);
    // Merge with every own area it overlaps or touches (a hull stays inside what is held:
    // nothing of another LPAR lies between two touching ranges).
    ArenaRange merged = range;
    bool changed = true;
    while (changed) {
        changed = false;
        for (auto it = areas_.begin(); it != areas_.end(); ++it) {
            if (it->lpar != lpar) continue;
            const bool touches =
                it->range.start.value <= merged.end() && merged.start.value <= it->range.end();
            if (!touches) continue;
            const std::uint64_t start = std::min(it->range.start.value, merged.start.value);
            const std::uint64_t end = std::max(it->range.end(), merged.end());
            merged = {ArenaOffset{start}, end - start};
            areas_.erase(it);
            changed = true;
            break;
        }
    }
    areas_.push_back({lpar, merged});
}

std::vector<ArenaRange> StorageMap::ranges_of(const std::string& lpar) const {
    std::vector<ArenaRange> ranges;
    for (const auto& area : areas_)
        if (area.lpar == lpar) ranges.push_back(area.range);
    std::sort(ranges.begin(), ranges.end(),
              [](const ArenaRange& a, const ArenaRange& b) { return a.start < b.start; });
    return ranges;
}

ArenaRange StorageMap::check_move(const std::string& lpar, ArenaOffset new_origin) const {
    const auto& area = find(lpar);
    if (new_origin == area.range.start)
        throw Error(
            ErrorKind::InvalidArgument,
            lpar + " is already at origin " + format_mib(new_origin.value) + ": nothing to move");
    ArenaRange target{new_origin, area.range.size};
    check_placement(lpar, target, "target");
    return target;
}

void StorageMap::move(const std::string& lpar, ArenaOffset new_origin) {
    ArenaRange target = check_move(lpar, new_origin);
    for (auto& area : areas_)
        if (area.lpar == lpar) area.range = target;
}

ArenaRange StorageMap::check_resize(const std::string& lpar, std::uint64_t new_size) const {
    ArenaRange target{find(lpar).range.start, new_size};
    check_placement(lpar, target, "grown area");
    return target;
}

void StorageMap::resize(const std::string& lpar, std::uint64_t new_size) {
    ArenaRange target = check_resize(lpar, new_size);
    for (auto& area : areas_)
        if (area.lpar == lpar) area.range = target;
}

void StorageMap::reassign(const std::string& a, ArenaOffset a_origin, const std::string& b,
                          ArenaOffset b_origin) {
    auto saved = areas_;
    ArenaRange a_range{a_origin, find(a).range.size};
    ArenaRange b_range{b_origin, find(b).range.size};
    std::erase_if(areas_, [&](const StorageArea& x) { return x.lpar == a || x.lpar == b; });
    try {
        add(a, a_range);
        add(b, b_range);
    } catch (...) {
        areas_ = std::move(saved);
        throw;
    }
}

std::vector<StorageRow> StorageMap::rows() const {
    auto sorted = areas_;
    std::sort(sorted.begin(), sorted.end(), [](const StorageArea& a, const StorageArea& b) {
        return a.range.start < b.range.start;
    });
    std::vector<StorageRow> rows;
    for (std::size_t i = 0; i < sorted.size(); ++i) {
        std::uint64_t next = i + 1 < sorted.size() ? sorted[i + 1].range.start.value : total_;
        rows.push_back({sorted[i].lpar, sorted[i].range.start, sorted[i].range.size,
                        next - sorted[i].range.end()});
    }
    return rows;
}

}  // namespace lparvisor
