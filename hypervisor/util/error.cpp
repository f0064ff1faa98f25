#include "util/error.hpp"

#include <cerrno>
#include <cstring>

namespace lparvisor {

void throw_errno(const std::string& what, int saved_errno) {
    throw Error(ErrorKind::System, what + ": " + std::strerror(saved_errno));
}

void throw_errno(const std::string& what) {
    throw_errno(what, errno);
}

}  // namespace lparvisor
