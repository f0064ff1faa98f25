#include "storage/planner.hpp"

#include <algorithm>
#include <compare>
#include <numeric>
#include <optional>
#include <queue>
#include <string_view>
#include <unordered_map>

#include "util/error.hpp"

namespace lparvisor {

// Why the candidate origins suffice (proof sketch).
// Cost does not depend on how far an LPAR goes, only on which LPARs move how often, so among
// the plans of least cost we may pick one whose coordinates are "as packed as possible". Take
// the coordinates of all placements of such a plan as unknowns: the plan stays valid as long as
// every pair of LPARs present at the same time keeps its order and stays disjoint, every LPAR
// stays inside main storage, and every final position stays out of the window. Those are
// difference constraints, so a vertex of that polyhedron exists and in it every placement is
// tight: it touches 0, the end of main storage, the window's upper edge, or another LPAR. For
// the move just made, the touched LPAR is present at that moment in every case we have met:
// an LPAR placed later "between" two others can be placed as well with the earlier one packed
// against its current neighbour and the later one packed against it. That last step is the part
// of the argument that is not a proof; the unit test checks the planner against an exhaustive
// search over every aligned origin on many random layouts instead.
// Feasibility (step 1 in the header) is exact: every final LPAR lies below the growing one or
// above the window, which gives the subset-sum condition; conversely, compact the LPARs below
// downward, the ones above upward, then move the chosen ones down into the gap below and
// compact the rest upward again (each of those moves is packed, so the search finds a plan).

namespace {

constexpr std::uint64_t kUnit = kOriginAlignment;  // the planner works in 2 MiB units
constexpr std::size_t kMaxLayouts = 200000;

struct Item {
    std::string name;
    std::uint64_t origin = 0;  // units
    std::uint64_t size = 0;    // units
};

// Lexicographic: bytes copied, then moves, then distance. Additive and non-negative, so
// uniform-cost search on it is exact.
struct Cost {
    std::uint64_t bytes = 0;  // units
    std::uint64_t moves = 0;
    std::uint64_t distance = 0;  // units
    auto operator<=>(const Cost&) const = default;
    Cost operator+(const Cost& o) const {
        return {bytes + o.bytes, moves + o.moves, distance + o.distance};
    }
};

using Layout = std::vector<std::uint64_t>;  // origin of each item, units

std::string key_of(const Layout& layout) {
    // SAFETY: the layout's own size() * sizeof(element) bytes, read as chars (which may alias
    // anything) to make a hash key.
    return {reinterpret_cast<const char*>(layout.data()), layout.size() * sizeof(layout[0])};
}

std::string mib(std::uint64_t units) {
    return format_mib(units * kUnit);
}

class Search {
  public:
    Search(std::vector<Item> items, std::size_t grower, std::uint64_t total_units,
           std::uint64_t extra_units)
        : items_(std::move(items)),
          grower_(grower),
          total_(total_units),
          window_lo_(items_[grower].origin + items_[grower].size),
          window_hi_(window_lo_ + extra_units) {}

    bool in_window(std::uint64_t origin, std::uint64_t size) const {
        return origin < window_hi_ && window_lo_ < origin + size;
    }

    // The LPARs still in the window must each move at least once more.
    Cost heuristic(const Layout& layout) const {
        Cost h;
        for (std::size_t i = 0; i < items_.size(); ++i)
            if (in_window(layout[i], items_[i].size)) h = h + Cost{items_[i].size, 1, 0};
        return h;
    }

    bool free_for(const Layout& layout, std::size_t mover, std::uint64_t origin) const {
        std::uint64_t size = items_[mover].size;
        if (origin + size > total_) return false;
        for (std::size_t i = 0; i < items_.size(); ++i)
            if (i != mover && origin < layout[i] + items_[i].size && layout[i] < origin + size)
                return false;
        return true;
    }

    std::vector<std::uint64_t> candidates(const Layout& layout, std::size_t mover) const {
        std::uint64_t size = items_[mover].size;
        std::vector<std::uint64_t> c{0, window_hi_};
        if (total_ >= size) c.push_back(total_ - size);
        for (std::size_t i = 0; i < items_.size(); ++i) {
            if (i == mover) continue;
            c.push_back(layout[i] + items_[i].size);               // packed on top of it
            if (layout[i] >= size) c.push_back(layout[i] - size);  // packed below it
        }
        std::sort(c.begin(), c.end());
        c.erase(std::unique(c.begin(), c.end()), c.end());
        std::erase_if(
            c, [&](std::uint64_t o) { return o == layout[mover] || !free_for(layout, mover, o); });
        return c;
    }

    struct Node {
        Layout layout;
        std::size_t parent;
        std::size_t mover;
        Cost cost;
    };

    // The search's frontier: (f, node index), cheapest f first.
    using Entry = std::pair<Cost, std::size_t>;
    struct Later {
        bool operator()(const Entry& a, const Entry& b) const { return a.first > b.first; }
    };
    using OpenList = std::priority_queue<Entry, std::vector<Entry>, Later>;

    // Adds every layout one move away from node `index` (`layout`, reached at cost `g`) that
    // can still beat `bound` and is new or reached more cheaply than before.
    void expand(std::size_t index, const Layout& layout, const Cost& g, const Cost& bound,
                OpenList& open) {
        for (std::size_t mover = 0; mover < items_.size(); ++mover) {
            if (mover == grower_) continue;
            for (std::uint64_t origin : candidates(layout, mover)) {
                Layout next = layout;
                next[mover] = origin;
                std::uint64_t distance =
                    origin > layout[mover] ? origin - layout[mover] : layout[mover] - origin;
                Cost cost = g + Cost{items_[mover].size, 1, distance};
                Cost estimate = cost + heuristic(next);
                if (estimate.bytes > bound.bytes) continue;
                auto key = key_of(next);
                auto seen = best_.find(key);
                if (seen != best_.end() && seen->second <= cost) continue;
                best_[key] = cost;
                nodes_.push_back({std::move(next), index, mover, cost});
                open.push({estimate, nodes_.size() - 1});
            }
        }
    }

    // Returns the goal node's index, or nothing; `limit_hit` says whether it gave up.
    std::optional<std::size_t> run(const Cost& bound, bool& limit_hit) {
        Layout start(items_.size());
        for (std::size_t i = 0; i < items_.size(); ++i) start[i] = items_[i].origin;
        nodes_.push_back({start, 0, 0, {}});
        best_[key_of(start)] = {};
        OpenList open;
        open.push({heuristic(start), 0});
        limit_hit = false;
        while (!open.empty()) {
            auto [f, index] = open.top();
            open.pop();
            // Copies: expand() adds nodes, which may move nodes_[index].
            Layout layout = nodes_[index].layout;
            Cost g = nodes_[index].cost;
            if (best_[key_of(layout)] < g) continue;  // a cheaper way here was found later
            if (heuristic(layout).moves == 0) return index;
            if (nodes_.size() > kMaxLayouts) {
                limit_hit = true;
                return std::nullopt;
            }
            expand(index, layout, g, bound, open);
        }
        return std::nullopt;
    }

    const Node& node(std::size_t i) const { return nodes_[i]; }

  private:
    std::vector<Item> items_;
    std::size_t grower_;
    std::uint64_t total_;
    std::uint64_t window_lo_;
    std::uint64_t window_hi_;
    std::vector<Node> nodes_;
    std::unordered_map<std::string, Cost> best_;
};

PlanStep step_of(const Item& item, std::uint64_t from, std::uint64_t to) {
    return {item.name, ArenaOffset{from * kUnit}, ArenaOffset{to * kUnit}, item.size * kUnit};
}

// The plan the search must beat: push the LPARs directly above the window up, each packed
// against the next one (or the end of main storage), just as many as needed.
std::optional<std::vector<PlanStep>> push_up_plan(const std::vector<Item>& items,
                                                  std::size_t grower, std::uint64_t total,
                                                  std::uint64_t window_hi) {
    std::uint64_t window_lo = items[grower].origin + items[grower].size;
    std::vector<const Item*> above;
    for (const auto& item : items)
        if (item.origin >= window_lo) above.push_back(&item);
    std::sort(above.begin(), above.end(),
              [](const Item* a, const Item* b) { return a->origin < b->origin; });
    std::uint64_t packed = 0;
    for (std::size_t j = 0; j <= above.size(); ++j) {
        std::uint64_t top = j < above.size() ? above[j]->origin : total;
        if (top >= packed && top - packed >= window_hi) {
            std::vector<PlanStep> steps;
            for (std::size_t i = j; i-- > 0;) {  // top down: each target is already free
                std::uint64_t to = top - above[i]->size;
                if (to != above[i]->origin)
                    steps.push_back(step_of(*above[i], above[i]->origin, to));
                top = to;
            }
            return steps;
        }
        if (j < above.size()) packed += above[j]->size;
    }
    return std::nullopt;
}

// The LPARs in 2 MiB units, in map order, and where the growing one needs its room.
struct GrowSetting {
    std::vector<Item> items;
    std::size_t grower = 0;
    std::uint64_t total = 0;       // main storage
    std::uint64_t below = 0;       // room below the growing LPAR
    std::uint64_t window_hi = 0;   // the end of the room it needs above it
    std::uint64_t room_above = 0;  // from there to the end of main storage
};

GrowSetting grow_setting(const StorageMap& map, const std::string& lpar, std::uint64_t main_storage,
                         std::uint64_t extra_bytes) {
    GrowSetting g;
    for (const auto& area : map.areas()) {
        if (area.lpar == lpar) g.grower = g.items.size();
        g.items.push_back({area.lpar, area.range.start.value / kUnit, area.range.size / kUnit});
    }
    g.total = main_storage / kUnit;
    g.below = g.items[g.grower].origin;
    g.window_hi = g.items[g.grower].origin + g.items[g.grower].size + extra_bytes / kUnit;
    g.room_above = g.total - g.window_hi;
    return g;
}

void check_extra(const std::string& lpar, std::uint64_t extra_bytes) {
    if (extra_bytes == 0)
        throw Error(ErrorKind::InvalidArgument, "grow " + lpar + ": extra storage must be > 0");
    if (extra_bytes % kUnit != 0)
        throw Error(ErrorKind::InvalidArgument, "grow " + lpar + ": extra storage " +
                                                    format_mib(extra_bytes) +
                                                    " is not a multiple of 2 MiB");
}

// Why there is no room at all, whatever moves: the room would end past main storage, or there
// is less free storage than the room. `need` begins the message.
std::optional<std::string> lack_of_room(const StorageMap& map, std::uint64_t main_storage,
                                        std::uint64_t end, std::uint64_t extra_bytes,
                                        const std::string& need) {
    if (end + extra_bytes > main_storage)
        return need + ", but main storage ends at " + format_mib(main_storage) + " (" +
               format_mib(end + extra_bytes - main_storage) + " missing)";
    if (map.free_bytes() < extra_bytes)
        return need + ", but main storage has only " + format_mib(map.free_bytes()) + " free (" +
               format_mib(extra_bytes - map.free_bytes()) + " missing)";
    return std::nullopt;
}

// Exact feasibility: some subset of the other LPARs (sum t) must fit below, the rest above.
// The units missing for the best split; 0 when one fits.
std::uint64_t split_shortfall(const GrowSetting& g) {
    std::uint64_t others = 0;
    for (std::size_t i = 0; i < g.items.size(); ++i)
        if (i != g.grower) others += g.items[i].size;
    std::vector<bool> reachable(others + 1, false);
    reachable[0] = true;
    for (std::size_t i = 0; i < g.items.size(); ++i) {
        if (i == g.grower) continue;
        for (std::uint64_t t = others + 1; t-- > g.items[i].size;)
            if (reachable[t - g.items[i].size]) reachable[t] = true;
    }
    std::uint64_t shortfall = UINT64_MAX;
    for (std::uint64_t t = 0; t <= others; ++t) {
        if (!reachable[t]) continue;
        std::uint64_t missing = (t > g.below ? t - g.below : 0) +
                                (others - t > g.room_above ? others - t - g.room_above : 0);
        shortfall = std::min(shortfall, missing);
    }
    return shortfall;
}

std::string split_refusal(const GrowSetting& g, const std::string& need, const std::string& lpar,
                          std::uint64_t free_bytes, std::uint64_t shortfall) {
    std::string sizes;
    for (std::size_t i = 0; i < g.items.size(); ++i)
        if (i != g.grower)
            sizes += (sizes.empty() ? "" : ", ") + g.items[i].name + " " + mib(g.items[i].size);
    return need + ": " + format_mib(free_bytes) + " is free in total, but the other LPARs (" +
           sizes + ") cannot be split between the " + mib(g.below) + " below " + lpar +
           " and the " + mib(g.room_above) + " above " + mib(g.window_hi) + " (" + mib(shortfall) +
           " missing)";
}

// When the search found nothing: the push-up plan if the search stopped at its limit, else
// the reason.
void plan_without_search(GrowPlan& plan, const std::optional<std::vector<PlanStep>>& push_up,
                         bool limit_hit, const std::string& need) {
    if (limit_hit && push_up) {
        plan.possible = true;
        plan.steps = *push_up;
        plan.reason = "search limit of " + std::to_string(kMaxLayouts) +
                      " layouts reached: this plan is valid but may not be the cheapest";
    } else {
        // Feasibility said yes, so this means the search gave up or missed (a bug).
        plan.reason =
            need + ": no plan found" +
            (limit_hit ? " within the search limit of " + std::to_string(kMaxLayouts) + " layouts"
                       : std::string(" (planner bug: a plan should exist)"));
    }
}

// The moves from the start to the search's goal node, in order.
std::vector<PlanStep> steps_to(const Search& search, std::size_t goal,
                               const std::vector<Item>& items) {
    std::vector<PlanStep> reversed;
    for (std::size_t i = goal; i != 0; i = search.node(i).parent) {
        const auto& n = search.node(i);
        const auto& parent = search.node(n.parent);
        reversed.push_back(step_of(items[n.mover], parent.layout[n.mover], n.layout[n.mover]));
    }
    return {reversed.rbegin(), reversed.rend()};
}

}  // namespace

GrowPlan plan_grow(std::uint64_t main_storage, const std::vector<StorageArea>& areas,
                   const std::string& lpar, std::uint64_t extra_bytes) {
    StorageMap map(main_storage);
    for (const auto& area : areas) map.add(area.lpar, area.range);  // validates the layout
    const auto& grown = map.find(lpar);                             // NotFound
    check_extra(lpar, extra_bytes);

    GrowPlan plan;
    const std::uint64_t end = grown.range.end();
    const std::string need = "needs " + format_mib(extra_bytes) + " above " + lpar + " (" +
                             format_range_mib(end, extra_bytes) + ")";
    if (auto reason = lack_of_room(map, main_storage, end, extra_bytes, need)) {
        plan.reason = std::move(*reason);
        return plan;
    }

    const GrowSetting setting = grow_setting(map, lpar, main_storage, extra_bytes);
    if (const std::uint64_t shortfall = split_shortfall(setting); shortfall != 0) {
        plan.reason = split_refusal(setting, need, lpar, map.free_bytes(), shortfall);
        return plan;
    }

    auto push_up = push_up_plan(setting.items, setting.grower, setting.total, setting.window_hi);
    Cost bound{UINT64_MAX, 0, 0};
    if (push_up) {
        bound.bytes = 0;
        for (const auto& step : *push_up) bound.bytes += step.bytes / kUnit;
    }
    Search search(setting.items, setting.grower, setting.total, extra_bytes / kUnit);
    bool limit_hit = false;
    if (auto goal = search.run(bound, limit_hit)) {
        plan.possible = true;
        plan.steps = steps_to(search, *goal, setting.items);
    } else {
        plan_without_search(plan, push_up, limit_hit, need);
    }
    for (const auto& step : plan.steps) plan.bytes_copied += step.bytes;
    return plan;
}

}  // namespace lparvisor
