#include "support/temp_dir.hpp"

#include <catch2/catch.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>

namespace lparvisor::test {

TempDir::TempDir(const std::string& purpose) {
    std::string pattern = "/tmp/lparvisor-" + purpose + "-XXXXXX";
    REQUIRE(::mkdtemp(pattern.data()) != nullptr);
    path = pattern;
}

TempDir::~TempDir() {
    std::error_code ignored;  // a destructor must not throw; a leftover directory is harmless
    std::filesystem::remove_all(path, ignored);
}

std::string make_disk(const TempDir& dir, const std::string& name, std::uint64_t bytes) {
    auto path = (dir.path / (name + ".img")).string();
    int fd = ::open(path.c_str(), O_CREAT | O_RDWR | O_TRUNC, 0600);
    REQUIRE(fd >= 0);
    REQUIRE(::ftruncate(fd, static_cast<off_t>(bytes)) == 0);
    ::close(fd);
    return path;
}

}  // namespace lparvisor::test
