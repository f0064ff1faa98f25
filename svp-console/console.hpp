// svp's console commands that keep a connection open: `console --follow` (an LPAR's serial
// output, followed by offset) and `console --attach` (the same output, and what the operator
// types goes to the LPAR's serial port).
//
// Both read with lpar.console's `since`: each answer says where the next read carries on
// (`next`) and which IPL the offsets belong to (`ipl`), so nothing is printed twice or skipped
// silently. Bytes gone from the daemon's ring before they were read are said on stderr; a re-IPL
// (reset, a guest reboot) is said on stderr and the new IPL's output follows from its start.
// While the LPAR has no console (between two IPLs, deactivated) they wait for it, saying so once.
#pragma once

#include <chrono>
#include <csignal>
#include <cstddef>
#include <functional>
#include <string>

#include "client.hpp"

namespace lparvisor::svp {

// The key that detaches `console --attach`, as telnet and virsh console use it: Ctrl-].
inline constexpr char kDetachKey = 0x1d;

struct ConsoleOptions {
    std::string socket_path;
    std::string lpar;
    std::size_t bytes = 4096;  // how much recent output to show first
    bool json_lines = false;   // output as {"lpar","text"} JSON lines instead of raw bytes
    std::chrono::milliseconds timeout{10000};  // each request's
    std::chrono::milliseconds interval{200};   // between reads when nothing happens
};

// Prints the daemon's refusal (a JSON-RPC error) and returns svp's exit code for it.
using RefusalHandler = std::function<int(const Reply& reply)>;

// Follows the LPAR's output until `interrupted` is set (SIGINT/SIGTERM): 0, or the refusal's
// exit code.
int follow_console(const ConsoleOptions& options, const volatile std::sig_atomic_t& interrupted,
                   const RefusalHandler& refuse);

// Attaches to the LPAR's console: takes its input (lpar.console_attach; when another client
// holds it, says who and only reads), puts a terminal on stdin into raw mode (restored on every
// way out), sends what is typed with lpar.console_write (the rest of a partly taken write later,
// in order), and prints the output. Ends at the detach key, at SIGINT/SIGTERM, or, when stdin is
// not a terminal and ends, once `interrupted` is set (input is given back at once). 0, or the
// refusal's exit code.
int attach_console(const ConsoleOptions& options, const volatile std::sig_atomic_t& interrupted,
                   const RefusalHandler& refuse);

}  // namespace lparvisor::svp
