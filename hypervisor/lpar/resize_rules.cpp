#include "lpar/resize_rules.hpp"

#include <fmt/format.h>

#include "storage/address.hpp"
#include "util/error.hpp"

namespace lparvisor {

void check_resize_request(const control::ResizeRequest& request, const char* what) {
    if (request.mib == 0 || request.mib % 2 != 0)
        throw Error(ErrorKind::InvalidArgument,
                    fmt::format("{}: {} by {} MiB: a positive multiple of 2 MiB", request.lpar,
                                what, request.mib));
}

void check_resizable(const std::string& lpar, bool has_memory_device) {
    if (!has_memory_device)
        throw Error(ErrorKind::Refused,
                    lpar +
                        " cannot grow or shrink: it has no virtio-mem region (define it "
                        "with max_size_mib above size_mib)");
}

void check_within_maximum(const std::string& lpar, std::uint64_t size, std::uint64_t extra,
                          std::uint64_t maximum) {
    // size + extra > maximum, written so that it cannot wrap.
    if (size > maximum || extra > maximum - size)
        throw Error(ErrorKind::Refused,
                    fmt::format("{}: {} + {} MiB is more than its maximum of {} (max_size_mib)",
                                lpar, format_mib(size), extra / kMiB, format_mib(maximum)));
}

void check_shrinkable(const std::string& lpar, std::uint64_t size, std::uint64_t boot,
                      std::uint64_t less) {
    // size < boot + less, written so that it cannot wrap.
    if (size < boot || size - boot < less)
        throw Error(ErrorKind::Refused,
                    fmt::format("{}: only {} was added by EXPAND; its boot storage ({}) cannot "
                                "shrink",
                                lpar, format_mib(size > boot ? size - boot : 0), format_mib(boot)));
}

}  // namespace lparvisor
