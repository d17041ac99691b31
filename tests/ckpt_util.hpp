// Helpers shared by the checkpoint-reader tests (json, safetensors, pickle, checkpoint).
#pragma once
#include "test_util.hpp"

#include <loupe/io/json.hpp>
#include <loupe/io/npy.hpp>
#include <loupe/io/source_tensor.hpp>

#include <cstring>
#include <fstream>
#include <string>
#include <vector>

namespace ckpt_test {

using loupe_test::error_of;

inline bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// Every element as f32, the way numpy's astype(float32) would give it.
inline std::vector<float> values(const loupe::SourceTensor& t) {
  const int64_t n = t.numel();
  REQUIRE(t.data.size == size_t(n) * size_t(loupe::dtype_info(t.dtype).block_bytes));
  std::vector<float> v(static_cast<size_t>(n));
  const uint8_t* p = t.data.data;
  for (int64_t i = 0; i < n; ++i) {
    switch (t.dtype) {
      case loupe::DType::F32: case loupe::DType::F16: case loupe::DType::BF16:
        loupe::to_f32(t.dtype, p + size_t(i) * size_t(loupe::dtype_info(t.dtype).block_bytes), &v[size_t(i)], 1);
        break;
      case loupe::DType::F64: { double d; std::memcpy(&d, p + 8 * i, 8); v[size_t(i)] = float(d); break; }
      case loupe::DType::I64: { int64_t d; std::memcpy(&d, p + 8 * i, 8); v[size_t(i)] = float(d); break; }
      case loupe::DType::I32: { int32_t d; std::memcpy(&d, p + 4 * i, 4); v[size_t(i)] = float(d); break; }
      case loupe::DType::I16: { int16_t d; std::memcpy(&d, p + 2 * i, 2); v[size_t(i)] = float(d); break; }
      case loupe::DType::I8: v[size_t(i)] = float(int8_t(p[i])); break;
      default: FAIL("unexpected dtype");
    }
  }
  return v;
}

// Tensor values equal (bit for bit, as f32) those numpy saved in `npy`, shapes equal too.
inline void check_values(const loupe::SourceTensor& t, const std::string& npy) {
  INFO("tensor " << t.name << " vs " << npy);
  loupe::Tensor ref = loupe::read_npy(npy);
  std::vector<int64_t> shape = ref.shape;
  CHECK(t.shape == shape);
  std::vector<float> got = values(t);
  REQUIRE(got.size() == size_t(ref.numel()));
  size_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) bad += std::memcmp(&got[i], ref.f32() + i, 4) != 0;
  CHECK(bad == 0);
}

inline std::vector<int64_t> shape_of(const loupe::Json& a) {
  std::vector<int64_t> s;
  for (const loupe::Json& d : a.array()) s.push_back(d.integer());
  return s;
}

inline void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f << bytes;
}

// Whether p points into [b.data, b.data + b.size): a zero-copy slice of that blob.
inline bool inside(const loupe::Blob& b, const void* p) {
  auto* q = static_cast<const uint8_t*>(p);
  return q >= b.data && q < b.data + b.size;
}

}  // namespace ckpt_test
