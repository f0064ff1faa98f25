// The project's error policy, decided once:
//  - Set-up and operator requests (configuration, control socket) throw lparvisor::Error, whose
//    message carries the facts an operator needs ("LPAR2: target 400-656 MiB overlaps LPAR3 ...").
//  - Anything a guest can trigger (exits, paravirtual requests, device queues) returns a value
//    and never throws through a vCPU loop.
#pragma once

#include <stdexcept>
#include <string>

namespace lparvisor {

enum class ErrorKind {
    InvalidArgument,  // the request itself is wrong (bad value, misaligned, same origin)
    NotFound,         // unknown LPAR
    Refused,          // valid request that the current state does not allow (overlap, no room)
    Busy,             // another operation holds the LPAR, or devices did not go idle in time
    System,           // a host call failed (errno in the message)
};

class Error : public std::runtime_error {
  public:
    Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
    ErrorKind kind() const noexcept { return kind_; }

  private:
    ErrorKind kind_;
};

// Throws Error(System) with "what: strerror(errno)".
[[noreturn]] void throw_errno(const std::string& what);
[[noreturn]] void throw_errno(const std::string& what, int saved_errno);

}  // namespace lparvisor
