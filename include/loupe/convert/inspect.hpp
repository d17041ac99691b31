// Human-readable listing of a GGUF file, a checkpoint file or a model
// directory: metadata and every tensor's name, dtype and shape.
#pragma once
#include <cstdio>
#include <filesystem>
#include <string>

#include "../io/checkpoint.hpp"
#include "../io/gguf.hpp"

namespace loupe {

inline std::string describe_value(const GgufValue& v) {
  switch (v.type) {
    case GgufType::STRING: return "\"" + (v.s.size() > 80 ? v.s.substr(0, 77) + "..." : v.s) + "\"";
    case GgufType::F32: case GgufType::F64: return std::to_string(v.f);
    case GgufType::U64: return std::to_string(v.u);
    case GgufType::ARRAY: {
      std::string s = std::string("[") + gguf_type_name(v.elem) + " x " + std::to_string(v.arr.size()) + "]";
      if (!v.arr.empty()) s += " " + describe_value(v.arr[0]) + (v.arr.size() > 1 ? ", ..." : "");
      return s;
    }
    default: return std::to_string(v.i);
  }
}

// The listing as text, one line per key and tensor.
inline std::string inspect(const std::string& path) {
  std::string out;
  auto line = [&out](const char* fmt, auto... args) {
    const size_t at = out.size(), n = size_t(std::snprintf(nullptr, 0, fmt, args...));
    out.resize(at + n + 1);
    std::snprintf(&out[at], n + 1, fmt, args...);
    out.resize(at + n);
  };
  Blob head = std::filesystem::is_directory(path) ? Blob() : Blob::open(path);
  if (head.size >= 4 && std::memcmp(head.data, "GGUF", 4) == 0) {
    GgufFile g = GgufFile::parse(head);
    line("%s: GGUF v%u, %zu metadata keys, %zu tensors\n", path.c_str(), g.version, g.kv.size(), g.tensors.size());
    for (auto& [k, v] : g.kv) line("  %-44s %s\n", k.c_str(), describe_value(v).c_str());
    for (auto& t : g.tensors)
      line("  %-44s %-5s %s\n", t.name.c_str(), dtype_name(t.dtype), t.view.shape_str().c_str());
    return out;
  }
  Checkpoint ck = Checkpoint::open(path);
  size_t bytes = 0;
  for (auto& t : ck.tensors) bytes += t.data.size;
  line("%s: %zu tensors, %.1f MiB\n", path.c_str(), ck.tensors.size(), double(bytes) / 1048576.0);
  for (auto& t : ck.tensors) line("  %-60s %-5s %s\n", t.name.c_str(), dtype_name(t.dtype), t.shape_str().c_str());
  return out;
}

}  // namespace loupe
