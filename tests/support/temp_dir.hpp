// A test's scratch directory under /tmp, and the empty raw disk images the tests put in it.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

namespace lparvisor::test {

// /tmp/lparvisor-<purpose>-XXXXXX, removed with all it holds when the test ends.
struct TempDir {
    explicit TempDir(const std::string& purpose);
    ~TempDir();
    // One owner: a copy would remove the directory under the other.
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;

    // The path of `name` inside the directory.
    std::string file(const std::string& name) const { return (path / name).string(); }

    std::filesystem::path path;
};

// Creates <dir>/<name>.img: `bytes` bytes of zeros (sparse), a virtio-blk disk's backing file.
// Returns its path.
std::string make_disk(const TempDir& dir, const std::string& name, std::uint64_t bytes);

}  // namespace lparvisor::test
