#include "devices/uart8250.hpp"

#include <algorithm>

namespace lparvisor {

namespace {
constexpr std::uint8_t kLcrDlab = 0x80;
constexpr std::uint8_t kLsrThrEmpty = 0x20;
constexpr std::uint8_t kLsrTransmitterEmpty = 0x40;
constexpr std::uint8_t kIirNoInterrupt = 0x01;
constexpr std::uint8_t kIirFifoEnabled = 0xc0;
constexpr std::uint8_t kMsrDcdDsrCts = 0xb0;
}  // namespace

void Uart8250::read(std::uint16_t offset, std::span<std::uint8_t> data) {
    std::lock_guard lock(mutex_);
    std::uint8_t value = 0;
    bool dlab = (lcr_ & kLcrDlab) != 0;
    switch (offset) {
        case 0:
            value = dlab ? dll_ : 0;
            break;  // RBR: no input
        case 1:
            value = dlab ? dlm_ : ier_;
            break;
        case 2:
            value = kIirNoInterrupt | ((fcr_ & 1) ? kIirFifoEnabled : 0);
            break;
        case 3:
            value = lcr_;
            break;
        case 4:
            value = mcr_;
            break;
        case 5:
            value = kLsrThrEmpty | kLsrTransmitterEmpty;
            break;  // output is instant
        case 6:
            value = kMsrDcdDsrCts;
            break;
        case 7:
            value = scr_;
            break;
        default:
            break;
    }
    std::fill(data.begin(), data.end(), std::uint8_t{0});
    data[0] = value;
}

void Uart8250::write(std::uint16_t offset, std::span<const std::uint8_t> data) {
    std::uint8_t value = data[0];
    std::lock_guard lock(mutex_);
    bool dlab = (lcr_ & kLcrDlab) != 0;
    switch (offset) {
        case 0:
            if (dlab) {
                dll_ = value;
            } else {
                char c = static_cast<char>(value);
                console_->append({&c, 1});
            }
            break;
        case 1:
            if (dlab)
                dlm_ = value;
            else
                ier_ = value & 0x0f;
            break;
        case 2:
            fcr_ = value;
            break;
        case 3:
            lcr_ = value;
            break;
        case 4:
            mcr_ = value & 0x1f;
            break;
        case 7:
            scr_ = value;
            break;
        default:
            break;  // LSR/MSR writes are ignored, as on the real part
    }
}

}  // namespace lparvisor
