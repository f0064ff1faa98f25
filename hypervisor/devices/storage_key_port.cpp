#include "devices/storage_key_port.hpp"

#include <algorithm>
#include <cstring>
#include <vector>

namespace lparvisor {

void StorageKeyPort::read(std::uint16_t, std::span<std::uint8_t> data) {
    std::fill(data.begin(), data.end(), std::uint8_t{0});
}

void StorageKeyPort::write(std::uint16_t offset, std::span<const std::uint8_t> data) {
    if (offset != 0 || data.size() != 4)
        return;  // only a 32-bit write at the base starts a request
    std::uint32_t address = 0;
    std::memcpy(&address, data.data(), 4);
    (void)serve(GuestPhysAddr{address});
}

lpv_skey_status StorageKeyPort::serve(GuestPhysAddr request_address) {
    auto request = memory_.read_object<lpv_skey_request>(request_address);
    if (!request) return LPV_SKEY_BAD_BUFFER;  // nowhere to write a status either
    auto status = execute(*request);
    request->status = status;
    (void)memory_.write_object(request_address, *request);
    return status;
}

lpv_skey_status StorageKeyPort::execute(const lpv_skey_request& request) {
    if (request.op != LPV_SKEY_SET_RANGE && request.op != LPV_SKEY_SET_EACH &&
        request.op != LPV_SKEY_GET_EACH)
        return LPV_SKEY_BAD_OP;
    if (request.page_count == 0 || request.first_gpa % kPageSize != 0 ||
        request.page_count > memory_.size() / kPageSize ||
        !memory_.contains(GuestPhysAddr{request.first_gpa}, request.page_count * kPageSize))
        return LPV_SKEY_BAD_RANGE;

    // Page by page: in the middle of a chunked live move, neighbouring guest pages can live in
    // different places of main storage.
    auto key_of = [&](std::uint64_t page) -> std::uint8_t& {
        auto frame = locate_(GuestPhysAddr{request.first_gpa + page * kPageSize});
        return keys_.frames({frame, kPageSize})[0];
    };
    switch (request.op) {
        case LPV_SKEY_SET_RANGE:
            if ((request.key & ~std::uint64_t{LPV_KEY_VALID_MASK}) != 0) return LPV_SKEY_BAD_KEY;
            for (std::uint64_t page = 0; page < request.page_count; ++page)
                key_of(page) = static_cast<std::uint8_t>(request.key);
            return LPV_SKEY_OK;
        case LPV_SKEY_SET_EACH: {
            // Copy first: another vCPU may change the buffer while it is checked.
            std::vector<std::uint8_t> wanted(request.page_count);
            if (!memory_.read(GuestPhysAddr{request.buffer_gpa}, wanted))
                return LPV_SKEY_BAD_BUFFER;
            if (std::any_of(wanted.begin(), wanted.end(),
                            [](std::uint8_t k) { return (k & ~LPV_KEY_VALID_MASK) != 0; }))
                return LPV_SKEY_BAD_KEY;
            for (std::uint64_t page = 0; page < request.page_count; ++page)
                key_of(page) = wanted[page];
            return LPV_SKEY_OK;
        }
        case LPV_SKEY_GET_EACH: {
            // Marked written when `buffer` goes, after the keys are in it.
            auto buffer = memory_.write_span(GuestPhysAddr{request.buffer_gpa}, request.page_count);
            if (!buffer) return LPV_SKEY_BAD_BUFFER;
            for (std::uint64_t page = 0; page < request.page_count; ++page)
                buffer->bytes()[page] = key_of(page);
            return LPV_SKEY_OK;
        }
        default:
            return LPV_SKEY_BAD_OP;
    }
}

}  // namespace lparvisor
