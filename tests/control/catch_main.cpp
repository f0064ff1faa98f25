// The Catch2 main, compiled once for all control-plane test executables.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
