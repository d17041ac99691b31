// AArch64 Advanced SIMD (NEON) kernels, chosen at compile time. The int8 dot
// uses SDOT (vdotq_s32) where the compiler targets it (-march=armv8.2-a+dotprod
// and later: __ARM_FEATURE_DOTPROD), else widening multiplies (vmull_s8 +
// vpadalq_s16). Built and run under qemu-aarch64 (see bench/README.md); not
// timed on real hardware.
#pragma once
#include "scalar.hpp"

#if defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>

namespace loupe {
namespace neon {

inline uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

// Σ over 16 int8 products into 4 int32 lanes.
inline int32x4_t dot16(int32x4_t acc, int8x16_t a, int8x16_t b) {
#if defined(__ARM_FEATURE_DOTPROD)
  return vdotq_s32(acc, a, b);
#else
  acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(a), vget_low_s8(b)));
  return vpadalq_s16(acc, vmull_high_s8(a, b));
#endif
}

template <bool Q4, int NX>
inline void gemv_neon_nx(const uint8_t* w, size_t ws, int64_t r0, int64_t r1, const QuantizedRows& x, int64_t i0, float* y, int64_t ldy) {
  constexpr int64_t bs = Q4 ? 18 : 34;
  const int64_t nb = x.nb;
  const uint8x16_t m4 = vdupq_n_u8(0x0f);
  const int8x16_t eight = vdupq_n_s8(8);
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* wr = w + size_t(r) * ws;
    float32x4_t acc[NX];
    for (int i = 0; i < NX; ++i) acc[i] = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* wb = wr + b * bs;
      int8x16_t w0, w1;  // elements 0-15, 16-31
      if (Q4) {
        const uint8x16_t v = vld1q_u8(wb + 2);
        w0 = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(v, m4)), eight);
        w1 = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(v, 4)), eight);
      } else {
        w0 = vld1q_s8(reinterpret_cast<const int8_t*>(wb + 2));
        w1 = vld1q_s8(reinterpret_cast<const int8_t*>(wb + 18));
      }
      const float dw = fp16_to_f32(load_u16(wb));
      for (int i = 0; i < NX; ++i) {
        const int8_t* xs = x.row(i0 + i) + b * QK;
        const int32x4_t s = dot16(dot16(vdupq_n_s32(0), w0, vld1q_s8(xs)), w1, vld1q_s8(xs + 16));
        acc[i] = vfmaq_n_f32(acc[i], vcvtq_f32_s32(s), dw * x.d.data()[(i0 + i) * nb + b]);
      }
    }
    for (int i = 0; i < NX; ++i) y[(i0 + i) * ldy + r] = vaddvq_f32(acc[i]);
  }
}

template <bool Q4>
inline void matmul_neon(const uint8_t* w, size_t ws, int64_t r0, int64_t r1, const QuantizedRows& x, float* y, int64_t ldy) {
  int64_t i = 0;
  for (; i + 4 <= x.n; i += 4) gemv_neon_nx<Q4, 4>(w, ws, r0, r1, x, i, y, ldy);
  switch (x.n - i) {
    case 3: gemv_neon_nx<Q4, 3>(w, ws, r0, r1, x, i, y, ldy); break;
    case 2: gemv_neon_nx<Q4, 2>(w, ws, r0, r1, x, i, y, ldy); break;
    case 1: gemv_neon_nx<Q4, 1>(w, ws, r0, r1, x, i, y, ldy); break;
    default: break;
  }
}
inline void matmul_q4_0_neon(const uint8_t* w, size_t ws, int64_t r0, int64_t r1, const QuantizedRows& x, float* y, int64_t ldy) {
  matmul_neon<true>(w, ws, r0, r1, x, y, ldy);
}
inline void matmul_q8_0_neon(const uint8_t* w, size_t ws, int64_t r0, int64_t r1, const QuantizedRows& x, float* y, int64_t ldy) {
  matmul_neon<false>(w, ws, r0, r1, x, y, ldy);
}

inline void f16_to_f32_row_neon(const uint16_t* s, float* d, int64_t n) {
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) vst1q_f32(d + i, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(s + i))));
  for (; i < n; ++i) d[i] = fp16_to_f32(s[i]);
}
inline void f32_to_f16_row_neon(const float* s, uint16_t* d, int64_t n) {
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) vst1_u16(d + i, vreinterpret_u16_f16(vcvt_f16_f32(vld1q_f32(s + i))));
  for (; i < n; ++i) d[i] = f32_to_fp16(s[i]);
}

// exp as the x86 kernels (Cephes expf), with FMA.
inline float32x4_t exp_neon(float32x4_t x) {
  x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-87.3365402f)), vdupq_n_f32(88.3762626647949f));
  const float32x4_t k = vrndnq_f32(vmulq_n_f32(x, 1.44269504088896341f));
  float32x4_t r = vfmsq_n_f32(x, k, 0.693359375f);
  r = vfmsq_n_f32(r, k, -2.12194440e-4f);
  float32x4_t p = vdupq_n_f32(1.9875691500e-4f);
  p = vfmaq_f32(vdupq_n_f32(1.3981999507e-3f), p, r);
  p = vfmaq_f32(vdupq_n_f32(8.3334519073e-3f), p, r);
  p = vfmaq_f32(vdupq_n_f32(4.1665795894e-2f), p, r);
  p = vfmaq_f32(vdupq_n_f32(1.6666665459e-1f), p, r);
  p = vfmaq_f32(vdupq_n_f32(5.0000001201e-1f), p, r);
  p = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0f)), p, vmulq_f32(r, r));
  const int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(k), vdupq_n_s32(127)), 23);
  return vmulq_f32(p, vreinterpretq_f32_s32(e));
}

inline float dot_f32_neon(const float* x, const float* y, int64_t n) {
  float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    a0 = vfmaq_f32(a0, vld1q_f32(x + i), vld1q_f32(y + i));
    a1 = vfmaq_f32(a1, vld1q_f32(x + i + 4), vld1q_f32(y + i + 4));
  }
  float s = vaddvq_f32(vaddq_f32(a0, a1));
  for (; i < n; ++i) s += x[i] * y[i];
  return s;
}
inline float dot_f16_neon(const float* x, const uint16_t* y, int64_t n) {
  float32x4_t a0 = vdupq_n_f32(0.0f);
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) a0 = vfmaq_f32(a0, vld1q_f32(x + i), vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(y + i))));
  float s = vaddvq_f32(a0);
  for (; i < n; ++i) s += x[i] * fp16_to_f32(y[i]);
  return s;
}
inline void axpy_f32_neon(float a, const float* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vfmaq_n_f32(vld1q_f32(y + i), vld1q_f32(x + i), a));
  for (; i < n; ++i) y[i] += a * x[i];
}
inline void axpy_f16_neon(float a, const uint16_t* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vfmaq_n_f32(vld1q_f32(y + i), vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(x + i))), a));
  for (; i < n; ++i) y[i] += a * fp16_to_f32(x[i]);
}
inline float exp_sum_neon(float* x, int64_t n, float shift) {
  const float32x4_t vs = vdupq_n_f32(shift);
  float32x4_t acc = vdupq_n_f32(0.0f);
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const float32x4_t e = exp_neon(vsubq_f32(vld1q_f32(x + i), vs));
    vst1q_f32(x + i, e);
    acc = vaddq_f32(acc, e);
  }
  float s = vaddvq_f32(acc);
  for (; i < n; ++i) s += (x[i] = std::exp(x[i] - shift));
  return s;
}
inline void silu_mul_neon(float* g, const float* u, int64_t n) {
  const float32x4_t one = vdupq_n_f32(1.0f);
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const float32x4_t v = vld1q_f32(g + i);
    vst1q_f32(g + i, vmulq_f32(vdivq_f32(v, vaddq_f32(one, exp_neon(vnegq_f32(v)))), vld1q_f32(u + i)));
  }
  for (; i < n; ++i) g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}
inline void quick_gelu_neon(float* x, int64_t n) {
  const float32x4_t one = vdupq_n_f32(1.0f);
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const float32x4_t v = vld1q_f32(x + i);
    vst1q_f32(x + i, vdivq_f32(v, vaddq_f32(one, exp_neon(vmulq_n_f32(v, -1.702f)))));
  }
  for (; i < n; ++i) x[i] = x[i] / (1.0f + std::exp(-1.702f * x[i]));
}

}  // namespace neon
}  // namespace loupe

#endif  // AArch64 NEON
