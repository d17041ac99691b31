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
};

inline const KernelTable& scalar_kernels() {
  static const KernelTable t{"scalar", 8, 0, scalar::quantize_rows, scalar::matmul_q4_0, scalar::matmul_q8_0,
                             scalar::f16_to_f32_row, scalar::bf16_to_f32_row, scalar::f32_to_f16_row,
                             scalar::dot_f32, scalar::dot_f16, scalar::axpy_f32, scalar::axpy_f16,
                             scalar::exp_sum, scalar::silu_mul, scalar::quick_gelu, nullptr, nullptr, nullptr};
  return t;
}

// The table for `level`, or nullptr when this CPU (or build) does not have it.
inline const KernelTable* kernels_for(CpuLevel level) {
  if (!cpu_features().supports(level)) return nullptr;
  switch (level) {
    case CpuLevel::Scalar: return &scalar_kernels();
#if defined(__x86_64__) || defined(_M_X64)
    case CpuLevel::Avx2: {
      static const KernelTable t{"avx2", 8, 0, x86::quantize_rows_avx2, x86::matmul_q4_0_avx2, x86::matmul_q8_0_avx2,
                                 x86::f16_to_f32_row_avx2, x86::bf16_to_f32_row_avx2, x86::f32_to_f16_row_avx2,
                                 x86::dot_f32_avx2, x86::dot_f16_avx2, x86::axpy_f32_avx2, x86::axpy_f16_avx2,
                                 x86::exp_sum_avx2, x86::silu_mul_avx2, x86::quick_gelu_avx2, nullptr, nullptr, nullptr};
      return &t;
    }
    case CpuLevel::Avx512: {
      static const KernelTable t{"avx512", 8, 128, x86::quantize_rows_avx512, x86::matmul_q4_0_avx512, x86::matmul_q8_0_avx512,
                                 x86::f16_to_f32_row_avx512, x86::bf16_to_f32_row_avx512, x86::f32_to_f16_row_avx512,
                                 x86::dot_f32_avx512, x86::dot_f16_avx512, x86::axpy_f32_avx512, x86::axpy_f16_avx512,
                                 x86::exp_sum_avx512, x86::silu_mul_avx512, x86::quick_gelu_avx512,
                                 [](int64_t n, int64_t k) { return (n + x86::kPackRows - 1) / x86::kPackRows * x86::kPackRows * k; },
                                 x86::pack_rows_f32, x86::gemm_f32_avx512};
      return &t;
    }
#endif
#if defined(__wasm_simd128__)
    case CpuLevel::Simd128: {
      static const KernelTable t{"simd128", 8, 0, wasm::quantize_rows_wasm, wasm::matmul_q4_0_wasm, wasm::matmul_q8_0_wasm,
                                 wasm::f16_to_f32_row_wasm, wasm::bf16_to_f32_row_wasm, scalar::f32_to_f16_row,
                                 wasm::dot_f32_wasm, wasm::dot_f16_wasm, wasm::axpy_f32_wasm, wasm::axpy_f16_wasm,
                                 wasm::exp_sum_wasm, wasm::silu_mul_wasm, wasm::quick_gelu_wasm, nullptr, nullptr, nullptr};
      return &t;
    }
#endif
#if defined(__aarch64__) && defined(__ARM_NEON)
    case CpuLevel::Neon: {
      static const KernelTable t{"neon", 8, 0, scalar::quantize_rows, neon::matmul_q4_0_neon, neon::matmul_q8_0_neon,
                                 neon::f16_to_f32_row_neon, scalar::bf16_to_f32_row, neon::f32_to_f16_row_neon,
                                 neon::dot_f32_neon, neon::dot_f16_neon, neon::axpy_f32_neon, neon::axpy_f16_neon,
                                 neon::exp_sum_neon, neon::silu_mul_neon, neon::quick_gelu_neon, nullptr, nullptr, nullptr};
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
