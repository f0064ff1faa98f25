// What MVSTOR step 202 ("I/O processors not busy") needs from every device of an LPAR, port
// device or virtio device alike: after the vCPUs stop, stop taking new requests, say whether one
// is still in flight, and take requests again after the move (or its abort).
#pragma once

#include <string>

namespace lparvisor {

class Quiescable {
  public:
    virtual ~Quiescable() = default;
    virtual std::string name() const = 0;  // named in a drain timeout's error
    virtual void stop_accepting() {}
    virtual void resume_accepting() {}
    virtual bool idle() const { return true; }
};

}  // namespace lparvisor
