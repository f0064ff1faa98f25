// Catch2's implementation, compiled once for every test executable (the unit and control tests'
// main is catch_main.cpp, the KVM tests' kvm_test_main.cpp). It is the slowest file of the test
// build: one copy instead of three saves a minute of each lane's build on CI's two cores.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include "support/catch_session.hpp"

int lparvisor::test::run_catch_session(int argc, char** argv) {
    return Catch::Session().run(argc, argv);
}
