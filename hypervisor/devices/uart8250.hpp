// COM1: a 16550A UART. Output goes to the LPAR's ConsoleLog.
//
// Enough of the part for Linux's 8250 driver: IER/IIR/FCR/LCR/MCR/LSR/MSR/SCR and the divisor
// latch, the FIFO bits (IIR bits 7:6) that make autoconfiguration report a 16550A, loopback
// (MCR bit 4: THR feeds RBR, MCR's outputs feed MSR's inputs, as the driver's probe checks)
// and the interrupt line. Transmission is instant, so THR and the transmitter are always empty.
//
// Interrupts (optional): without a callback the UART is polled only, as the test firmware does.
// With one, the line follows the 16550's rules: a THR-empty interrupt is pending after each THR
// write and whenever IER's THRE bit is switched on (Linux's driver and Windows rely on that edge),
// is cleared by reading IIR while it is the reported source, and the line is high while an
// enabled interrupt is pending. The owner maps the level to KVM_IRQ_LINE (IRQ 4 for COM1).
//
// Input: receive_input() (a console typing at the LPAR) queues bytes behind the receive FIFO,
// up to kInputBufferBytes, and feeds the FIFO (16 bytes, 1 with FIFOs off) as the guest reads
// RBR, so that a line typed at once reaches a guest that reads a byte at a time: LSR.DR, and
// IIR "data available" when IER bit 0 is set, while any is waiting. In loopback (MCR bit 4) the
// input waits, as the serial input is disconnected then. RBR reads 0 when empty.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <span>

#include "devices/console_log.hpp"
#include "devices/device.hpp"

namespace lparvisor {

class Uart8250 final : public PortDevice {
  public:
    static constexpr std::uint16_t kPortCount = 8;
    static constexpr std::size_t kFifoSize = 16;
    static constexpr std::size_t kInputBufferBytes = 4096;  // typed, not yet in the FIFO
    static constexpr std::uint32_t kCom1Irq = 4;  // ISA IRQ 4 = IOAPIC pin 4 (no MADT override)
    // Called with the new level whenever the interrupt line changes, never with the register
    // lock held (but serialized, so levels arrive in order). It must not call into the UART.
    using IrqCallback = std::function<void(bool level)>;

    explicit Uart8250(std::shared_ptr<ConsoleLog> console, IrqCallback irq = {})
        : console_(std::move(console)), irq_(std::move(irq)) {}

    std::string name() const override { return "uart8250 (COM1)"; }
    void read(std::uint16_t offset, std::span<std::uint8_t> data) override;
    void write(std::uint16_t offset, std::span<const std::uint8_t> data) override;

    // Bytes from outside (a console) for the guest to read; returns how many were taken (up to
    // kInputBufferBytes may wait; the rest is refused, not lost silently: the caller keeps it
    // for later). Any thread.
    std::size_t receive_input(std::span<const std::uint8_t> bytes);
    std::size_t input_waiting() const;  // typed bytes the guest has not read yet

    bool irq_level() const;  // the line as last computed (for tests and state dumps)

  private:
    std::uint8_t read_register(std::uint16_t offset);
    void write_register(std::uint16_t offset, std::uint8_t value);
    std::uint8_t interrupt_id() const;  // IIR bits 3:0 for the highest pending source
    bool line_level() const;
    std::uint8_t modem_status() const;
    void push_received(std::uint8_t byte);
    void refill_rx();  // input_ -> rx_ while the FIFO has room (caller holds mutex_)
    void update_irq(std::unique_lock<std::mutex>& lock);  // releases `lock`

    std::shared_ptr<ConsoleLog> console_;
    IrqCallback irq_;
    std::mutex irq_mutex_;  // outer: orders the callbacks; taken before mutex_
    mutable std::mutex mutex_;
    std::uint8_t ier_ = 0, lcr_ = 0, mcr_ = 0, scr_ = 0, dll_ = 0x0c, dlm_ = 0, fcr_ = 0;
    std::uint8_t lsr_errors_ = 0;     // overrun (LSR bit 1), cleared by reading LSR
    bool thr_interrupt_ = false;      // a THR-empty interrupt is pending
    std::deque<std::uint8_t> rx_;     // receive FIFO (one byte deep with the FIFO off)
    std::deque<std::uint8_t> input_;  // typed bytes behind the FIFO (at most kInputBufferBytes)
    bool level_ = false;              // the line as last reported
};

}  // namespace lparvisor
