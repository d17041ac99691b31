// WebAssembly SIMD128 kernels (em++ -msimd128): chosen at compile time, there
// is no run-time feature test in WebAssembly.
//
// LLVM 14 does not turn the int8 widening dot product into good SIMD (about
// 10× slower than this), so the quantised matmuls widen both sides to int16
// and use i32x4.dot_i16x8_s: activations once per matmul (QuantizedRows::qs16),
// weights once per block and activation-row group. There is no fp16 in SIMD128:
// fp16 rows widen with the exact shift-and-rescale trick. No FMA in SIMD128
// either: multiply then add.
#pragma once
#include "scalar.hpp"

#if defined(__wasm_simd128__)
#include <wasm_simd128.h>

namespace loupe {
namespace wasm {

inline uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
inline float hsum(v128_t v) {
  return (wasm_f32x4_extract_lane(v, 0) + wasm_f32x4_extract_lane(v, 2)) +
         (wasm_f32x4_extract_lane(v, 1) + wasm_f32x4_extract_lane(v, 3));
}

// The scalar quantiser (bit-exact by construction), plus the int16 copy of the values.
inline void quantize_rows_wasm(const float* x, int64_t n, int64_t k, int32_t offset, QuantizedRows& q) {
  scalar::quantize_rows(x, n, k, offset, q);
  q.qs16.resize(size_t(n * k));
  for (int64_t j = 0; j < n * k; j += 16) {
    const v128_t v = wasm_v128_load(q.qs.data() + j);
    wasm_v128_store(q.qs16.data() + j, wasm_i16x8_extend_low_i8x16(v));
    wasm_v128_store(q.qs16.data() + j + 8, wasm_i16x8_extend_high_i8x16(v));
  }
}

// NX activation rows against weight rows [r0, r1); weights widened to signed int16
// once per block, int32 dot per block, f32 scale per block, f32 lanes summed at the end.
template <bool Q4, int NX>
inline void gemv_wasm_nx(const uint8_t* w, size_t ws, int64_t r0, int64_t r1, const QuantizedRows& x, int64_t i0, float* y, int64_t ldy) {
  constexpr int64_t bs = Q4 ? 18 : 34;
  const int64_t nb = x.nb;
  const v128_t m4 = wasm_i8x16_splat(0x0f), eight = wasm_i8x16_splat(8);
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* wr = w + size_t(r) * ws;
    v128_t acc[NX];
    for (int i = 0; i < NX; ++i) acc[i] = wasm_f32x4_splat(0.0f);
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* wb = wr + b * bs;
      v128_t w0, w1, w2, w3;  // elements 0-7, 8-15, 16-23, 24-31 as int16
      if (Q4) {
        const v128_t v = wasm_v128_load(wb + 2);
        const v128_t lo = wasm_i8x16_sub(wasm_v128_and(v, m4), eight);
        const v128_t hi = wasm_i8x16_sub(wasm_u8x16_shr(v, 4), eight);
        w0 = wasm_i16x8_extend_low_i8x16(lo), w1 = wasm_i16x8_extend_high_i8x16(lo);
        w2 = wasm_i16x8_extend_low_i8x16(hi), w3 = wasm_i16x8_extend_high_i8x16(hi);
      } else {
        const v128_t a = wasm_v128_load(wb + 2), c = wasm_v128_load(wb + 18);
        w0 = wasm_i16x8_extend_low_i8x16(a), w1 = wasm_i16x8_extend_high_i8x16(a);
        w2 = wasm_i16x8_extend_low_i8x16(c), w3 = wasm_i16x8_extend_high_i8x16(c);
      }
      const float dw = fp16_to_f32(load_u16(wb));
      for (int i = 0; i < NX; ++i) {
        const int16_t* xs = x.qs16.data() + (i0 + i) * x.k + b * QK;
        const v128_t s = wasm_i32x4_add(wasm_i32x4_add(wasm_i32x4_dot_i16x8(w0, wasm_v128_load(xs)), wasm_i32x4_dot_i16x8(w1, wasm_v128_load(xs + 8))),
                                        wasm_i32x4_add(wasm_i32x4_dot_i16x8(w2, wasm_v128_load(xs + 16)), wasm_i32x4_dot_i16x8(w3, wasm_v128_load(xs + 24))));
        const float sc = dw * x.d.data()[(i0 + i) * nb + b];
        acc[i] = wasm_f32x4_add(acc[i], wasm_f32x4_mul(wasm_f32x4_convert_i32x4(s), wasm_f32x4_splat(sc)));
      }
    }
    for (int i = 0; i < NX; ++i) y[(i0 + i) * ldy + r] = hsum(acc[i]);
  }
}

template <bool Q4>
inline void matmul_wasm(const uint8_t* w, size_t ws, int64_t r0, int64_t r1, const QuantizedRows& x, float* y, int64_t ldy) {
  int64_t i = 0;
  for (; i + 4 <= x.n; i += 4) gemv_wasm_nx<Q4, 4>(w, ws, r0, r1, x, i, y, ldy);
  switch (x.n - i) {
    case 3: gemv_wasm_nx<Q4, 3>(w, ws, r0, r1, x, i, y, ldy); break;
    case 2: gemv_wasm_nx<Q4, 2>(w, ws, r0, r1, x, i, y, ldy); break;
    case 1: gemv_wasm_nx<Q4, 1>(w, ws, r0, r1, x, i, y, ldy); break;
    default: break;
  }
}
inline void matmul_q4_0_wasm(const uint8_t* w, size_t ws, int64_t r0, int64_t r1, const QuantizedRows& x, float* y, int64_t ldy) {
  matmul_wasm<true>(w, ws, r0, r1, x, y, ldy);
}
inline void matmul_q8_0_wasm(const uint8_t* w, size_t ws, int64_t r0, int64_t r1, const QuantizedRows& x, float* y, int64_t ldy) {
  matmul_wasm<false>(w, ws, r0, r1, x, y, ldy);
}

// fp16 -> f32 exactly: shift the exponent and mantissa into place and rescale by
// 2^112 (normal and subnormal halves alike); inf/NaN get the f32 exponent.
inline v128_t f16x4_to_f32(v128_t h) {  // h: 4 halves zero-extended to u32
  const v128_t em = wasm_i32x4_shl(wasm_v128_and(h, wasm_i32x4_splat(0x7fff)), 13);
  const v128_t sign = wasm_i32x4_shl(wasm_v128_and(h, wasm_i32x4_splat(0x8000)), 16);
  v128_t f = wasm_f32x4_mul(em, wasm_f32x4_splat(5.192296858534828e+33f));  // 2^112
  const v128_t special = wasm_i32x4_eq(wasm_v128_and(h, wasm_i32x4_splat(0x7c00)), wasm_i32x4_splat(0x7c00));
  f = wasm_v128_bitselect(wasm_v128_or(em, wasm_i32x4_splat(0x7f800000)), f, special);
  return wasm_v128_or(f, sign);
}
// ---- f32 vector kernels and row converters: vec_f32.inl over these traits.
// (No FMA in SIMD128: multiply, then add. No fp16 store: lane by lane, exactly.)
struct Vec {
  using V = v128_t;
  static constexpr int64_t kLanes = 4;
  static constexpr bool kMasked = false;
  static V zero() { return wasm_f32x4_splat(0.0f); }
  static V set1(float f) { return wasm_f32x4_splat(f); }
  static V load(const float* p) { return wasm_v128_load(p); }
  static void store(float* p, V v) { wasm_v128_store(p, v); }
  static V load_f16(const uint16_t* p) { return f16x4_to_f32(wasm_u32x4_load16x4(p)); }
  static void store_f16(uint16_t* p, V v) {
    p[0] = f32_to_fp16(wasm_f32x4_extract_lane(v, 0)), p[1] = f32_to_fp16(wasm_f32x4_extract_lane(v, 1));
    p[2] = f32_to_fp16(wasm_f32x4_extract_lane(v, 2)), p[3] = f32_to_fp16(wasm_f32x4_extract_lane(v, 3));
  }
  static V load_bf16(const uint16_t* p) { return wasm_i32x4_shl(wasm_u32x4_load16x4(p), 16); }
  static V add(V a, V b) { return wasm_f32x4_add(a, b); }
  static V sub(V a, V b) { return wasm_f32x4_sub(a, b); }
  static V mul(V a, V b) { return wasm_f32x4_mul(a, b); }
  static V div(V a, V b) { return wasm_f32x4_div(a, b); }
  static V min(V a, V b) { return wasm_f32x4_min(a, b); }
  static V max(V a, V b) { return wasm_f32x4_max(a, b); }
  static V fma(V a, V b, V c) { return wasm_f32x4_add(wasm_f32x4_mul(a, b), c); }
  static V fnma(V a, V b, V c) { return wasm_f32x4_sub(c, wasm_f32x4_mul(a, b)); }
  static V round(V v) { return wasm_f32x4_nearest(v); }
  static V scale2(V p, V k) {  // 2^k built in the exponent bits
    return wasm_f32x4_mul(p, wasm_i32x4_shl(wasm_i32x4_add(wasm_i32x4_trunc_sat_f32x4(k), wasm_i32x4_splat(127)), 23));
  }
  static float hsum(V v) { return wasm::hsum(v); }
};
#include "vec_f32.inl"

}  // namespace wasm
}  // namespace loupe

#endif  // __wasm_simd128__
