// main() of the fuzz harnesses outside libFuzzer: runs LLVMFuzzerTestOneInput on
// every file named (folders recursively, sorted), so a normal build replays the
// seeds and tests/fuzz/regressions/<name>/ (every crash the fuzzers found) as a
// ctest test. A missing path makes it a skipped test (77), never a pass.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  std::vector<fs::path> files;
  int missing = 0;
  for (int i = 1; i < argc; ++i) {
    const fs::path p = argv[i];
    if (fs::is_directory(p)) {
      for (const auto& e : fs::recursive_directory_iterator(p))
        if (e.is_regular_file() && e.path().filename().string()[0] != '.') files.push_back(e.path());
    } else if (fs::is_regular_file(p)) {
      files.push_back(p);
    } else {  // a seed under ../shared missing: the rest still runs, the test reports skipped
      std::fprintf(stderr, "replay: %s: no such file or folder\n", argv[i]);
      ++missing;
    }
  }
  std::sort(files.begin(), files.end());
  for (const fs::path& f : files) {
    std::ifstream in(f, std::ios::binary);
    const std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::fprintf(stderr, "replay: %s (%zu bytes)\n", f.string().c_str(), bytes.size());
    LLVMFuzzerTestOneInput(bytes.data(), bytes.size());
  }
  std::printf("replayed %zu inputs, none crashed\n", files.size());
  if (missing) {
    std::printf("SKIPPED: %d seed path(s) missing (see above)\n", missing);
    return 77;
  }
  return files.empty() ? 1 : 0;
}
