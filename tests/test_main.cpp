// main() of every doctest binary: doctest's runner, then exit status 77 (ctest:
// SKIPPED) when a test case could not run here (LOUPE_REQUIRE_SHARED: no
// ../shared), so a skipped case is never reported as passed.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>

#include "test_util.hpp"

int main(int argc, char** argv) {
  doctest::Context context(argc, argv);
  const int rc = context.run();
  if (context.shouldExit() || rc != 0) return rc;
  if (const int n = loupe_test::skipped_cases()) {
    std::printf("SKIPPED: %d test case(s) could not run here (see their messages)\n", n);
    return 77;
  }
  return 0;
}
