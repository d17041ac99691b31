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

// ---- f32 vector kernels and row converters: vec_f32.inl over these traits.
struct Vec {
  using V = float32x4_t;
  static constexpr int64_t kLanes = 4;
  static constexpr bool kMasked = false;
  static V zero() { return vdupq_n_f32(0.0f); }
  static V set1(float f) { return vdupq_n_f32(f); }
  static V load(const float* p) { return vld1q_f32(p); }
  static void store(float* p, V v) { vst1q_f32(p, v); }
  static V load_f16(const uint16_t* p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }
  static void store_f16(uint16_t* p, V v) { vst1_u16(p, vreinterpret_u16_f16(vcvt_f16_f32(v))); }
  static V load_bf16(const uint16_t* p) { return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16)); }
  static V add(V a, V b) { return vaddq_f32(a, b); }
  static V sub(V a, V b) { return vsubq_f32(a, b); }
  static V mul(V a, V b) { return vmulq_f32(a, b); }
  static V div(V a, V b) { return vdivq_f32(a, b); }
  static V min(V a, V b) { return vminq_f32(a, b); }
  static V max(V a, V b) { return vmaxq_f32(a, b); }
  static V fma(V a, V b, V c) { return vfmaq_f32(c, a, b); }
  static V fnma(V a, V b, V c) { return vfmsq_f32(c, a, b); }
  static V round(V v) { return vrndnq_f32(v); }
  static V scale2(V p, V k) {  // 2^k built in the exponent bits
    return vmulq_f32(p, vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(k), vdupq_n_s32(127)), 23)));
  }
  static float hsum(V v) { return vaddvq_f32(v); }
};
#include "vec_f32.inl"

}  // namespace neon
}  // namespace loupe

#endif  // AArch64 NEON
