// Limits on what a model file can make loupe allocate before its contents are
// known to be sane. Each default is far above what real models need (the
// comments say by how much) and, for a file that is legitimate, can be raised
// with one environment variable:
//
//   LOUPE_MAX_JSON_MB    JSON read from a model directory: config.json,
//                        adapter_config.json, *.index.json, safetensors headers
//   LOUPE_MAX_GGUF_METADATA_MB  memory a GGUF file's metadata takes once parsed
//   LOUPE_MAX_STRIDED_COPY_MB   copies of strided tensors in a torch.save file,
//                               beyond the file's own size
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

// A JSON tree costs ~32x its text where the text is all small numbers (one
// 64-byte node per 2 bytes of "0,"): 8 MiB caps a parse near 300 MB. Real
// files are far smaller: a 7B model's safetensors shard header ~30 KB, a 70B
// index ~60 KB, config.json ~2 KB.
inline constexpr ReadLimit kJsonFileLimit{"LOUPE_MAX_JSON_MB", 8, uint64_t(1) << 20, "MiB"};

// What a GGUF's metadata may cost in memory once parsed: each key or array
// element is a GgufValue (~90 bytes) plus its string's characters, so a 20 MB
// u8 array would cost 1.7 GB. Real files are far smaller: LLaMA-2's 32000-token
// vocabulary (three arrays) ~9 MB, Llama 3's 128k tokens + 280k merges ~65 MB.
inline constexpr ReadLimit kGgufMetadataLimit{"LOUPE_MAX_GGUF_METADATA_MB", 256, uint64_t(1) << 20, "MiB"};

// A torch.save file's strided views (a transpose, a slice, an expand) are
// copied out at open. A real checkpoint's copies are at most its own size (a
// transposed weight is as big as its storage; the one expand in CLIP, the
// position_ids buffer, has a size-1 dimension), so the copies may take the
// file's size plus this: an expand of a 514-byte file to 2 GB is refused.
inline constexpr ReadLimit kStridedCopyLimit{"LOUPE_MAX_STRIDED_COPY_MB", 256, uint64_t(1) << 20, "MiB"};

}  // namespace loupe
