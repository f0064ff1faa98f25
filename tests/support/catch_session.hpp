// Catch2's session, run from a main of our own. Catch2 v2 declares Catch::Session only in the
// one file that holds its implementation (catch_session.cpp), so mains call it through here.
#pragma once

namespace lparvisor::test {

// Catch::Session().run(argc, argv): the test run and its exit status.
int run_catch_session(int argc, char** argv);

}  // namespace lparvisor::test
