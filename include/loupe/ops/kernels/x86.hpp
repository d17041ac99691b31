// x86-64 kernels: AVX2 (+FMA, F16C) and AVX-512 (F/BW/VL/DQ + VNNI).
//
// Each function carries its own __attribute__((target)), so the whole project
// can be built for baseline x86-64 (-DLOUPE_NATIVE=OFF) and still run these
// where cpu_level() says the CPU has them (kernels.hpp picks).
//
// Quantised matmuls read the weights where they lie (the mmapped GGUF, ggml
// block layout), or Q4_0 packed at load as Q4_0x16 (scalar.hpp; gemm_x16_avx2,
// gemv_x16); activations come as QuantizedRows (kernels_scalar.hpp).
// The u8×s8 dot instructions (vpmaddubsw, vpdpbusd) need one unsigned side:
// Q4_0 nibbles are used as they are (q+8), Q8_0 bytes are flipped to q+128 for
// VNNI, and QuantizedRows' corr tables subtract the bias exactly.
//
// * gemv (few activation rows: decode): ggml's block layout as loaded; int32
//   lanes hold partial sums of one block, scaled per block and accumulated in
//   f32 lanes, summed across lanes at the end of the row. Same values as the
//   scalar kernel up to f32 rounding order. One activation row (decode proper)
//   has its own kernels, gemv1_rows (AVX-512) and gemv1_q4_0_avx2: see there for
//   what profiling showed.
// * gemm (many activation rows: prefill, CLIP, projector) with AVX-512 VNNI
//   and with AVX2: a panel of 32 (AVX2: 16) weight rows is repacked
//   once per task into VNNI order ([block][4-value group][row][4 bytes]) and
//   reused for every activation row; lanes are weight rows, so each output is
//   accumulated block by block exactly like the scalar kernel: bit-identical results.
#pragma once
#include "scalar.hpp"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

// GCC 12 reports false -Wmaybe-uninitialized inside its own AVX-512 intrinsic
// headers (the _mm512_undefined_* idiom) once they are inlined; only here.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#define LOUPE_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define LOUPE_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))
// Everything between LOUPE_BEGIN_TARGET(isa) and LOUPE_END_TARGET() is compiled for
// `isa`, templates and lambdas included (what vec_f32.inl needs; the attribute
// above marks one function at a time).
#define LOUPE_PRAGMA(x) _Pragma(#x)
#if defined(__clang__)
#define LOUPE_BEGIN_TARGET(isa) LOUPE_PRAGMA(clang attribute push(__attribute__((target(isa))), apply_to = function))
#define LOUPE_END_TARGET() LOUPE_PRAGMA(clang attribute pop)
#else
#define LOUPE_BEGIN_TARGET(isa) LOUPE_PRAGMA(GCC push_options) LOUPE_PRAGMA(GCC target(isa))
#define LOUPE_END_TARGET() LOUPE_PRAGMA(GCC pop_options)
#endif





namespace loupe {
namespace x86 {

inline uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
inline int32_t load_i32(const void* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// Weight panels of the gemms (repacked once per task, reused for every
// activation row), and the zero row that stands in for rows past the end.
struct PanelScratch {
  AlignedBuffer<uint8_t> q;
  AlignedBuffer<float> d;
};
inline PanelScratch& panel_scratch() {
  static thread_local PanelScratch s;
  return s;
}

inline const uint8_t* zero_row(size_t bytes) {
  static thread_local std::vector<uint8_t> z;
  if (z.size() < bytes) z.assign(bytes, 0);
  return z.data();
}

// Activation rows from which a panel gemm takes over from the gemv passes:
// `measured` (each ISA's dispatch says where it was measured), or
// LOUPE_GEMM_MIN_ROWS, for tuning.
inline int64_t gemm_min_rows(int64_t measured) {
  static const int64_t env = [] {
    const char* e = std::getenv("LOUPE_GEMM_MIN_ROWS");
    return e ? std::max<int64_t>(1, std::atoll(e)) : int64_t(0);
  }();
  return env ? env : measured;
}

// The gemm tiles' NR activation rows: values, bias corrections, scales.
template <int NR>
struct ActRows {
  const int8_t* q[NR];
  const int32_t* c[NR];
  const float* d[NR];
  ActRows(const QuantizedRows& x, int64_t i0) {
    for (int i = 0; i < NR; ++i) q[i] = x.row(i0 + i), c[i] = x.corr.data() + (i0 + i) * x.nb, d[i] = x.d.data() + (i0 + i) * x.nb;
  }
};

// The f32 and bf16 gemms (gemm_f32.inl; x86::gemm_bf16_avx512): activation rows
// packed in blocks of kPackRows, columns in blocks of kGemmKc; per-task scratch.
constexpr int64_t kPackRows = 32, kGemmKc = 256;
inline int64_t f32_packed_size(int64_t n, int64_t k) { return (n + kPackRows - 1) / kPackRows * kPackRows * k; }
struct F32GemmScratch {
  AlignedBuffer<float> wt, yt;
};
inline F32GemmScratch& f32_gemm_scratch() {
  static thread_local F32GemmScratch s;
  return s;
}

// =============================================================== AVX2

LOUPE_TARGET_AVX2 inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// round(v) with ties away from zero (std::round), exactly: trunc, then step
// away from zero when the dropped fraction is at least one half.
LOUPE_TARGET_AVX2 inline __m256i round_away_avx2(__m256 v) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
  const __m256 frac = _mm256_andnot_ps(sign, _mm256_sub_ps(v, t));
  const __m256 step = _mm256_and_ps(_mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ),
                                    _mm256_or_ps(_mm256_set1_ps(1.0f), _mm256_and_ps(v, sign)));
  return _mm256_cvttps_epi32(_mm256_add_ps(t, step));
}

LOUPE_TARGET_AVX2 inline void quantize_rows_avx2(const float* x, int64_t n, int64_t k, int32_t offset, QuantizedRows& q) {
  q.resize(n, k, offset);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t b = 0; b < q.nb; ++b) {
      const float* p = x + i * k + b * QK;
      __m256 v[4], m = _mm256_setzero_ps();
      for (int j = 0; j < 4; ++j) v[j] = _mm256_loadu_ps(p + 8 * j), m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v[j]));
      __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
      m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
      m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
      const float amax = _mm_cvtss_f32(m4);
      const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
      q.d.data()[i * q.nb + b] = fp16_to_f32(f32_to_fp16(d));
      const __m256 vid = _mm256_set1_ps(id);
      __m256i r[4];
      for (int j = 0; j < 4; ++j) r[j] = round_away_avx2(_mm256_mul_ps(v[j], vid));
      // int32 -> int8 with the element order kept (packs work within 128-bit lanes).
      const __m256i w01 = _mm256_packs_epi32(r[0], r[1]), w23 = _mm256_packs_epi32(r[2], r[3]);
      __m256i bytes = _mm256_packs_epi16(w01, w23);
      bytes = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(q.qs.data() + i * k + b * QK), bytes);
    }
    scalar::finish_quantized_row(q, i);
  }
}

// Q4_0 rows [r0, r1) × every activation row; NX activation rows at a time.
template <int NX>
LOUPE_TARGET_AVX2 inline void gemv_q4_0_avx2_nx(const uint8_t* w, size_t ws, int64_t r0, int64_t r1, const QuantizedRows& x,
                                                 int64_t i0, float* y, int64_t ldy) {
  const __m256i m4 = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
  const int64_t nb = x.nb;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* wr = w + size_t(r) * ws;
    __m256 acc[NX];
    for (int i = 0; i < NX; ++i) acc[i] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* wb = wr + b * 18;
      const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(wb + 2));
      const __m256i z = _mm256_and_si256(_mm256_inserti128_si256(_mm256_castsi128_si256(raw), _mm_srli_epi16(raw, 4), 1), m4);
      const __m256 dw = _mm256_cvtph_ps(_mm_set1_epi16(short(load_u16(wb))));
      for (int i = 0; i < NX; ++i) {
        const int64_t xi = i0 + i;
        const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.row(xi) + b * QK));
        __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(z, xv), ones);
        p = _mm256_add_epi32(p, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.corr4.data() + xi * (x.k / 4) + b * 8)));
        const __m256 s = _mm256_mul_ps(dw, _mm256_loadu_ps(x.d8.data() + (xi * nb + b) * 8));
        acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), s, acc[i]);
      }
    }
    for (int i = 0; i < NX; ++i) y[(i0 + i) * ldy + r] = hsum256(acc[i]);
  }
}

// Q8_0: |w| × (x with w's sign), the classic AVX2 u8×s8 trick (no bias, offset 0).
template <int NX>
LOUPE_TARGET_AVX2 inline void gemv_q8_0_avx2_nx(const uint8_t* w, size_t ws, int64_t r0, int64_t r1, const QuantizedRows& x,
                                                 int64_t i0, float* y, int64_t ldy) {
  const __m256i ones = _mm256_set1_epi16(1);
  const int64_t nb = x.nb;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* wr = w + size_t(r) * ws;
    __m256 acc[NX];
    for (int i = 0; i < NX; ++i) acc[i] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* wb = wr + b * 34;
      const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + 2));
      const __m256i aw = _mm256_abs_epi8(wv);
      const __m256 dw = _mm256_cvtph_ps(_mm_set1_epi16(short(load_u16(wb))));
      for (int i = 0; i < NX; ++i) {
        const int64_t xi = i0 + i;
        const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.row(xi) + b * QK));
        const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(xv, wv)), ones);
        const __m256 s = _mm256_mul_ps(dw, _mm256_loadu_ps(x.d8.data() + (xi * nb + b) * 8));
        acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), s, acc[i]);
      }
    }
    for (int i = 0; i < NX; ++i) y[(i0 + i) * ldy + r] = hsum256(acc[i]);
  }
}

// ---- decode gemv (AVX2, Q4_0): one activation row, two blocks per ymm.
//
// gemv_q4_0_avx2_nx spends a ymm on each block: 16 weight bytes are widened to
// 32 nibbles, and the per-lane tables (corr4, d8) add a load and an op each. It
// ran at 11–12 GB/s on a Zen 3 core from DRAM and from cache alike: bound by
// its op count, not by memory. Here a block pair's 32 weight bytes fill one
// ymm, their low and high nibbles are two vpmaddubsw against the activations
// permuted to match (once a call, into Gemv1Scratch: [lo b | lo b+1], [hi b |
// hi b+1]), and the bias correction and scales come per pair from small tables
// (in cache: 12 -> 17.8 GB/s). Integer sums are exact; only the f32 order
// differs from scalar.
//
// From DRAM it then waited on memory (13.7 GB/s against the probe's 22): it
// prefetches kGemv1Prefetch bytes ahead of the weight stream (on into the next
// rows, which follow in memory; past the tensor's end a prefetch is harmless).
// loupe_bench kernels, 11008×4096 and 4096×11008 Q4_0 from DRAM, 1 thread, Zen 3:
// none 14.2 / 13.5 GB/s, 512: 13.7 / 15.1, 1024: 16.4 / 16.3, 2048: 17.1 / 17.5,
// 3072: 17.1 / 17.2 (2 threads: 32.0, the read probe's 32.7), 6144: 17.3 / 17.1.
constexpr int64_t kGemv1Prefetch = 3072;

struct Gemv1Scratch {
  AlignedBuffer<int8_t> xs;   // per pair: 64 activation bytes in nibble order
  AlignedBuffer<float> cs;    // per pair: [corr_b / 4 ×4 | corr_b+1 / 4 ×4] (corr = −8·Σx, so exact)
  AlignedBuffer<float> ds;    // per pair: [dx_b ×4 | dx_b+1 ×4]
};
inline Gemv1Scratch& gemv1_scratch() {
  static thread_local Gemv1Scratch s;
  return s;
}

// Blocks 2q, 2q + 1 of one weight row (wb) against the permuted activations: acc + their partial dots · scales.
LOUPE_TARGET_AVX2 __attribute__((always_inline)) inline __m256 gemv1_pair_avx2(const uint8_t* wb, int64_t q, const int8_t* xs, const float* cs,
                                                                                const float* ds, __m256 acc) {
  const __m256i m4 = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
  if ((q & 1) == 0) _mm_prefetch(reinterpret_cast<const char*>(wb + kGemv1Prefetch), _MM_HINT_T0);
  const __m256i raw = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wb + 2))),
                                              _mm_loadu_si128(reinterpret_cast<const __m128i*>(wb + 20)), 1);
  const __m256i lo = _mm256_and_si256(raw, m4), hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
  const __m256i s16 = _mm256_add_epi16(_mm256_maddubs_epi16(lo, _mm256_load_si256(reinterpret_cast<const __m256i*>(xs + q * 64))),
                                       _mm256_maddubs_epi16(hi, _mm256_load_si256(reinterpret_cast<const __m256i*>(xs + q * 64 + 32))));
  const __m256 p = _mm256_add_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(s16, ones)), _mm256_load_ps(cs + q * 8));
  const __m256 dw = _mm256_cvtph_ps(_mm_unpacklo_epi64(_mm_broadcastw_epi16(_mm_loadu_si16(wb)), _mm_broadcastw_epi16(_mm_loadu_si16(wb + 18))));
  return _mm256_fmadd_ps(p, _mm256_mul_ps(dw, _mm256_load_ps(ds + q * 8)), acc);
}

LOUPE_TARGET_AVX2 inline void gemv1_q4_0_avx2(const uint8_t* w, size_t ws, int64_t r0, int64_t r1, const QuantizedRows& x, float* y) {
  const int64_t nb = x.nb, np = nb / 2;
  Gemv1Scratch& sc = gemv1_scratch();
  sc.xs.resize(size_t(np * 64)), sc.cs.resize(size_t(np * 8)), sc.ds.resize(size_t(np * 8));
  for (int64_t q = 0; q < np; ++q) {
    const __m256i a = _mm256_load_si256(reinterpret_cast<const __m256i*>(x.row(0) + 2 * q * QK));
    const __m256i b = _mm256_load_si256(reinterpret_cast<const __m256i*>(x.row(0) + (2 * q + 1) * QK));
    _mm256_store_si256(reinterpret_cast<__m256i*>(sc.xs.data() + q * 64), _mm256_permute2x128_si256(a, b, 0x20));
    _mm256_store_si256(reinterpret_cast<__m256i*>(sc.xs.data() + q * 64 + 32), _mm256_permute2x128_si256(a, b, 0x31));
    const __m128 c0 = _mm_set1_ps(float(x.corr.data()[2 * q] / 4)), c1 = _mm_set1_ps(float(x.corr.data()[2 * q + 1] / 4));
    _mm256_store_ps(sc.cs.data() + q * 8, _mm256_insertf128_ps(_mm256_castps128_ps256(c0), c1, 1));
    const __m128 d0 = _mm_set1_ps(x.d.data()[2 * q]), d1 = _mm_set1_ps(x.d.data()[2 * q + 1]);
    _mm256_store_ps(sc.ds.data() + q * 8, _mm256_insertf128_ps(_mm256_castps128_ps256(d0), d1, 1));
  }
  const int8_t* xs = sc.xs.data();
  const float *cs = sc.cs.data(), *ds = sc.ds.data();
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* wr = w + size_t(r) * ws;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();  // two chains of f32 adds
    int64_t q = 0;
    for (; q + 2 <= np; q += 2) {
      a0 = gemv1_pair_avx2(wr + q * 36, q, xs, cs, ds, a0);
      a1 = gemv1_pair_avx2(wr + (q + 1) * 36, q + 1, xs, cs, ds, a1);
    }
    if (q < np) a0 = gemv1_pair_avx2(wr + q * 36, q, xs, cs, ds, a0);
    float sum = hsum256(_mm256_add_ps(a0, a1));
    if (nb & 1) {  // odd block count: the last block alone
      const int64_t b = nb - 1;
      sum += float(scalar::block_dot(*reinterpret_cast<const BlockQ4_0*>(wr + b * 18), x.row(0) + b * QK)) *
             (fp16_to_f32(load_u16(wr + b * 18)) * x.d.data()[b]);
    }
    y[r] = sum;
  }
}

// ---- Q4_0x16 (kernels/scalar.hpp) with AVX2: NR activation rows × one group of 16 weight rows.
//
// The lanes are weight rows, as in the panel gemm below, but the weights come
// packed at load, so there is no per-task repack, and the same loop serves
// decode (NR = 1): per block 8 loads, 16 nibble masks and 16 vpmaddubsw a row
// for 288 bytes, against gemv1_q4_0_avx2's 18 instructions per 36. The int16
// sums cannot overflow (see the panel gemm) and the f32 arithmetic is the scalar
// kernel's: bit-identical to it. loupe_bench kernels --level avx2, one Zen 4 core
// (no AVX2-only machine this time), 11008×4096 from DRAM: 1 row 20.2 -> 24.0
// GB/s (gemv1_q4_0_avx2), 2 rows 3.78 -> 1.46 ms, 8: 6.90 -> 4.17, 32: 17.1 ->
// 15.3, 128: 58.5 vs 59.4 ms (the panel gemm): one kernel for every row count.

// The 9 lines of a block pair are prefetched this far ahead of the stream (on into
// the next group; past the matrix harmless). Zen 4, 11008×4096 from DRAM, two
// interleaved runs: 1 thread 20.4 / 21.8 GB/s without, 23.8 / 24.0 with
// (the AVX-512 kernel gains nothing from it: see gemv_x16).
constexpr size_t kX16Prefetch = 2048;
inline void prefetch_x16_pair(const uint8_t* qs) {  // qs: a pair's first part
  for (size_t l = 0; l < 9; ++l) _mm_prefetch(reinterpret_cast<const char*>(qs + kX16Prefetch + 64 * l), _MM_HINT_T0);
}

template <int NR>
LOUPE_TARGET_AVX2 inline void gemm_x16_avx2(const uint8_t* w, int64_t g, const QuantizedRows& x, int64_t i0, float* y, int64_t ldy) {
  const int64_t nb = x.nb;
  const uint8_t* og = w + size_t(g * nb) * scalar::kX16BlockBytes;
  const __m256i ones = _mm256_set1_epi16(1), m4 = _mm256_set1_epi8(0x0f);
  const ActRows<NR> xr(x, i0);
  __m256 f[NR][2];
  for (int i = 0; i < NR; ++i) f[i][0] = f[i][1] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const scalar::X16Block o = scalar::x16_block(nb, b);
    if ((b & 1) == 0) prefetch_x16_pair(og + o.qs);
    __m256i a[NR][2];  // int16 pair sums of rows 0..7 and 8..15
    for (int i = 0; i < NR; ++i) a[i][0] = a[i][1] = _mm256_setzero_si256();
#pragma GCC unroll 1
    for (int j = 0; j < 4; ++j) {
      const uint8_t* part = og + o.qs + size_t(j) * scalar::kX16PartBytes;
      const __m256i p0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(part)), p1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(part + 32));
      const __m256i lo0 = _mm256_and_si256(p0, m4), lo1 = _mm256_and_si256(p1, m4);
      const __m256i hi0 = _mm256_and_si256(_mm256_srli_epi16(p0, 4), m4), hi1 = _mm256_and_si256(_mm256_srli_epi16(p1, 4), m4);
      for (int i = 0; i < NR; ++i) {
        const __m256i xl = _mm256_set1_epi32(load_i32(xr.q[i] + b * QK + 4 * j)), xh = _mm256_set1_epi32(load_i32(xr.q[i] + b * QK + 16 + 4 * j));
        a[i][0] = _mm256_add_epi16(a[i][0], _mm256_add_epi16(_mm256_maddubs_epi16(lo0, xl), _mm256_maddubs_epi16(hi0, xh)));
        a[i][1] = _mm256_add_epi16(a[i][1], _mm256_add_epi16(_mm256_maddubs_epi16(lo1, xl), _mm256_maddubs_epi16(hi1, xh)));
      }
    }
    const __m256 d0 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(og + o.d)));
    const __m256 d1 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(og + o.d + 16)));
    for (int i = 0; i < NR; ++i) {
      const __m256i c = _mm256_set1_epi32(xr.c[i][b]);
      const __m256 dx = _mm256_set1_ps(xr.d[i][b]);
      const __m256i s0 = _mm256_add_epi32(_mm256_madd_epi16(a[i][0], ones), c), s1 = _mm256_add_epi32(_mm256_madd_epi16(a[i][1], ones), c);
      f[i][0] = _mm256_add_ps(f[i][0], _mm256_mul_ps(_mm256_cvtepi32_ps(s0), _mm256_mul_ps(d0, dx)));
      f[i][1] = _mm256_add_ps(f[i][1], _mm256_mul_ps(_mm256_cvtepi32_ps(s1), _mm256_mul_ps(d1, dx)));
    }
  }
  for (int i = 0; i < NR; ++i) {
    float* yr = y + (i0 + i) * ldy + g * scalar::kX16Rows;
    _mm256_storeu_ps(yr, f[i][0]), _mm256_storeu_ps(yr + 8, f[i][1]);
  }
}

LOUPE_TARGET_AVX2 inline void matmul_q4_0_x16_avx2(const uint8_t* w, size_t, int64_t r0, int64_t r1, const QuantizedRows& x, float* y,
                                                   int64_t ldy) {
  for (int64_t g = r0 / scalar::kX16Rows; g < r1 / scalar::kX16Rows; ++g) {
    int64_t i = 0;
    for (; i + 3 <= x.n; i += 3) gemm_x16_avx2<3>(w, g, x, i, y, ldy);
    switch (x.n - i) {
      case 2: gemm_x16_avx2<2>(w, g, x, i, y, ldy); break;
      case 1: gemm_x16_avx2<1>(w, g, x, i, y, ldy); break;
      default: break;
    }
  }
}

// ---- gemm (AVX2): 16-row panels.
//
// Without VNNI the u8×s8 product is vpmaddubsw (pairs summed into int16) and
// vpmaddwd (pairs of those into int32). Like the VNNI gemm, a panel of weight
// rows is repacked once per task ([block][4-value group][16 rows][4 bytes]) and
// reused for every activation row, lanes are weight rows, and y += float(dot) ·
// (dw · dx) block by block: bit-identical to the scalar kernel.
// * Q4_0: with nibbles (0..15) and Q8_0 activations (|x| <= 127) a pair is at
//   most 2·15·127 = 3810, so the 8 groups of a block add up in int16 (16 pairs:
//   30480 < 32767) and one vpmaddwd a block widens them. It replaced gemv passes
//   of 4 activation rows that re-read the weights for every 4 rows:
//   loupe_bench kernels --n 128 on one Zen 3 core, 38 -> 170 GOP/s (tiles of 2,
//   3 or 4 activation rows: 168–173).
// * Q8_0: |w| × (x with w's sign) (the panel holds |w| and w), a pair up to
//   2·128·127, so every product pair is widened at once: about half Q4_0's
//   rate (98 GOP/s on one core at 128 rows; the gemv passes: 66).
template <bool Q4>
constexpr int kPanelBlockBytes2 = (Q4 ? 1 : 2) * 8 * 4 * 16;  // one block: 8 groups × 16 rows × 4 bytes (Q8_0: |w|, then w)
constexpr int kPanelRows2 = 16;                                 // two ymm of int32 lanes

LOUPE_TARGET_AVX2 inline void store256(uint8_t* at, __m256i v) { _mm256_store_si256(reinterpret_cast<__m256i*>(at), v); }

// 8 rows' 16-byte groups at p[r] + off -> 4 ymm: dword g of rows 0..7 in lanes 0..7.
LOUPE_TARGET_AVX2 inline void transpose8x4(const uint8_t* const* p, int64_t off, __m256i g[4]) {
  __m256i a[4];
  for (int j = 0; j < 4; ++j)
    a[j] = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p[j] + off))),
                                   _mm_loadu_si128(reinterpret_cast<const __m128i*>(p[j + 4] + off)), 1);
  const __m256i t0 = _mm256_unpacklo_epi32(a[0], a[1]), t1 = _mm256_unpackhi_epi32(a[0], a[1]);
  const __m256i t2 = _mm256_unpacklo_epi32(a[2], a[3]), t3 = _mm256_unpackhi_epi32(a[2], a[3]);
  g[0] = _mm256_unpacklo_epi64(t0, t2), g[1] = _mm256_unpackhi_epi64(t0, t2);
  g[2] = _mm256_unpacklo_epi64(t1, t3), g[3] = _mm256_unpackhi_epi64(t1, t3);
}

// Q4_0 -> Q4_0x16: the parts of 8 rows at a time transposed in registers.
LOUPE_TARGET_AVX2 inline void x16_parts_avx2(const uint8_t* const* p, int64_t off, uint8_t* out) {
  for (int h = 0; h < 2; ++h) {
    __m256i part[4];
    transpose8x4(p + 8 * h, off, part);
    for (int j = 0; j < 4; ++j) _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + size_t(j) * scalar::kX16PartBytes + 32 * size_t(h)), part[j]);
  }
}
inline void pack_q4_0_x16_avx2(const uint8_t* w, size_t ws, int64_t rows, int64_t nb, uint8_t* out) {
  scalar::pack_q4_0_x16_with(x16_parts_avx2, w, ws, rows, nb, out);
}

// Rows [r0, r0 + rows) (rows <= 16; missing rows read as zeros) -> pq
// [nb][8][16][4] (Q4_0: nibbles as bytes; Q8_0: |w|, then w) and pd [nb][16] f32 scales.
template <bool Q4>
LOUPE_TARGET_AVX2 inline void repack_panel_avx2(const uint8_t* w, size_t ws, int64_t r0, int rows, int64_t nb, uint8_t* pq, float* pd) {
  constexpr int64_t bs = Q4 ? 18 : 34;
  const __m256i m4 = _mm256_set1_epi8(0x0f);
  const uint8_t* zeros = zero_row(ws);
  const uint8_t* p[kPanelRows2];
  for (int r = 0; r < kPanelRows2; ++r) p[r] = r < rows ? w + size_t(r0 + r) * ws : zeros;
  for (int64_t b = 0; b < nb; ++b) {
    uint8_t* out = pq + b * kPanelBlockBytes2<Q4>;
    const int64_t off = b * bs;
    for (int h = 0; h < 2; ++h) {
      __m256i g[4];
      transpose8x4(p + 8 * h, off + 2, g);
      for (int k = 0; k < 4; ++k) {
        if (Q4) {
          store256(out + k * 64 + 32 * h, _mm256_and_si256(g[k], m4));
          store256(out + (k + 4) * 64 + 32 * h, _mm256_and_si256(_mm256_srli_epi16(g[k], 4), m4));
        } else {
          store256(out + k * 64 + 32 * h, _mm256_abs_epi8(g[k]));
          store256(out + 512 + k * 64 + 32 * h, g[k]);
        }
      }
      if (!Q4) {
        transpose8x4(p + 8 * h, off + 18, g);
        for (int k = 0; k < 4; ++k) store256(out + (k + 4) * 64 + 32 * h, _mm256_abs_epi8(g[k])), store256(out + 512 + (k + 4) * 64 + 32 * h, g[k]);
      }
    }
    for (int r = 0; r < kPanelRows2; ++r) pd[b * kPanelRows2 + r] = fp16_to_f32(load_u16(p[r] + off));
  }
}

// NR activation rows × one 16-row panel.
template <bool Q4, int NR>
LOUPE_TARGET_AVX2 inline void gemm_tile_avx2(const uint8_t* pq, const float* pd, const QuantizedRows& x, int64_t i0, float* y,
                                             int64_t ldy, int64_t r0, int rows) {
  const int64_t nb = x.nb;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 f[NR][2];
  for (int i = 0; i < NR; ++i) f[i][0] = f[i][1] = _mm256_setzero_ps();
  const ActRows<NR> xr(x, i0);
  const int8_t* const* xq = xr.q;
  const int32_t* const* xc = xr.c;
  const float* const* xd = xr.d;
  for (int64_t b = 0; b < nb; ++b) {
    __m256i a[NR][2];  // Q4_0: int16 pair sums; Q8_0: int32 sums
    for (int i = 0; i < NR; ++i) a[i][0] = a[i][1] = _mm256_setzero_si256();
    const uint8_t* pb = pq + b * kPanelBlockBytes2<Q4>;
    // Kept a loop: unrolled, GCC 12 computes all 48 products first and spills them.
#pragma GCC unroll 1
    for (int g = 0; g < 8; ++g) {
      const __m256i w0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(pb + g * 64));
      const __m256i w1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(pb + g * 64 + 32));
      for (int i = 0; i < NR; ++i) {
        const __m256i xv = _mm256_set1_epi32(load_i32(xq[i] + b * QK + 4 * g));
        if (Q4) {
          a[i][0] = _mm256_add_epi16(a[i][0], _mm256_maddubs_epi16(w0, xv));
          a[i][1] = _mm256_add_epi16(a[i][1], _mm256_maddubs_epi16(w1, xv));
        } else {
          const __m256i s0 = _mm256_sign_epi8(xv, _mm256_load_si256(reinterpret_cast<const __m256i*>(pb + 512 + g * 64)));
          const __m256i s1 = _mm256_sign_epi8(xv, _mm256_load_si256(reinterpret_cast<const __m256i*>(pb + 512 + g * 64 + 32)));
          a[i][0] = _mm256_add_epi32(a[i][0], _mm256_madd_epi16(_mm256_maddubs_epi16(w0, s0), ones));
          a[i][1] = _mm256_add_epi32(a[i][1], _mm256_madd_epi16(_mm256_maddubs_epi16(w1, s1), ones));
        }
      }
    }
    const __m256 d0 = _mm256_load_ps(pd + b * kPanelRows2), d1 = _mm256_load_ps(pd + b * kPanelRows2 + 8);
    for (int i = 0; i < NR; ++i) {
      const __m256i c = _mm256_set1_epi32(xc[i][b]);  // the Q4_0 offset's correction (Q8_0: offset 0, c = 0)
      const __m256 dx = _mm256_set1_ps(xd[i][b]);
      const __m256i s0 = _mm256_add_epi32(Q4 ? _mm256_madd_epi16(a[i][0], ones) : a[i][0], c);
      const __m256i s1 = _mm256_add_epi32(Q4 ? _mm256_madd_epi16(a[i][1], ones) : a[i][1], c);
      f[i][0] = _mm256_add_ps(f[i][0], _mm256_mul_ps(_mm256_cvtepi32_ps(s0), _mm256_mul_ps(d0, dx)));
      f[i][1] = _mm256_add_ps(f[i][1], _mm256_mul_ps(_mm256_cvtepi32_ps(s1), _mm256_mul_ps(d1, dx)));
    }
  }
  for (int i = 0; i < NR; ++i) {
    float* yr = y + (i0 + i) * ldy + r0;
    if (rows == kPanelRows2) {
      _mm256_storeu_ps(yr, f[i][0]), _mm256_storeu_ps(yr + 8, f[i][1]);
    } else {
      alignas(32) float t[kPanelRows2];
      _mm256_store_ps(t, f[i][0]), _mm256_store_ps(t + 8, f[i][1]);
      std::memcpy(yr, t, sizeof(float) * size_t(rows));
    }
  }
}

constexpr int kGemmNR2 = 3;

template <bool Q4>
LOUPE_TARGET_AVX2 inline void gemm_avx2(const uint8_t* w, size_t ws, int64_t r0, int64_t r1, const QuantizedRows& x, float* y, int64_t ldy) {
  PanelScratch& ps = panel_scratch();
  ps.q.resize(size_t(x.nb * kPanelBlockBytes2<Q4>));
  ps.d.resize(size_t(x.nb * kPanelRows2));
  for (int64_t p = r0; p < r1; p += kPanelRows2) {
    const int rows = int(std::min<int64_t>(kPanelRows2, r1 - p));
    repack_panel_avx2<Q4>(w, ws, p, rows, x.nb, ps.q.data(), ps.d.data());
    int64_t i = 0;
    for (; i + kGemmNR2 <= x.n; i += kGemmNR2) gemm_tile_avx2<Q4, kGemmNR2>(ps.q.data(), ps.d.data(), x, i, y, ldy, p, rows);
    switch (x.n - i) {
      case 2: gemm_tile_avx2<Q4, 2>(ps.q.data(), ps.d.data(), x, i, y, ldy, p, rows); break;
      case 1: gemm_tile_avx2<Q4, 1>(ps.q.data(), ps.d.data(), x, i, y, ldy, p, rows); break;
      default: break;
    }
  }
}

template <bool Q4>
LOUPE_TARGET_AVX2 inline void matmul_avx2(const uint8_t* w, size_t ws, int64_t r0, int64_t r1, const QuantizedRows& x, float* y,
                                          int64_t ldy) {
  // The panel gemm from 4 rows for Q4_0, 12 for Q8_0 (loupe_bench kernels, 11008×4096,
  // 1 thread, Zen 3, gemv vs gemm; Q4_0: 2 rows 3.3 vs 4.7 ms, 3: 4.8 vs 5.2, 4: 7.8 vs
  // 5.7, 16: 34.9 vs 11.8; Q8_0: 8 rows 11.0 vs 11.8 ms, 12: 16.2 vs 15.2, 16: 21.5 vs 18.7).
  if (x.n >= gemm_min_rows(Q4 ? 4 : 12)) return gemm_avx2<Q4>(w, ws, r0, r1, x, y, ldy);
  if (Q4 && x.n == 1) return gemv1_q4_0_avx2(w, ws, r0, r1, x, y);
  int64_t i = 0;
  for (; i + 4 <= x.n; i += 4) Q4 ? gemv_q4_0_avx2_nx<4>(w, ws, r0, r1, x, i, y, ldy) : gemv_q8_0_avx2_nx<4>(w, ws, r0, r1, x, i, y, ldy);
  switch (x.n - i) {
    case 3: Q4 ? gemv_q4_0_avx2_nx<3>(w, ws, r0, r1, x, i, y, ldy) : gemv_q8_0_avx2_nx<3>(w, ws, r0, r1, x, i, y, ldy); break;
    case 2: Q4 ? gemv_q4_0_avx2_nx<2>(w, ws, r0, r1, x, i, y, ldy) : gemv_q8_0_avx2_nx<2>(w, ws, r0, r1, x, i, y, ldy); break;
    case 1: Q4 ? gemv_q4_0_avx2_nx<1>(w, ws, r0, r1, x, i, y, ldy) : gemv_q8_0_avx2_nx<1>(w, ws, r0, r1, x, i, y, ldy); break;
    default: break;
  }
}
LOUPE_TARGET_AVX2 inline void matmul_q4_0_avx2(const uint8_t* w, size_t ws, int64_t r0, int64_t r1, const QuantizedRows& x, float* y, int64_t ldy) {
  matmul_avx2<true>(w, ws, r0, r1, x, y, ldy);
}
LOUPE_TARGET_AVX2 inline void matmul_q8_0_avx2(const uint8_t* w, size_t ws, int64_t r0, int64_t r1, const QuantizedRows& x, float* y, int64_t ldy) {
  matmul_avx2<false>(w, ws, r0, r1, x, y, ldy);
}

// ---- f32 vector kernels and row converters: vec_f32.inl over these traits.
namespace avx2 {
LOUPE_BEGIN_TARGET("avx2,fma,f16c")
struct Vec {
  using V = __m256;
  static constexpr int64_t kLanes = 8;
  static constexpr bool kMasked = false;
  static V zero() { return _mm256_setzero_ps(); }
  static V set1(float f) { return _mm256_set1_ps(f); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V load_f16(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static void store_f16(uint16_t* p, V v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  static V load_bf16(const uint16_t* p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
  }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V div(V a, V b) { return _mm256_div_ps(a, b); }
  static V min(V a, V b) { return _mm256_min_ps(a, b); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V fnma(V a, V b, V c) { return _mm256_fnmadd_ps(a, b, c); }
  static V round(V v) { return _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static V scale2(V p, V k) {  // 2^k built in the exponent bits
    return _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23)));
  }
  static float hsum(V v) { return hsum256(v); }
  static constexpr int kGemmNW = 6;  // f32 gemm: 6 weight rows × 2 ymm = 12 accumulators of 16 registers
};
#include "vec_f32.inl"
#include "gemm_f32.inl"
LOUPE_END_TARGET()
}  // namespace avx2

// ============================================================= AVX-512

LOUPE_TARGET_AVX512 inline __m512i round_away_avx512(__m512 v) {
  const __m512 t = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
  const __mmask16 up = _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_sub_ps(v, t)), _mm512_set1_ps(0.5f), _CMP_GE_OQ);
  const __m512 step = _mm512_or_ps(_mm512_set1_ps(1.0f), _mm512_and_ps(v, _mm512_set1_ps(-0.0f)));
  return _mm512_cvttps_epi32(_mm512_mask_add_ps(t, up, t, step));
}

LOUPE_TARGET_AVX512 inline void quantize_rows_avx512(const float* x, int64_t n, int64_t k, int32_t offset, QuantizedRows& q) {
  q.resize(n, k, offset);
  const __m256i ones = _mm256_set1_epi8(1);
  const __m256i neg_off = _mm256_set1_epi32(-offset);
  for (int64_t i = 0; i < n; ++i) {
    int32_t* c4 = q.corr4.data() + i * (k / 4);
    for (int64_t b = 0; b < q.nb; ++b) {
      const float* p = x + i * k + b * QK;
      const __m512 v0 = _mm512_loadu_ps(p), v1 = _mm512_loadu_ps(p + 16);
      const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
      const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
      const float dq = fp16_to_f32(f32_to_fp16(d));
      const __m512 vid = _mm512_set1_ps(id);
      const __m128i b0 = _mm512_cvtepi32_epi8(round_away_avx512(_mm512_mul_ps(v0, vid)));
      const __m128i b1 = _mm512_cvtepi32_epi8(round_away_avx512(_mm512_mul_ps(v1, vid)));
      const __m256i bytes = _mm256_inserti128_si256(_mm256_castsi128_si256(b0), b1, 1);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(q.qs.data() + i * k + b * QK), bytes);
      const __m256i s4 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), ones, bytes);  // sums of 4 consecutive q
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(c4 + b * 8), _mm256_mullo_epi32(s4, neg_off));
      __m128i s = _mm_add_epi32(_mm256_castsi256_si128(s4), _mm256_extracti128_si256(s4, 1));
      s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
      s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
      q.corr.data()[i * q.nb + b] = -offset * _mm_cvtsi128_si32(s);
      q.d.data()[i * q.nb + b] = dq;
      _mm256_storeu_ps(q.d8.data() + (i * q.nb + b) * 8, _mm256_set1_ps(dq));
    }
  }
}

// ---- gemv: ggml layout, two blocks per zmm.

// Q4_0 blocks b, b+1 (18 bytes each) -> 64 nibbles in activation order
// [lo(b) | hi(b) | lo(b+1) | hi(b+1)] as unsigned bytes.
LOUPE_TARGET_AVX512 inline __m512i q4_0_pair(const uint8_t* wb) {
  const __m512i shift = _mm512_set_epi64(0x0004000400040004, 0x0004000400040004, 0, 0, 0x0004000400040004, 0x0004000400040004, 0, 0);
  const __m256i raw = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wb + 2))),
                                              _mm_loadu_si128(reinterpret_cast<const __m128i*>(wb + 20)), 1);
  const __m512i z = _mm512_shuffle_i64x2(_mm512_castsi256_si512(raw), _mm512_castsi256_si512(raw), 0x50);  // lanes 0,0,1,1
  return _mm512_and_si512(_mm512_srlv_epi16(z, shift), _mm512_set1_epi8(0x0f));
}
// The two blocks' fp16 scales, each repeated over its 8 int32 lanes, as f32.
LOUPE_TARGET_AVX512 inline __m512 scale_pair(const uint8_t* d0, const uint8_t* d1) {
  const __m256i dd = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_set1_epi16(short(load_u16(d0)))),
                                             _mm_set1_epi16(short(load_u16(d1))), 1);
  return _mm512_cvtph_ps(dd);
}

// Blocks b, b+1 of one weight row against NX activation rows: acc[i] += the
// 16 lanes' partial dot · scale (f32 rounding order differs from scalar).
template <bool Q4, int NX>
LOUPE_TARGET_AVX512 __attribute__((always_inline)) inline void gemv_pair(const uint8_t* wb, int64_t b, const int8_t* const* xq,
                                                                         const int32_t* const* xc, const float* const* xd, __m512* acc) {
  constexpr int64_t bs = Q4 ? 18 : 34;
  __m512i z;
  if (Q4) {
    z = q4_0_pair(wb);
  } else {
    z = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + 2))),
                           _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + 36)), 1);
    z = _mm512_xor_si512(z, _mm512_set1_epi8(char(0x80)));
  }
  const __m512 dw = scale_pair(wb, wb + bs);
  for (int i = 0; i < NX; ++i) {
    const __m512i p = _mm512_dpbusd_epi32(_mm512_loadu_si512(xc[i] + b * 8), z, _mm512_loadu_si512(xq[i] + b * QK));
    // [dx_b ×8 | dx_b+1 ×8]: two broadcast loads (load ports only) and one insert, rather than
    // 64 bytes of pre-expanded scales per pair (with K = 11008 that overflowed L1).
    const __m512 dx = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_broadcast_ss(xd[i] + b)), _mm256_broadcast_ss(xd[i] + b + 1), 1);
    acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(dw, dx), acc[i]);
  }
}

template <bool Q4, int NX>
LOUPE_TARGET_AVX512 inline void gemv_avx512_nx(const uint8_t* w, size_t ws, int64_t r0, int64_t r1, const QuantizedRows& x,
                                               int64_t i0, float* y, int64_t ldy) {
  constexpr int64_t bs = Q4 ? 18 : 34;  // block bytes
  const int64_t nb = x.nb;
  const int8_t* xq[NX];
  const int32_t* xc[NX];
  const float* xd[NX];
  for (int i = 0; i < NX; ++i) {
    xq[i] = x.row(i0 + i);
    xc[i] = x.corr4.data() + (i0 + i) * (x.k / 4);
    xd[i] = x.d.data() + (i0 + i) * nb;
  }
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* wr = w + size_t(r) * ws;
    // Two accumulators per activation row: the f32 adds are a dependency chain.
    __m512 a0[NX], a1[NX];
    for (int i = 0; i < NX; ++i) a0[i] = a1[i] = _mm512_setzero_ps();
    int64_t b = 0;
    for (; b + 4 <= nb; b += 4) {
      gemv_pair<Q4, NX>(wr + b * bs, b, xq, xc, xd, a0);
      gemv_pair<Q4, NX>(wr + (b + 2) * bs, b + 2, xq, xc, xd, a1);
    }
    if (b + 2 <= nb) gemv_pair<Q4, NX>(wr + b * bs, b, xq, xc, xd, a0), b += 2;
    __m256 tail[NX];
    for (int i = 0; i < NX; ++i) tail[i] = _mm256_setzero_ps();
    if (b < nb) {  // odd block count: the last block alone, in ymm
      const uint8_t* wb = wr + b * bs;
      __m256i z;
      if (Q4) {
        const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(wb + 2));
        z = _mm256_and_si256(_mm256_inserti128_si256(_mm256_castsi128_si256(raw), _mm_srli_epi16(raw, 4), 1), _mm256_set1_epi8(0x0f));
      } else {
        z = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + 2)), _mm256_set1_epi8(char(0x80)));
      }
      const __m256 dw = _mm256_cvtph_ps(_mm_set1_epi16(short(load_u16(wb))));
      for (int i = 0; i < NX; ++i) {
        const __m256i p = _mm256_dpbusd_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xc[i] + b * 8)), z,
                                              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq[i] + b * QK)));
        tail[i] = _mm256_mul_ps(_mm256_cvtepi32_ps(p), _mm256_mul_ps(dw, _mm256_broadcast_ss(xd[i] + b)));
      }
    }
    for (int i = 0; i < NX; ++i) {
      const __m512 a = _mm512_add_ps(a0[i], a1[i]);
      const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(a), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
      y[(i0 + i) * ldy + r] = hsum256(_mm256_add_ps(h, tail[i]));
    }
  }
}

// ---- decode gemv: one activation row.
//
// Profiling the 7B decode (perf: 94 % in the gemv) showed the per-lane kernel
// above load-bound, and at K = 11008 (ffn_down) at half speed: its activation
// tables (qs + corr4 + d = 23 KB) left no room in L1 for the weight stream.
// Here the bias correction comes from corr (one int32 per block: −offset·S_b,
// spread as −offset·S_b/8 over the block's 8 lanes, exact), and a Q4_0 pair
// (36 bytes: d, qs, d, qs) is one 64-byte load (masked after a row's last
// pair, not to read past the tensor) whose nibbles and scales vpermw puts in place.
// Integer sums are exact; only the f32 accumulation order differs from scalar.

// Word permutations of a loaded Q4_0 pair: quarters [qs_b | qs_b | qs_b+1 | qs_b+1]
// (words 1..8 and 10..17), and the scales [d_b ×8 | d_b+1 ×8] (words 0 and 9).
LOUPE_TARGET_AVX512 inline __m512i q4_pair_idx() {
  return _mm512_set_epi16(17, 16, 15, 14, 13, 12, 11, 10, 17, 16, 15, 14, 13, 12, 11, 10,
                          8, 7, 6, 5, 4, 3, 2, 1, 8, 7, 6, 5, 4, 3, 2, 1);
}
LOUPE_TARGET_AVX512 inline __m256i q4_scale_idx() { return _mm256_set_epi16(9, 9, 9, 9, 9, 9, 9, 9, 0, 0, 0, 0, 0, 0, 0, 0); }

template <bool Q4, int NR>
LOUPE_TARGET_AVX512 inline void gemv1_rows(const uint8_t* w, size_t ws, int64_t r, const QuantizedRows& x, int64_t xi, float* y) {
  constexpr int64_t bs = Q4 ? 18 : 34;
  const int64_t nb = x.nb;
  const int8_t* xq = x.row(xi);
  const int32_t* xc = x.corr.data() + xi * nb;
  const float* xd = x.d.data() + xi * nb;
  const __m512i pidx = q4_pair_idx(), two = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m256i sidx = q4_scale_idx();
  const __m512i shift = _mm512_set_epi64(0x0004000400040004, 0x0004000400040004, 0, 0, 0x0004000400040004, 0x0004000400040004, 0, 0),
                m4 = _mm512_set1_epi8(0x0f), flip = _mm512_set1_epi8(char(0x80));
  const __mmask64 pair_mask = (__mmask64(1) << 36) - 1;
  const uint8_t* wr[NR];
  __m512 acc[NR];
  for (int j = 0; j < NR; ++j) wr[j] = w + size_t(r + j) * ws, acc[j] = _mm512_setzero_ps();
  int64_t b = 0;
  for (; b + 2 <= nb; b += 2) {
    const __m512i xv = _mm512_loadu_si512(xq + b * QK);
    const __m512i c = _mm512_permutexvar_epi32(two, _mm512_castsi128_si512(_mm_srai_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(xc + b)), 3)));
    const __m512 dx = _mm512_permutexvar_ps(two, _mm512_castps128_ps512(_mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(xd + b)))));
    for (int j = 0; j < NR; ++j) {
      const uint8_t* wb = wr[j] + b * bs;
      __m512i z;
      __m512 dw;
      if (Q4) {
        // The 28 bytes past the pair belong to this row while 4 blocks are left;
        // the last one or two pairs are masked, not to read past the tensor
        // (masked loads cost more, so only there).
        const __m512i raw = b + 4 <= nb ? _mm512_loadu_si512(wb) : _mm512_maskz_loadu_epi8(pair_mask, wb);
        z = _mm512_and_si512(_mm512_srlv_epi16(_mm512_permutexvar_epi16(pidx, raw), shift), m4);
        dw = _mm512_cvtph_ps(_mm256_permutexvar_epi16(sidx, _mm512_castsi512_si256(raw)));
      } else {
        z = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + 2))),
                               _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + 36)), 1);
        z = _mm512_xor_si512(z, flip);
        dw = scale_pair(wb, wb + bs);
      }
      const __m512i p = _mm512_dpbusd_epi32(c, z, xv);
      acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(dw, dx), acc[j]);
    }
  }
  for (int j = 0; j < NR; ++j) {
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(acc[j]), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc[j]), 1)));
    if (b < nb) {  // odd block count: the last block alone, in ymm
      const uint8_t* wb = wr[j] + b * bs;
      __m256i z;
      if (Q4) {
        const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(wb + 2));
        z = _mm256_and_si256(_mm256_inserti128_si256(_mm256_castsi128_si256(raw), _mm_srli_epi16(raw, 4), 1), _mm256_set1_epi8(0x0f));
      } else {
        z = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + 2)), _mm256_set1_epi8(char(0x80)));
      }
      const __m256 dw = _mm256_cvtph_ps(_mm_set1_epi16(short(load_u16(wb))));
      const __m256i p = _mm256_dpbusd_epi32(_mm256_set1_epi32(xc[b] >> 3), z, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + b * QK)));
      h = _mm256_add_ps(h, _mm256_mul_ps(_mm256_cvtepi32_ps(p), _mm256_mul_ps(dw, _mm256_broadcast_ss(xd + b))));
    }
    y[r + j] = hsum256(h);
  }
}

template <bool Q4>
LOUPE_TARGET_AVX512 inline void gemv1_avx512(const uint8_t* w, size_t ws, int64_t r0, int64_t r1, const QuantizedRows& x, int64_t xi,
                                             float* y) {
  // One row at a time: interleaving 2 or 4 rows (sharing the activation loads)
  // was 2.5× faster with the weights in cache, but 2.5× slower from DRAM here
  // (the hardware prefetchers lose several short interleaved streams);
  // software prefetch did not recover it. Measured with loupe_bench kernels.
  for (int64_t r = r0; r < r1; ++r) gemv1_rows<Q4, 1>(w, ws, r, x, xi, y);
}

// ---- gemm: VNNI panels.

constexpr int kPanelRows = 32;                  // weight rows per panel (two zmm of int32 lanes)
constexpr int64_t kRepackAhead = 24;            // blocks a row is prefetched ahead of its repack
constexpr int kPanelBlockBytes = 8 * 4 * kPanelRows;  // one block: 8 groups × 32 rows × 4 bytes

// 16 rows' 16-byte groups at p[r] + off -> 4 zmm: dword g of rows 0..15 in
// lanes 0..15 (a 16×4 dword transpose: rows j, j+4, j+8, j+12 share a zmm, then
// 32- and 64-bit unpacks; the unpacks leave the rows in lane order).
LOUPE_TARGET_AVX512 inline void transpose16x4(const uint8_t* const* p, int64_t off, __m512i g[4]) {
  __m512i a[4];
  for (int j = 0; j < 4; ++j) {
    __m512i v = _mm512_castsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p[j] + off)));
    v = _mm512_inserti32x4(v, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p[j + 4] + off)), 1);
    v = _mm512_inserti32x4(v, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p[j + 8] + off)), 2);
    a[j] = _mm512_inserti32x4(v, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p[j + 12] + off)), 3);
  }
  const __m512i t0 = _mm512_unpacklo_epi32(a[0], a[1]), t1 = _mm512_unpackhi_epi32(a[0], a[1]);
  const __m512i t2 = _mm512_unpacklo_epi32(a[2], a[3]), t3 = _mm512_unpackhi_epi32(a[2], a[3]);
  g[0] = _mm512_unpacklo_epi64(t0, t2), g[1] = _mm512_unpackhi_epi64(t0, t2);
  g[2] = _mm512_unpacklo_epi64(t1, t3), g[3] = _mm512_unpackhi_epi64(t1, t3);
}

// Repack rows [r0, r0 + rows) (rows <= 32; missing rows read as zeros) into
// pq [nb][8][32][4] unsigned bytes and pd [nb][32] f32 scales, 16 rows × one
// block per step, transposed in registers: full 64-byte stores.
template <bool Q4>
LOUPE_TARGET_AVX512 inline void repack_panel(const uint8_t* w, size_t ws, int64_t r0, int rows, int64_t r_end, int64_t nb,
                                             uint8_t* pq, float* pd) {
  constexpr int64_t bs = Q4 ? 18 : 34;
  const __m512i m4 = _mm512_set1_epi8(0x0f), flip = _mm512_set1_epi8(char(0x80)), lo16 = _mm512_set1_epi32(0xffff);
  const uint8_t* zeros = zero_row(ws);
  for (int s = 0; s < 2; ++s) {
    const uint8_t* p[16];
    for (int r = 0; r < 16; ++r) p[r] = 16 * s + r < rows ? w + size_t(r0 + 16 * s + r) * ws : zeros;
    // The 16 rows read after these (this panel's second half or the next panel's first), prefetched as these end.
    const int64_t after = r0 + 16 * (s + 1);
    const int64_t n_after = std::max<int64_t>(0, std::min<int64_t>(16, r_end - after));
    int32_t idx[16];
    for (int r = 0; r < 16; ++r) idx[r] = int32_t(p[r] - p[0]);  // same mapping (the zero row may lie anywhere)
    const bool gatherable = [&] {
      for (int r = 0; r < 16; ++r)
        if (p[r] - p[0] != int64_t(idx[r])) return false;
      return true;
    }();
    const __m512i vidx = _mm512_loadu_si512(idx);
    for (int64_t b = 0; b < nb; ++b) {
      uint8_t* out = pq + b * kPanelBlockBytes + 64 * s;
      const int64_t off = b * bs;
      // 16 rows are 16 streams, more than the hardware prefetchers follow: fetch
      // each row kRepackAhead blocks ahead, running on into the next 16 rows so no
      // half-panel starts cold. With few activation rows (batched decode) the
      // repack, not the VNNI tiles, is the gemm's cost, and it waited on DRAM.
      // loupe_bench kernels, 11008×4096 Q4_0 from DRAM, 2 threads, 8 activation
      // rows: 1.65 ms without, 1.33 ms within rows, 1.05 ms across them (distance
      // 8: 1.18, 16: 1.08, 24: 1.05, 32: 1.12); 128 rows (prefill) unchanged.
      if ((b & 1) == 0) {
        const int64_t t = b + kRepackAhead;
        if (t < nb)
          for (int r = 0; r < 16; ++r) _mm_prefetch(reinterpret_cast<const char*>(p[r] + t * bs), _MM_HINT_T0);
        else if (t - nb < nb)
          for (int64_t r = 0; r < n_after; ++r) _mm_prefetch(reinterpret_cast<const char*>(w + size_t(after + r) * ws + (t - nb) * bs), _MM_HINT_T0);
      }
      __m512i g[4];
      transpose16x4(p, off + 2, g);
      if (Q4) {
        for (int k = 0; k < 4; ++k) {
          _mm512_store_si512(out + k * 128, _mm512_and_si512(g[k], m4));
          _mm512_store_si512(out + (k + 4) * 128, _mm512_and_si512(_mm512_srli_epi16(g[k], 4), m4));
        }
      } else {
        for (int k = 0; k < 4; ++k) _mm512_store_si512(out + k * 128, _mm512_xor_si512(g[k], flip));
        transpose16x4(p, off + 18, g);
        for (int k = 0; k < 4; ++k) _mm512_store_si512(out + (k + 4) * 128, _mm512_xor_si512(g[k], flip));
      }
      __m512i d;
      if (gatherable) {
        d = _mm512_and_si512(_mm512_i32gather_epi32(vidx, p[0] + off, 1), lo16);
      } else {
        alignas(64) int32_t dv[16];
        for (int r = 0; r < 16; ++r) dv[r] = load_u16(p[r] + off);
        d = _mm512_load_si512(dv);
      }
      _mm512_store_ps(pd + b * kPanelRows + 16 * s, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(d)));
    }
  }
}

// NR activation rows × one 32-row panel. Per block: int32 dot in VNNI lanes
// (one lane per weight row), then y += float(dot) · (dw · dx) as the scalar kernel.
template <int NR>
LOUPE_TARGET_AVX512 inline void gemm_tile(const uint8_t* pq, const float* pd, const QuantizedRows& x, int64_t i0, float* y,
                                          int64_t ldy, int64_t r0, int rows) {
  const int64_t nb = x.nb;
  __m512 f[NR][2];
  for (int i = 0; i < NR; ++i) f[i][0] = f[i][1] = _mm512_setzero_ps();
  const ActRows<NR> xr(x, i0);
  const int8_t* const* xq = xr.q;
  const int32_t* const* xc = xr.c;
  const float* const* xd = xr.d;
  for (int64_t b = 0; b < nb; ++b) {
    __m512i a[NR][2];
    for (int i = 0; i < NR; ++i) a[i][0] = a[i][1] = _mm512_set1_epi32(xc[i][b]);
    const uint8_t* pb = pq + b * kPanelBlockBytes;
    for (int g = 0; g < 8; ++g) {
      const __m512i w0 = _mm512_load_si512(pb + g * 128), w1 = _mm512_load_si512(pb + g * 128 + 64);
      for (int i = 0; i < NR; ++i) {
        const __m512i xv = _mm512_set1_epi32(load_i32(xq[i] + b * QK + 4 * g));
        a[i][0] = _mm512_dpbusd_epi32(a[i][0], w0, xv);
        a[i][1] = _mm512_dpbusd_epi32(a[i][1], w1, xv);
      }
    }
    const __m512 d0 = _mm512_load_ps(pd + b * kPanelRows), d1 = _mm512_load_ps(pd + b * kPanelRows + 16);
    for (int i = 0; i < NR; ++i) {
      const __m512 dx = _mm512_set1_ps(xd[i][b]);
      f[i][0] = _mm512_add_ps(f[i][0], _mm512_mul_ps(_mm512_cvtepi32_ps(a[i][0]), _mm512_mul_ps(d0, dx)));
      f[i][1] = _mm512_add_ps(f[i][1], _mm512_mul_ps(_mm512_cvtepi32_ps(a[i][1]), _mm512_mul_ps(d1, dx)));
    }
  }
  const __mmask16 m0 = __mmask16((1u << std::min(16, rows)) - 1), m1 = __mmask16((1u << std::max(0, rows - 16)) - 1);
  for (int i = 0; i < NR; ++i) {
    float* yr = y + (i0 + i) * ldy + r0;
    _mm512_mask_storeu_ps(yr, m0, f[i][0]);
    _mm512_mask_storeu_ps(yr + 16, m1, f[i][1]);
  }
}

constexpr int kGemmNR = 4;

// The panel of rows [r0, r0 + rows) (rows 16 or 32) from Q4_0x16 weights: each
// 64-byte part already holds dword j of 16 rows, so this only splits nibbles.
LOUPE_TARGET_AVX512 inline void panel_from_x16(const uint8_t* w, int64_t nb, int64_t r0, int rows, uint8_t* pq, float* pd) {
  const __m512i m4 = _mm512_set1_epi8(0x0f);
  for (int s = 0; s < 2; ++s) {
    for (int64_t b = 0; b < nb; ++b) {
      uint8_t* out = pq + b * kPanelBlockBytes + 64 * s;
      float* d = pd + b * kPanelRows + 16 * s;
      if (16 * s >= rows) {  // a 16-row tail: zeros
        for (int k = 0; k < 8; ++k) _mm512_store_si512(out + k * 128, _mm512_setzero_si512());
        _mm512_store_ps(d, _mm512_setzero_ps());
        continue;
      }
      const uint8_t* og = w + size_t((r0 / scalar::kX16Rows + s) * nb) * scalar::kX16BlockBytes;
      const scalar::X16Block o = scalar::x16_block(nb, b);
      if ((b & 1) == 0) prefetch_x16_pair(og + o.qs);  // two streams (this panel's groups) with few rows
      for (int k = 0; k < 4; ++k) {
        const __m512i part = _mm512_loadu_si512(og + o.qs + size_t(k) * scalar::kX16PartBytes);
        _mm512_store_si512(out + k * 128, _mm512_and_si512(part, m4));
        _mm512_store_si512(out + (k + 4) * 128, _mm512_and_si512(_mm512_srli_epi16(part, 4), m4));
      }
      _mm512_store_ps(d, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(og + o.d))));
    }
  }
}

// Q4: Q4_0 (else Q8_0); X16: the weights are Q4_0x16 (w: the packed matrix).
template <bool Q4, bool X16 = false>
LOUPE_TARGET_AVX512 inline void gemm_avx512(const uint8_t* w, size_t ws, int64_t r0, int64_t r1, const QuantizedRows& x, float* y,
                                            int64_t ldy) {
  PanelScratch& ps = panel_scratch();
  ps.q.resize(size_t(x.nb * kPanelBlockBytes));
  ps.d.resize(size_t(x.nb * kPanelRows));
  for (int64_t p = r0; p < r1; p += kPanelRows) {
    const int rows = int(std::min<int64_t>(kPanelRows, r1 - p));
    if constexpr (X16) panel_from_x16(w, x.nb, p, rows, ps.q.data(), ps.d.data());
    else repack_panel<Q4>(w, ws, p, rows, r1, x.nb, ps.q.data(), ps.d.data());  // (it prefetches its rows ahead)
    int64_t i = 0;
    for (; i + kGemmNR <= x.n; i += kGemmNR) gemm_tile<kGemmNR>(ps.q.data(), ps.d.data(), x, i, y, ldy, p, rows);
    switch (x.n - i) {
      case 3: gemm_tile<3>(ps.q.data(), ps.d.data(), x, i, y, ldy, p, rows); break;
      case 2: gemm_tile<2>(ps.q.data(), ps.d.data(), x, i, y, ldy, p, rows); break;
      case 1: gemm_tile<1>(ps.q.data(), ps.d.data(), x, i, y, ldy, p, rows); break;
      default: break;
    }
  }
}

template <bool Q4>
LOUPE_TARGET_AVX512 inline void matmul_avx512(const uint8_t* w, size_t ws, int64_t r0, int64_t r1, const QuantizedRows& x, float* y,
                                              int64_t ldy) {
  // The panel gemm from 2 rows for Q4_0, 4 for Q8_0 (whole 7B decode steps, loupe_bench
  // batch, 2 threads: 2 Q4_0 sequences 157 -> 129 ms a step, the gemv passes re-read the
  // task's weight rows from L2 and lose most on ffn_down's K = 11008; Q8_0, loupe_bench
  // kernels: 2 rows 1.21 vs 1.36 ms).
  if (x.n >= gemm_min_rows(Q4 ? 2 : 4)) return gemm_avx512<Q4>(w, ws, r0, r1, x, y, ldy);
  if (x.n == 1) return gemv1_avx512<Q4>(w, ws, r0, r1, x, 0, y);
  int64_t i = 0;
  for (; i + 4 <= x.n; i += 4) gemv_avx512_nx<Q4, 4>(w, ws, r0, r1, x, i, y, ldy);
  switch (x.n - i) {
    case 3: return gemv_avx512_nx<Q4, 3>(w, ws, r0, r1, x, i, y, ldy);
    case 2: return gemv_avx512_nx<Q4, 2>(w, ws, r0, r1, x, i, y, ldy);
    case 1: return gemv_avx512_nx<Q4, 1>(w, ws, r0, r1, x, i, y, ldy);
    default: return;
  }
}
LOUPE_TARGET_AVX512 inline void matmul_q4_0_avx512(const uint8_t* w, size_t ws, int64_t r0, int64_t r1, const QuantizedRows& x, float* y, int64_t ldy) {
  matmul_avx512<true>(w, ws, r0, r1, x, y, ldy);
}
LOUPE_TARGET_AVX512 inline void matmul_q8_0_avx512(const uint8_t* w, size_t ws, int64_t r0, int64_t r1, const QuantizedRows& x, float* y, int64_t ldy) {
  matmul_avx512<false>(w, ws, r0, r1, x, y, ldy);
}

// ---- Q4_0x16 (kernels/scalar.hpp): decode from weights packed at load.
//
// gemv1_rows above spends ~16 instructions (most of them zmm shuffles and
// conversions) on a 36-byte block pair of one row; on a Zen 4 core that capped
// it at 14–16 GB/s in and out of cache, against the read probe's 26. With 16
// rows in the lanes a block is 4 aligned 64-byte loads, 8 nibble masks, 8
// vpdpbusd against broadcast activation bytes and one scale vector: 288 bytes
// in ~30 instructions, one stream per thread, and no per-call activation tables
// (ffn_down's K = 11008 is no longer different). The f32 arithmetic is the
// scalar kernel's, block by block: bit-identical to it.
// loupe_bench kernels, 7B Q4_0 shapes from DRAM, 1 thread, Zen 4 (2026-12-08):
// 11008×4096 / 4096×11008 / 4096×4096: gemv1_rows 15.8 / 15.9 / 14.0 GB/s,
// this kernel 22–25 GB/s (the read probe: 26–32; with the weights in L2: 45).
// Software prefetch (2–16 KB ahead, to L1 or L2) did not help one thread and cost
// two (best of 61 calls, 3 interleaved runs: 34.4 / 33.5 / 30.5 GB/s without,
// 31.5 / 24.9 / 32.3 with 2 KB). With NR activation rows the parts are split
// once for all of them, but a broadcast feeds one vpdpbusd, not the panel tile's
// two: it beats the panel gemm (from the packed weights, no transposes) below 4
// rows. 11008×4096, best ms, 1 / 2 threads: 2 rows 1.63 vs 3.01 / 0.90 vs 1.50,
// 4: 3.08 vs 3.55 / 1.59 vs 1.74, 8: 4.63 vs 4.44 / 2.43 vs 2.35, 16: 6.99 vs
// 6.70 / 3.65 vs 3.45 (batched decode, B = 8, 2 threads: 16.8 tok/s with this
// loop up to 8 rows, 22.3–23.3 with the panel gemm; the unpacked model: 23.1).
constexpr int64_t kX16GemmRows = 4;

// Group g (16 weight rows) × NR activation rows from i0: the parts are loaded
// and split into nibbles once for all NR rows.
template <int NR>
LOUPE_TARGET_AVX512 inline void gemv_x16(const uint8_t* w, int64_t g, const QuantizedRows& x, int64_t i0, float* y, int64_t ldy) {
  const int64_t nb = x.nb;
  const uint8_t* og = w + size_t(g * nb) * scalar::kX16BlockBytes;
  const ActRows<NR> xr(x, i0);
  const __m512i m4 = _mm512_set1_epi8(0x0f);
  __m512 f[NR];
  for (int i = 0; i < NR; ++i) f[i] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const scalar::X16Block o = scalar::x16_block(nb, b);
    __m512i lo[4], hi[4];
    for (int j = 0; j < 4; ++j) {
      const __m512i part = _mm512_loadu_si512(og + o.qs + size_t(j) * scalar::kX16PartBytes);
      lo[j] = _mm512_and_si512(part, m4), hi[j] = _mm512_and_si512(_mm512_srli_epi16(part, 4), m4);
    }
    const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(og + o.d)));
    for (int i = 0; i < NR; ++i) {
      const int8_t* xb = xr.q[i] + b * QK;
      __m512i a = _mm512_set1_epi32(xr.c[i][b]), c = _mm512_setzero_si512();
      for (int j = 0; j < 4; ++j) {
        a = _mm512_dpbusd_epi32(a, lo[j], _mm512_set1_epi32(load_i32(xb + 4 * j)));
        c = _mm512_dpbusd_epi32(c, hi[j], _mm512_set1_epi32(load_i32(xb + 16 + 4 * j)));
      }
      f[i] = _mm512_add_ps(f[i], _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(a, c)), _mm512_mul_ps(dw, _mm512_set1_ps(xr.d[i][b]))));
    }
  }
  for (int i = 0; i < NR; ++i) _mm512_storeu_ps(y + (i0 + i) * ldy + g * scalar::kX16Rows, f[i]);
}

LOUPE_TARGET_AVX512 inline void matmul_q4_0_x16_avx512(const uint8_t* w, size_t ws, int64_t r0, int64_t r1, const QuantizedRows& x,
                                                       float* y, int64_t ldy) {
  if (x.n >= gemm_min_rows(kX16GemmRows)) return gemm_avx512<true, true>(w, ws, r0, r1, x, y, ldy);
  for (int64_t g = r0 / scalar::kX16Rows; g < r1 / scalar::kX16Rows; ++g) {
    int64_t i = 0;
    for (; i + 4 <= x.n; i += 4) gemv_x16<4>(w, g, x, i, y, ldy);
    switch (x.n - i) {
      case 3: gemv_x16<3>(w, g, x, i, y, ldy); break;
      case 2: gemv_x16<2>(w, g, x, i, y, ldy); break;
      case 1: gemv_x16<1>(w, g, x, i, y, ldy); break;
      default: break;
    }
  }
}

// Q4_0 -> Q4_0x16: transpose16x4 yields the 4 parts as they are stored.
LOUPE_TARGET_AVX512 inline void x16_parts_avx512(const uint8_t* const* p, int64_t off, uint8_t* out) {
  __m512i part[4];
  transpose16x4(p, off, part);
  for (int j = 0; j < 4; ++j) _mm512_storeu_si512(out + size_t(j) * scalar::kX16PartBytes, part[j]);
}
inline void pack_q4_0_x16_avx512(const uint8_t* w, size_t ws, int64_t rows, int64_t nb, uint8_t* out) {
  scalar::pack_q4_0_x16_with(x16_parts_avx512, w, ws, rows, nb, out);
}

inline __mmask16 tail_mask(int64_t left) { return __mmask16(left >= 16 ? 0xffff : (1u << left) - 1); }

// ---- f32 vector kernels and row converters: vec_f32.inl over these traits
// (tails by masks, no scalar loop).
namespace avx512 {
LOUPE_BEGIN_TARGET("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")
struct Vec {
  using V = __m512;
  static constexpr int64_t kLanes = 16;
  static constexpr bool kMasked = true;
  static V zero() { return _mm512_setzero_ps(); }
  static V set1(float f) { return _mm512_set1_ps(f); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V load_n(const float* p, int64_t n) { return _mm512_maskz_loadu_ps(tail_mask(n), p); }
  static void store_n(float* p, V v, int64_t n) { _mm512_mask_storeu_ps(p, tail_mask(n), v); }
  static V keep_n(V v, int64_t n) { return _mm512_maskz_mov_ps(tail_mask(n), v); }
  static V load_f16(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static V load_f16_n(const uint16_t* p, int64_t n) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(tail_mask(n), p)); }
  static void store_f16(uint16_t* p, V v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  static void store_f16_n(uint16_t* p, V v, int64_t n) {
    _mm256_mask_storeu_epi16(p, tail_mask(n), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  static V load_bf16(const uint16_t* p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
  }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V div(V a, V b) { return _mm512_div_ps(a, b); }
  static V min(V a, V b) { return _mm512_min_ps(a, b); }
  static V max(V a, V b) { return _mm512_max_ps(a, b); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V fnma(V a, V b, V c) { return _mm512_fnmadd_ps(a, b, c); }
  static V round(V v) { return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static V scale2(V p, V k) { return _mm512_scalef_ps(p, k); }
  static float hsum(V v) { return _mm512_reduce_add_ps(v); }
  static constexpr int kGemmNW = 12;  // f32 gemm: 12 weight rows × 2 zmm = 24 accumulators of 32 registers
};
#include "vec_f32.inl"
#include "gemm_f32.inl"
LOUPE_END_TARGET()
}  // namespace avx512

// ---- bf16 gemm (AVX512-BF16's vdpbf16ps; the same weight types as gemm_f32).
//
// The f32 gemm's structure with bf16 operands: x is packed as pairs of columns
// ([block of 32 rows][k/2 pairs][32 rows] of (bf16 x[c], bf16 x[c+1]) in 32 bits),
// each weight row is rounded to bf16 pairs in the task's tile, and one vdpbf16ps
// multiplies 16 rows × 2 columns into f32 sums: twice the products per instruction
// of the f32 FMA (x and w rounded to 8-bit mantissas: ~2^-9 relative per product,
// f32 accumulation). Used where the caller allows it (Precision::Bf16: CLIP).
#define LOUPE_TARGET_AVX512BF16 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512bf16,avx2,fma,f16c")))

// 16 f32 values of column a and 16 of column b -> 16 (bf16 a, bf16 b) pairs, round to nearest even.
LOUPE_TARGET_AVX512BF16 inline __m512i bf16_pairs(__m512 a, __m512 b) {
  const __m512i lo = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(a));
  const __m512i hi = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(b));
  return _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16));
}

inline int64_t bf16_packed_size(int64_t n, int64_t k) { return (n + kPackRows - 1) / kPackRows * kPackRows * ((k + 1) / 2); }

LOUPE_TARGET_AVX512BF16 inline void pack_rows_bf16(const float* x, int64_t n, int64_t k, uint32_t* xp) {
  const int64_t kp = (k + 1) / 2;
  for (int64_t b = 0; b * kPackRows < n; ++b) {
    uint32_t* out = xp + b * kp * kPackRows;
    const int64_t rows = std::min<int64_t>(kPackRows, n - b * kPackRows);
    for (int64_t c0 = 0; c0 < k; c0 += 16) {
      alignas(64) float t[16][kPackRows];  // 16 columns × 32 rows, transposed; zeros past the edges
      for (int64_t r = 0; r < kPackRows; ++r)
        for (int64_t c = 0; c < 16; ++c) t[c][r] = (r < rows && c0 + c < k) ? x[(b * kPackRows + r) * k + c0 + c] : 0.0f;
      for (int64_t c = 0; c < 16 && c0 + c < k; c += 2)
        for (int z = 0; z < 2; ++z)
          _mm512_store_si512(out + ((c0 + c) / 2) * kPackRows + 16 * z, bf16_pairs(_mm512_load_ps(t[c] + 16 * z), _mm512_load_ps(t[c + 1] + 16 * z)));
    }
  }
}

// NW weight rows × NZ·16 activation rows over pairs [0, kc2) of the current block.
template <int NW, int NZ>
LOUPE_TARGET_AVX512BF16 inline void gemm_bf16_tile(const uint32_t* xp, const uint32_t* wt, int64_t wst, int64_t kc2, float* yt,
                                                   int64_t ytst, bool first) {
  __m512 acc[NW][NZ];
  for (int r = 0; r < NW; ++r)
    for (int z = 0; z < NZ; ++z) acc[r][z] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(yt + r * ytst + 16 * z);
  for (int64_t c = 0; c < kc2; ++c) {
    __m512bh xv[NZ];
    for (int z = 0; z < NZ; ++z) xv[z] = (__m512bh)_mm512_load_si512(xp + c * kPackRows + 16 * z);
    for (int r = 0; r < NW; ++r) {
      const __m512bh w = (__m512bh)_mm512_set1_epi32(int(wt[r * wst + c]));
      for (int z = 0; z < NZ; ++z) acc[r][z] = _mm512_dpbf16_ps(acc[r][z], xv[z], w);
    }
  }
  for (int r = 0; r < NW; ++r)
    for (int z = 0; z < NZ; ++z) _mm512_storeu_ps(yt + r * ytst + 16 * z, acc[r][z]);
}

template <int NZ>
LOUPE_TARGET_AVX512BF16 inline void gemm_bf16_rows(int nw, const uint32_t* xp, const uint32_t* wt, int64_t wst, int64_t kc2, float* yt,
                                                   int64_t ytst, bool first) {
  switch (nw) {
#define LOUPE_CASE(N) \
  case N: return gemm_bf16_tile<N, NZ>(xp, wt, wst, kc2, yt, ytst, first);
    LOUPE_CASE(1) LOUPE_CASE(2) LOUPE_CASE(3) LOUPE_CASE(4) LOUPE_CASE(5) LOUPE_CASE(6)
    LOUPE_CASE(7) LOUPE_CASE(8) LOUPE_CASE(9) LOUPE_CASE(10) LOUPE_CASE(11) LOUPE_CASE(12)
#undef LOUPE_CASE
    default: return;
  }
}

struct Bf16GemmScratch {
  AlignedBuffer<float> row, yt;
  AlignedBuffer<uint32_t> wt;
};
inline Bf16GemmScratch& bf16_gemm_scratch() {
  static thread_local Bf16GemmScratch s;
  return s;
}

// Rows [r0, r1) of w (F32, F16 or BF16) against x packed by pack_rows_bf16.
LOUPE_TARGET_AVX512BF16 inline void gemm_bf16_avx512(const uint32_t* xp, int64_t n, int64_t k, const uint8_t* w, DType t, size_t ws,
                                                     int64_t r0, int64_t r1, float* y, int64_t ldy) {
  Bf16GemmScratch& s = bf16_gemm_scratch();
  const int64_t rows = r1 - r0, kp = (k + 1) / 2, wst = kp + 16;  // padded, as gemm_f32's tile
  const int64_t nblk = (n + kPackRows - 1) / kPackRows, ytst = nblk * kPackRows;
  s.wt.resize(size_t(rows * wst));
  s.yt.resize(size_t(rows * ytst));
  s.row.resize(size_t(2 * kp + 32));
  for (int64_t r = 0; r < rows; ++r) {  // each weight row widened to f32, then rounded to bf16 pairs
    const uint8_t* src = w + size_t(r0 + r) * ws;
    float* f = s.row.data();
    if (t == DType::F16) avx512::VecKernels::f16_to_f32_row(reinterpret_cast<const uint16_t*>(src), f, k);
    else if (t == DType::BF16) avx512::VecKernels::bf16_to_f32_row(reinterpret_cast<const uint16_t*>(src), f, k);
    else std::memcpy(f, src, size_t(k) * 4);
    std::fill(f + k, f + 2 * kp + 32, 0.0f);
    uint32_t* dst = s.wt.data() + r * wst;
    for (int64_t c = 0; c < kp; c += 16) {  // 32 values -> 16 pairs: even and odd columns apart, then paired
      const __m512 a = _mm512_loadu_ps(f + 2 * c), b = _mm512_loadu_ps(f + 2 * c + 16);
      const __m512i idx_even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
      const __m512i idx_odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
      const __m512i pairs = bf16_pairs(_mm512_permutex2var_ps(a, idx_even, b), _mm512_permutex2var_ps(a, idx_odd, b));
      _mm512_mask_storeu_epi32(dst + c, tail_mask(kp - c), pairs);
    }
  }
  constexpr int64_t kc2max = kGemmKc / 2;
  for (int64_t c0 = 0; c0 < kp; c0 += kc2max) {
    const int64_t kc2 = std::min(kc2max, kp - c0);
    for (int64_t g = 0; g < rows; g += avx512::Vec::kGemmNW) {
      const int nw = int(std::min<int64_t>(avx512::Vec::kGemmNW, rows - g));
      for (int64_t b = 0; b < nblk; ++b) {
        const uint32_t* xpb = xp + b * kp * kPackRows + c0 * kPackRows;
        const uint32_t* wtg = s.wt.data() + g * wst + c0;
        float* ytg = s.yt.data() + g * ytst + b * kPackRows;
        if (n - b * kPackRows > 16) gemm_bf16_rows<2>(nw, xpb, wtg, wst, kc2, ytg, ytst, c0 == 0);
        else gemm_bf16_rows<1>(nw, xpb, wtg, wst, kc2, ytg, ytst, c0 == 0);
      }
    }
  }
  for (int64_t i = 0; i < n; ++i)
    for (int64_t r = 0; r < rows; ++r) y[i * ldy + r0 + r] = s.yt.data()[r * ytst + i];
}

}  // namespace x86
}  // namespace loupe

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif  // x86-64
