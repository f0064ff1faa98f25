#include "support/disk_image_check.hpp"

#include <lparvisor/abi.h>

#include <array>
#include <cstring>
#include <fstream>

#include <fmt/format.h>

namespace lparvisor::test {

std::optional<std::string> check_firmware_disk(const std::string& image_path,
                                               const std::string& lpar_name, std::uint64_t pass,
                                               std::uint64_t blocks) {
    std::ifstream in(image_path, std::ios::binary);
    if (!in) return fmt::format("{}: cannot be opened", image_path);
    const std::uint64_t name_hash = lpv_disk_name_hash(lpar_name.c_str());
    std::array<char, LPV_DISK_BLOCK_BYTES> buffer{};
    for (std::uint64_t block = 0; block < blocks; ++block) {
        if (!in.read(buffer.data(), buffer.size()))
            return fmt::format("{}: ends before block {} of {} ({} bytes needed)", image_path, block,
                               blocks, blocks * LPV_DISK_BLOCK_BYTES);
        const std::uint64_t seed = lpv_disk_block_seed(name_hash, block, pass);
        for (std::uint64_t word = 0; word < LPV_DISK_WORDS_PER_BLOCK; ++word) {
            std::uint64_t found = 0;
            std::memcpy(&found, buffer.data() + word * 8, 8);  // little-endian host (x86-64)
            const std::uint64_t expected = lpv_disk_word_seeded(seed, word);
            if (found != expected)
                return fmt::format(
                    "{}: LPAR {} pass {}: block {} word {} (byte {:#x}): expected {:#018x}, found "
                    "{:#018x}",
                    image_path, lpar_name, pass, block, word,
                    block * LPV_DISK_BLOCK_BYTES + word * 8, expected, found);
        }
    }
    return std::nullopt;
}

}  // namespace lparvisor::test
