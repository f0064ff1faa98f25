#include "map.hpp"

#include <algorithm>
#include <cstdint>
#include <vector>

#include <fmt/format.h>

namespace lparvisor::svp {

namespace {

struct Area {
    std::string name;  // empty: free
    std::uint64_t origin_mib = 0;
    std::uint64_t size_mib = 0;
    std::uint64_t gap_mib = 0;
    std::string state;
};

// The LPARs that have storage, sorted by origin, with the free ranges between them.
std::vector<Area> storage_areas(const nlohmann::json& list_result, std::uint64_t total) {
    std::vector<Area> lpars;
    for (const auto& lpar : list_result.at("lpars")) {
        if (!lpar.value("has_storage", true)) continue;
        lpars.push_back(
            {lpar.at("name").get<std::string>(), lpar.at("origin_mib").get<std::uint64_t>(),
             lpar.at("size_mib").get<std::uint64_t>(), lpar.at("gap_mib").get<std::uint64_t>(),
             lpar.at("state").get<std::string>()});
    }
    std::sort(lpars.begin(), lpars.end(),
              [](const Area& a, const Area& b) { return a.origin_mib < b.origin_mib; });
    std::vector<Area> areas;
    std::uint64_t cursor = 0;
    for (auto& lpar : lpars) {
        if (lpar.origin_mib > cursor)
            areas.push_back({"", cursor, lpar.origin_mib - cursor, 0, ""});
        cursor = std::max(cursor, lpar.origin_mib + lpar.size_mib);
        areas.push_back(std::move(lpar));
    }
    if (cursor < total) areas.push_back({"", cursor, total - cursor, 0, ""});
    return areas;
}

std::string xml_escape(std::string_view text) {
    std::string out;
    for (char c : text) {
        switch (c) {
            case '<':
                out += "&lt;";
                break;
            case '>':
                out += "&gt;";
                break;
            case '&':
                out += "&amp;";
                break;
            case '"':
                out += "&quot;";
                break;
            case '\'':
                out += "&apos;";
                break;
            default:
                out += c;
        }
    }
    return out;
}

}  // namespace

std::string format_storage_map(const nlohmann::json& list_result, std::size_t width) {
    const auto total = list_result.at("main_storage_mib").get<std::uint64_t>();
    const std::vector<Area> areas = storage_areas(list_result, total);
    std::string bar(width, '.');
    constexpr std::string_view kFills = "#=%+*~";
    std::size_t lpar_index = 0;
    for (const auto& area : areas) {
        if (area.name.empty() || total == 0) continue;
        const char fill = kFills[lpar_index++ % kFills.size()];
        // Cells are rounded to the nearest boundary; every LPAR keeps at least one cell.
        auto cell = [&](std::uint64_t mib) {
            return static_cast<std::size_t>((static_cast<long double>(mib) * width) / total + 0.5L);
        };
        std::size_t begin = std::min(cell(area.origin_mib), width - 1);
        std::size_t end =
            std::max(begin + 1, std::min(cell(area.origin_mib + area.size_mib), width));
        for (std::size_t i = begin; i < end; ++i) bar[i] = fill;
        if (area.name.size() + 2 <= end - begin) {  // the name, with a fill cell either side
            bar.replace(begin + 1, area.name.size(), area.name);
        }
    }
    std::string out =
        fmt::format("main storage {} MiB, {} MiB free; one cell = {:.2f} MiB\n", total,
                    list_result.at("free_mib").get<std::uint64_t>(),
                    width == 0 ? 0.0 : static_cast<double>(total) / static_cast<double>(width));
    out += fmt::format("|{}|\n", bar);
    const std::string end_label = fmt::format("{} MiB", total);
    out += fmt::format("0{:>{}}\n", end_label, width + 1);
    out += "\n";
    std::size_t name_width = 4;
    for (const auto& lpar : list_result.at("lpars")) {
        name_width = std::max(name_width, lpar.at("name").get<std::string>().size());
    }
    lpar_index = 0;
    for (const auto& area : areas) {
        if (area.name.empty()) {
            out += fmt::format("  .  {:<{}}  origin {:>7} MiB  size {:>7} MiB\n", "free",
                               name_width, area.origin_mib, area.size_mib);
        } else {
            out +=
                fmt::format("  {}  {:<{}}  origin {:>7} MiB  size {:>7} MiB  gap {:>7} MiB  {}\n",
                            kFills[lpar_index++ % kFills.size()], area.name, name_width,
                            area.origin_mib, area.size_mib, area.gap_mib, area.state);
        }
    }
    for (const auto& lpar : list_result.at("lpars")) {
        if (lpar.value("has_storage", true)) continue;
        out += fmt::format("  -  {:<{}}  not placed       size {:>7} MiB  {}\n",
                           lpar.at("name").get<std::string>(), name_width,
                           lpar.at("size_mib").get<std::uint64_t>(),
                           lpar.at("state").get<std::string>());
    }
    return out;
}

std::string storage_map_svg(const nlohmann::json& list_result) {
    const auto total = list_result.at("main_storage_mib").get<std::uint64_t>();
    const std::vector<Area> areas = storage_areas(list_result, total);
    constexpr double kLeft = 20, kTop = 40, kWidth = 960, kHeight = 80;
    static constexpr std::string_view kColours[] = {"#4e79a7", "#f28e2b", "#59a14f",
                                                    "#b07aa1", "#76b7b2", "#edc948"};
    const double scale = total == 0 ? 0 : kWidth / static_cast<double>(total);
    std::string out = fmt::format(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" "
        "viewBox=\"0 0 {0} {1}\" font-family=\"sans-serif\" font-size=\"12\">\n"
        "  <title>lparvisor main storage: {2} MiB, {3} MiB free</title>\n"
        "  <text x=\"{4}\" y=\"24\" font-size=\"14\">main storage {2} MiB ({3} MiB free)</text>\n",
        kWidth + 2 * kLeft, kTop + kHeight + 70, total,
        list_result.at("free_mib").get<std::uint64_t>(), kLeft);
    std::size_t lpar_index = 0;
    for (const auto& area : areas) {
        const double x = kLeft + static_cast<double>(area.origin_mib) * scale;
        const double w = std::max(1.0, static_cast<double>(area.size_mib) * scale);
        const double middle = x + w / 2;
        if (area.name.empty()) {
            out += fmt::format(
                "  <g class=\"free\">\n"
                "    <rect x=\"{:.2f}\" y=\"{}\" width=\"{:.2f}\" height=\"{}\" fill=\"#eeeeee\" "
                "stroke=\"#999999\" stroke-dasharray=\"4 2\"/>\n"
                "    <text x=\"{:.2f}\" y=\"{}\" text-anchor=\"middle\" fill=\"#666666\">free {} "
                "MiB</text>\n"
                "  </g>\n",
                x, kTop, w, kHeight, middle, kTop + kHeight / 2 + 4, area.size_mib);
        } else {
            out += fmt::format(
                "  <g class=\"lpar\">\n"
                "    <rect x=\"{:.2f}\" y=\"{}\" width=\"{:.2f}\" height=\"{}\" fill=\"{}\" "
                "stroke=\"#333333\"/>\n"
                "    <text x=\"{:.2f}\" y=\"{}\" text-anchor=\"middle\" "
                "fill=\"#ffffff\">{}</text>\n"
                "    <text x=\"{:.2f}\" y=\"{}\" text-anchor=\"middle\" fill=\"#ffffff\" "
                "font-size=\"10\">{} MiB, {}</text>\n"
                "  </g>\n",
                x, kTop, w, kHeight, kColours[lpar_index++ % std::size(kColours)], middle,
                kTop + kHeight / 2 - 4, xml_escape(area.name), middle, kTop + kHeight / 2 + 12,
                area.size_mib, xml_escape(area.state));
        }
        // The origin, in MiB, under the start of each area.
        out += fmt::format(
            "  <line x1=\"{0:.2f}\" y1=\"{1}\" x2=\"{0:.2f}\" y2=\"{2}\" stroke=\"#333333\"/>\n"
            "  <text x=\"{0:.2f}\" y=\"{3}\" text-anchor=\"middle\" font-size=\"10\">{4}</text>\n",
            x, kTop + kHeight, kTop + kHeight + 6, kTop + kHeight + 18, area.origin_mib);
    }
    out += fmt::format(
        "  <text x=\"{:.2f}\" y=\"{}\" text-anchor=\"end\" font-size=\"10\">{} MiB</text>\n",
        kLeft + kWidth, kTop + kHeight + 34, total);
    out += "</svg>\n";
    return out;
}

}  // namespace lparvisor::svp
