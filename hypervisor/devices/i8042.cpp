#include "devices/i8042.hpp"

#include <algorithm>

namespace lparvisor {

void I8042::read(std::uint16_t, std::span<std::uint8_t> data) {
    // Status 0: output buffer empty, input buffer empty (the reset loop's kb_wait passes at
    // once). Data 0: there is no keyboard.
    std::fill(data.begin(), data.end(), std::uint8_t{0});
}

void I8042::write(std::uint16_t offset, std::span<const std::uint8_t> data) {
    if (data.empty()) return;
    if (offset == kCommandOffset && data[0] == kPulseReset && event_) event_("reboot");
    // Other commands (and data bytes) have no effect: nothing reads them back.
}

}  // namespace lparvisor
