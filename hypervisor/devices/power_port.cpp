#include "devices/power_port.hpp"

#include <algorithm>

namespace lparvisor {

void PowerPort::read(std::uint16_t offset, std::span<std::uint8_t> data) {
    std::fill(data.begin(), data.end(), std::uint8_t{0});
    if (data.empty()) return;
    std::lock_guard lock(mutex_);
    // The sleep status never shows WAK_STS: the LPAR does not come back from S5, and a guest
    // that polls for the wake-up after a power-off is stopped by the owner.
    if (offset == kSleepStatusOffset) data[0] = sleep_status_;
}

void PowerPort::write(std::uint16_t offset, std::span<const std::uint8_t> data) {
    if (data.empty()) return;
    const std::uint8_t value = data[0];
    const char* what = nullptr;
    {
        std::lock_guard lock(mutex_);
        switch (offset) {
            case kSleepControlOffset:
                // Only S5 is offered (the DSDT has no _S1_.._S4_); other sleep types are ignored.
                if ((value & kSleepEnable) != 0 &&
                    ((value & kSleepTypeMask) >> kSleepTypeShift) == kS5SleepType)
                    what = "power-off";
                break;
            case kSleepStatusOffset:
                sleep_status_ &= static_cast<std::uint8_t>(~value);  // write 1 to clear
                break;
            case kResetOffset:
                if (value == kResetValue) what = "reboot";
                break;
            default:
                break;
        }
    }
    // Called without the lock: the owner stops the LPAR from here (device.hpp's lock order).
    if (what != nullptr && event_) event_(what);
}

}  // namespace lparvisor
