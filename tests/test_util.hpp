// Shared helpers for the doctest binaries: where ../shared is, a scratch
// directory, and running the Python references in reference/ with
// Debian's /usr/bin/python3 (the one that sees python3-torch).
#pragma once
#include <doctest/doctest.h>

#include <loupe/core/error.hpp>
#include <loupe/io/gguf.hpp>
#include <loupe/io/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include <sys/resource.h>

namespace loupe_test {
namespace fs = std::filesystem;

inline fs::path source_dir() { return LOUPE_SOURCE_DIR; }
inline fs::path shared_dir() { return source_dir().parent_path() / "shared"; }
inline bool have_shared() { return fs::exists(shared_dir() / "README.md"); }

// A fresh, empty scratch directory for one test case.
inline fs::path scratch(const std::string& name) {
  fs::path p = fs::path(LOUPE_TEST_TMP) / name;
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

inline std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// Run reference/<script> with arguments; fails the test on a non-zero exit.
inline void run_python(const std::string& script, const std::string& args) {
  std::string cmd = "/usr/bin/python3 " + quote((source_dir() / "reference" / script).string()) + " " + args;
  int rc = std::system(cmd.c_str());
  INFO("command: " << cmd);
  REQUIRE(rc == 0);
}

inline std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// The message of the loupe::Error that f throws ("" if it throws none).
template <class F>
std::string error_of(F f) {
  try {
    f();
  } catch (const loupe::Error& e) {
    return e.what();
  }
  return "";
}

// max |a − b| / max |b|: the relative error the reference comparisons quote.
// The process's peak resident memory so far, in MiB (Linux reports KiB). Tests
// that bound what an input costs compare it before and after.
inline long peak_rss_mb() {
  struct rusage u {};
  getrusage(RUSAGE_SELF, &u);
  return long(u.ru_maxrss) / 1024;
}

inline double rel_err(const float* a, const float* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i)
    num = std::max(num, double(std::fabs(a[i] - b[i]))), den = std::max(den, double(std::fabs(b[i])));
  return num / den;
}

inline double rel_err(const std::vector<float>& a, const float* b, size_t n) { return rel_err(a.data(), b, n); }

// A JSON array of integers (token ids).
inline std::vector<int32_t> ints(const loupe::Json& arr) {
  std::vector<int32_t> v;
  for (const loupe::Json& x : arr.array()) v.push_back(int32_t(x.integer()));
  return v;
}

// Test cases that returned early because they could not run here; test_main.cpp
// then ends the binary with 77, which ctest reports as skipped (not passed).
inline int& skipped_cases() {
  static int n = 0;
  return n;
}

// Skip a whole test case (with a message) when ../shared is not there.
#define LOUPE_REQUIRE_SHARED()                                                  \
  do {                                                                          \
    if (!loupe_test::have_shared()) {                                           \
      MESSAGE("skipped: ../shared is absent (real-data tests need it)");        \
      ++loupe_test::skipped_cases();                                            \
      return;                                                                   \
    }                                                                           \
  } while (0)

// Two GGUF files hold the same tensors: names, order, types, shapes and bytes
// (metadata may differ).
inline void check_same_tensors(const std::string& a_path, const std::string& b_path) {
  const loupe::GgufFile a = loupe::GgufFile::open(a_path), b = loupe::GgufFile::open(b_path);
  INFO(a_path << " vs " << b_path);
  REQUIRE(a.tensors.size() == b.tensors.size());
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    const loupe::GgufTensor &x = a.tensors[i], &y = b.tensors[i];
    INFO(x.name);
    CHECK(x.name == y.name);
    CHECK(x.shape == y.shape);
    CHECK(x.dtype == y.dtype);
    REQUIRE(x.view.nbytes() == y.view.nbytes());
    CHECK(std::memcmp(x.view.data, y.view.data, x.view.nbytes()) == 0);
  }
}

}  // namespace loupe_test
