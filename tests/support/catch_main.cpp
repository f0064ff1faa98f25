// The main of the unit and control-plane tests: Catch2's own session.
#include "support/catch_session.hpp"

int main(int argc, char** argv) {
    return lparvisor::test::run_catch_session(argc, argv);
}
