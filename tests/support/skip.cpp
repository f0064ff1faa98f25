#include "support/skip.hpp"

#include <cstdio>
#include <cstdlib>

void lparvisor::test::skip_run(const std::string& reason) {
    std::fprintf(stderr, "\n*** SKIPPED: %s ***\n\n", reason.c_str());
    std::fflush(nullptr);
    std::_Exit(LPARVISOR_SKIP_CODE);
}
