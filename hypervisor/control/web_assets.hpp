// The SVP frame's files (hypervisor/control/web/), compiled into the daemon so that it serves them
// without reading anything at run time (the sandbox's main class opens no files). CMake writes
// their definitions into web_assets.cpp in the build tree (CMakeLists.txt).
#pragma once

#include <string_view>

namespace lparvisor::control::web {

extern const std::string_view kIndexHtml;
extern const std::string_view kFrameJs;
extern const std::string_view kFrameCss;

}  // namespace lparvisor::control::web
