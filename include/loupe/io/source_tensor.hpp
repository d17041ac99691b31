// SourceTensor: one named tensor as a checkpoint reader hands it out — dtype,
// PyTorch-ordered shape and contiguous row-major bytes (a slice of the mmapped
// file where the file stores it that way, an owned copy otherwise).
#pragma once
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "file.hpp"
#include "../core/tensor.hpp"

namespace loupe {

struct SourceTensor {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;  // outermost first
  Blob data;                   // exactly numel * element size bytes

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  TensorView view() const { return make_view(dtype, shape, data.data); }
  std::string shape_str() const {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
  }
};

// a * b for sizes read from files: fails instead of wrapping.
inline int64_t checked_mul(int64_t a, int64_t b, const std::string& what) {
  if (a < 0 || b < 0) fail(what, ": negative size");
  if (b != 0 && a > std::numeric_limits<int64_t>::max() / b) fail(what, ": size overflows 64 bits");
  return a * b;
}

// Bytes of a tensor of `shape` elements of plain dtype t, every step overflow-checked
// (a file may claim a dimension of 2^62); fails naming `what`.
inline uint64_t checked_nbytes(DType t, const std::vector<int64_t>& shape, const std::string& what) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) fail(what, ": negative dimension ", d);
    n = checked_mul(n, d, what);
  }
  return uint64_t(checked_mul(n, dtype_info(t).block_bytes, what));
}

}  // namespace loupe
