#include "devices/uart8250.hpp"

#include <algorithm>

namespace lparvisor {

namespace {
// Register offsets and bits (the 16550A datasheet; Linux's include/uapi/linux/serial_reg.h).
constexpr std::uint16_t kData = 0, kIer = 1, kIir = 2, kLcr = 3, kMcr = 4, kLsr = 5, kMsr = 6,
                        kScr = 7;
constexpr std::uint8_t kIerRxData = 0x01, kIerThrEmpty = 0x02, kIerLineStatus = 0x04,
                       kIerModemStatus = 0x08;
constexpr std::uint8_t kIirNoInterrupt = 0x01, kIirThrEmpty = 0x02, kIirRxData = 0x04,
                       kIirLineStatus = 0x06, kIirFifoEnabled = 0xc0;
constexpr std::uint8_t kFcrEnable = 0x01, kFcrClearRx = 0x02;
constexpr std::uint8_t kLcrDlab = 0x80;
constexpr std::uint8_t kMcrDtr = 0x01, kMcrRts = 0x02, kMcrOut1 = 0x04, kMcrOut2 = 0x08,
                       kMcrLoop = 0x10;
constexpr std::uint8_t kLsrDataReady = 0x01, kLsrOverrun = 0x02, kLsrThrEmpty = 0x20,
                       kLsrTransmitterEmpty = 0x40;
constexpr std::uint8_t kMsrCts = 0x10, kMsrDsr = 0x20, kMsrRi = 0x40, kMsrDcd = 0x80;
}  // namespace

std::uint8_t Uart8250::modem_status() const {
    if ((mcr_ & kMcrLoop) == 0) return kMsrDcd | kMsrDsr | kMsrCts;  // a terminal is attached
    // Loopback: the outputs come back as inputs (RTS->CTS, DTR->DSR, OUT1->RI, OUT2->DCD).
    std::uint8_t msr = 0;
    if (mcr_ & kMcrRts) msr |= kMsrCts;
    if (mcr_ & kMcrDtr) msr |= kMsrDsr;
    if (mcr_ & kMcrOut1) msr |= kMsrRi;
    if (mcr_ & kMcrOut2) msr |= kMsrDcd;
    return msr;
}

std::uint8_t Uart8250::interrupt_id() const {
    // Priority order: line status, received data, THR empty (modem status never changes here).
    if ((ier_ & kIerLineStatus) && lsr_errors_ != 0) return kIirLineStatus;
    if ((ier_ & kIerRxData) && !rx_.empty()) return kIirRxData;
    if ((ier_ & kIerThrEmpty) && thr_interrupt_) return kIirThrEmpty;
    return kIirNoInterrupt;
}

bool Uart8250::line_level() const {
    return interrupt_id() != kIirNoInterrupt;
}

void Uart8250::refill_rx() {
    // In loopback the serial input is disconnected (the 16550 datasheet): input waits.
    if (mcr_ & kMcrLoop) return;
    const std::size_t depth = (fcr_ & kFcrEnable) ? kFifoSize : 1;
    while (!input_.empty() && rx_.size() < depth) {
        rx_.push_back(input_.front());
        input_.pop_front();
    }
}

void Uart8250::push_received(std::uint8_t byte) {
    const std::size_t depth = (fcr_ & kFcrEnable) ? kFifoSize : 1;
    if (rx_.size() >= depth) {
        lsr_errors_ |= kLsrOverrun;  // the byte is lost, as on the real part
        return;
    }
    rx_.push_back(byte);
}

std::uint8_t Uart8250::read_register(std::uint16_t offset) {
    const bool dlab = (lcr_ & kLcrDlab) != 0;
    switch (offset) {
        case kData:
            if (dlab) return dll_;
            if (rx_.empty()) return 0;
            {
                std::uint8_t byte = rx_.front();
                rx_.pop_front();
                refill_rx();
                return byte;
            }
        case kIer:
            return dlab ? dlm_ : ier_;
        case kIir: {
            std::uint8_t id = interrupt_id();
            // Reading IIR acknowledges a THR-empty interrupt when that is what it reports.
            if (id == kIirThrEmpty) thr_interrupt_ = false;
            return static_cast<std::uint8_t>(id | ((fcr_ & kFcrEnable) ? kIirFifoEnabled : 0));
        }
        case kLcr:
            return lcr_;
        case kMcr:
            return mcr_;
        case kLsr: {
            std::uint8_t lsr =
                kLsrThrEmpty | kLsrTransmitterEmpty | lsr_errors_;  // output is instant
            if (!rx_.empty()) lsr |= kLsrDataReady;
            lsr_errors_ = 0;
            return lsr;
        }
        case kMsr:
            return modem_status();
        case kScr:
            return scr_;
        default:
            return 0;
    }
}

void Uart8250::write_register(std::uint16_t offset, std::uint8_t value) {
    const bool dlab = (lcr_ & kLcrDlab) != 0;
    switch (offset) {
        case kData:
            if (dlab) {
                dll_ = value;
                break;
            }
            if (mcr_ & kMcrLoop) {
                push_received(value);
            } else {
                char c = static_cast<char>(value);
                console_->append({&c, 1});
            }
            thr_interrupt_ = true;  // sent at once: THR is empty again
            break;
        case kIer:
            if (dlab) {
                dlm_ = value;
            } else {
                const std::uint8_t old = ier_;
                ier_ = value & (kIerRxData | kIerThrEmpty | kIerLineStatus | kIerModemStatus);
                // Switching THRE interrupts on with THR empty (always) raises one.
                if ((ier_ & kIerThrEmpty) && !(old & kIerThrEmpty)) thr_interrupt_ = true;
            }
            break;
        case kIir:                                         // FCR
            if ((value ^ fcr_) & kFcrEnable) rx_.clear();  // switching the FIFOs resets them
            if (value & kFcrClearRx) rx_.clear();
            fcr_ = value & static_cast<std::uint8_t>(~0x06);  // the clear bits self-reset
            refill_rx();
            break;
        case kLcr:
            lcr_ = value;
            break;
        case kMcr:
            mcr_ = value & 0x1f;
            refill_rx();  // loopback off again: waiting input comes in
            break;
        case kScr:
            scr_ = value;
            break;
        default:
            break;  // LSR/MSR writes are ignored, as on the real part
    }
}

void Uart8250::update_irq(std::unique_lock<std::mutex>& lock) {
    const bool level = line_level();
    const bool changed = level != level_;
    level_ = level;
    lock.unlock();
    if (changed && irq_) irq_(level);
}

void Uart8250::read(std::uint16_t offset, std::span<std::uint8_t> data) {
    std::fill(data.begin(), data.end(), std::uint8_t{0});
    if (data.empty()) return;
    std::lock_guard order(irq_mutex_);
    std::unique_lock lock(mutex_);
    data[0] = read_register(offset);
    update_irq(lock);
}

void Uart8250::write(std::uint16_t offset, std::span<const std::uint8_t> data) {
    if (data.empty()) return;
    std::lock_guard order(irq_mutex_);
    std::unique_lock lock(mutex_);
    write_register(offset, data[0]);
    update_irq(lock);
}

std::size_t Uart8250::receive_input(std::span<const std::uint8_t> bytes) {
    std::lock_guard order(irq_mutex_);
    std::unique_lock lock(mutex_);
    // Room for kInputBufferBytes waiting in all, the FIFO's included.
    const std::size_t waiting = input_.size() + rx_.size();
    const std::size_t room = waiting < kInputBufferBytes ? kInputBufferBytes - waiting : 0;
    const std::size_t taken = std::min(bytes.size(), room);
    input_.insert(input_.end(), bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(taken));
    refill_rx();
    update_irq(lock);
    return taken;
}

std::size_t Uart8250::input_waiting() const {
    std::lock_guard lock(mutex_);
    return input_.size() + rx_.size();
}

bool Uart8250::irq_level() const {
    std::lock_guard lock(mutex_);
    return level_;
}

}  // namespace lparvisor
