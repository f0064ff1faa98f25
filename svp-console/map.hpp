// `svp map`: main storage drawn to scale, as text and as SVG, from an lpar.list result.
#pragma once

#include <cstddef>
#include <string>

#include <nlohmann/json.hpp>

namespace lparvisor::svp {

// The bar (`width` cells for all of main storage; each LPAR a run of its own fill with its name
// in it where it fits, free storage as '.'), a scale line, and a legend with every LPAR's origin,
// size and gap and every free range. LPARs without storage ("defined") are listed, not drawn.
[[nodiscard]] std::string format_storage_map(const nlohmann::json& list_result, std::size_t width);

// The same picture as a standalone SVG document.
[[nodiscard]] std::string storage_map_svg(const nlohmann::json& list_result);

}  // namespace lparvisor::svp
