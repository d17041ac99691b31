// Q8_0 and Q4_0 blocks, byte-identical to ggml's reference quantisers
// (quantize_row_q8_0_ref / quantize_row_q4_0_ref in ggml-quants.c), and the
// row converters between every supported dtype and f32.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "dtype.hpp"

namespace loupe {

constexpr int QK = 32;  // elements per Q8_0 / Q4_0 block

struct BlockQ8_0 {
  uint16_t d;       // fp16 scale
  int8_t qs[QK];    // value = d * qs[j]
};
struct BlockQ4_0 {
  uint16_t d;           // fp16 scale
  uint8_t qs[QK / 2];   // element j in the low nibble of qs[j], j+16 in the high nibble
};
static_assert(sizeof(BlockQ8_0) == 34 && sizeof(BlockQ4_0) == 18, "ggml block layout");

// d = amax / 127, q = round(x / d).
inline void quantize_row_q8_0(const float* x, BlockQ8_0* y, int64_t n) {
  for (int64_t b = 0; b < n / QK; ++b, x += QK) {
    float amax = 0.0f;
    for (int j = 0; j < QK; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    y[b].d = f32_to_fp16(d);
    for (int j = 0; j < QK; ++j) y[b].qs[j] = int8_t(std::round(x[j] * id));
  }
}

// d = m / -8 where m is the signed value of largest magnitude (the first one on ties),
// so m itself maps to q = 0 exactly; q = min(15, trunc(x/d + 8.5)).
inline void quantize_row_q4_0(const float* x, BlockQ4_0* y, int64_t n) {
  for (int64_t b = 0; b < n / QK; ++b, x += QK) {
    float amax = 0.0f, m = 0.0f;
    for (int j = 0; j < QK; ++j)
      if (amax < std::fabs(x[j])) amax = std::fabs(x[j]), m = x[j];
    const float d = m / -8.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    y[b].d = f32_to_fp16(d);
    for (int j = 0; j < QK / 2; ++j) {
      const uint8_t lo = uint8_t(std::min(15, int(int8_t(x[j] * id + 8.5f))));
      const uint8_t hi = uint8_t(std::min(15, int(int8_t(x[j + QK / 2] * id + 8.5f))));
      y[b].qs[j] = uint8_t(lo | (hi << 4));
    }
  }
}

inline void dequantize_row_q8_0(const BlockQ8_0* x, float* y, int64_t n) {
  for (int64_t b = 0; b < n / QK; ++b, y += QK) {
    const float d = fp16_to_f32(x[b].d);
    for (int j = 0; j < QK; ++j) y[j] = d * float(x[b].qs[j]);
  }
}

inline void dequantize_row_q4_0(const BlockQ4_0* x, float* y, int64_t n) {
  for (int64_t b = 0; b < n / QK; ++b, y += QK) {
    const float d = fp16_to_f32(x[b].d);
    for (int j = 0; j < QK / 2; ++j) {
      y[j] = d * float(int(x[b].qs[j] & 0x0f) - 8);
      y[j + QK / 2] = d * float(int(x[b].qs[j] >> 4) - 8);
    }
  }
}

// Any supported dtype row -> f32.
inline void to_f32(DType t, const void* src, float* dst, int64_t n) {
  switch (t) {
    case DType::F32: std::memcpy(dst, src, size_t(n) * 4); return;
    // 16-bit rows are read through memcpy: a checkpoint's tensors sit at any
    // byte offset (safetensors data_offsets, torch zip entries), so a row may
    // be misaligned for uint16_t (UBSan's finding); compilers emit plain loads.
    case DType::F16: {
      auto* s = static_cast<const unsigned char*>(src);
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, s + 2 * i, 2);
        dst[i] = fp16_to_f32(h);
      }
      return;
    }
    case DType::BF16: {
      auto* s = static_cast<const unsigned char*>(src);
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, s + 2 * i, 2);
        dst[i] = bf16_to_f32(h);
      }
      return;
    }
    case DType::Q8_0: dequantize_row_q8_0(static_cast<const BlockQ8_0*>(src), dst, n); return;
    case DType::Q4_0: dequantize_row_q4_0(static_cast<const BlockQ4_0*>(src), dst, n); return;
    default: fail("cannot convert ", dtype_name(t), " to f32");
  }
}

// f32 row -> any supported dtype; n must be a multiple of the block size.
inline void from_f32(DType t, const float* src, void* dst, int64_t n) {
  switch (t) {
    case DType::F32: std::memcpy(dst, src, size_t(n) * 4); return;
    case DType::F16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = f32_to_fp16(src[i]);
      return;
    }
    case DType::BF16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = f32_to_bf16(src[i]);
      return;
    }
    case DType::Q8_0: quantize_row_q8_0(src, static_cast<BlockQ8_0*>(dst), n); return;
    case DType::Q4_0: quantize_row_q4_0(src, static_cast<BlockQ4_0*>(dst), n); return;
    default: fail("cannot convert f32 to ", dtype_name(t));
  }
}

}  // namespace loupe
