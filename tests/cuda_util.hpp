// The GPU the cuda-labelled tests run on (tests/CMakeLists.txt), made once.
// Without one (no driver, no device) the whole binary prints "SKIP: <why>" and
// exits with 77, ctest's SKIP_RETURN_CODE: skipped, never passed.
#pragma once
#include <loupe/ops/backend.hpp>

#include <cstdio>
#include <cstdlib>
#include <string>

namespace loupe_test {

// Kept to the end of the process (not destroyed at exit, after the CUDA runtime).
inline loupe::Backend& gpu() {
  static loupe::Backend* be = [] {
    std::string why;
    loupe::Backend* b = loupe::make_cuda_backend(0, &why).release();
    if (!b) {
      std::printf("SKIP: %s\n", why.c_str());
      std::fflush(stdout);
      std::exit(77);
    }
    return b;
  }();
  return *be;
}

}  // namespace loupe_test
