// GGUF v2/v3 reader and writer (llama.cpp's file format).
//
// Layout: "GGUF", version u32, n_tensors u64, n_kv u64, then n_kv (key, type, value)
// records, then n_tensors infos (name, n_dims u32, ne[n_dims] u64 innermost first,
// type u32, offset u64 relative to the data section), padding to
// `general.alignment` (default 32), then the tensor data.
// The reader maps the file and hands out views into it; it checks every count,
// length and offset against the bytes that are there. The writer streams tensors
// one at a time into a temporary file that is renamed only when all went well.
#pragma once
#include <cstdio>
#include <functional>
#include <string>
#include <unordered_map>
#include <vector>

#include "file.hpp"
#include "limits.hpp"
#include "output_files.hpp"
#include "../core/tensor.hpp"

namespace loupe {

enum class GgufType : uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, U64 = 10, I64 = 11, F64 = 12,
};

inline const char* gguf_type_name(GgufType t) {
  static const char* names[] = {"u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool",
                                "string", "array", "u64", "i64", "f64"};
  return uint32_t(t) <= 12 ? names[uint32_t(t)] : "invalid";
}

// One metadata value. Integers keep their exact value in `i` (or `u` for u64),
// floats in `f`; arrays hold their elements (all of type `elem`).
struct GgufValue {
  GgufType type = GgufType::U32;
  GgufType elem = GgufType::U32;  // arrays only
  int64_t i = 0;
  uint64_t u = 0;
  double f = 0;
  std::string s;
  std::vector<GgufValue> arr;

  bool is_int() const {
    switch (type) {
      case GgufType::U8: case GgufType::I8: case GgufType::U16: case GgufType::I16:
      case GgufType::U32: case GgufType::I32: case GgufType::U64: case GgufType::I64:
      case GgufType::BOOL: return true;
      default: return false;
    }
  }
  bool is_float() const { return type == GgufType::F32 || type == GgufType::F64; }

  static GgufValue of(GgufType t, int64_t v) { GgufValue x; x.type = t; x.i = v; x.u = uint64_t(v); x.f = double(v); return x; }
  static GgufValue u32(uint32_t v) { return of(GgufType::U32, v); }
  static GgufValue i32(int32_t v) { return of(GgufType::I32, v); }
  static GgufValue u64(uint64_t v) { GgufValue x = of(GgufType::U64, int64_t(v)); x.u = v; return x; }
  static GgufValue boolean(bool v) { return of(GgufType::BOOL, v); }
  static GgufValue f32(float v) { GgufValue x; x.type = GgufType::F32; x.f = v; return x; }
  static GgufValue str(std::string v) { GgufValue x; x.type = GgufType::STRING; x.s = std::move(v); return x; }
  template <class T>
  static GgufValue array(GgufType elem, const std::vector<T>& items) {
    GgufValue x;
    x.type = GgufType::ARRAY;
    x.elem = elem;
    x.arr.reserve(items.size());
    for (const T& it : items) {
      if constexpr (std::is_same_v<T, std::string>) x.arr.push_back(str(it));
      else if constexpr (std::is_floating_point_v<T>) { GgufValue e; e.type = elem; e.f = double(it); x.arr.push_back(e); }
      else x.arr.push_back(of(elem, int64_t(it)));
    }
    return x;
  }
};

struct GgufTensor {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;  // PyTorch order (reverse of GGUF's ne[])
  uint64_t offset = 0;         // relative to the data section
  TensorView view;
};

struct GgufFile {
  Blob blob;
  uint32_t version = 3;
  size_t alignment = 32;
  size_t data_offset = 0;
  std::vector<std::pair<std::string, GgufValue>> kv;
  std::vector<GgufTensor> tensors;
  std::unordered_map<std::string, size_t> kv_index, tensor_index;

  static GgufFile open(const std::string& path) { return parse(Blob::open(path)); }
  static GgufFile parse(Blob blob);

  const std::string& name() const { return blob.name; }
  const GgufValue* find(const std::string& key) const {
    auto it = kv_index.find(key);
    return it == kv_index.end() ? nullptr : &kv[it->second].second;
  }
  const GgufValue& at(const std::string& key) const {
    const GgufValue* v = find(key);
    if (!v) fail(name(), ": missing metadata key '", key, "'");
    return *v;
  }
  int64_t get_int(const std::string& key) const {
    const GgufValue& v = at(key);
    if (!v.is_int()) fail(name(), ": metadata '", key, "' is ", gguf_type_name(v.type), ", expected an integer");
    return v.i;
  }
  int64_t get_int(const std::string& key, int64_t dflt) const { return find(key) ? get_int(key) : dflt; }
  double get_float(const std::string& key) const {
    const GgufValue& v = at(key);
    if (!v.is_float() && !v.is_int()) fail(name(), ": metadata '", key, "' is ", gguf_type_name(v.type), ", expected a number");
    return v.is_float() ? v.f : double(v.i);
  }
  double get_float(const std::string& key, double dflt) const { return find(key) ? get_float(key) : dflt; }
  bool get_bool(const std::string& key, bool dflt) const { return find(key) ? get_int(key) != 0 : dflt; }
  const std::string& get_str(const std::string& key) const {
    const GgufValue& v = at(key);
    if (v.type != GgufType::STRING) fail(name(), ": metadata '", key, "' is ", gguf_type_name(v.type), ", expected a string");
    return v.s;
  }
  std::string get_str(const std::string& key, const std::string& dflt) const { return find(key) ? get_str(key) : dflt; }
  const GgufValue& get_array(const std::string& key, GgufType elem) const {
    const GgufValue& v = at(key);
    if (v.type != GgufType::ARRAY || v.elem != elem)
      fail(name(), ": metadata '", key, "' is not an array of ", gguf_type_name(elem));
    return v;
  }
  const GgufTensor* tensor(const std::string& n) const {
    auto it = tensor_index.find(n);
    return it == tensor_index.end() ? nullptr : &tensors[it->second];
  }
  const GgufTensor& get_tensor(const std::string& n) const {
    const GgufTensor* t = tensor(n);
    if (!t) fail(name(), ": missing tensor '", n, "'");
    return *t;
  }
};

namespace gguf_detail {

inline std::string read_string(Reader& r, const char* what) {
  uint64_t n = r.read<uint64_t>(what);
  if (n > r.left()) fail(r.blob.name, ": ", what, " at offset ", r.pos - 8, " claims ", n, " bytes, only ", r.left(), " left");
  return r.string(size_t(n), what);
}

inline size_t scalar_size(GgufType t) {
  switch (t) {
    case GgufType::U8: case GgufType::I8: case GgufType::BOOL: return 1;
    case GgufType::U16: case GgufType::I16: return 2;
    case GgufType::U32: case GgufType::I32: case GgufType::F32: return 4;
    case GgufType::U64: case GgufType::I64: case GgufType::F64: return 8;
    default: return 0;
  }
}

// What the parsed metadata may still take (kGgufMetadataLimit), charged before
// each allocation the file's numbers ask for.
struct MetadataBudget {
  uint64_t left = kGgufMetadataLimit.value();
  void charge(const Reader& r, const std::string& key, uint64_t bytes) {
    if (bytes > left)
      fail(r.blob.name, ": metadata '", key, "' would take more memory than ", kGgufMetadataLimit.describe());
    left -= bytes;
  }
};

inline GgufValue read_value(Reader& r, GgufType t, const std::string& key, int depth, MetadataBudget& budget) {
  GgufValue v;
  v.type = t;
  switch (t) {
    case GgufType::U8: v.i = r.read<uint8_t>("u8 value"); break;
    case GgufType::I8: v.i = r.read<int8_t>("i8 value"); break;
    case GgufType::U16: v.i = r.read<uint16_t>("u16 value"); break;
    case GgufType::I16: v.i = r.read<int16_t>("i16 value"); break;
    case GgufType::U32: v.i = r.read<uint32_t>("u32 value"); break;
    case GgufType::I32: v.i = r.read<int32_t>("i32 value"); break;
    case GgufType::U64: v.u = r.read<uint64_t>("u64 value"); v.i = int64_t(v.u); break;
    case GgufType::I64: v.i = r.read<int64_t>("i64 value"); break;
    case GgufType::F32: v.f = r.read<float>("f32 value"); break;
    case GgufType::F64: v.f = r.read<double>("f64 value"); break;
    case GgufType::BOOL: {
      uint8_t b = r.read<uint8_t>("bool value");
      if (b > 1) fail(r.blob.name, ": metadata '", key, "': bool value ", int(b), " at offset ", r.pos - 1);
      v.i = b;
      break;
    }
    case GgufType::STRING:
      v.s = read_string(r, "string value");  // no longer than the file
      budget.charge(r, key, v.s.size());     // (the GgufValue itself is charged by the caller)
      break;
    case GgufType::ARRAY: {
      if (depth > 0) fail(r.blob.name, ": metadata '", key, "': nested arrays are not supported");
      uint32_t et = r.read<uint32_t>("array element type");
      if (et > 12) fail(r.blob.name, ": metadata '", key, "': invalid array element type ", et);
      v.elem = GgufType(et);
      uint64_t n = r.read<uint64_t>("array length");
      size_t min_size = v.elem == GgufType::STRING ? 8 : v.elem == GgufType::ARRAY ? 12 : scalar_size(v.elem);
      if (n > r.left() / min_size)
        fail(r.blob.name, ": metadata '", key, "': array of ", n, " ", gguf_type_name(v.elem), " does not fit in the ", r.left(), " bytes left");
      budget.charge(r, key, n * sizeof(GgufValue));
      v.arr.reserve(size_t(n));
      for (uint64_t k = 0; k < n; ++k) v.arr.push_back(read_value(r, v.elem, key, depth + 1, budget));
      break;
    }
  }
  if (t != GgufType::U64) v.u = uint64_t(v.i);
  if (v.is_int()) v.f = double(v.i);
  return v;
}

}  // namespace gguf_detail

inline GgufFile GgufFile::parse(Blob b) {
  using namespace gguf_detail;
  GgufFile g;
  g.blob = std::move(b);
  const std::string& fn = g.blob.name;
  Reader r(g.blob);
  if (g.blob.size < 4 || std::memcmp(g.blob.data, "GGUF", 4) != 0) fail(fn, ": not a GGUF file (bad magic)");
  r.pos = 4;
  g.version = r.read<uint32_t>("version");
  if (g.version == 1) fail(fn, ": GGUF version 1 is not supported (re-convert the model)");
  if (g.version != 2 && g.version != 3) fail(fn, ": unsupported GGUF version ", g.version, " (big-endian file?)");
  uint64_t n_tensors = r.read<uint64_t>("tensor count");
  uint64_t n_kv = r.read<uint64_t>("metadata count");
  // Each kv takes at least 12 bytes, each tensor info at least 24: reject absurd counts early.
  if (n_kv > r.left() / 12) fail(fn, ": metadata count ", n_kv, " cannot fit in a ", g.blob.size, "-byte file");
  if (n_tensors > r.left() / 24) fail(fn, ": tensor count ", n_tensors, " cannot fit in a ", g.blob.size, "-byte file");

  MetadataBudget budget;
  for (uint64_t k = 0; k < n_kv; ++k) {
    std::string key = read_string(r, "metadata key");
    budget.charge(r, key, sizeof(GgufValue) + 2 * key.size() + 64);  // the entry, its key twice (kv, kv_index), the index node
    uint32_t t = r.read<uint32_t>("metadata type");
    if (t > 12) fail(fn, ": metadata '", key, "' has invalid type ", t, " at offset ", r.pos - 4);
    GgufValue v = read_value(r, GgufType(t), key, 0, budget);
    if (g.kv_index.count(key)) fail(fn, ": duplicate metadata key '", key, "'");
    g.kv_index[key] = g.kv.size();
    g.kv.emplace_back(std::move(key), std::move(v));
  }
  if (const GgufValue* a = g.find("general.alignment")) {
    if (!a->is_int() || a->i <= 0 || (a->i & (a->i - 1)) || a->i > 1 << 20)
      fail(fn, ": general.alignment must be a power of two, got ", a->i);
    g.alignment = size_t(a->i);
  }

  for (uint64_t k = 0; k < n_tensors; ++k) {
    GgufTensor t;
    t.name = read_string(r, "tensor name");
    uint32_t nd = r.read<uint32_t>("tensor n_dims");
    if (nd == 0 || nd > uint32_t(kMaxDims)) fail(fn, ": tensor '", t.name, "' has ", nd, " dimensions (1..", kMaxDims, " supported)");
    std::vector<int64_t> ne(nd);
    uint64_t numel = 1;
    for (uint32_t d = 0; d < nd; ++d) {
      uint64_t x = r.read<uint64_t>("tensor dimension");
      if (x == 0 || x > (uint64_t(1) << 40) || numel > (uint64_t(1) << 48) / x)
        fail(fn, ": tensor '", t.name, "' has an invalid dimension ", x);
      numel *= x;
      ne[d] = int64_t(x);
    }
    uint32_t type = r.read<uint32_t>("tensor type");
    if (!dtype_known(type)) fail(fn, ": tensor '", t.name, "' has unknown type id ", type);
    t.dtype = DType(type);
    DTypeInfo info = dtype_info(t.dtype);
    if (ne[0] % info.block) fail(fn, ": tensor '", t.name, "': row length ", ne[0], " is not a multiple of ", info.name, "'s block size ", info.block);
    t.offset = r.read<uint64_t>("tensor offset");
    if (t.offset % g.alignment) fail(fn, ": tensor '", t.name, "': offset ", t.offset, " is not aligned to ", g.alignment);
    t.shape.assign(ne.rbegin(), ne.rend());
    if (g.tensor_index.count(t.name)) fail(fn, ": duplicate tensor '", t.name, "'");
    g.tensor_index[t.name] = g.tensors.size();
    g.tensors.push_back(std::move(t));
  }
  g.data_offset = (r.pos + g.alignment - 1) / g.alignment * g.alignment;
  if (g.data_offset > g.blob.size && !g.tensors.empty()) fail(fn, ": truncated before the tensor data (", g.blob.size, " bytes)");
  const size_t data_size = g.blob.size - std::min(g.data_offset, g.blob.size);
  for (GgufTensor& t : g.tensors) {
    t.view = make_view(t.dtype, t.shape, nullptr);
    const size_t n = t.view.nbytes();
    if (t.offset > data_size || n > data_size - t.offset)
      fail(fn, ": tensor '", t.name, "' (", dtype_name(t.dtype), " ", t.view.shape_str(), ", ", n, " bytes at data offset ",
           t.offset, ") runs past the end of the file (truncated?)");
    t.view.data = g.blob.data + g.data_offset + t.offset;
    // general.alignment may legally be 1, but kernels load an F32 as a float
    // and a block's f16 scale as a uint16: a misaligned tensor would be UB.
    const DTypeInfo info = dtype_info(t.dtype);
    const size_t need = info.block == 1 ? size_t(info.block_bytes) : info.block_bytes % 2 ? 1 : 2;
    if (reinterpret_cast<uintptr_t>(t.view.data) % need)
      fail(fn, ": tensor '", t.name, "' starts at file offset ", g.data_offset + t.offset, ", not a multiple of ", need,
           " (its element alignment; general.alignment is ", g.alignment, "): re-write the file with the default alignment 32");
  }
  return g;
}

// Builds a GGUF file: metadata and tensors in the order added. Tensor data is
// produced lazily by a callback when written, so a converter holds one tensor
// at a time.
struct GgufWriter {
  using Producer = std::function<void(std::vector<uint8_t>& out)>;
  struct Pending {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    Producer produce;
    size_t nbytes() const { return make_view(dtype, shape, nullptr).nbytes(); }
  };
  std::vector<std::pair<std::string, GgufValue>> kv;
  std::vector<Pending> tensors;
  size_t alignment = 32;

  void set(const std::string& key, GgufValue v) {
    for (auto& [k, old] : kv)
      if (k == key) { old = std::move(v); return; }
    if (key == "general.alignment") alignment = size_t(v.i);
    kv.emplace_back(key, std::move(v));
  }
  void add_tensor(std::string name, DType t, std::vector<int64_t> shape, Producer produce) {
    if (shape.empty() || shape.size() > size_t(kMaxDims)) fail("gguf writer: tensor '", name, "' has ", shape.size(), " dimensions");
    if (shape.back() % dtype_info(t).block)
      fail("gguf writer: tensor '", name, "': row length ", shape.back(), " is not a multiple of ", dtype_name(t), "'s block");
    for (const Pending& p : tensors)
      if (p.name == name) fail("gguf writer: duplicate tensor '", name, "'");
    tensors.push_back({std::move(name), t, std::move(shape), std::move(produce)});
  }
  // Copies the tensor's bytes (for small tensors and tests).
  void add_tensor(std::string name, const Tensor& t) {
    auto bytes = std::make_shared<std::vector<uint8_t>>(t.bytes);
    add_tensor(std::move(name), t.dtype, t.shape, [bytes](std::vector<uint8_t>& out) { out = *bytes; });
  }

  // Serialise everything; `sink(data, n)` receives the bytes in order.
  // `progress(done_tensors, done_bytes)` is called after each tensor.
  void write(const std::function<void(const void*, size_t)>& sink,
             const std::function<void(size_t, size_t)>& progress = nullptr) const {
    std::vector<uint8_t> h;
    auto put = [&](const void* p, size_t n) { h.insert(h.end(), (const uint8_t*)p, (const uint8_t*)p + n); };
    auto put_u32 = [&](uint32_t x) { put(&x, 4); };
    auto put_u64 = [&](uint64_t x) { put(&x, 8); };
    auto put_str = [&](const std::string& s) { put_u64(s.size()); put(s.data(), s.size()); };
    std::function<void(const GgufValue&)> put_value = [&](const GgufValue& v) {
      switch (v.type) {
        case GgufType::U8: case GgufType::I8: case GgufType::BOOL: { uint8_t x = uint8_t(v.i); put(&x, 1); break; }
        case GgufType::U16: case GgufType::I16: { uint16_t x = uint16_t(v.i); put(&x, 2); break; }
        case GgufType::U32: case GgufType::I32: put_u32(uint32_t(v.i)); break;
        case GgufType::U64: put_u64(v.u); break;
        case GgufType::I64: put_u64(uint64_t(v.i)); break;
        case GgufType::F32: { float x = float(v.f); put(&x, 4); break; }
        case GgufType::F64: put(&v.f, 8); break;
        case GgufType::STRING: put_str(v.s); break;
        case GgufType::ARRAY:
          put_u32(uint32_t(v.elem));
          put_u64(v.arr.size());
          for (const GgufValue& e : v.arr) put_value(e);
          break;
      }
    };
    put("GGUF", 4);
    put_u32(3);
    put_u64(tensors.size());
    put_u64(kv.size());
    for (const auto& [k, v] : kv) {
      put_str(k);
      put_u32(uint32_t(v.type));
      put_value(v);
    }
    uint64_t offset = 0;
    for (const Pending& t : tensors) {
      put_str(t.name);
      put_u32(uint32_t(t.shape.size()));
      for (auto d = t.shape.rbegin(); d != t.shape.rend(); ++d) put_u64(uint64_t(*d));
      put_u32(uint32_t(t.dtype));
      put_u64(offset);
      offset += (t.nbytes() + alignment - 1) / alignment * alignment;
    }
    h.resize((h.size() + alignment - 1) / alignment * alignment, 0);
    sink(h.data(), h.size());
    std::vector<uint8_t> buf;
    size_t done_bytes = 0;
    for (size_t k = 0; k < tensors.size(); ++k) {
      const Pending& t = tensors[k];
      buf.clear();
      t.produce(buf);
      if (buf.size() != t.nbytes())
        fail("gguf writer: tensor '", t.name, "' produced ", buf.size(), " bytes, expected ", t.nbytes());
      buf.resize((buf.size() + alignment - 1) / alignment * alignment, 0);
      sink(buf.data(), buf.size());
      done_bytes += buf.size();
      if (progress) progress(k + 1, done_bytes);
    }
  }

  std::vector<uint8_t> to_bytes() const {
    std::vector<uint8_t> out;
    write([&](const void* p, size_t n) { out.insert(out.end(), (const uint8_t*)p, (const uint8_t*)p + n); });
    return out;
  }

  // Writes into `out`: the file appears at `path` when out.commit() puts the
  // set in place, together with the set's other files (OutputFiles).
  void write_file(OutputFiles& out, const std::string& path, const std::function<void(size_t, size_t)>& progress = nullptr) const {
    OutputFiles::File& f = out.create(path);
    write([&](const void* p, size_t n) { f.write(p, n); }, progress);
  }
  // Writes `path` alone, through a temporary file renamed only on success: a
  // failed or interrupted run leaves no half-written file behind.
  void write_file(const std::string& path, const std::function<void(size_t, size_t)>& progress = nullptr) const {
    OutputFiles out;
    write_file(out, path, progress);
    out.commit();
  }
};

}  // namespace loupe
