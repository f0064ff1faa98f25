// A test whose precondition this host lacks ends its run with ctest's skip code, so that ctest
// reports it as Skipped, never as Passed (Catch2 v2 has no skip of its own). It ends the whole
// process: use it only in a test case that ctest runs alone, under a hidden tag ("[.name]") that
// its own ctest entry names.
#pragma once

#include <string>

namespace lparvisor::test {

// Prints "*** SKIPPED: <reason> ***" and exits with the skip code (77).
[[noreturn]] void skip_run(const std::string& reason);

}  // namespace lparvisor::test
