// The host side of the firmware's virtio-blk test: whether a raw disk image holds exactly the
// pattern the firmware wrote in a given pass (lpv_disk_word in lparvisor/abi.h, the function the
// firmware itself uses). Check against the "DISK <name> final pass <P> blocks <N>" line.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace lparvisor::test {

// nullopt if the first `blocks` 4 KiB blocks of the image hold pass `pass`'s pattern for
// `lpar_name`; otherwise a description of the first problem (the image cannot be read or is too
// short, or block, word, expected and found values of the first mismatch).
std::optional<std::string> check_firmware_disk(const std::string& image_path,
                                               const std::string& lpar_name, std::uint64_t pass,
                                               std::uint64_t blocks);

// For an image of `disk_bytes` whose LPAR was stopped (and its devices drained) after the
// firmware reported pass `last_pass` ok ("DISK <name> pass <P> ok"): requires that every block
// the firmware tests (the first min(disk_bytes, LPV_DISK_TEST_BYTES)) holds pass `last_pass`,
// except that a prefix may already hold pass last_pass + 1, the pass under way at the stop.
void require_firmware_disk_after_stop(const std::string& image_path, const std::string& lpar_name,
                                      std::uint64_t last_pass, std::uint64_t disk_bytes);

}  // namespace lparvisor::test
