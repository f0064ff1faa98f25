#include "devices/device.hpp"

#include <fmt/format.h>

#include "util/error.hpp"

namespace lparvisor {

void IoBus::add(std::uint16_t base, std::uint16_t length, std::shared_ptr<PortDevice> device) {
    unsigned end = unsigned{base} + length;
    for (const auto& e : entries_)
        if (base < unsigned{e.base} + e.length && e.base < end)
            throw Error(
                ErrorKind::InvalidArgument,
                fmt::format("I/O bus: {} at {:#x}+{} overlaps {} at {:#x}+{}", device->name(), base,
                            length, e.device->name(), e.base, e.length));
    entries_.push_back({base, length, std::move(device)});
}

const IoBus::Entry* IoBus::find(std::uint16_t port, std::size_t size) const {
    for (const auto& e : entries_)
        if (port >= e.base && port + size <= unsigned{e.base} + e.length) return &e;
    return nullptr;
}

bool IoBus::read(std::uint16_t port, std::span<std::uint8_t> data) const {
    const Entry* e = find(port, data.size());
    if (e == nullptr) return false;
    e->device->read(static_cast<std::uint16_t>(port - e->base), data);
    return true;
}

bool IoBus::write(std::uint16_t port, std::span<const std::uint8_t> data) const {
    const Entry* e = find(port, data.size());
    if (e == nullptr) return false;
    e->device->write(static_cast<std::uint16_t>(port - e->base), data);
    return true;
}

std::vector<std::shared_ptr<PortDevice>> IoBus::devices() const {
    std::vector<std::shared_ptr<PortDevice>> result;
    for (const auto& e : entries_) result.push_back(e.device);
    return result;
}

}  // namespace lparvisor
