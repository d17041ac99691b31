// One interface over the per-target kernels. kernels() is the table for the
// CPU we run on (x86-64: chosen at run time by cpuid, so one binary built for
// baseline x86-64 still uses AVX2/AVX-512; WebAssembly SIMD128 and AArch64 NEON:
// chosen at compile time); kernels_for(level) gives any level the CPU supports
// (tests compare each against the scalar reference).
#pragma once
#include "../core/cpu_features.hpp"
#include "kernels/scalar.hpp"
#include "kernels/neon.hpp"
#include "kernels/wasm.hpp"
#include "kernels/x86.hpp"

namespace loupe {

struct KernelTable {
  const char* name;
  // Bias of the unsigned weight values each quantised kernel uses (QuantizedRows::offset).
  int32_t q4_0_offset, q8_0_offset;
  void (*quantize_rows)(const float* x, int64_t n, int64_t k, int32_t offset, QuantizedRows& q);
  // y[i·ldy + r] = W[r] · x[i] for r in [r0, r1), every activation row i; w: rows of ws bytes.
  void (*matmul_q4_0)(const uint8_t* w, size_t ws, int64_t r0, int64_t r1, const QuantizedRows& x, float* y, int64_t ldy);
  void (*matmul_q8_0)(const uint8_t* w, size_t ws, int64_t r0, int64_t r1, const QuantizedRows& x, float* y, int64_t ldy);
  // Q4_0 weights packed as Q4_0x16 (kernels/scalar.hpp) by pack_q4_0_x16 and multiplied by
  // matmul_q4_0_x16 (w: the packed matrix, r0 and r1 multiples of 16 or the row count), or
  // both null: this level reads ggml's layout only, and models are not packed for it.
  void (*pack_q4_0_x16)(const uint8_t* w, size_t ws, int64_t rows, int64_t nb, uint8_t* out);
  void (*matmul_q4_0_x16)(const uint8_t* w, size_t ws, int64_t r0, int64_t r1, const QuantizedRows& x, float* y, int64_t ldy);
  void (*f16_to_f32)(const uint16_t* s, float* d, int64_t n);
  void (*bf16_to_f32)(const uint16_t* s, float* d, int64_t n);
  void (*f32_to_f16)(const float* s, uint16_t* d, int64_t n);
  // Attention and activations (f32; f16 = the KV cache's element type).
  float (*dot_f32)(const float* x, const float* y, int64_t n);
  float (*dot_f16)(const float* x, const uint16_t* y, int64_t n);
  void (*axpy_f32)(float a, const float* x, float* y, int64_t n);  // y += a·x
  void (*axpy_f16)(float a, const uint16_t* x, float* y, int64_t n);
  float (*exp_sum)(float* x, int64_t n, float shift);  // x = exp(x − shift), returns Σ
  void (*silu_mul)(float* g, const float* u, int64_t n);  // g = silu(g)·u
  void (*quick_gelu)(float* x, int64_t n);
  // f32 GEMM with F32/F16/BF16 weights, or null (Eigen does it): pack_rows packs
  // x [n, k] into packed_size(n, k) floats once per matmul; gemm_f32 computes
  // y[i·ldy + r] for rows [r0, r1) of w (dtype t, rows ws bytes apart).
  int64_t (*packed_size)(int64_t n, int64_t k);
  void (*pack_rows)(const float* x, int64_t n, int64_t k, float* xp);
  void (*gemm_f32)(const float* xp, int64_t n, int64_t k, const uint8_t* w, DType t, size_t ws, int64_t r0, int64_t r1, float* y,
                   int64_t ldy);
  // The same with bf16 products (AVX512-BF16), or null: for callers that allow it (ops.hpp's Precision::Bf16).
  int64_t (*bf16_packed_size)(int64_t n, int64_t k);
  void (*pack_rows_bf16)(const float* x, int64_t n, int64_t k, uint32_t* xp);
  void (*gemm_bf16)(const uint32_t* xp, int64_t n, int64_t k, const uint8_t* w, DType t, size_t ws, int64_t r0, int64_t r1, float* y,
                    int64_t ldy);
};

// The f32 vector kernels and row converters of one ISA (kernels/vec_f32.inl's
// VecKernels) into a table.
template <class K>
KernelTable with_vec_kernels(KernelTable t) {
  t.f16_to_f32 = K::f16_to_f32_row, t.bf16_to_f32 = K::bf16_to_f32_row, t.f32_to_f16 = K::f32_to_f16_row;
  t.dot_f32 = K::dot_f32, t.dot_f16 = K::dot_f16, t.axpy_f32 = K::axpy_f32, t.axpy_f16 = K::axpy_f16;
  t.exp_sum = K::exp_sum, t.silu_mul = K::silu_mul, t.quick_gelu = K::quick_gelu;
  return t;
}

inline const KernelTable& scalar_kernels() {
  static const KernelTable t = [] {
    KernelTable t{};
    t.name = "scalar";
    t.q4_0_offset = 8, t.q8_0_offset = 0;
    t.quantize_rows = scalar::quantize_rows, t.matmul_q4_0 = scalar::matmul_q4_0, t.matmul_q8_0 = scalar::matmul_q8_0;
    t.f16_to_f32 = scalar::f16_to_f32_row, t.bf16_to_f32 = scalar::bf16_to_f32_row, t.f32_to_f16 = scalar::f32_to_f16_row;
    t.dot_f32 = scalar::dot_f32, t.dot_f16 = scalar::dot_f16, t.axpy_f32 = scalar::axpy_f32, t.axpy_f16 = scalar::axpy_f16;
    t.exp_sum = scalar::exp_sum, t.silu_mul = scalar::silu_mul, t.quick_gelu = scalar::quick_gelu;
    return t;  // no f32 GEMM: Eigen does it
  }();
  return t;
}

// The table for `level`, or nullptr when this CPU (or build) does not have it:
// the scalar reference with each ISA's own kernels in place.
inline const KernelTable* kernels_for(CpuLevel level) {
  if (!cpu_features().supports(level)) return nullptr;
  switch (level) {
    case CpuLevel::Scalar: return &scalar_kernels();
#if defined(__x86_64__) || defined(_M_X64)
    case CpuLevel::Avx2: {
      static const KernelTable t = [] {
        KernelTable t = with_vec_kernels<x86::avx2::VecKernels>(scalar_kernels());
        t.name = "avx2";
        t.quantize_rows = x86::quantize_rows_avx2, t.matmul_q4_0 = x86::matmul_q4_0_avx2, t.matmul_q8_0 = x86::matmul_q8_0_avx2;
        t.pack_q4_0_x16 = x86::pack_q4_0_x16_avx2, t.matmul_q4_0_x16 = x86::matmul_q4_0_x16_avx2;
        t.packed_size = x86::f32_packed_size, t.pack_rows = x86::avx2::pack_rows_f32, t.gemm_f32 = x86::avx2::gemm_f32;
        return t;
      }();
      return &t;
    }
    case CpuLevel::Avx512: {
      static const KernelTable t = [] {
        KernelTable t = with_vec_kernels<x86::avx512::VecKernels>(scalar_kernels());
        t.name = "avx512";
        t.q8_0_offset = 128;  // VNNI's unsigned side: Q8_0 bytes flipped to q + 128
        t.quantize_rows = x86::quantize_rows_avx512, t.matmul_q4_0 = x86::matmul_q4_0_avx512, t.matmul_q8_0 = x86::matmul_q8_0_avx512;
        t.pack_q4_0_x16 = x86::pack_q4_0_x16_avx512, t.matmul_q4_0_x16 = x86::matmul_q4_0_x16_avx512;
        t.packed_size = x86::f32_packed_size, t.pack_rows = x86::avx512::pack_rows_f32, t.gemm_f32 = x86::avx512::gemm_f32;
        if (cpu_features().avx512bf16)  // Zen 4, Cooper Lake, Sapphire Rapids and later
          t.bf16_packed_size = x86::bf16_packed_size, t.pack_rows_bf16 = x86::pack_rows_bf16, t.gemm_bf16 = x86::gemm_bf16_avx512;
        return t;
      }();
      return &t;
    }
#endif
#if defined(__wasm_simd128__)
    case CpuLevel::Simd128: {
      static const KernelTable t = [] {
        KernelTable t = with_vec_kernels<wasm::VecKernels>(scalar_kernels());
        t.name = "simd128";
        t.quantize_rows = wasm::quantize_rows_wasm, t.matmul_q4_0 = wasm::matmul_q4_0_wasm, t.matmul_q8_0 = wasm::matmul_q8_0_wasm;
        return t;
      }();
      return &t;
    }
#endif
#if defined(__aarch64__) && defined(__ARM_NEON)
    case CpuLevel::Neon: {
      static const KernelTable t = [] {
        KernelTable t = with_vec_kernels<neon::VecKernels>(scalar_kernels());
        t.name = "neon";
        t.matmul_q4_0 = neon::matmul_q4_0_neon, t.matmul_q8_0 = neon::matmul_q8_0_neon;  // the scalar quantiser
        return t;
      }();
      return &t;
    }
#endif
    default: return nullptr;
  }
}

inline const KernelTable& kernels() {
  static const KernelTable* t = kernels_for(cpu_level());
  return *t;
}

}  // namespace loupe
