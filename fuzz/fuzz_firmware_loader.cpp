// libFuzzer target for the firmware ELF loader (boot::load_firmware_elf_bytes, the in-memory
// entry point load_firmware_elf uses once it has read the file): the input is the file.
//
// Invariants beyond "no crash, no sanitizer report": a refused file is refused with
// lparvisor::Error (nothing else escapes); nothing outside the image area [LPV_IMAGE_GPA,
// LPV_IMAGE_END) of the LPAR's storage, nor past the storage, is written; an accepted image lies
// in the image area and its entry point inside it.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "boot/firmware_loader.hpp"
#include "fuzz_support.hpp"
#include "util/error.hpp"

namespace {

using namespace lparvisor;

constexpr std::uint64_t kStorage = 2 * 1024 * 1024;
constexpr std::uint8_t kUntouched = 0xa5;

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    fuzz::quiet_logs();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static fuzz::GuardedStorage* storage = [] {
        auto* s = new fuzz::GuardedStorage(kStorage);
        std::memset(s->data(), kUntouched, kStorage);
        return s;
    }();
    const std::vector<std::uint8_t> file(data, data + size);
    try {
        const boot::LoadedImage image =
            boot::load_firmware_elf_bytes(file, "fuzz.elf", storage->memory());
        fuzz::check(image.lowest >= LPV_IMAGE_GPA && image.highest <= LPV_IMAGE_END &&
                        image.lowest < image.highest,
                    "an accepted image outside the image area");
        fuzz::check(image.entry >= image.lowest && image.entry < image.highest,
                    "an accepted entry point outside the image");
        fuzz::tally("accepted");
    } catch (const Error&) {
        fuzz::tally("refused");
    }
    static const std::vector<std::uint8_t> untouched(kStorage, kUntouched);
    if (std::memcmp(storage->data(), untouched.data(), LPV_IMAGE_GPA) != 0)
        fuzz::fail("written below the image area");
    if (std::memcmp(storage->data() + LPV_IMAGE_END, untouched.data(), kStorage - LPV_IMAGE_END))
        fuzz::fail("written above the image area");
    storage->check_guard();
    return 0;
}
