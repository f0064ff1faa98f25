// The refusals of EXPAND, shrink and storage.grow (expand.cpp), as pure functions over byte
// counts: the daemon calls them with its LPAR's figures, and the control tests' FakeApi with its
// table's, so that the fake refuses with the daemon's own words. The last rule, room free above
// the LPAR, is StorageMap::check_resize. Each throws lparvisor::Error; none changes anything.
#pragma once

#include <cstdint>
#include <string>

#include "control/api.hpp"

namespace lparvisor {

// InvalidArgument unless request.mib is a positive multiple of 2 MiB; `what` names the
// operation ("expand", "shrink", "grow").
void check_resize_request(const control::ResizeRequest& request, const char* what);

// Refused unless the LPAR has a virtio-mem region (it was defined with max_size_mib above
// size_mib): without one it can neither grow nor shrink.
void check_resizable(const std::string& lpar, bool has_memory_device);

// EXPAND by `extra` bytes: Refused if `size + extra` is more than `maximum` (the LPAR's window,
// max_size_mib).
void check_within_maximum(const std::string& lpar, std::uint64_t size, std::uint64_t extra,
                          std::uint64_t maximum);

// Shrink by `less` bytes: Refused if that would reach into the boot storage (`boot` bytes, the
// part of `size` that EXPAND did not add).
void check_shrinkable(const std::string& lpar, std::uint64_t size, std::uint64_t boot,
                      std::uint64_t less);

}  // namespace lparvisor
