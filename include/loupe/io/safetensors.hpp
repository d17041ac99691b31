// .safetensors reader (huggingface/safetensors format):
//   u64 little-endian N | N bytes of JSON header | data section
// The header maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end)}
// with offsets relative to the data section, plus an optional "__metadata__"
// string -> string map. Tensors are zero-copy slices of the mmapped file.
#pragma once
#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "json.hpp"
#include "source_tensor.hpp"

namespace loupe {

struct SafetensorsFile {
  std::vector<SourceTensor> tensors;  // in data-offset order (the order of the bytes in the file)
  std::vector<std::pair<std::string, std::string>> metadata;  // "__metadata__", header order
};

// Safetensors dtype names; F32/F16/BF16 are computed with, the integer and F64
// types are carried (e.g. position_ids buffers). Anything else is an error.
inline bool safetensors_dtype(const std::string& s, DType& t) {
  static const std::pair<const char*, DType> names[] = {
      {"F32", DType::F32}, {"F16", DType::F16}, {"BF16", DType::BF16}, {"F64", DType::F64},
      {"I64", DType::I64}, {"I32", DType::I32}, {"I16", DType::I16},   {"I8", DType::I8}};
  for (auto& [n, d] : names)
    if (s == n) return t = d, true;
  return false;
}

constexpr uint64_t kSafetensorsMaxHeader = 100u << 20;  // the reference implementation's limit

// True if the bytes look like a safetensors file (a plausible length, then '{').
inline bool is_safetensors(const Blob& b) {
  if (b.size < 9) return false;
  uint64_t n;
  std::memcpy(&n, b.data, 8);
  return n >= 2 && n <= b.size - 8 && n <= kSafetensorsMaxHeader && b.data[8] == '{';
}

inline SafetensorsFile read_safetensors(const Blob& file) {
  const std::string& fn = file.name;
  Reader r(file);
  uint64_t n = r.read<uint64_t>("safetensors header length");
  if (n > file.size - 8)
    fail(fn, ": safetensors header length ", n, " is larger than the file (", file.size, " bytes): truncated or not a safetensors file");
  if (n > kSafetensorsMaxHeader) fail(fn, ": safetensors header length ", n, " exceeds the 100 MiB limit");
  std::string_view text(reinterpret_cast<const char*>(file.data + 8), size_t(n));
  if (text.empty() || text[0] != '{') fail(fn, ": safetensors header does not start with '{' (not a safetensors file?)");
  Json h = Json::parse_file_text(text, fn + " (safetensors header)");
  const size_t data_start = 8 + size_t(n);
  const uint64_t data_size = file.size - data_start;

  SafetensorsFile out;
  struct Range { uint64_t begin, end; size_t index; };
  std::vector<Range> ranges;
  const auto& keys = h.keys();
  for (size_t i = 0; i < keys.size(); ++i) {
    const std::string& name = keys[i];
    const Json& e = h.values()[i];
    if (name == "__metadata__") {
      for (size_t k = 0; k < e.keys().size(); ++k) {
        if (!e.values()[k].is_string()) fail(fn, ": __metadata__ value for '", e.keys()[k], "' is not a string");
        out.metadata.emplace_back(e.keys()[k], e.values()[k].str());
      }
      continue;
    }
    const std::string what = fn + ": tensor '" + name + "'";
    if (!e.is_object()) fail(what, ": header entry is not an object");
    const Json* dt = e.find("dtype");
    const Json* sh = e.find("shape");
    const Json* off = e.find("data_offsets");
    if (!dt || !sh || !off) fail(what, ": header entry needs dtype, shape and data_offsets");
    SourceTensor t;
    t.name = name;
    if (!dt->is_string() || !safetensors_dtype(dt->str(), t.dtype))
      fail(what, ": unsupported dtype ", dt->is_string() ? "'" + dt->str() + "'" : std::string("(not a string)"),
           " (supported: F32, F16, BF16, F64, I64, I32, I16, I8)");
    if (!sh->is_array()) fail(what, ": shape is not an array");
    for (const Json& d : sh->array()) {
      if (!d.is_number() || d.integer() < 0) fail(what, ": shape has a bad dimension");
      t.shape.push_back(d.integer());
    }
    if (!off->is_array() || off->array().size() != 2 || !off->array()[0].is_number() || !off->array()[1].is_number())
      fail(what, ": data_offsets must be [begin, end]");
    int64_t b = off->array()[0].integer(), en = off->array()[1].integer();
    if (b < 0 || en < b) fail(what, ": bad data_offsets [", b, ", ", en, "]");
    if (uint64_t(en) > data_size)
      fail(what, ": data_offsets [", b, ", ", en, ") run past the end of the data section (", data_size,
           " bytes): file truncated?");
    uint64_t want = checked_nbytes(t.dtype, t.shape, what);
    if (uint64_t(en - b) != want)
      fail(what, ": data_offsets [", b, ", ", en, ") hold ", en - b, " bytes but shape ", t.shape_str(), " of ",
           dtype_name(t.dtype), " needs ", want);
    t.data = file.slice(data_start + size_t(b), size_t(en - b), fn + ":" + name);
    ranges.push_back({uint64_t(b), uint64_t(en), out.tensors.size()});
    out.tensors.push_back(std::move(t));
  }
  // Overlapping tensors would alias each other's bytes: the format forbids it.
  std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& c) {
    return a.begin != c.begin ? a.begin < c.begin : a.end != c.end ? a.end < c.end : a.index < c.index;
  });
  for (size_t k = 1; k < ranges.size(); ++k)
    if (ranges[k].begin < ranges[k - 1].end)
      fail(fn, ": tensors '", out.tensors[ranges[k - 1].index].name, "' and '", out.tensors[ranges[k].index].name,
           "' overlap in the data section");
  std::vector<SourceTensor> sorted;
  sorted.reserve(ranges.size());
  for (const Range& rg : ranges) sorted.push_back(std::move(out.tensors[rg.index]));
  out.tensors = std::move(sorted);
  return out;
}

inline SafetensorsFile read_safetensors(const std::string& path) { return read_safetensors(Blob::open(path)); }

}  // namespace loupe
