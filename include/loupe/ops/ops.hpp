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

#include "../core/tensor.hpp"
#include "../core/threadpool.hpp"

namespace loupe {

struct KernelTable;  // ops/kernels.hpp: the per-CPU kernels

// ------------------------------------------------------------------ matmul

// How exact a product of float weights must be. F32: f32 products and sums (what
// the reference comparisons need). Bf16: x and W may be rounded to bf16 where the
// CPU multiplies bf16 pairs natively (AVX512-BF16: twice the products per
// instruction), sums stay f32; ~2^-9 relative per product. Elsewhere Bf16 is F32.
// Quantised weights are unaffected (their products are int8 either way).
enum class Precision { F32, Bf16 };

// y[n, out] = x[n, in] · W[out, in]ᵀ with the kernels of table `kt`.
// Quantised W: x is quantised to Q8_0 per 32 values first (as llama.cpp does).
// F16/BF16 W: rows are widened to f32 in tiles and multiplied with Eigen.
void matmul(const KernelTable& kt, const TensorView& w, const float* x, int64_t n, float* y, ThreadPool* pool = nullptr,
            Precision p = Precision::F32);

// The same with the best kernels for this CPU.
void matmul(const TensorView& w, const float* x, int64_t n, float* y, ThreadPool* pool = nullptr, Precision p = Precision::F32);

// torch.nn.Linear: y = x·Wᵀ + b (b may be null).
void linear(const TensorView& w, const float* b, const float* x, int64_t n, float* y, ThreadPool* pool = nullptr);

// ------------------------------------------------------------ elementwise ops

// LlamaRMSNorm: y = x / sqrt(mean(x²) + eps) · w, per row of length d.
void rmsnorm(const float* x, const float* w, int64_t n, int64_t d, float eps, float* y);

// nn.LayerNorm: y = (x − mean) / sqrt(var + eps) · w + b (biased variance).
void layernorm(const float* x, const float* w, const float* b, int64_t n, int64_t d, float eps, float* y);

inline float silu(float x) { return x / (1.0f + std::exp(-x)); }
inline float gelu_erf(float x) { return 0.5f * x * (1.0f + std::erf(x * 0.70710678118654752f)); }  // nn.GELU()
inline float quick_gelu(float x) { return x / (1.0f + std::exp(-1.702f * x)); }                   // CLIP's

// LlamaMLP's act(gate) * up, in place into gate (SIMD exp: within a few ulps
// of the scalar scalar::silu_mul).
void silu_mul(float* gate, const float* up, int64_t n);

// CLIP's quick_gelu over x[0..n), in place.
void quick_gelu(float* x, int64_t n);

// Softmax of x[0..n) in place (max-subtracted); the reference, with a double sum.
void softmax(float* x, int64_t n);

// The same with the kernels of `kt` (SIMD exp, f32 sum in a fixed lane order).
void softmax(const KernelTable& kt, float* x, int64_t n);

// ------------------------------------------------------------- attention

// Scaled dot-product attention of n queries against m keys/values, multi-head
// with grouped-query sharing (head h reads kv head h / (n_heads / n_kv_heads)):
//   out[i, h] = softmax(q[i, h] · K[:, g]ᵀ / √hd  (+ causal mask)) · V[:, g]
// q, out: n rows of f32, head h at + h·hd, rows q_stride / out_stride floats apart.
// k, v: m rows of kv_type (F32 or F16), kv_stride elements apart, kv head g at + g·hd.
// causal: query i sees keys [0, m − n + i] (the queries are the last n positions).
struct AttentionShape {
  int64_t n = 0, m = 0, n_heads = 0, n_kv_heads = 0, hd = 0;
  int64_t q_stride = 0, kv_stride = 0, out_stride = 0;
  bool causal = true;
};

void multi_head_attention(const KernelTable& kt, const AttentionShape& a, const float* q, const void* k, const void* v,
                          DType kv_type, float* out, ThreadPool* pool = nullptr);

void multi_head_attention(const AttentionShape& a, const float* q, const void* k, const void* v, DType kv_type, float* out,
                          ThreadPool* pool = nullptr);

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
  // cos/sin of every angle at position pos: cs[0..d/2) = cos, cs[d/2..d) = sin.
  void angles(int64_t pos, float* cs) const {
    const int64_t h = d / 2;
    for (int64_t i = 0; i < h; ++i) {
      const float a = float(pos) * inv_freq[size_t(i)];
      cs[i] = std::cos(a), cs[h + i] = std::sin(a);
    }
  }
  // apply() with the angles precomputed (one table per position serves every
  // head of every layer); the same values as apply().
  void apply(float* v, const float* cs, RopeStyle style) const {
    const int64_t h = d / 2;
    for (int64_t i = 0; i < h; ++i) {
      const float c = cs[i], s = cs[h + i];
      const int64_t i0 = style == RopeStyle::Adjacent ? 2 * i : i;
      const int64_t i1 = style == RopeStyle::Adjacent ? 2 * i + 1 : i + h;
      const float x0 = v[i0], x1 = v[i1];
      v[i0] = x0 * c - x1 * s;
      v[i1] = x1 * c + x0 * s;
    }
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

#ifdef LOUPE_IMPLEMENTATION
#include "kernels.hpp"
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

namespace ops_detail {
constexpr int64_t kGrain = 64;  // output rows per task: fixed, so results are thread-count independent
inline QuantizedRows& act_scratch() {
  static thread_local QuantizedRows q;  // the caller's; workers only read it
  return q;
}
// Per-thread scratch, grown and kept: attention scores (0, 1), an F16 cache
// widened (2, 3), a tile of F16/BF16 weight rows widened for Eigen (4).
inline std::vector<float>& f32_scratch(int which) {
  static thread_local std::vector<float> s[5];
  return s[which];
}
inline AlignedBuffer<float>& packed_scratch() {  // the caller's packed matmul input; workers only read it
  static thread_local AlignedBuffer<float> s;
  return s;
}
inline AlignedBuffer<uint32_t>& packed_bf16_scratch() {  // the same for the bf16 gemm
  static thread_local AlignedBuffer<uint32_t> s;
  return s;
}
}  // namespace ops_detail

void quick_gelu(float* x, int64_t n) { kernels().quick_gelu(x, n); }

void matmul(const KernelTable& kt, const TensorView& w, const float* x, int64_t n, float* y, ThreadPool* pool, Precision p) {
  using ops_detail::kGrain;
  const int64_t out = w.rows(), in = w.cols();
  if (n <= 0 || out <= 0) return;
  if (is_quantized(w.dtype)) {
    if (in % QK) fail("matmul: quantised weight row length ", in, " is not a multiple of ", QK);
    if (w.dtype != DType::Q4_0 && w.dtype != DType::Q8_0) fail("matmul: unsupported weight type ", dtype_name(w.dtype));
    const bool q4 = w.dtype == DType::Q4_0;
    QuantizedRows& xq = ops_detail::act_scratch();
    kt.quantize_rows(x, n, in, q4 ? kt.q4_0_offset : kt.q8_0_offset, xq);
    const bool x16 = q4 && w.packed && kt.matmul_q4_0_x16;
    const auto* base = static_cast<const uint8_t*>(x16 ? w.packed : w.data);
    const size_t ws = w.row_stride();
    auto fn = x16 ? kt.matmul_q4_0_x16 : q4 ? kt.matmul_q4_0 : kt.matmul_q8_0;
    // Many activation rows: larger tasks, so the gemm's prefetch of the next weight panel covers most panels.
    const int64_t grain = n >= 4 ? 4 * kGrain : kGrain;
    parallel_chunks(pool, out, grain, [&](int64_t r0, int64_t r1) { fn(base, ws, r0, r1, xq, y, out); });
    return;
  }
  if (w.dtype != DType::F32 && w.dtype != DType::F16 && w.dtype != DType::BF16)
    fail("matmul: unsupported weight type ", dtype_name(w.dtype));
  // Our SIMD GEMMs (f32, or bf16 products where allowed): x packed once into xp, tasks of weight rows.
  auto packed_gemm = [&](auto& xp, int64_t packed_size, auto pack, auto gemm) {
    xp.resize(size_t(packed_size));
    pack(x, n, in, xp.data());
    const auto* base = static_cast<const uint8_t*>(w.data);
    const size_t ws = w.row_stride();
    parallel_chunks(pool, out, 48, [&](int64_t r0, int64_t r1) { gemm(xp.data(), n, in, base, w.dtype, ws, r0, r1, y, out); });
  };
  if (p == Precision::Bf16 && kt.gemm_bf16 && n >= 8)
    return packed_gemm(ops_detail::packed_bf16_scratch(), kt.bf16_packed_size(n, in), kt.pack_rows_bf16, kt.gemm_bf16);
  if (kt.gemm_f32 && n >= 8) return packed_gemm(ops_detail::packed_scratch(), kt.packed_size(n, in), kt.pack_rows, kt.gemm_f32);
  parallel_chunks(pool, out, kGrain, [&](int64_t r0, int64_t r1) {
    const int64_t m = r1 - r0;
    std::vector<float>& tile = ops_detail::f32_scratch(4);
    const float* wt;
    if (w.dtype == DType::F32 && w.row_stride() == size_t(in) * 4) {
      wt = reinterpret_cast<const float*>(w.row(r0));
    } else {
      if (tile.size() < size_t(m * in)) tile.resize(size_t(m * in));
      for (int64_t r = r0; r < r1; ++r) {
        const auto* src = reinterpret_cast<const uint16_t*>(w.row(r));
        float* dst = tile.data() + (r - r0) * in;
        if (w.dtype == DType::F16) kt.f16_to_f32(src, dst, in);
        else if (w.dtype == DType::BF16) kt.bf16_to_f32(src, dst, in);
        else std::memcpy(dst, w.row(r), size_t(in) * 4);
      }
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
      for (int64_t r = 0; r < m; ++r) y[i * out + r0 + r] = scalar::dot_f32(x + i * in, wt + r * in, in);
#endif
  });
}

void matmul(const TensorView& w, const float* x, int64_t n, float* y, ThreadPool* pool, Precision p) {
  matmul(kernels(), w, x, n, y, pool, p);
}

void linear(const TensorView& w, const float* b, const float* x, int64_t n, float* y, ThreadPool* pool) {
  matmul(w, x, n, y, pool);
  if (!b) return;
  const int64_t out = w.rows();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t r = 0; r < out; ++r) y[i * out + r] += b[r];
}

void rmsnorm(const float* x, const float* w, int64_t n, int64_t d, float eps, float* y) {
  for (int64_t i = 0; i < n; ++i, x += d, y += d) {
    double ss = 0;
    for (int64_t k = 0; k < d; ++k) ss += double(x[k]) * x[k];
    const float s = float(1.0 / std::sqrt(ss / double(d) + double(eps)));
    for (int64_t k = 0; k < d; ++k) y[k] = w[k] * (x[k] * s);
  }
}

void layernorm(const float* x, const float* w, const float* b, int64_t n, int64_t d, float eps, float* y) {
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

void silu_mul(float* gate, const float* up, int64_t n) { kernels().silu_mul(gate, up, n); }
void softmax(float* x, int64_t n) {
  float m = x[0];
  for (int64_t i = 1; i < n; ++i) m = std::max(m, x[i]);
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += (x[i] = std::exp(x[i] - m));
  const float inv = float(1.0 / s);
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

void softmax(const KernelTable& kt, float* x, int64_t n) {
  float m = x[0];
  for (int64_t i = 1; i < n; ++i) m = std::max(m, x[i]);
  const float inv = 1.0f / kt.exp_sum(x, n, m);
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

void multi_head_attention(const KernelTable& kt, const AttentionShape& a, const float* q, const void* k, const void* v,
                          DType kv_type, float* out, ThreadPool* pool) {
  if (kv_type != DType::F32 && kv_type != DType::F16) fail("attention: keys/values must be F32 or F16, not ", dtype_name(kv_type));
  if (a.n <= 0) return;
  const int64_t group = a.n_heads / a.n_kv_heads, hd = a.hd;
  const float scale = 1.0f / std::sqrt(float(hd));
  const bool f16 = kv_type == DType::F16;
  auto visible = [&](int64_t i) { return a.causal ? a.m - a.n + i + 1 : a.m; };
#ifdef LOUPE_HAVE_EIGEN
  constexpr bool have_gemm = true;
#else
  constexpr bool have_gemm = false;
#endif
  if (a.n < 4 || !have_gemm) {
    // Few queries (decode): dot products and weighted sums straight from the cache.
    parallel_chunks(pool, a.n * a.n_heads, 1, [&](int64_t t0, int64_t t1) {
      std::vector<float>& s = ops_detail::f32_scratch(0);
      if (s.size() < size_t(a.m)) s.resize(size_t(a.m + 1023) / 1024 * 1024);  // grown by 1024 positions, not per token
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t i = t / a.n_heads, h = t % a.n_heads, off = (h / group) * hd, len = visible(i);
        const float* qi = q + i * a.q_stride + h * hd;
        for (int64_t p = 0; p < len; ++p)
          s[size_t(p)] = (f16 ? kt.dot_f16(qi, static_cast<const uint16_t*>(k) + p * a.kv_stride + off, hd)
                              : kt.dot_f32(qi, static_cast<const float*>(k) + p * a.kv_stride + off, hd)) * scale;
        softmax(kt, s.data(), len);
        float* o = out + i * a.out_stride + h * hd;
        std::fill(o, o + hd, 0.0f);
        for (int64_t p = 0; p < len; ++p) {
          if (f16) kt.axpy_f16(s[size_t(p)], static_cast<const uint16_t*>(v) + p * a.kv_stride + off, o, hd);
          else kt.axpy_f32(s[size_t(p)], static_cast<const float*>(v) + p * a.kv_stride + off, o, hd);
        }
      }
    });
    return;
  }
#ifdef LOUPE_HAVE_EIGEN
  // Many queries (prefill, CLIP): blocks of queries × all visible keys with
  // Eigen's GEMM, S = Q·Kᵀ, softmax per row, O = S·V. An F16 cache is widened
  // to f32 once for the call.
  const float *K = static_cast<const float*>(k), *V = static_cast<const float*>(v);
  int64_t ks = a.kv_stride;
  std::vector<float>& kf = ops_detail::f32_scratch(2);
  std::vector<float>& vf = ops_detail::f32_scratch(3);
  if (f16) {
    const int64_t w = a.n_kv_heads * hd;
    if (kf.size() < size_t(a.m * w)) kf.resize(size_t(a.m * w)), vf.resize(size_t(a.m * w));
    parallel_chunks(pool, a.m, 64, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        kt.f16_to_f32(static_cast<const uint16_t*>(k) + p * a.kv_stride, kf.data() + p * w, w);
        kt.f16_to_f32(static_cast<const uint16_t*>(v) + p * a.kv_stride, vf.data() + p * w, w);
      }
    });
    K = kf.data(), V = vf.data(), ks = w;
  }
  constexpr int64_t kQB = 32;  // query rows per task
  const int64_t qblocks = (a.n + kQB - 1) / kQB;
  using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Strided = Eigen::Map<const RowMat, 0, Eigen::OuterStride<>>;
  parallel_chunks(pool, a.n_heads * qblocks, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float>& sbuf = ops_detail::f32_scratch(1);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t h = t / qblocks, i0 = (t % qblocks) * kQB, i1 = std::min(a.n, i0 + kQB), qb = i1 - i0;
      const int64_t off = (h / group) * hd, len = visible(i1 - 1);
      Strided Q(q + i0 * a.q_stride + h * hd, qb, hd, Eigen::OuterStride<>(a.q_stride));
      Strided Kh(K + off, len, hd, Eigen::OuterStride<>(ks));
      Strided Vh(V + off, len, hd, Eigen::OuterStride<>(ks));
      sbuf.resize(size_t(qb * len));
      Eigen::Map<RowMat> S(sbuf.data(), qb, len);
      S.noalias() = Q * Kh.transpose();
      for (int64_t r = 0; r < qb; ++r) {
        float* row = sbuf.data() + r * len;
        const int64_t vis = visible(i0 + r);
        for (int64_t p = 0; p < vis; ++p) row[p] *= scale;
        softmax(kt, row, vis);
        std::fill(row + vis, row + len, 0.0f);
      }
      Eigen::Map<RowMat, 0, Eigen::OuterStride<>> O(out + i0 * a.out_stride + h * hd, qb, hd, Eigen::OuterStride<>(a.out_stride));
      O.noalias() = S * Vh;
    }
  });
#endif
}

void multi_head_attention(const AttentionShape& a, const float* q, const void* k, const void* v, DType kv_type, float* out,
                          ThreadPool* pool) {
  multi_head_attention(kernels(), a, q, k, v, kv_type, out, pool);
}

}  // namespace loupe
#if defined(LOUPE_HAVE_EIGEN) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif  // LOUPE_IMPLEMENTATION
