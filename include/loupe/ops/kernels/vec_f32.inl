// The f32 vector kernels (attention, activations) and row converters, written
// once for every SIMD ISA. kernels/x86.hpp (AVX2, AVX-512), neon.hpp and
// wasm.hpp each include this file (no include guard: once per ISA) inside their
// own namespace, after defining `struct Vec`, that ISA's vector traits, and
// inside a region compiled for that ISA (LOUPE_BEGIN_TARGET on x86), so every
// function here is compiled with the ISA's instructions and inlines them.
//
// Vec provides:
//   V, kLanes                      the vector type and its f32 lanes
//   zero(), set1(f)                constants
//   load(p), store(p, v)           kLanes floats
//   load_f16(p), store_f16(p, v)   kLanes halves (IEEE fp16; stores round to nearest even)
//   load_bf16(p)                   kLanes bfloat16 values
//   add, sub, mul, div, min, max   lane-wise
//   fma(a, b, c) = a·b + c, fnma(a, b, c) = c − a·b (fused where the ISA has FMA)
//   round(v)                       to the nearest integer, ties to even
//   scale2(p, k) = p·2^k           k integral in [−127, 127]
//   hsum(v)                        the lanes' sum, in a fixed order
//   kMasked                        true: load_n/store_n/load_f16_n/store_f16_n(p, [v,] n)
//                                  handle the last n < kLanes elements (zeros past n),
//                                  keep_n(v, n) zeroes the lanes from n on;
//                                  false: tails run element by element in scalar code.
// Results are within a few ulps of the scalar reference (kernels/scalar.hpp;
// test_ops checks every level), not bit-equal: the sums run in lanes.

// A template over the traits only so that `if constexpr` discards the masked
// branches where the ISA has no masks.
template <class Vec>
struct VecKernelsOf {
  using V = typename Vec::V;
  static constexpr int64_t L = Vec::kLanes;

  // exp(x) for x in [−87.3, 88.4] (outside: clamped, so exp(−inf) = 1.2e-38, not
  // 0; NaN is not propagated). Cephes expf: x = k·ln2 + r, a degree-6 polynomial
  // for e^r; within 2 ulp of std::exp.
  static V exp(V x) {
    x = Vec::min(Vec::max(x, Vec::set1(-87.3365402f)), Vec::set1(88.3762626647949f));
    const V k = Vec::round(Vec::mul(x, Vec::set1(1.44269504088896341f)));
    V r = Vec::fnma(k, Vec::set1(0.693359375f), x);
    r = Vec::fnma(k, Vec::set1(-2.12194440e-4f), r);
    V p = Vec::set1(1.9875691500e-4f);
    p = Vec::fma(p, r, Vec::set1(1.3981999507e-3f));
    p = Vec::fma(p, r, Vec::set1(8.3334519073e-3f));
    p = Vec::fma(p, r, Vec::set1(4.1665795894e-2f));
    p = Vec::fma(p, r, Vec::set1(1.6666665459e-1f));
    p = Vec::fma(p, r, Vec::set1(5.0000001201e-1f));
    p = Vec::fma(p, Vec::mul(r, r), Vec::add(r, Vec::set1(1.0f)));
    return Vec::scale2(p, k);
  }
  static V over_one_plus_exp(V v, V t) { return Vec::div(v, Vec::add(Vec::set1(1.0f), exp(t))); }  // v / (1 + e^t)

  // Σ x·y with two accumulators (two FMA chains in flight).
  template <class LoadY, class ScalarY>
  static float dot(const float* x, int64_t n, LoadY load_y, ScalarY scalar_y) {
    V a0 = Vec::zero(), a1 = Vec::zero();
    int64_t i = 0;
    for (; i + 2 * L <= n; i += 2 * L) {
      a0 = Vec::fma(Vec::load(x + i), load_y(i, L), a0);
      a1 = Vec::fma(Vec::load(x + i + L), load_y(i + L, L), a1);
    }
    for (; i + L <= n; i += L) a0 = Vec::fma(Vec::load(x + i), load_y(i, L), a0);
    if constexpr (Vec::kMasked) {
      if (i < n) a0 = Vec::fma(Vec::load_n(x + i, n - i), load_y(i, n - i), a0);
      return Vec::hsum(Vec::add(a0, a1));
    } else {
      float s = Vec::hsum(Vec::add(a0, a1));
      for (; i < n; ++i) s += x[i] * scalar_y(i);
      return s;
    }
  }
  static float dot_f32(const float* x, const float* y, int64_t n) {
    return dot(x, n, [&](int64_t i, int64_t m) { return load_any(y + i, m); }, [&](int64_t i) { return y[i]; });
  }
  static float dot_f16(const float* x, const uint16_t* y, int64_t n) {
    return dot(x, n, [&](int64_t i, int64_t m) { return load_any_f16(y + i, m); }, [&](int64_t i) { return fp16_to_f32(y[i]); });
  }

  // y = f(i, v) over [0, n) in vectors, the tail masked or element by element
  // (fs(i): the same for one element, in scalar code).
  template <class F, class FS>
  static void each(int64_t n, F f, FS fs) {
    int64_t i = 0;
    for (; i + L <= n; i += L) f(i, L);
    if constexpr (Vec::kMasked) {
      if (i < n) f(i, n - i);
    } else {
      for (; i < n; ++i) fs(i);
    }
  }
  static V load_any(const float* p, int64_t m) {
    if constexpr (Vec::kMasked) return m == L ? Vec::load(p) : Vec::load_n(p, m);
    else return Vec::load(p);
  }
  static V load_any_f16(const uint16_t* p, int64_t m) {
    if constexpr (Vec::kMasked) return m == L ? Vec::load_f16(p) : Vec::load_f16_n(p, m);
    else return Vec::load_f16(p);
  }
  static void store_any(float* p, V v, int64_t m) {
    if constexpr (Vec::kMasked) m == L ? Vec::store(p, v) : Vec::store_n(p, v, m);
    else Vec::store(p, v);
  }

  static void axpy_f32(float a, const float* x, float* y, int64_t n) {
    const V va = Vec::set1(a);
    each(n, [&](int64_t i, int64_t m) { store_any(y + i, Vec::fma(va, load_any(x + i, m), load_any(y + i, m)), m); },
         [&](int64_t i) { y[i] += a * x[i]; });
  }
  static void axpy_f16(float a, const uint16_t* x, float* y, int64_t n) {
    const V va = Vec::set1(a);
    each(n, [&](int64_t i, int64_t m) { store_any(y + i, Vec::fma(va, load_any_f16(x + i, m), load_any(y + i, m)), m); },
         [&](int64_t i) { y[i] += a * fp16_to_f32(x[i]); });
  }
  // x = exp(x − shift); returns Σ.
  static float exp_sum(float* x, int64_t n, float shift) {
    const V vs = Vec::set1(shift);
    V acc = Vec::zero();
    float tail = 0.0f;
    each(n,
         [&](int64_t i, int64_t m) {
           V e = exp(Vec::sub(load_any(x + i, m), vs));
           if constexpr (Vec::kMasked) e = m == L ? e : Vec::keep_n(e, m);  // lanes past n add nothing
           store_any(x + i, e, m);
           acc = Vec::add(acc, e);
         },
         [&](int64_t i) { tail += (x[i] = std::exp(x[i] - shift)); });
    return Vec::hsum(acc) + tail;
  }
  // LlamaMLP's silu(g)·u, into g.
  static void silu_mul(float* g, const float* u, int64_t n) {
    each(n,
         [&](int64_t i, int64_t m) {
           const V v = load_any(g + i, m);
           store_any(g + i, Vec::mul(over_one_plus_exp(v, Vec::sub(Vec::zero(), v)), load_any(u + i, m)), m);
         },
         [&](int64_t i) { g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i]; });
  }
  // CLIP's x·sigmoid(1.702·x).
  static void quick_gelu(float* x, int64_t n) {
    const V c = Vec::set1(-1.702f);
    each(n, [&](int64_t i, int64_t m) { const V v = load_any(x + i, m); store_any(x + i, over_one_plus_exp(v, Vec::mul(c, v)), m); },
         [&](int64_t i) { x[i] = x[i] / (1.0f + std::exp(-1.702f * x[i])); });
  }

  // Rows of fp16 / bf16 widened exactly, and f32 rounded to fp16.
  static void f16_to_f32_row(const uint16_t* s, float* d, int64_t n) {
    each(n, [&](int64_t i, int64_t m) { store_any(d + i, load_any_f16(s + i, m), m); }, [&](int64_t i) { d[i] = fp16_to_f32(s[i]); });
  }
  static void bf16_to_f32_row(const uint16_t* s, float* d, int64_t n) {
    int64_t i = 0;
    for (; i + L <= n; i += L) Vec::store(d + i, Vec::load_bf16(s + i));
    for (; i < n; ++i) d[i] = bf16_to_f32(s[i]);  // exact either way: a shift
  }
  static void f32_to_f16_row(const float* s, uint16_t* d, int64_t n) {
    each(n,
         [&](int64_t i, int64_t m) {
           if constexpr (Vec::kMasked) m == L ? Vec::store_f16(d + i, Vec::load(s + i)) : Vec::store_f16_n(d + i, Vec::load_n(s + i, m), m);
           else Vec::store_f16(d + i, Vec::load(s + i));
         },
         [&](int64_t i) { d[i] = f32_to_fp16(s[i]); });
  }
};
using VecKernels = VecKernelsOf<Vec>;
