// TensorView: a non-owning view (dtype, shape, strides) over bytes that may be
// mmapped or owned; Tensor: the same with owned storage.
//
// Shapes are PyTorch-ordered (outermost first): a Linear weight is {out, in}.
// GGUF lists dimensions innermost first (ggml's ne[]); the GGUF reader reverses them.
// Strides are in bytes; the innermost dimension is always contiguous (quantised
// blocks run along it), so stride[ndim-1] is implied.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "quant.hpp"

namespace loupe {

constexpr int kMaxDims = 4;

struct TensorView {
  DType dtype = DType::F32;
  int ndim = 0;
  std::array<int64_t, kMaxDims> shape{};   // outermost first
  std::array<size_t, kMaxDims> stride{};   // bytes; stride[ndim-1] = element/block size
  const void* data = nullptr;
  // The same Q4_0 matrix packed for the CPU's decode kernels (Q4_0x16, ops/kernels/scalar.hpp),
  // or null. Only the CPU matmul reads it, where the kernels have a Q4_0x16 kernel;
  // everything else reads `data`.
  const void* packed = nullptr;

  int64_t dim(int i) const { return shape[size_t(i < 0 ? ndim + i : i)]; }
  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[size_t(i)];
    return n;
  }
  int64_t cols() const { return ndim ? shape[size_t(ndim - 1)] : 1; }  // innermost length
  int64_t rows() const {  // the outer dimensions' product (not numel / cols: a [3, 0] tensor has 3 empty rows)
    int64_t n = 1;
    for (int i = 0; i + 1 < ndim; ++i) n *= shape[size_t(i)];
    return n;
  }
  size_t row_stride() const { return ndim > 1 ? stride[size_t(ndim - 2)] : row_bytes(dtype, cols()); }
  size_t nbytes() const { return size_t(rows()) * row_bytes(dtype, cols()); }  // if contiguous
  bool contiguous() const {
    size_t s = row_bytes(dtype, cols());
    for (int i = ndim - 2; i >= 0; --i) {
      if (stride[size_t(i)] != s) return false;
      s *= size_t(shape[size_t(i)]);
    }
    return true;
  }
  const uint8_t* row(int64_t r) const {  // r-th innermost row of a contiguous-by-rows tensor
    return static_cast<const uint8_t*>(data) + size_t(r) * row_stride();
  }
  std::string shape_str() const {
    std::string s = "[";
    for (int i = 0; i < ndim; ++i) s += (i ? ", " : "") + std::to_string(shape[size_t(i)]);
    return s + "]";
  }
};

// A contiguous view over `data` with the given shape.
inline TensorView make_view(DType t, const std::vector<int64_t>& shape, const void* data) {
  if (shape.size() > size_t(kMaxDims)) fail("tensor has ", shape.size(), " dimensions (max ", kMaxDims, ")");
  TensorView v;
  v.dtype = t;
  v.ndim = int(shape.size());
  v.data = data;
  for (int i = 0; i < v.ndim; ++i) v.shape[size_t(i)] = shape[size_t(i)];
  size_t s = v.ndim ? row_bytes(t, v.cols()) : 0;
  if (v.ndim) v.stride[size_t(v.ndim - 1)] = size_t(dtype_info(t).block_bytes);
  for (int i = v.ndim - 2; i >= 0; --i) {
    v.stride[size_t(i)] = s;
    s *= size_t(v.shape[size_t(i)]);
  }
  return v;
}

// Owned, contiguous tensor.
struct Tensor {
  std::vector<int64_t> shape;
  DType dtype = DType::F32;
  std::vector<uint8_t> bytes;

  Tensor() = default;
  Tensor(DType t, std::vector<int64_t> s) : shape(std::move(s)), dtype(t) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    int64_t cols = shape.empty() ? 1 : shape.back();
    bytes.resize(row_bytes(t, cols) * size_t(cols ? n / cols : 0));
  }
  TensorView view() const { return make_view(dtype, shape, bytes.data()); }
  int64_t numel() const { return view().numel(); }
  float* f32() { return reinterpret_cast<float*>(bytes.data()); }
  const float* f32() const { return reinterpret_cast<const float*>(bytes.data()); }
};

// Copy any view into an owned f32 tensor of the same shape.
inline Tensor to_f32(const TensorView& v) {
  Tensor t(DType::F32, std::vector<int64_t>(v.shape.begin(), v.shape.begin() + v.ndim));
  const int64_t n = v.cols();
  for (int64_t r = 0; r < v.rows(); ++r) to_f32(v.dtype, v.row(r), t.f32() + r * n, n);
  return t;
}

// Convert an f32 tensor into dtype t (quantising rows where t is a block type).
inline Tensor convert(const TensorView& v, DType t) {
  Tensor f = v.dtype == DType::F32 ? Tensor() : to_f32(v);
  const float* src = v.dtype == DType::F32 ? static_cast<const float*>(v.data) : f.f32();
  Tensor out(t, std::vector<int64_t>(v.shape.begin(), v.shape.begin() + v.ndim));
  const int64_t n = v.cols();
  if (n % dtype_info(t).block) fail("cannot convert row of ", n, " elements to ", dtype_name(t), " (needs a multiple of ", dtype_info(t).block, ")");
  for (int64_t r = 0; r < v.rows(); ++r) from_f32(t, src + r * n, out.bytes.data() + size_t(r) * row_bytes(t, n), n);
  return out;
}

}  // namespace loupe
