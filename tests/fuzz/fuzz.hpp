// What the fuzz harnesses share. Each fuzz_<name>.cpp defines
// LLVMFuzzerTestOneInput: built with -fsanitize=fuzzer it is a libFuzzer target
// (tests/fuzz/run.sh), linked with replay_main.cpp it replays the seeds and the
// regression inputs in a normal ctest run (fuzz_regressions_<name>).
//
// The contract under test: any input ends in a result or a loupe::Error. Only
// loupe::Error is caught here: any other exception (std::out_of_range,
// std::length_error, std::bad_alloc from an unchecked size) escapes and is a
// finding, like a crash, a sanitizer report, a hang or a memory blow-up.
#pragma once
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <unistd.h>

#include <loupe/core/error.hpp>
#include <loupe/io/file.hpp>

namespace loupe_fuzz {

template <class F>
int guarded(F&& f) {
  try {
    f();
  } catch (const loupe::Error&) {
    // the clear error the input deserves
  }
  return 0;
}

inline loupe::Blob blob(const uint8_t* data, size_t size, const char* name) {
  return loupe::Blob::from_bytes(std::vector<uint8_t>(data, data + size), name);
}

// Reads each tensor's first and last byte (an out-of-bounds view is then an
// ASan report) and holds the readers to their promise that a tensor's bytes
// are exactly its shape's worth.
template <class Tensors>
void touch(const Tensors& tensors) {
  unsigned sum = 0;
  for (const auto& t : tensors) {
    if (t.view().nbytes() != t.data.size) __builtin_trap();
    if (t.data.size) sum += t.data.data[0] + t.data.data[t.data.size - 1];
  }
  volatile unsigned sink = sum;
  (void)sink;
}

// For readers that take paths: the input as a file in this process's scratch folder.
inline std::string scratch_dir() {
  static const std::string dir = [] {
    const char* tmp = std::getenv("TMPDIR");
    std::filesystem::path d = std::filesystem::path(tmp && *tmp ? tmp : "/tmp") / ("loupe-fuzz-" + std::to_string(getpid()));
    std::filesystem::create_directories(d);
    return d.string();
  }();
  return dir;
}
inline std::string write_file(const std::string& name, const uint8_t* data, size_t size) {
  const std::string path = scratch_dir() + "/" + name;
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(reinterpret_cast<const char*>(data), std::streamsize(size));
  return path;
}

}  // namespace loupe_fuzz
