// The ops layer: kernels with no model knowledge. Models (llama.hpp, clip.hpp,
// projector.hpp) are written in terms of these functions only.
//
// Activations are f32, row-major [n, dim]. Weights are TensorViews [out, in] in
// any supported dtype; linear() computes y = x·Wᵀ (+ b) like torch.nn.Linear.
// Work is split into fixed-size tasks, so results do not depend on the number
// of threads.
#pragma once
#include <cmath>
#include <vector>

#include "tensor.hpp"
#include "threadpool.hpp"

#ifdef LOUPE_HAVE_EIGEN
// GCC 12 reports false -Wmaybe-uninitialized inside its own AVX-512 intrinsics
// when Eigen's GEMM kernels are inlined; silence only that, only here.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <Eigen/Core>
#endif

namespace loupe {

// ---------------------------------------------------------------- dot kernels

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

// Quantised weight row · Q8_0 activation row: per block d_w·d_x·Σ q_w·q_x with an
// exact integer inner sum, as ggml's vec_dot_q{4,8}_0_q8_0.
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

// ------------------------------------------------------------------ matmul

// y[n, out] = x[n, in] · W[out, in]ᵀ. Quantised W: x is quantised to Q8_0 per
// row first (as llama.cpp does). F16/BF16 W: rows are widened to f32 in tiles.
inline void matmul(const TensorView& w, const float* x, int64_t n, float* y, ThreadPool* pool = nullptr) {
  const int64_t out = w.rows(), in = w.cols();
  constexpr int64_t kGrain = 64;  // output rows per task: fixed, so results are thread-count independent
  if (is_quantized(w.dtype)) {
    if (in % QK) fail("matmul: quantised weight row length ", in, " is not a multiple of ", QK);
    const int64_t nb = in / QK;
    std::vector<BlockQ8_0> xq(size_t(n * nb));
    for (int64_t i = 0; i < n; ++i) quantize_row_q8_0(x + i * in, xq.data() + i * nb, in);
    parallel_chunks(pool, out, kGrain, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const void* wr = w.row(r);
        for (int64_t i = 0; i < n; ++i)
          y[i * out + r] = w.dtype == DType::Q4_0
                               ? dot_q4_0_q8_0(static_cast<const BlockQ4_0*>(wr), xq.data() + i * nb, nb)
                               : dot_q8_0_q8_0(static_cast<const BlockQ8_0*>(wr), xq.data() + i * nb, nb);
      }
    });
    return;
  }
  if (w.dtype != DType::F32 && w.dtype != DType::F16 && w.dtype != DType::BF16)
    fail("matmul: unsupported weight type ", dtype_name(w.dtype));
  parallel_chunks(pool, out, kGrain, [&](int64_t r0, int64_t r1) {
    const int64_t m = r1 - r0;
    std::vector<float> tile;
    const float* wt;
    if (w.dtype == DType::F32 && w.row_stride() == size_t(in) * 4) {
      wt = reinterpret_cast<const float*>(w.row(r0));
    } else {
      tile.resize(size_t(m * in));
      for (int64_t r = r0; r < r1; ++r) to_f32(w.dtype, w.row(r), tile.data() + (r - r0) * in, in);
      wt = tile.data();
    }
#ifdef LOUPE_HAVE_EIGEN
    using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    Eigen::Map<const RowMat> W(wt, m, in);
    Eigen::Map<const RowMat> X(x, n, in);
    Eigen::Map<RowMat, 0, Eigen::OuterStride<>> Y(y + r0, n, m, Eigen::OuterStride<>(out));
    Y.noalias() = X * W.transpose();
#else
    for (int64_t i = 0; i < n; ++i)
      for (int64_t r = 0; r < m; ++r) y[i * out + r0 + r] = dot_f32(x + i * in, wt + r * in, in);
#endif
  });
}

// torch.nn.Linear: y = x·Wᵀ + b (b may be null).
inline void linear(const TensorView& w, const float* b, const float* x, int64_t n, float* y, ThreadPool* pool = nullptr) {
  matmul(w, x, n, y, pool);
  if (!b) return;
  const int64_t out = w.rows();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t r = 0; r < out; ++r) y[i * out + r] += b[r];
}

// ------------------------------------------------------------ elementwise ops

// LlamaRMSNorm: y = x / sqrt(mean(x²) + eps) · w, per row of length d.
inline void rmsnorm(const float* x, const float* w, int64_t n, int64_t d, float eps, float* y) {
  for (int64_t i = 0; i < n; ++i, x += d, y += d) {
    double ss = 0;
    for (int64_t k = 0; k < d; ++k) ss += double(x[k]) * x[k];
    const float s = float(1.0 / std::sqrt(ss / double(d) + double(eps)));
    for (int64_t k = 0; k < d; ++k) y[k] = w[k] * (x[k] * s);
  }
}

// nn.LayerNorm: y = (x − mean) / sqrt(var + eps) · w + b (biased variance).
inline void layernorm(const float* x, const float* w, const float* b, int64_t n, int64_t d, float eps, float* y) {
  for (int64_t i = 0; i < n; ++i, x += d, y += d) {
    double mean = 0, var = 0;
    for (int64_t k = 0; k < d; ++k) mean += x[k];
    mean /= double(d);
    for (int64_t k = 0; k < d; ++k) var += (x[k] - mean) * (x[k] - mean);
    const float s = float(1.0 / std::sqrt(var / double(d) + double(eps)));
    const float m = float(mean);
    for (int64_t k = 0; k < d; ++k) y[k] = (x[k] - m) * s * w[k] + (b ? b[k] : 0.0f);
  }
}

inline float silu(float x) { return x / (1.0f + std::exp(-x)); }
inline float gelu_erf(float x) { return 0.5f * x * (1.0f + std::erf(x * 0.70710678118654752f)); }  // nn.GELU()
inline float quick_gelu(float x) { return x / (1.0f + std::exp(-1.702f * x)); }                   // CLIP's

// LlamaMLP's act(gate) * up, in place into gate.
inline void silu_mul(float* gate, const float* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) gate[i] = silu(gate[i]) * up[i];
}

// Softmax of x[0..n) in place (max-subtracted).
inline void softmax(float* x, int64_t n) {
  float m = x[0];
  for (int64_t i = 1; i < n; ++i) m = std::max(m, x[i]);
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += (x[i] = std::exp(x[i] - m));
  const float inv = float(1.0 / s);
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

// ------------------------------------------------------------------- RoPE

// Rotary embedding on one head vector of size d at position pos.
// Pair (i, i + d/2) ("neox", HF's rotate_half) or pair (2i, 2i+1) (llama.cpp's
// GGUF layout, whose q/k rows were permuted at conversion). Same angles:
// θ_i = pos · base^(−2i/d), computed in f32 as HF's LlamaRotaryEmbedding.
enum class RopeStyle { Adjacent, HalfSplit };

struct RopeCache {
  int64_t d = 0;
  std::vector<float> inv_freq;  // d/2
  RopeCache() = default;
  RopeCache(int64_t head_dim, float base) : d(head_dim), inv_freq(size_t(head_dim / 2)) {
    for (int64_t i = 0; i < d / 2; ++i)
      inv_freq[size_t(i)] = 1.0f / std::pow(base, float(2 * i) / float(d));
  }
  void apply(float* v, int64_t pos, RopeStyle style) const {
    const int64_t h = d / 2;
    for (int64_t i = 0; i < h; ++i) {
      const float a = float(pos) * inv_freq[size_t(i)];
      const float c = std::cos(a), s = std::sin(a);
      const int64_t i0 = style == RopeStyle::Adjacent ? 2 * i : i;
      const int64_t i1 = style == RopeStyle::Adjacent ? 2 * i + 1 : i + h;
      const float x0 = v[i0], x1 = v[i1];
      v[i0] = x0 * c - x1 * s;
      v[i1] = x1 * c + x0 * s;
    }
  }
};

}  // namespace loupe

#if defined(LOUPE_HAVE_EIGEN) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
