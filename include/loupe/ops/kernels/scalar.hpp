// Portable reference kernels. Every SIMD kernel (kernels_x86.hpp,
// kernels_wasm.hpp, kernels_neon.hpp) is tested against these; they are always
// built, and they are what runs when no SIMD level is available (LOUPE_CPU=scalar).
//
// Quantised matmuls follow ggml: the activation row is quantised to Q8_0 per
// 32 values (d = amax/127 rounded to fp16, q = round(x/d)), each weight block
// is dotted with the matching activation block in exact integer arithmetic, and
// the block results are summed in f32 in block order:
//   y = Σ_b float(Σ_j qw_j·qx_j) · (dw_b · dx_b)        (Q4_0: qw = nibble − 8)
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <vector>

#include "../../core/quant.hpp"

namespace loupe {

// 64-byte aligned scratch that keeps its capacity between uses.
template <class T>
class AlignedBuffer {
 public:
  T* data() { return p_.get(); }
  const T* data() const { return p_.get(); }
  size_t size() const { return n_; }
  void resize(size_t n) {
    if (n > cap_) {
      const size_t bytes = (n * sizeof(T) + 63) / 64 * 64;
      p_.reset(static_cast<T*>(::operator new[](bytes, std::align_val_t(64))));
      cap_ = n;
    }
    n_ = n;
  }

 private:
  struct Free {
    void operator()(T* p) const { ::operator delete[](p, std::align_val_t(64)); }
  };
  std::unique_ptr<T, Free> p_;
  size_t n_ = 0, cap_ = 0;
};

// Activations [n, k] quantised to Q8_0 in a layout the SIMD kernels can load
// directly (ggml's BlockQ8_0 interleaves the fp16 scale with the values):
//   qs   [n][k]        int8 values, block b of row i at qs + i·k + 32·b
//   d    [n][nb]       the block scales (fp16-rounded, as f32)
//   d8   [n][nb][8]    the same, each repeated 8 times (one per int32 lane of a block)
//   corr4 [n][k/4]     −offset · (sum of each 4 consecutive q)   } for weights stored with an
//   corr [n][nb]       −offset · (sum of the block's 32 q)       } unsigned bias `offset`
//   qs16 [n][k]        qs as int16, filled by kernels that want it (WebAssembly)
// `offset` is the bias of the unsigned weight values the kernels feed to the
// u8×s8 dot instructions: Q4_0 nibbles are q+8 (offset 8), Q8_0 bytes are
// flipped to q+128 (offset 128). Σ(qw+o)·qx − o·Σqx = Σ qw·qx exactly.
struct QuantizedRows {
  int64_t n = 0, k = 0, nb = 0;
  int32_t offset = 0;
  AlignedBuffer<int8_t> qs;
  AlignedBuffer<float> d, d8;
  AlignedBuffer<int32_t> corr4, corr;
  AlignedBuffer<int16_t> qs16;  // qs widened (WebAssembly kernels only)

  void resize(int64_t rows, int64_t cols, int32_t off) {
    n = rows, k = cols, nb = cols / QK, offset = off;
    qs.resize(size_t(n * k));
    d.resize(size_t(n * nb));
    d8.resize(size_t(n * nb * 8));
    corr4.resize(size_t(n * k / 4));
    corr.resize(size_t(n * nb));
  }
  const int8_t* row(int64_t i) const { return qs.data() + i * k; }
};

namespace scalar {

// Σ x·y over n f32 values; 8 independent partial sums so the loop vectorises
// without -ffast-math, and the order is fixed (bitwise reproducible).
inline float dot_f32(const float* x, const float* y, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) acc[k] += x[i + k] * y[i + k];
  for (; i < n; ++i) acc[i & 7] += x[i] * y[i];
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

// Quantised weight row · Q8_0 activation row, as ggml's vec_dot_q{4,8}_0_q8_0.
inline float dot_q8_0_q8_0(const BlockQ8_0* w, const BlockQ8_0* x, int64_t nb) {
  float sum = 0.0f;
  for (int64_t b = 0; b < nb; ++b) {
    int32_t s = 0;
    for (int j = 0; j < QK; ++j) s += int32_t(w[b].qs[j]) * int32_t(x[b].qs[j]);
    sum += float(s) * (fp16_to_f32(w[b].d) * fp16_to_f32(x[b].d));
  }
  return sum;
}

inline float dot_q4_0_q8_0(const BlockQ4_0* w, const BlockQ8_0* x, int64_t nb) {
  float sum = 0.0f;
  for (int64_t b = 0; b < nb; ++b) {
    int32_t s = 0;
    for (int j = 0; j < QK / 2; ++j) {
      s += (int32_t(w[b].qs[j] & 0x0f) - 8) * int32_t(x[b].qs[j]);
      s += (int32_t(w[b].qs[j] >> 4) - 8) * int32_t(x[b].qs[j + QK / 2]);
    }
    sum += float(s) * (fp16_to_f32(w[b].d) * fp16_to_f32(x[b].d));
  }
  return sum;
}

// Fill the per-block tables of row i from its qs and d (shared by every level).
inline void finish_quantized_row(QuantizedRows& q, int64_t i) {
  const int8_t* qs = q.row(i);
  int32_t* c4 = q.corr4.data() + i * q.k / 4;
  for (int64_t b = 0; b < q.nb; ++b) {
    int32_t s = 0;
    for (int g = 0; g < 8; ++g) {
      const int8_t* p = qs + b * QK + 4 * g;
      const int32_t s4 = int32_t(p[0]) + p[1] + p[2] + p[3];
      c4[b * 8 + g] = -q.offset * s4;
      s += s4;
    }
    q.corr.data()[i * q.nb + b] = -q.offset * s;
    const float d = q.d.data()[i * q.nb + b];
    for (int j = 0; j < 8; ++j) q.d8.data()[(i * q.nb + b) * 8 + j] = d;
  }
}

// x [n, k] -> q, values and scales identical to quantize_row_q8_0.
inline void quantize_rows(const float* x, int64_t n, int64_t k, int32_t offset, QuantizedRows& q) {
  q.resize(n, k, offset);
  std::vector<BlockQ8_0> blocks(size_t(k / QK));
  for (int64_t i = 0; i < n; ++i) {
    quantize_row_q8_0(x + i * k, blocks.data(), k);
    for (int64_t b = 0; b < q.nb; ++b) {
      std::memcpy(q.qs.data() + i * k + b * QK, blocks[size_t(b)].qs, QK);
      q.d.data()[i * q.nb + b] = fp16_to_f32(blocks[size_t(b)].d);
    }
    finish_quantized_row(q, i);
  }
}

// One block's integer dot product with 32 Q8_0-quantised activations.
inline int32_t block_dot(const BlockQ4_0& w, const int8_t* x) {
  int32_t s = 0;
  for (int j = 0; j < QK / 2; ++j) {
    s += (int32_t(w.qs[j] & 0x0f) - 8) * int32_t(x[j]);
    s += (int32_t(w.qs[j] >> 4) - 8) * int32_t(x[j + QK / 2]);
  }
  return s;
}
inline int32_t block_dot(const BlockQ8_0& w, const int8_t* x) {
  int32_t s = 0;
  for (int j = 0; j < QK; ++j) s += int32_t(w.qs[j]) * int32_t(x[j]);
  return s;
}

// y[i·ldy + r] for rows r in [r0, r1) and every activation row i, from
// QuantizedRows; the same arithmetic (and so the same bits) as dot_q*_0_q8_0.
template <class Block>
inline void matmul_blocks(const uint8_t* w, size_t ws, int64_t r0, int64_t r1, const QuantizedRows& x, float* y, int64_t ldy) {
  for (int64_t r = r0; r < r1; ++r) {
    const Block* wr = reinterpret_cast<const Block*>(w + size_t(r) * ws);
    for (int64_t i = 0; i < x.n; ++i) {
      const int8_t* xq = x.row(i);
      float sum = 0.0f;
      for (int64_t b = 0; b < x.nb; ++b)
        sum += float(block_dot(wr[b], xq + b * QK)) * (fp16_to_f32(wr[b].d) * x.d.data()[i * x.nb + b]);
      y[i * ldy + r] = sum;
    }
  }
}

inline void matmul_q4_0(const uint8_t* w, size_t ws, int64_t r0, int64_t r1, const QuantizedRows& x, float* y, int64_t ldy) {
  matmul_blocks<BlockQ4_0>(w, ws, r0, r1, x, y, ldy);
}

inline void matmul_q8_0(const uint8_t* w, size_t ws, int64_t r0, int64_t r1, const QuantizedRows& x, float* y, int64_t ldy) {
  matmul_blocks<BlockQ8_0>(w, ws, r0, r1, x, y, ldy);
}

// ---- Q4_0x16: Q4_0 weights interleaved 16 rows at a time, for decode kernels
// that stream a whole weight matrix per token (KernelTable::matmul_q4_0_x16).
// The model packs its Q4_0 matrices into it at load (LlamaModel::from_gguf;
// TensorView::packed), as llama.cpp's CPU backend repacks Q4_0.
//
// In ggml's layout a block row-major decode kernel spends most of its
// instructions placing nibbles and scales into lanes (kernels/x86.hpp,
// gemv1_rows). Here int32 lanes are 16 weight rows: one 64-byte load holds the
// same 4 bytes (values 4j..4j+3 in low nibbles, 16+4j.. in high) of 16 rows, and
// is multiplied with 4 broadcast activation bytes, and the 16 rows' scales are
// one 32-byte load. The same 18 bytes per block and row as Q4_0.
//
// Rows 16g..16g+15 are group g, at g · nb · 288 bytes; in a group, blocks come
// in pairs [qs b][qs b+1][d b][d b+1] (an odd last block: [qs][d]), so every
// 64-byte part is 64-byte aligned in an aligned buffer; qs = 4 parts j of
// [16 rows][4 bytes qs[4j..4j+3]], d = the 16 rows' fp16 scales.
constexpr int64_t kX16Rows = 16;
constexpr size_t kX16BlockBytes = size_t(kX16Rows) * 18, kX16PartBytes = 64;

struct X16Block {
  size_t qs, d;  // byte offsets of block b's parts and scales in its group
};
inline X16Block x16_block(int64_t nb, int64_t b) {
  const size_t pair = size_t(b / 2) * 2 * kX16BlockBytes;
  if (b == nb - 1 && (nb & 1)) return {pair, pair + 4 * kX16PartBytes};
  const size_t odd = size_t(b & 1);
  return {pair + odd * 4 * kX16PartBytes, pair + 8 * kX16PartBytes + odd * 2 * size_t(kX16Rows)};
}
inline bool x16_packable(int64_t rows, int64_t cols) { return rows > 0 && rows % kX16Rows == 0 && cols > 0 && cols % QK == 0; }

// One block of 16 rows (p[r] + off: row r's qs) -> its 4 parts at out (one per ISA: transposes in registers).
using X16Parts = void (*)(const uint8_t* const* p, int64_t off, uint8_t* out);
inline void x16_parts(const uint8_t* const* p, int64_t off, uint8_t* out) {
  for (int64_t r = 0; r < kX16Rows; ++r)
    for (int j = 0; j < 4; ++j) std::memcpy(out + size_t(j) * kX16PartBytes + size_t(r) * 4, p[r] + off + 4 * j, 4);
}

// rows × nb Q4_0 blocks (rows ws bytes apart, rows % 16 == 0) -> out (rows · nb · 18 bytes).
inline void pack_q4_0_x16_with(X16Parts parts, const uint8_t* w, size_t ws, int64_t rows, int64_t nb, uint8_t* out) {
  for (int64_t g = 0; g < rows / kX16Rows; ++g) {
    const uint8_t* p[kX16Rows];
    for (int64_t r = 0; r < kX16Rows; ++r) p[r] = w + size_t(g * kX16Rows + r) * ws;
    uint8_t* og = out + size_t(g * nb) * kX16BlockBytes;
    for (int64_t b = 0; b < nb; ++b) {
      const X16Block o = x16_block(nb, b);
      parts(p, b * 18 + 2, og + o.qs);
      for (int64_t r = 0; r < kX16Rows; ++r) std::memcpy(og + o.d + size_t(r) * 2, p[r] + b * 18, 2);
    }
  }
}
inline void pack_q4_0_x16(const uint8_t* w, size_t ws, int64_t rows, int64_t nb, uint8_t* out) {
  pack_q4_0_x16_with(x16_parts, w, ws, rows, nb, out);
}

// The reference: matmul_q4_0 on Q4_0x16 weights (r0, r1 multiples of 16 or r1 = rows),
// the same arithmetic and bits as matmul_q4_0 on the rows it was packed from.
inline void matmul_q4_0_x16(const uint8_t* w, size_t, int64_t r0, int64_t r1, const QuantizedRows& x, float* y, int64_t ldy) {
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* og = w + size_t((r / kX16Rows) * x.nb) * kX16BlockBytes;
    const int64_t lane = r % kX16Rows;
    for (int64_t i = 0; i < x.n; ++i) {
      float sum = 0.0f;
      for (int64_t b = 0; b < x.nb; ++b) {
        const X16Block o = x16_block(x.nb, b);
        BlockQ4_0 blk;
        std::memcpy(&blk.d, og + o.d + size_t(lane) * 2, 2);
        for (int j = 0; j < 4; ++j) std::memcpy(blk.qs + 4 * j, og + o.qs + size_t(j) * kX16PartBytes + size_t(lane) * 4, 4);
        sum += float(block_dot(blk, x.row(i) + b * QK)) * (fp16_to_f32(blk.d) * x.d.data()[i * x.nb + b]);
      }
      y[i * ldy + r] = sum;
    }
  }
}

// Σ x·f16(y), the same 8-lane order as dot_f32.
inline float dot_f16(const float* x, const uint16_t* y, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) acc[k] += x[i + k] * fp16_to_f32(y[i + k]);
  for (; i < n; ++i) acc[i & 7] += x[i] * fp16_to_f32(y[i]);
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

// y += a·x
inline void axpy_f32(float a, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}
inline void axpy_f16(float a, const uint16_t* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * fp16_to_f32(x[i]);
}

// x[i] = exp(x[i] − shift); returns Σ x[i] (the softmax denominator).
inline float exp_sum(float* x, int64_t n, float shift) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += (x[i] = std::exp(x[i] - shift));
  return float(s);
}

// LlamaMLP's act(gate) * up with SiLU, in place into gate.
inline void silu_mul(float* g, const float* u, int64_t n) {
  for (int64_t i = 0; i < n; ++i) g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

// CLIP's quick_gelu x·σ(1.702x), in place.
inline void quick_gelu(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = x[i] / (1.0f + std::exp(-1.702f * x[i]));
}

inline void f32_to_f16_row(const float* s, uint16_t* d, int64_t n) {
  for (int64_t i = 0; i < n; ++i) d[i] = f32_to_fp16(s[i]);
}

inline void f16_to_f32_row(const uint16_t* s, float* d, int64_t n) {
  for (int64_t i = 0; i < n; ++i) d[i] = fp16_to_f32(s[i]);
}
inline void bf16_to_f32_row(const uint16_t* s, float* d, int64_t n) {
  for (int64_t i = 0; i < n; ++i) d[i] = bf16_to_f32(s[i]);
}

}  // namespace scalar
}  // namespace loupe
