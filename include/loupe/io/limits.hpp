// Limits on what a model file can make loupe allocate before its contents are
// known to be sane. Each default is far above what real models need (the
// comments say by how much) and, for a file that is legitimate, can be raised
// with one environment variable:
//
//   LOUPE_MAX_JSON_MB    JSON read from a model directory: config.json,
//                        adapter_config.json, *.index.json, safetensors headers
//   LOUPE_MAX_GGUF_KEYS  metadata entries in a GGUF file
//
// A limit is checked before the parse that would allocate, and the error names
// the file, the limit and its variable.
#pragma once
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "../core/error.hpp"

namespace loupe {

struct ReadLimit {
  const char* env;     // the environment variable that sets it
  uint64_t dflt;       // its default, in `unit`s
  uint64_t unit;       // bytes per unit (1 MiB for sizes), 1 for counts
  const char* unit_name;

  // The limit in bytes (or items): the variable's value when it is set.
  uint64_t value() const {
    const char* e = std::getenv(env);
    if (!e || !*e) return dflt * unit;
    errno = 0;
    char* end = nullptr;
    const unsigned long long v = std::strtoull(e, &end, 10);
    if (errno || *end || v == 0 || e[0] == '-' || v > UINT64_MAX / unit)
      fail(env, "='", e, "' is not a positive whole number of ", unit_name);
    return uint64_t(v) * unit;
  }
  // "the 8 MiB limit (LOUPE_MAX_JSON_MB=8; raise it if the file is legitimate)"
  std::string describe() const {
    const uint64_t v = value() / unit;
    return "the " + std::to_string(v) + " " + unit_name + " limit (" + env + "=" + std::to_string(v) +
           "; set " + env + " higher if the file is legitimate)";
  }
};

// A JSON tree costs ~40x its text where the text is all small numbers (one
// 80-byte node per 2 bytes of "0,"): 8 MiB caps a parse near 350 MB. Real
// files are far smaller: a 7B model's safetensors shard header ~30 KB, a 70B
// index ~60 KB, config.json ~2 KB.
inline constexpr ReadLimit kJsonFileLimit{"LOUPE_MAX_JSON_MB", 8, uint64_t(1) << 20, "MiB"};

// llama.cpp's GGUFs hold 20-60 metadata keys; each costs ~250 bytes of index,
// so 65536 keys cap that near 16 MB (array values are stored compactly and do
// not count against this).
inline constexpr ReadLimit kGgufKeyLimit{"LOUPE_MAX_GGUF_KEYS", 65536, 1, "keys"};

}  // namespace loupe
