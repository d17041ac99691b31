// The f32 gemm (F32/F16/BF16 weights: CLIP, the projector, unquantised LLaMA),
// written once for AVX2 and AVX-512: kernels/x86.hpp includes this file inside
// each ISA's namespace and target region, after vec_f32.inl (no include guard:
// once per ISA). Vec (see vec_f32.inl) adds kGemmNW, the weight rows of a tile.
//
// y[i, r] = Σ_c x[i, c] · w[r, c]. Lanes are activation rows: x is packed once
// per matmul into blocks of kPackRows = 32 rows, column-major within the block
// ([block][c][32], pack_rows_f32), and shared by every task; each task widens
// its weight rows to f32 (a padded tile, so the rows a microkernel reads do not
// alias in L1) and runs kGemmNW weight rows × 2 vectors of activation rows of
// FMAs per column (AVX-512: 12 × 32 rows, 24 of the 32 zmm; AVX2: 6 × 16 rows,
// 12 of the 16 ymm), the columns in blocks of kGemmKc so the tile's slice stays
// in L1. Results are summed in a fixed order: independent of the thread count,
// close to (not bit-equal with) the scalar dot product.

inline void pack_rows_f32(const float* x, int64_t n, int64_t k, float* xp) {
  constexpr int64_t L = Vec::kLanes;
  for (int64_t b = 0; b * kPackRows < n; ++b) {
    float* out = xp + b * k * kPackRows;
    const int64_t rows = std::min<int64_t>(kPackRows, n - b * kPackRows);
    for (int64_t c0 = 0; c0 < k; c0 += 16) {
      const int64_t cols = std::min<int64_t>(16, k - c0);
      // 16 columns × up to 32 rows, transposed through a small buffer.
      alignas(64) float t[16][kPackRows];
      for (int64_t r = 0; r < kPackRows; ++r)
        for (int64_t c = 0; c < 16; ++c) t[c][r] = (r < rows && c < cols) ? x[(b * kPackRows + r) * k + c0 + c] : 0.0f;
      for (int64_t c = 0; c < cols; ++c)
        for (int64_t z = 0; z < kPackRows; z += L) Vec::store(out + (c0 + c) * kPackRows + z, Vec::load(t[c] + z));
    }
  }
}

// NW weight rows × NZ vectors of activation rows over columns [0, kc) of the current block.
template <int NW, int NZ>
inline void gemm_f32_tile(const float* xp, const float* wt, int64_t wst, int64_t kc, float* yt, int64_t ytst, bool first) {
  constexpr int64_t L = Vec::kLanes;
  typename Vec::V acc[NW][NZ];
  for (int r = 0; r < NW; ++r)
    for (int z = 0; z < NZ; ++z) acc[r][z] = first ? Vec::zero() : Vec::load(yt + r * ytst + L * z);
  for (int64_t c = 0; c < kc; ++c) {
    typename Vec::V xv[NZ];
    for (int z = 0; z < NZ; ++z) xv[z] = Vec::load(xp + c * kPackRows + L * z);
    for (int r = 0; r < NW; ++r) {
      const typename Vec::V w = Vec::set1(wt[r * wst + c]);
      for (int z = 0; z < NZ; ++z) acc[r][z] = Vec::fma(xv[z], w, acc[r][z]);
    }
  }
  for (int r = 0; r < NW; ++r)
    for (int z = 0; z < NZ; ++z) Vec::store(yt + r * ytst + L * z, acc[r][z]);
}

template <int NZ>
inline void gemm_f32_rows(int nw, const float* xp, const float* wt, int64_t wst, int64_t kc, float* yt, int64_t ytst, bool first) {
  switch (nw) {
#define LOUPE_CASE(N) \
  case N:             \
    if constexpr (N <= Vec::kGemmNW) return gemm_f32_tile<N, NZ>(xp, wt, wst, kc, yt, ytst, first);
    LOUPE_CASE(1) LOUPE_CASE(2) LOUPE_CASE(3) LOUPE_CASE(4) LOUPE_CASE(5) LOUPE_CASE(6)
    LOUPE_CASE(7) LOUPE_CASE(8) LOUPE_CASE(9) LOUPE_CASE(10) LOUPE_CASE(11) LOUPE_CASE(12)
#undef LOUPE_CASE
    default: return;
  }
}

// Rows [r0, r1) of w (dtype t: F32, F16 or BF16; rows ws bytes apart) against
// x packed by pack_rows_f32 (n rows of k).
inline void gemm_f32(const float* xp, int64_t n, int64_t k, const uint8_t* w, DType t, size_t ws, int64_t r0, int64_t r1, float* y,
                     int64_t ldy) {
  static_assert(Vec::kGemmNW <= 12, "gemm_f32_rows has cases up to 12 rows");
  constexpr int64_t L = Vec::kLanes;
  F32GemmScratch& s = f32_gemm_scratch();
  const int64_t rows = r1 - r0, wst = k + 16;  // padded: rows a multiple of 4 KB apart would share L1 sets
  const int64_t nblk = (n + kPackRows - 1) / kPackRows, ytst = nblk * kPackRows;
  s.wt.resize(size_t(rows * wst));
  s.yt.resize(size_t(rows * ytst));
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* src = w + size_t(r0 + r) * ws;
    float* dst = s.wt.data() + r * wst;
    if (t == DType::F16) VecKernels::f16_to_f32_row(reinterpret_cast<const uint16_t*>(src), dst, k);
    else if (t == DType::BF16) VecKernels::bf16_to_f32_row(reinterpret_cast<const uint16_t*>(src), dst, k);
    else std::memcpy(dst, src, size_t(k) * 4);
  }
  for (int64_t c0 = 0; c0 < k; c0 += kGemmKc) {
    const int64_t kc = std::min(kGemmKc, k - c0);
    for (int64_t g = 0; g < rows; g += Vec::kGemmNW) {
      const int nw = int(std::min<int64_t>(Vec::kGemmNW, rows - g));
      for (int64_t b = 0; b < nblk; ++b) {
        const int64_t vectors = (std::min(kPackRows, n - b * kPackRows) + L - 1) / L;  // of this block's rows
        for (int64_t z = 0; z < vectors; z += 2) {
          const float* xpb = xp + b * k * kPackRows + c0 * kPackRows + L * z;
          const float* wtg = s.wt.data() + g * wst + c0;
          float* ytg = s.yt.data() + g * ytst + b * kPackRows + L * z;
          if (vectors - z >= 2) gemm_f32_rows<2>(nw, xpb, wtg, wst, kc, ytg, ytst, c0 == 0);
          else gemm_f32_rows<1>(nw, xpb, wtg, wst, kc, ytg, ytst, c0 == 0);
        }
      }
    }
  }
  for (int64_t i = 0; i < n; ++i)
    for (int64_t r = 0; r < rows; ++r) y[i * ldy + r0 + r] = s.yt.data()[r * ytst + i];
}
