#include "support/disk_image_check.hpp"

#include <catch2/catch.hpp>

#include <lparvisor/abi.h>

#include <algorithm>
#include <array>
#include <fstream>

#include <fmt/format.h>

namespace lparvisor::test {

namespace {

using DiskBlock = std::array<std::uint64_t, LPV_DISK_WORDS_PER_BLOCK>;

bool read_block(std::ifstream& in, DiskBlock& block) {
    // The image is little-endian, as is the host (x86-64).
    // SAFETY: the block's own LPV_DISK_BLOCK_BYTES bytes, as chars (which may alias anything).
    return static_cast<bool>(in.read(reinterpret_cast<char*>(block.data()), LPV_DISK_BLOCK_BYTES));
}

// The first word of block number `index` that pass `pass` did not write as it reads; nullopt if
// the whole block holds that pass.
std::optional<std::uint64_t> first_wrong_word(const DiskBlock& block, std::uint64_t name_hash,
                                              std::uint64_t index, std::uint64_t pass) {
    const std::uint64_t seed = lpv_disk_block_seed(name_hash, index, pass);
    for (std::uint64_t word = 0; word < block.size(); ++word)
        if (block[word] != lpv_disk_word_seeded(seed, word)) return word;
    return std::nullopt;
}

}  // namespace

std::optional<std::string> check_firmware_disk(const std::string& image_path,
                                               const std::string& lpar_name, std::uint64_t pass,
                                               std::uint64_t blocks) {
    std::ifstream in(image_path, std::ios::binary);
    if (!in) return fmt::format("{}: cannot be opened", image_path);
    const std::uint64_t name_hash = lpv_disk_name_hash(lpar_name.c_str());
    DiskBlock buffer{};
    for (std::uint64_t block = 0; block < blocks; ++block) {
        if (!read_block(in, buffer))
            return fmt::format("{}: ends before block {} of {} ({} bytes needed)", image_path,
                               block, blocks, blocks * LPV_DISK_BLOCK_BYTES);
        if (auto word = first_wrong_word(buffer, name_hash, block, pass))
            return fmt::format(
                "{}: LPAR {} pass {}: block {} word {} (byte {:#x}): expected {:#018x}, found "
                "{:#018x}",
                image_path, lpar_name, pass, block, *word, block * LPV_DISK_BLOCK_BYTES + *word * 8,
                lpv_disk_word_seeded(lpv_disk_block_seed(name_hash, block, pass), *word),
                buffer[*word]);
    }
    return std::nullopt;
}

void require_firmware_disk_after_stop(const std::string& image_path, const std::string& lpar_name,
                                      std::uint64_t last_pass, std::uint64_t disk_bytes) {
    INFO("disk image " << image_path << " of " << lpar_name << ", last complete pass "
                       << last_pass);
    REQUIRE(last_pass >= 1);
    std::ifstream in(image_path, std::ios::binary);
    REQUIRE(in.is_open());
    const std::uint64_t name_hash = lpv_disk_name_hash(lpar_name.c_str());
    const std::uint64_t blocks =
        std::min<std::uint64_t>(disk_bytes, LPV_DISK_TEST_BYTES) / LPV_DISK_BLOCK_BYTES;
    DiskBlock buffer{};
    bool in_next_pass = true;
    std::uint64_t next_pass_blocks = 0;
    for (std::uint64_t block = 0; block < blocks; ++block) {
        REQUIRE(read_block(in, buffer));
        if (in_next_pass &&
            !first_wrong_word(buffer, name_hash, block, last_pass + 1).has_value()) {
            ++next_pass_blocks;
            continue;
        }
        in_next_pass = false;
        INFO("block " << block << " (" << next_pass_blocks << " blocks of pass " << last_pass + 1
                      << " before it) holds neither pass " << last_pass << " nor the next one");
        REQUIRE_FALSE(first_wrong_word(buffer, name_hash, block, last_pass).has_value());
    }
}

}  // namespace lparvisor::test
