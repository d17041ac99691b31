// The CUDA backend's kernels (cuda_backend.cu launches them). Activations are
// f32 in device memory; weights are the host tensors' bytes uploaded unchanged
// (Q4_0 / Q8_0 blocks, F16, BF16, F32; contiguous rows), dequantised in
// registers or shared memory as they are read, so a 4-bit model takes 4.5 bits
// per weight on the GPU too.
//
// Every kernel writes each of its output elements exactly once, whatever the
// shape (ragged tiles are masked, not assumed away), and uses 64-bit indices
// for anything that scales with a tensor's size.
#pragma once
#include <cuda_fp16.h>
#include <mma.h>

#include <cstdint>

namespace loupe::cuda {

// Weight kinds (template parameters; cuda_backend.cu maps DType onto them).
enum WeightKind : int { kF32 = 0, kF16 = 1, kBF16 = 2, kQ8_0 = 3, kQ4_0 = 4 };

constexpr int kQK = 32;            // elements per quantised block
constexpr int kQ8Bytes = 34;       // f16 d + int8 qs[32]
constexpr int kQ4Bytes = 18;       // f16 d + uint8 qs[16]

// ------------------------------------------------------------------ helpers

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum / max over a block of NT threads; every thread gets the result. Must be
// reached by all threads of the block. Ends with a barrier so that the shared
// slots can be reused by the next call.
template <int NT, bool kMax>
__device__ __forceinline__ float block_reduce(float v) {
  static_assert(NT % 32 == 0 && NT <= 1024, "block size");
  __shared__ float part[NT / 32];
  __shared__ float total;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = kMax ? warp_max(v) : warp_sum(v);
  if (lane == 0) part[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float s = lane < NT / 32 ? part[lane] : (kMax ? -INFINITY : 0.0f);
    s = kMax ? warp_max(s) : warp_sum(s);
    if (lane == 0) total = s;
  }
  __syncthreads();
  const float r = total;
  __syncthreads();
  return r;
}

// 16-bit loads: quantised blocks are 18 or 34 bytes long, so only 2-byte
// alignment can be relied on inside a row.
__device__ __forceinline__ uint16_t ld_u16(const uint8_t* p) { return *reinterpret_cast<const uint16_t*>(p); }
__device__ __forceinline__ float f16_bits_to_f32(uint16_t h) { return __half2float(__ushort_as_half(h)); }
__device__ __forceinline__ float bf16_bits_to_f32(uint16_t b) { return __uint_as_float(uint32_t(b) << 16); }

// Element k of a float-typed weight row.
template <int WT>
__device__ __forceinline__ float load_float_weight(const uint8_t* row, int64_t k) {
  if constexpr (WT == kF32) return reinterpret_cast<const float*>(row)[k];
  else if constexpr (WT == kF16) return f16_bits_to_f32(reinterpret_cast<const uint16_t*>(row)[k]);
  else return bf16_bits_to_f32(reinterpret_cast<const uint16_t*>(row)[k]);
}

template <int WT>
__host__ __device__ constexpr int64_t weight_row_bytes(int64_t in) {
  return WT == kF32 ? in * 4 : WT == kF16 || WT == kBF16 ? in * 2 : WT == kQ8_0 ? in / kQK * kQ8Bytes : in / kQK * kQ4Bytes;
}

// -------------------------------------------------------------- GEMV (n <= 8)

// y[r, row] = x[r, :] · W[row, :] for r < N, one warp per weight row, 8 warps
// per block. Each weight byte is read once for all N activation rows (decode is
// bound by the weight stream); x (N·in floats) stays in L1/L2. f32 accumulation:
// dequantised values (fp16 d · small integer) are exact in f32.
constexpr int kGemvWarps = 8;

template <int WT, int N>
__global__ void __launch_bounds__(kGemvWarps * 32)
    gemv_kernel(const uint8_t* __restrict__ w, int64_t out, int64_t in, const float* __restrict__ x, float* __restrict__ y) {
  const int lane = threadIdx.x & 31;
  const int64_t row = int64_t(blockIdx.x) * kGemvWarps + (threadIdx.x >> 5);
  if (row >= out) return;  // a whole warp leaves together; no block barrier below
  const uint8_t* wr = w + row * weight_row_bytes<WT>(in);
  float acc[N];
#pragma unroll
  for (int r = 0; r < N; ++r) acc[r] = 0.0f;

  if constexpr (WT == kQ4_0 || WT == kQ8_0) {
    // Four lanes per 32-element block, eight consecutive blocks per warp step:
    // a step reads 8 whole blocks (144 or 272 contiguous bytes), coalesced.
    const int64_t nb = in / kQK;
    const int sub = lane & 3;
    for (int64_t b = lane >> 2; b < nb; b += 8) {
      const uint8_t* blk = wr + b * (WT == kQ4_0 ? kQ4Bytes : kQ8Bytes);
      const float d = f16_bits_to_f32(ld_u16(blk));
      float part[N];
#pragma unroll
      for (int r = 0; r < N; ++r) part[r] = 0.0f;
      if constexpr (WT == kQ4_0) {
        // Bytes qs[4·sub .. 4·sub+4): values j (low nibbles) and j + 16 (high).
        const uint32_t q = uint32_t(ld_u16(blk + 2 + 4 * sub)) | (uint32_t(ld_u16(blk + 4 + 4 * sub)) << 16);
        const int64_t k0 = b * kQK + 4 * sub;
#pragma unroll
        for (int t = 0; t < 4; ++t) {
          const float lo = float(int((q >> (8 * t)) & 15u) - 8), hi = float(int((q >> (8 * t + 4)) & 15u) - 8);
#pragma unroll
          for (int r = 0; r < N; ++r) part[r] += lo * x[r * in + k0 + t] + hi * x[r * in + k0 + 16 + t];
        }
      } else {
        // Bytes qs[8·sub .. 8·sub+8): values 8·sub .. 8·sub+8.
        const int64_t k0 = b * kQK + 8 * sub;
#pragma unroll
        for (int t = 0; t < 4; ++t) {
          const uint16_t q2 = ld_u16(blk + 2 + 8 * sub + 2 * t);
          const float q0 = float(int8_t(q2 & 0xff)), q1 = float(int8_t(q2 >> 8));
#pragma unroll
          for (int r = 0; r < N; ++r) part[r] += q0 * x[r * in + k0 + 2 * t] + q1 * x[r * in + k0 + 2 * t + 1];
        }
      }
#pragma unroll
      for (int r = 0; r < N; ++r) acc[r] += d * part[r];
    }
  } else {
    // Float rows: lane k reads element k, k + 32, ... (coalesced; any `in`).
    for (int64_t k = lane; k < in; k += 32) {
      const float wv = load_float_weight<WT>(wr, k);
#pragma unroll
      for (int r = 0; r < N; ++r) acc[r] += wv * x[r * in + k];
    }
  }
#pragma unroll
  for (int r = 0; r < N; ++r) {
    const float s = warp_sum(acc[r]);
    if (lane == 0) y[r * out + row] = s;
  }
}

// ------------------------------------------------------- GEMM (tensor cores)

// y[n, out] = x[n, in] · Wᵀ with nvcuda::wmma 16×16×16 fp16 products and f32
// accumulators. Block tile: 64 x rows × 64 W rows, K step 32 (one quantised
// block per W row); 4 warps in 2×2, each 32×32 = 2×2 fragments. The x tile is
// rounded to half, the W tile dequantised to half, both in shared memory;
// rows or columns past n / out / in are zeros, so ragged edges need no special
// path, and the result goes out through shared memory with bounds checks.
//
// Tolerance: each fp16 operand carries a relative rounding error ≤ 2^-11
// (≈4.9e-4), accumulation is f32, so a dot product over K terms of random sign
// is off by about 2^-11·sqrt(Σ (x_k·w_k)²): ≈1e-4 of the row's largest value,
// well inside 1e-3 relative. Values beyond ±65504 would overflow fp16 (LLaMA's
// activations entering a matmul stay far below).
constexpr int kBM = 64, kBN = 64, kBK = 32;
constexpr int kLdAB = kBK + 8;  // halves; +8 staggers shared-memory banks, keeps 16-byte rows for wmma
constexpr int kLdC = kBN + 4;   // floats
constexpr int kGemmThreads = 128;

template <int WT>
__device__ __forceinline__ void load_w_tile(const uint8_t* __restrict__ w, int64_t out, int64_t in, int64_t o0, int64_t k0,
                                            __half* __restrict__ bs) {
  const int tid = threadIdx.x;
  if constexpr (WT == kQ4_0 || WT == kQ8_0) {
    // Two threads per W row, each half of the row's block at k0.
    const int r = tid >> 1, part = tid & 1;
    const int64_t o = o0 + r;
    __half* dst = bs + r * kLdAB;
    if (o >= out) {
#pragma unroll
      for (int t = 0; t < 16; ++t) {
        const int j = WT == kQ4_0 ? (t < 8 ? part * 8 + t : part * 8 + t + 8) : part * 16 + t;
        dst[j] = __float2half_rn(0.0f);
      }
      return;
    }
    const uint8_t* blk = w + o * weight_row_bytes<WT>(in) + (k0 / kQK) * (WT == kQ4_0 ? kQ4Bytes : kQ8Bytes);
    const float d = f16_bits_to_f32(ld_u16(blk));
    if constexpr (WT == kQ4_0) {
      // qs[8·part .. 8·part+8): values j (low nibble) and j + 16 (high nibble).
#pragma unroll
      for (int t = 0; t < 4; ++t) {
        const uint16_t q2 = ld_u16(blk + 2 + 8 * part + 2 * t);
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const uint32_t q = (q2 >> (8 * e)) & 0xffu;
          const int j = 8 * part + 2 * t + e;
          dst[j] = __float2half_rn(float(int(q & 15u) - 8) * d);
          dst[j + 16] = __float2half_rn(float(int(q >> 4) - 8) * d);
        }
      }
    } else {
#pragma unroll
      for (int t = 0; t < 8; ++t) {
        const uint16_t q2 = ld_u16(blk + 2 + 16 * part + 2 * t);
        dst[16 * part + 2 * t] = __float2half_rn(float(int8_t(q2 & 0xff)) * d);
        dst[16 * part + 2 * t + 1] = __float2half_rn(float(int8_t(q2 >> 8)) * d);
      }
    }
  } else {
    // Float rows: a warp reads 32 consecutive elements of one row (coalesced);
    // the K tail past `in` is zero-padded.
    const int c = tid & 31;
    const int64_t k = k0 + c;
    const int64_t rb = weight_row_bytes<WT>(in);
#pragma unroll 4
    for (int r = tid >> 5; r < kBN; r += kGemmThreads / 32) {
      const int64_t o = o0 + r;
      const float v = (o < out && k < in) ? load_float_weight<WT>(w + o * rb, k) : 0.0f;
      bs[r * kLdAB + c] = __float2half_rn(v);
    }
  }
}

template <int WT>
__global__ void __launch_bounds__(kGemmThreads)
    gemm_wmma_kernel(const uint8_t* __restrict__ w, int64_t out, int64_t in, const float* __restrict__ x, int64_t n,
                     float* __restrict__ y) {
  using namespace nvcuda;
  __shared__ __align__(32) __half as[kBM * kLdAB];
  __shared__ __align__(32) __half bs[kBN * kLdAB];
  __shared__ __align__(32) float cs[kBM * kLdC];
  const int tid = threadIdx.x, warp = tid >> 5;
  const int wm = warp >> 1, wn = warp & 1;  // this warp's 32×32 quarter
  const int64_t o0 = int64_t(blockIdx.x) * kBN, i0 = int64_t(blockIdx.y) * kBM;

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
  for (int a = 0; a < 2; ++a)
#pragma unroll
    for (int b = 0; b < 2; ++b) wmma::fill_fragment(acc[a][b], 0.0f);

  for (int64_t k0 = 0; k0 < in; k0 += kBK) {
    {  // x tile, 64 rows × 32 columns: a warp reads 32 consecutive floats of a row
      const int c = tid & 31;
      const int64_t k = k0 + c;
#pragma unroll 4
      for (int r = tid >> 5; r < kBM; r += kGemmThreads / 32) {
        const int64_t i = i0 + r;
        as[r * kLdAB + c] = __float2half_rn((i < n && k < in) ? x[i * in + k] : 0.0f);
      }
    }
    load_w_tile<WT>(w, out, in, o0, k0, bs);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> fb[2];
#pragma unroll
      for (int a = 0; a < 2; ++a) wmma::load_matrix_sync(fa[a], as + (wm * 32 + a * 16) * kLdAB + kk, kLdAB);
      // W tile stored [o][k]: read as B = Wᵀ (k × o) in column-major order.
#pragma unroll
      for (int b = 0; b < 2; ++b) wmma::load_matrix_sync(fb[b], bs + (wn * 32 + b * 16) * kLdAB + kk, kLdAB);
#pragma unroll
      for (int a = 0; a < 2; ++a)
#pragma unroll
        for (int b = 0; b < 2; ++b) wmma::mma_sync(acc[a][b], fa[a], fb[b], acc[a][b]);
    }
    __syncthreads();  // the tiles are overwritten by the next step
  }

#pragma unroll
  for (int a = 0; a < 2; ++a)
#pragma unroll
    for (int b = 0; b < 2; ++b)
      wmma::store_matrix_sync(cs + (wm * 32 + a * 16) * kLdC + wn * 32 + b * 16, acc[a][b], kLdC, wmma::mem_row_major);
  __syncthreads();
  const int c = tid & 63;
  const int64_t o = o0 + c;
  if (o >= out) return;
  for (int r = tid >> 6; r < kBM; r += kGemmThreads / 64) {
    const int64_t i = i0 + r;
    if (i < n) y[i * out + o] = cs[r * kLdC + c];
  }
}

// --------------------------------------------------------------- elementwise

// Grid-stride loops: any n with a grid capped by the caller.
#define LOUPE_CUDA_FOR(i, n) \
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)

constexpr int kEltThreads = 256;

__global__ void __launch_bounds__(kEltThreads) add_bias_kernel(const float* __restrict__ b, float* __restrict__ y, int64_t n, int64_t d) {
  LOUPE_CUDA_FOR(i, n * d) y[i] += b[i % d];
}

__global__ void __launch_bounds__(kEltThreads) axpy_kernel(float a, const float* __restrict__ x, float* __restrict__ y, int64_t n) {
  // a == 1 (residual adds): exactly y + x, as the CPU backend.
  if (a == 1.0f) {
    LOUPE_CUDA_FOR(i, n) y[i] += x[i];
  } else {
    LOUPE_CUDA_FOR(i, n) y[i] += a * x[i];
  }
}

__global__ void __launch_bounds__(kEltThreads) silu_mul_kernel(float* __restrict__ gate, const float* __restrict__ up, int64_t n) {
  LOUPE_CUDA_FOR(i, n) {
    const float g = gate[i];
    gate[i] = g / (1.0f + expf(-g)) * up[i];
  }
}

__global__ void __launch_bounds__(kEltThreads) gelu_erf_kernel(float* __restrict__ x, int64_t n) {
  LOUPE_CUDA_FOR(i, n) {
    const float v = x[i];
    x[i] = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
  }
}

__global__ void __launch_bounds__(kEltThreads) quick_gelu_kernel(float* __restrict__ x, int64_t n) {
  LOUPE_CUDA_FOR(i, n) {
    const float v = x[i];
    x[i] = v / (1.0f + expf(-1.702f * v));
  }
}

// One thread per rotated pair (row i, head h, pair p).
__global__ void __launch_bounds__(kEltThreads)
    rope_kernel(float* __restrict__ x, int64_t rows, int64_t heads, int64_t stride, int64_t d, const float* __restrict__ cs,
                bool adjacent) {
  const int64_t half = d / 2;
  LOUPE_CUDA_FOR(t, rows * heads * half) {
    const int64_t p = t % half, rest = t / half, h = rest % heads, i = rest / heads;
    const float c = cs[i * d + p], s = cs[i * d + half + p];
    float* v = x + i * stride + h * d;
    const int64_t i0 = adjacent ? 2 * p : p, i1 = adjacent ? 2 * p + 1 : p + half;
    const float x0 = v[i0], x1 = v[i1];
    v[i0] = x0 * c - x1 * s;
    v[i1] = x1 * c + x0 * s;
  }
}

template <bool F16>
__global__ void __launch_bounds__(kEltThreads)
    store_rows_kernel(const float* __restrict__ x, int64_t rows, int64_t width, void* __restrict__ dst, int64_t dst_stride) {
  LOUPE_CUDA_FOR(t, rows * width) {
    const int64_t i = t / width, j = t % width;
    if constexpr (F16) static_cast<__half*>(dst)[i * dst_stride + j] = __float2half_rn(x[t]);
    else static_cast<float*>(dst)[i * dst_stride + j] = x[t];
  }
}

// ------------------------------------------------------------------- norms

// One block per row; f32 partial sums per thread, then a tree (error ~1e-7
// relative for rows of a few thousand).
constexpr int kNormThreads = 256;

__global__ void __launch_bounds__(kNormThreads)
    rmsnorm_kernel(const float* __restrict__ x, const float* __restrict__ w, int64_t d, float eps, float* __restrict__ y) {
  const float* xr = x + int64_t(blockIdx.x) * d;
  float* yr = y + int64_t(blockIdx.x) * d;
  float ss = 0.0f;
  for (int64_t k = threadIdx.x; k < d; k += kNormThreads) ss += xr[k] * xr[k];
  ss = block_reduce<kNormThreads, false>(ss);
  const float s = 1.0f / sqrtf(ss / float(d) + eps);
  for (int64_t k = threadIdx.x; k < d; k += kNormThreads) yr[k] = w[k] * (xr[k] * s);
}

// Two passes (mean, then Σ(x − mean)²): no cancellation for rows with a large mean.
__global__ void __launch_bounds__(kNormThreads)
    layernorm_kernel(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ b, int64_t d, float eps,
                     float* __restrict__ y) {
  const float* xr = x + int64_t(blockIdx.x) * d;
  float* yr = y + int64_t(blockIdx.x) * d;
  float sum = 0.0f;
  for (int64_t k = threadIdx.x; k < d; k += kNormThreads) sum += xr[k];
  const float mean = block_reduce<kNormThreads, false>(sum) / float(d);
  float var = 0.0f;
  for (int64_t k = threadIdx.x; k < d; k += kNormThreads) {
    const float c = xr[k] - mean;
    var += c * c;
  }
  var = block_reduce<kNormThreads, false>(var) / float(d);
  const float s = 1.0f / sqrtf(var + eps);
  for (int64_t k = threadIdx.x; k < d; k += kNormThreads) yr[k] = (xr[k] - mean) * s * w[k] + (b ? b[k] : 0.0f);
}

// --------------------------------------------------------------- attention

// Split-K ("flash-decoding") attention. Block (i, h, s) takes query row i,
// head h and keys [s·chunk, min((s+1)·chunk, visible(i))): its scores fit in
// shared memory (chunk ≤ 1024), so it computes them, their max M, Σ exp(· − M)
// and the unnormalised Σ exp(· − M)·V. A second kernel merges the splits with
// the usual max rescaling. With one split the first kernel normalises and
// writes the output itself.
constexpr int kAttnThreads = 128;
constexpr int kAttnWarps = kAttnThreads / 32;
constexpr int kAttnMaxHd = 256;
constexpr int kAttnMaxChunk = 1024;

struct AttnParams {
  int64_t n, m, heads, kv_heads, hd;
  int64_t q_stride, kv_stride, out_stride;
  int64_t chunk, splits;
  bool causal;
  float scale;
};

__device__ __forceinline__ int64_t attn_visible(const AttnParams& p, int64_t i) {
  const int64_t v = p.causal ? p.m - p.n + i + 1 : p.m;
  return v < 0 ? 0 : (v > p.m ? p.m : v);
}

template <bool F16>
__device__ __forceinline__ float kv_load(const void* base, int64_t idx) {
  if constexpr (F16) return __half2float(static_cast<const __half*>(base)[idx]);
  else return static_cast<const float*>(base)[idx];
}

// part_m / part_l: [n·heads·splits]; part_o: [n·heads·splits, hd]. When
// p.splits == 1, `out` gets the normalised row instead (the parts are unused).
template <bool F16>
__global__ void __launch_bounds__(kAttnThreads)
    attn_partial_kernel(AttnParams p, const float* __restrict__ q, const void* __restrict__ k, const void* __restrict__ v,
                        float* __restrict__ part_m, float* __restrict__ part_l, float* __restrict__ part_o, float* __restrict__ out) {
  __shared__ float qs[kAttnMaxHd];
  __shared__ float sc[kAttnMaxChunk];
  __shared__ float red[kAttnWarps][kAttnMaxHd];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t bid = blockIdx.x;
  const int64_t s = bid % p.splits, t = bid / p.splits;  // t = i·heads + h
  const int64_t h = t % p.heads, i = t / p.heads;
  const int64_t hd = p.hd;
  const int64_t start = s * p.chunk;
  int64_t end = start + p.chunk;
  const int64_t vis = attn_visible(p, i);
  if (end > vis) end = vis;
  const int len = end > start ? int(end - start) : 0;  // ≤ chunk ≤ 1024
  float* o_out = p.splits == 1 ? out + i * p.out_stride + h * hd : part_o + bid * hd;

  if (len == 0) {  // nothing visible in this split (uniform over the block: no barrier skipped)
    for (int64_t d = tid; d < hd; d += kAttnThreads) o_out[d] = 0.0f;
    if (p.splits > 1 && tid == 0) part_m[bid] = -INFINITY, part_l[bid] = 0.0f;
    return;
  }
  const float* qr = q + i * p.q_stride + h * hd;
  for (int64_t d = tid; d < hd; d += kAttnThreads) qs[d] = qr[d];
  __syncthreads();

  const int64_t koff = (h / (p.heads / p.kv_heads)) * hd;
  // Scores: a warp per key, lanes across the head dimension (coalesced rows).
  for (int j = warp; j < len; j += kAttnWarps) {
    const int64_t row = (start + j) * p.kv_stride + koff;
    float acc = 0.0f;
    for (int64_t d = lane; d < hd; d += 32) acc += qs[d] * kv_load<F16>(k, row + d);
    acc = warp_sum(acc);
    if (lane == 0) sc[j] = acc * p.scale;
  }
  __syncthreads();
  float mx = -INFINITY;
  for (int j = tid; j < len; j += kAttnThreads) mx = fmaxf(mx, sc[j]);
  mx = block_reduce<kAttnThreads, true>(mx);  // finite: len ≥ 1
  float sum = 0.0f;
  for (int j = tid; j < len; j += kAttnThreads) {
    const float e = expf(sc[j] - mx);
    sc[j] = e;
    sum += e;
  }
  sum = block_reduce<kAttnThreads, false>(sum);  // its barriers also publish sc[]

  // Σ_j e_j·V_j: warps over keys, lanes over dimensions, then the warps' sums.
  float acc[kAttnMaxHd / 32];
#pragma unroll
  for (int c = 0; c < kAttnMaxHd / 32; ++c) acc[c] = 0.0f;
  for (int j = warp; j < len; j += kAttnWarps) {
    const float e = sc[j];
    const int64_t row = (start + j) * p.kv_stride + koff;
#pragma unroll
    for (int c = 0; c < kAttnMaxHd / 32; ++c) {
      const int64_t d = lane + 32 * c;
      if (d < hd) acc[c] += e * kv_load<F16>(v, row + d);
    }
  }
#pragma unroll
  for (int c = 0; c < kAttnMaxHd / 32; ++c) {
    const int64_t d = lane + 32 * c;
    if (d < hd) red[warp][d] = acc[c];
  }
  __syncthreads();
  const float norm = p.splits == 1 ? 1.0f / sum : 1.0f;
  for (int64_t d = tid; d < hd; d += kAttnThreads) {
    float o = 0.0f;
#pragma unroll
    for (int w = 0; w < kAttnWarps; ++w) o += red[w][d];
    o_out[d] = o * norm;
  }
  if (p.splits > 1 && tid == 0) part_m[bid] = mx, part_l[bid] = sum;
}

// One block per (query row, head): out = Σ_s e^(M_s − M)·O_s / Σ_s e^(M_s − M)·L_s
// over the splits that saw a key (L_s > 0); a row that saw none is zeros (as
// the CPU's empty softmax).
__global__ void __launch_bounds__(kAttnThreads)
    attn_combine_kernel(AttnParams p, const float* __restrict__ part_m, const float* __restrict__ part_l,
                        const float* __restrict__ part_o, float* __restrict__ out) {
  const int64_t t = blockIdx.x, h = t % p.heads, i = t / p.heads;
  const int64_t base = t * p.splits;
  float mx = -INFINITY;
  for (int64_t s = 0; s < p.splits; ++s)
    if (part_l[base + s] > 0.0f) mx = fmaxf(mx, part_m[base + s]);
  float* o = out + i * p.out_stride + h * p.hd;
  for (int64_t d = threadIdx.x; d < p.hd; d += kAttnThreads) {
    float num = 0.0f, den = 0.0f;
    for (int64_t s = 0; s < p.splits; ++s) {
      const float l = part_l[base + s];
      if (!(l > 0.0f)) continue;  // an empty split: its M is −inf
      const float f = expf(part_m[base + s] - mx);
      num += f * part_o[(base + s) * p.hd + d];
      den += f * l;
    }
    o[d] = den > 0.0f ? num / den : 0.0f;
  }
}

}  // namespace loupe::cuda
