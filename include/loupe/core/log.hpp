// Library code never prints: what it has to say (notes for the user, progress
// of long work) goes to callbacks that the frontends install (the CLI prints to
// stderr, the converter draws a progress bar, the WASM engine posts to JS).
// A null callback means nobody listens.
#pragma once
#include <cstddef>
#include <functional>
#include <string>

namespace loupe {

// A line for the user ("note: ...").
using LogFn = std::function<void(const std::string& line)>;

// Progress of one long task (writing a file, a batch of images): `done` of
// `total` items and, where known, bytes. The last call of a task has done == total.
struct Progress {
  std::string task;  // "writing model.gguf"
  size_t done = 0, total = 0;
  size_t bytes_done = 0, bytes_total = 0;  // 0: not measured in bytes
};
using ProgressFn = std::function<void(const Progress&)>;

}  // namespace loupe
