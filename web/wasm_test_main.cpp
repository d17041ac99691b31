// main() of the WebAssembly unit-test binary (web/CMakeLists.txt): doctest's runner;
// the test cases come from tests/test_*.cpp compiled into the same binary.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
