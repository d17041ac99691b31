// Kernels against the scalar reference (kernels_scalar.hpp), for every kernel
// level this CPU has: random data, odd sizes, one and many activation rows,
// every weight type; and matmul results independent of the thread count.
//
// Tolerances: the quantised gemm (many activation rows) and activation
// quantisation are bit-identical to the scalar kernels; the gemv (few rows)
// sums exact integer partial dots in another f32 order, so it may differ by a
// few ulps of the terms' magnitude: we allow 2e-6 · Σ_b Σ_j |qw_j·qx_j|·|dw_b·dx_b|.
// fp16/bf16 widening is exact (NaNs may come out quieted: F16C does that).
#include "test_util.hpp"

#include <loupe/ops/kernels.hpp>
#include <loupe/ops/ops.hpp>

#include <cstring>
#include <random>

using namespace loupe;

namespace {

std::vector<float> random_floats(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(g);
  return v;
}

std::vector<const KernelTable*> levels() {
  std::vector<const KernelTable*> v;
  for (CpuLevel l : kAllCpuLevels)
    if (const KernelTable* t = kernels_for(l)) v.push_back(t);
  return v;
}

// Weight rows of type t quantised from random values; some Q8_0 bytes set to -128
// (never made by the quantiser, but legal in a file).
Tensor random_weights(DType t, int64_t rows, int64_t cols, uint32_t seed) {
  std::vector<float> f = random_floats(size_t(rows * cols), seed, 0.05f);
  Tensor w = convert(make_view(DType::F32, {rows, cols}, f.data()), t);
  if (t == DType::Q8_0) {
    auto* b = reinterpret_cast<BlockQ8_0*>(w.bytes.data());
    for (size_t i = 0; i < size_t(rows * cols / QK); i += 7) b[i].qs[i % QK] = -128;
  }
  return w;
}

// Σ_b Σ_j |qw_j · qx_j| · |dw_b · dx_b|: the scale of f32 rounding in a quantised dot
// whatever order its exact integer partial sums are combined in.
double abs_terms(DType t, const uint8_t* wr, const QuantizedRows& x, int64_t i) {
  double s = 0;
  for (int64_t b = 0; b < x.nb; ++b) {
    int32_t dot = 0;
    float dw;
    if (t == DType::Q4_0) {
      const auto& blk = reinterpret_cast<const BlockQ4_0*>(wr)[b];
      for (int j = 0; j < QK / 2; ++j)
        dot += std::abs((int(blk.qs[j] & 15) - 8) * x.row(i)[b * QK + j]) +
               std::abs((int(blk.qs[j] >> 4) - 8) * x.row(i)[b * QK + j + 16]);
      dw = fp16_to_f32(blk.d);
    } else {
      const auto& blk = reinterpret_cast<const BlockQ8_0*>(wr)[b];
      for (int j = 0; j < QK; ++j) dot += std::abs(blk.qs[j] * x.row(i)[b * QK + j]);
      dw = fp16_to_f32(blk.d);
    }
    s += std::fabs(double(dot) * dw * x.d.data()[i * x.nb + b]);
  }
  return s;
}

}  // namespace

TEST_CASE("ops: kernel levels available here") {
  MESSAGE("CPU features: " << cpu_features().describe() << "; active kernels: " << std::string(kernels().name));
  CHECK(kernels_for(CpuLevel::Scalar) != nullptr);
  CHECK(std::string(kernels().name) == cpu_level_name(cpu_level()));
}

TEST_CASE("ops: scalar reference kernels agree with the scalar block dot products (equal to ggml's: test_quant)") {
  const int64_t k = 160, nb = k / QK;
  std::vector<float> x = random_floats(size_t(k), 1), wf = random_floats(size_t(k), 2, 0.1f);
  std::vector<BlockQ8_0> xb(static_cast<size_t>(nb)), w8(static_cast<size_t>(nb));
  std::vector<BlockQ4_0> w4(static_cast<size_t>(nb));
  quantize_row_q8_0(x.data(), xb.data(), k);
  quantize_row_q8_0(wf.data(), w8.data(), k);
  quantize_row_q4_0(wf.data(), w4.data(), k);
  QuantizedRows q;
  scalar::quantize_rows(x.data(), 1, k, 8, q);
  for (int64_t b = 0; b < nb; ++b) {
    CHECK(std::memcmp(q.row(0) + b * QK, xb[size_t(b)].qs, QK) == 0);
    CHECK(q.d.data()[b] == fp16_to_f32(xb[size_t(b)].d));
  }
  float y4 = 0, y8 = 0;
  scalar::matmul_q4_0(reinterpret_cast<const uint8_t*>(w4.data()), sizeof(BlockQ4_0) * size_t(nb), 0, 1, q, &y4, 1);
  scalar::matmul_q8_0(reinterpret_cast<const uint8_t*>(w8.data()), sizeof(BlockQ8_0) * size_t(nb), 0, 1, q, &y8, 1);
  CHECK(y4 == scalar::dot_q4_0_q8_0(w4.data(), xb.data(), nb));
  CHECK(y8 == scalar::dot_q8_0_q8_0(w8.data(), xb.data(), nb));
}

TEST_CASE("ops: activation quantisation is bit-identical at every level") {
  const auto& ref = scalar_kernels();
  for (const KernelTable* kt : levels()) {
    for (int64_t k : {32, 96, 4096 + 32}) {
      for (int64_t n : {1, 3, 6}) {
        std::vector<float> x = random_floats(size_t(n * k), uint32_t(k + n), 3.0f);
        // Exact ties (x/d = m + 0.5) and an all-zero block exercise rounding and d = 0.
        for (int64_t j = 0; j < QK; ++j) x[size_t(j)] = j == 0 ? 127.0f : float(j % 11) - 5.5f;
        if (k > QK) std::fill(x.begin() + QK, x.begin() + 2 * QK, 0.0f);
        for (int32_t off : {8, 128}) {
          QuantizedRows a, b;
          ref.quantize_rows(x.data(), n, k, off, a);
          kt->quantize_rows(x.data(), n, k, off, b);
          INFO(std::string(kt->name) << " n=" << n << " k=" << k << " offset=" << off);
          CHECK(std::memcmp(a.qs.data(), b.qs.data(), size_t(n * k)) == 0);
          CHECK(std::memcmp(a.d.data(), b.d.data(), size_t(n * a.nb) * 4) == 0);
          CHECK(std::memcmp(a.d8.data(), b.d8.data(), size_t(n * a.nb * 8) * 4) == 0);
          CHECK(std::memcmp(a.corr.data(), b.corr.data(), size_t(n * a.nb) * 4) == 0);
          CHECK(std::memcmp(a.corr4.data(), b.corr4.data(), size_t(n * k / 4) * 4) == 0);
        }
      }
    }
  }
}

TEST_CASE("ops: quantised matmul kernels match the scalar reference") {
  const auto& ref = scalar_kernels();
  for (const KernelTable* kt : levels()) {
    for (DType t : {DType::Q4_0, DType::Q8_0}) {
      for (int64_t k : {32, 160, 256, 1024 + 96, 1024 + 64}) {  // odd and even block counts
        const int64_t rows = 77;
        Tensor w = random_weights(t, rows, k, uint32_t(k));
        const auto* wb = w.bytes.data();
        const size_t ws = row_bytes(t, k);
        for (int64_t n : {1, 2, 3, 4, 5, 9, 13}) {
          std::vector<float> x = random_floats(size_t(n * k), uint32_t(n * 31 + k));
          QuantizedRows xr, xk;
          const int32_t off = t == DType::Q4_0 ? kt->q4_0_offset : kt->q8_0_offset;
          ref.quantize_rows(x.data(), n, k, 0, xr);
          kt->quantize_rows(x.data(), n, k, off, xk);
          // Odd row ranges: panel tails, a range not starting at 0.
          for (auto range : {std::pair<int64_t, int64_t>{0, rows}, {5, 38}, {40, 41}}) {
            const int64_t r0 = range.first, r1 = range.second;  // (no structured bindings: clang 14 cannot capture them)
            std::vector<float> yr(size_t(n * rows), -1.0f), yk(size_t(n * rows), -1.0f);
            (t == DType::Q4_0 ? ref.matmul_q4_0 : ref.matmul_q8_0)(wb, ws, r0, r1, xr, yr.data(), rows);
            (t == DType::Q4_0 ? kt->matmul_q4_0 : kt->matmul_q8_0)(wb, ws, r0, r1, xk, yk.data(), rows);
            int bad = 0, differ = 0;
            for (int64_t i = 0; i < n; ++i)
              for (int64_t r = 0; r < rows; ++r) {
                const float a = yr[size_t(i * rows + r)], b = yk[size_t(i * rows + r)];
                if (r < r0 || r >= r1) {
                  bad += b != -1.0f;  // nothing written outside [r0, r1)
                  continue;
                }
                differ += a != b;
                bad += std::fabs(double(a) - b) > 2e-6 * abs_terms(t, wb + size_t(r) * ws, xr, i) + 1e-30;
              }
            INFO(std::string(kt->name) << " " << dtype_name(t) << " k=" << k << " n=" << n << " rows [" << r0 << ", " << r1 << ")");
            CHECK(bad == 0);
            // The panel gemms (AVX-512 VNNI, AVX2) are bit-identical to the scalar kernel. They take
            // over from 4 activation rows (AVX-512's Q4_0 from 2, AVX2's Q8_0 from 12).
            const bool gemm = n >= (std::string(kt->name) == "avx2" && t == DType::Q8_0 ? 12 : 4);
            if ((std::string(kt->name) == "avx512" || std::string(kt->name) == "avx2") && gemm) CHECK(differ == 0);
            if (std::string(kt->name) == "scalar") CHECK(differ == 0);
          }
        }
      }
    }
  }
}

TEST_CASE("ops: Q4_0x16 packing (scalar and SIMD) gives the bytes the layout defines; its kernels equal the scalar Q4_0 kernel bit for bit") {
  const auto& ref = scalar_kernels();
  for (int64_t k : {32, 160, 1024 + 96, 1024 + 64}) {  // odd and even block counts
    const int64_t rows = 48, nb = k / QK;
    Tensor w = random_weights(DType::Q4_0, rows, k, uint32_t(k + 5));
    const auto* wb = w.bytes.data();
    const size_t ws = row_bytes(DType::Q4_0, k);
    std::vector<uint8_t> packed(w.bytes.size());
    scalar::pack_q4_0_x16(wb, ws, rows, nb, packed.data());
    int layout_bad = 0;  // the layout, byte by byte, from its definition (scalar.hpp)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = wb + size_t(r) * ws + size_t(b) * 18;
        const uint8_t* og = packed.data() + size_t(r / 16 * nb) * scalar::kX16BlockBytes;
        const scalar::X16Block o = scalar::x16_block(nb, b);
        layout_bad += std::memcmp(og + o.d + (r % 16) * 2, blk, 2) != 0;
        for (int j = 0; j < 4; ++j) layout_bad += std::memcmp(og + o.qs + j * 64 + (r % 16) * 4, blk + 2 + 4 * j, 4) != 0;
      }
    CHECK(layout_bad == 0);
    for (const KernelTable* kt : levels()) {
      std::vector<uint8_t> mine(w.bytes.size());
      if (kt->pack_q4_0_x16) {
        kt->pack_q4_0_x16(wb, ws, rows, nb, mine.data());
        INFO(kt->name << " k=" << k);
        CHECK(mine == packed);
      }
      auto x16 = kt->matmul_q4_0_x16 ? kt->matmul_q4_0_x16 : scalar::matmul_q4_0_x16;  // levels without one: the reference itself
      for (int64_t n : {1, 2, 3, 4, 5, 9, 13, 50}) {  // the gemv tiles, and the panel gemms from 4 rows (AVX-512)
        std::vector<float> x = random_floats(size_t(n * k), uint32_t(n * 37 + k));
        QuantizedRows xr, xk;
        ref.quantize_rows(x.data(), n, k, 0, xr);
        kt->quantize_rows(x.data(), n, k, kt->q4_0_offset, xk);
        for (auto range : {std::pair<int64_t, int64_t>{0, rows}, {16, 32}, {32, 48}}) {
          const int64_t r0 = range.first, r1 = range.second;
          std::vector<float> yr(size_t(n * rows), -1.0f), yk(size_t(n * rows), -1.0f);
          ref.matmul_q4_0(wb, ws, r0, r1, xr, yr.data(), rows);
          x16(packed.data(), ws, r0, r1, xk, yk.data(), rows);
          INFO(kt->name << " k=" << k << " n=" << n << " rows [" << r0 << ", " << r1 << ")");
          CHECK(yk == yr);  // outside [r0, r1) both stay -1
        }
        // Through ops' matmul: a view with `packed` runs the level's Q4_0x16 kernel (same bits).
        std::vector<float> y0(size_t(n * rows)), y1(size_t(n * rows));
        TensorView v = make_view(DType::Q4_0, {rows, k}, wb);
        matmul(ref, v, x.data(), n, y0.data());
        v.packed = packed.data();
        matmul(*kt, v, x.data(), n, y1.data());
        if (kt->matmul_q4_0_x16) CHECK(y1 == y0);
      }
    }
  }
}

TEST_CASE("ops: fp16 and bf16 rows widen exactly at every level") {
  std::vector<uint16_t> all(65536);
  for (size_t i = 0; i < all.size(); ++i) all[i] = uint16_t(i);
  std::vector<float> a(all.size()), b(all.size());
  for (const KernelTable* kt : levels()) {
    for (int which = 0; which < 2; ++which) {
      auto f = which ? kt->bf16_to_f32 : kt->f16_to_f32;
      auto g = which ? scalar::bf16_to_f32_row : scalar::f16_to_f32_row;
      g(all.data() + 3, a.data(), int64_t(all.size()) - 3);  // odd length, unaligned
      f(all.data() + 3, b.data(), int64_t(all.size()) - 3);
      int bad = 0;
      for (size_t i = 0; i + 3 < all.size(); ++i)
        bad += std::isnan(a[i]) ? !std::isnan(b[i]) : f32_bits(a[i]) != f32_bits(b[i]);
      INFO(std::string(kt->name) << (which ? " bf16" : " f16"));
      CHECK(bad == 0);
    }
  }
}

TEST_CASE("ops: bf16 products (Precision::Bf16) stay within 2^-7 of Σ|x·w| of the exact product, every shape; F32 where the CPU lacks them") {
  // Each product rounds x and w to 8-bit mantissas (2^-9 each) and sums in f32, so
  // |y − exact| ≤ (2^-8 + f32 sums) · Σ|x·w|; a misplaced pair or row is off by O(|y|).
  ThreadPool p2(2);
  const bool native = kernels().gemm_bf16 != nullptr;
  MESSAGE((native ? "this CPU multiplies bf16 pairs (AVX512-BF16)" : "no AVX512-BF16 here: Bf16 must equal F32 exactly"));
  for (DType t : {DType::F32, DType::F16, DType::BF16})
    for (int64_t in : {64, 37, 588, 1024})
      for (int64_t n : {8, 17, 33, 70}) {
        const int64_t out = in == 1024 ? 100 : 13;
        std::vector<float> wf = random_floats(size_t(out * in), uint32_t(in + n), 0.05f), x = random_floats(size_t(n * in), uint32_t(in * n));
        Tensor w = convert(make_view(DType::F32, {out, in}, wf.data()), t);
        Tensor wd = to_f32(w.view());
        std::vector<float> yb(size_t(n * out)), yf(yb.size());
        matmul(w.view(), x.data(), n, yb.data(), &p2, Precision::Bf16);
        matmul(w.view(), x.data(), n, yf.data(), &p2, Precision::F32);
        INFO(dtype_name(t) << " in=" << in << " n=" << n);
        if (!native) {
          CHECK(std::memcmp(yb.data(), yf.data(), yb.size() * 4) == 0);
          continue;
        }
        double worst = 0;
        bool differs = false;
        for (int64_t i = 0; i < n; ++i)
          for (int64_t r = 0; r < out; ++r) {
            double e = 0, mag = 0;
            for (int64_t c = 0; c < in; ++c) {
              const double pr = double(wd.f32()[r * in + c]) * x[size_t(i * in + c)];
              e += pr, mag += std::fabs(pr);
            }
            const float got = yb[size_t(i * out + r)];
            worst = std::max(worst, std::fabs(e - got) / mag);
            differs |= got != yf[size_t(i * out + r)];
          }
        CHECK(worst <= 1.0 / 128);
        CHECK(differs);  // the bf16 kernel ran (its roundings show)
      }
}

TEST_CASE("ops: matmul is independent of the thread count, for every weight type") {
  ThreadPool p2(2), p3(3);
  for (auto tc : {std::pair<DType, int64_t>{DType::F32, 256}, {DType::F32, 101}, {DType::F16, 256}, {DType::F16, 37},
                  {DType::BF16, 256}, {DType::Q8_0, 256}, {DType::Q4_0, 256}}) {
    const DType t = tc.first;
    const int64_t in = tc.second;
    const int64_t out = 200;
    std::vector<float> wf = random_floats(size_t(out * in), 5, 0.05f);
    Tensor w = convert(make_view(DType::F32, {out, in}, wf.data()), t);
    for (int64_t n : {1, 7, 8, 17, 45}) {
      std::vector<float> x = random_floats(size_t(n * in), 6);
      std::vector<float> y0(size_t(n * out)), y2(y0.size()), y3(y0.size());
      matmul(w.view(), x.data(), n, y0.data(), nullptr);
      matmul(w.view(), x.data(), n, y2.data(), &p2);
      matmul(w.view(), x.data(), n, y3.data(), &p3);
      INFO(dtype_name(t) << " in=" << in << " n=" << n);
      CHECK(std::memcmp(y0.data(), y2.data(), y0.size() * 4) == 0);
      CHECK(std::memcmp(y0.data(), y3.data(), y0.size() * 4) == 0);
      // And close to the f32 product of the dequantised weights.
      Tensor wd = to_f32(w.view());
      double err = 0, mag = 0;
      for (int64_t i = 0; i < n; ++i)
        for (int64_t r = 0; r < out; ++r) {
          double e = 0;
          for (int64_t c = 0; c < in; ++c) e += double(wd.f32()[r * in + c]) * x[size_t(i * in + c)];
          err = std::max(err, std::fabs(e - y0[size_t(i * out + r)]));
          mag = std::max(mag, std::fabs(e));
        }
      CHECK(err <= (is_quantized(t) ? 0.02 : 1e-5) * mag);  // Q8_0 activations: ~1/127 relative
    }
  }
}

TEST_CASE("ops: f32 vector kernels (dot, axpy, exp, silu, quick_gelu, f16 rows) match the scalar reference") {
  for (const KernelTable* kt : levels()) {
    INFO(std::string(kt->name));
    for (int64_t n : {1, 7, 16, 33, 128, 1000}) {
      std::vector<float> x = random_floats(size_t(n), uint32_t(n)), y = random_floats(size_t(n), uint32_t(n + 1));
      std::vector<uint16_t> yh(static_cast<size_t>(n));
      scalar::f32_to_f16_row(y.data(), yh.data(), n);
      std::vector<uint16_t> yh2(static_cast<size_t>(n));
      kt->f32_to_f16(y.data(), yh2.data(), n);
      CHECK(yh == yh2);  // round to nearest even, as f32_to_fp16
      double mag = 0;
      for (int64_t i = 0; i < n; ++i) mag += std::fabs(double(x[size_t(i)]) * y[size_t(i)]);
      CHECK(std::fabs(kt->dot_f32(x.data(), y.data(), n) - scalar::dot_f32(x.data(), y.data(), n)) <= 1e-6 * mag + 1e-30);
      CHECK(std::fabs(kt->dot_f16(x.data(), yh.data(), n) - scalar::dot_f16(x.data(), yh.data(), n)) <= 1e-6 * mag + 1e-30);
      std::vector<float> a = y, b = y;
      scalar::axpy_f32(0.37f, x.data(), a.data(), n), kt->axpy_f32(0.37f, x.data(), b.data(), n);
      for (int64_t i = 0; i < n; ++i) CHECK(std::fabs(a[size_t(i)] - b[size_t(i)]) <= 1e-6f * (std::fabs(a[size_t(i)]) + 1.0f));
      a = y, b = y;
      scalar::axpy_f16(-1.5f, yh.data(), a.data(), n), kt->axpy_f16(-1.5f, yh.data(), b.data(), n);
      for (int64_t i = 0; i < n; ++i) CHECK(std::fabs(a[size_t(i)] - b[size_t(i)]) <= 1e-6f * (std::fabs(a[size_t(i)]) + 1.0f));
      // exp over a wide range: within 4 ulps (relative 5e-7) of std::exp.
      std::vector<float> e(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) e[size_t(i)] = -80.0f + 160.0f * float(i) / float(n);
      a = e, b = e;
      const float sa = scalar::exp_sum(a.data(), n, 3.0f), sb = kt->exp_sum(b.data(), n, 3.0f);
      for (int64_t i = 0; i < n; ++i) CHECK(std::fabs(a[size_t(i)] - b[size_t(i)]) <= 5e-7f * a[size_t(i)] + 1e-37f);
      CHECK(std::fabs(sa - sb) <= 1e-6f * sa);
      a = x, b = x;
      scalar::silu_mul(a.data(), y.data(), n), kt->silu_mul(b.data(), y.data(), n);
      for (int64_t i = 0; i < n; ++i) CHECK(std::fabs(a[size_t(i)] - b[size_t(i)]) <= 1e-6f * std::fabs(a[size_t(i)]) + 1e-30f);
      a = x, b = x;
      scalar::quick_gelu(a.data(), n), kt->quick_gelu(b.data(), n);
      for (int64_t i = 0; i < n; ++i) CHECK(std::fabs(a[size_t(i)] - b[size_t(i)]) <= 1e-6f * std::fabs(a[size_t(i)]) + 1e-30f);
    }
  }
}

TEST_CASE("ops: the SIMD levels share one exp: the same clamp below −87.3 and the same bf16/f16 rows, tails included") {
  // One implementation (kernels/vec_f32.inl) over per-ISA traits: before it, AVX-512
  // clamped exp at −104 and the others at −87.3.
  std::vector<float> lows = {-87.0f, -87.3365402f, -88.0f, -100.0f, -104.0f, -1e30f};
  const float floor_exp = std::exp(-87.3365402f);  // the clamp: FLT_MIN, about 1.18e-38
  for (const KernelTable* kt : levels()) {
    if (kt == &scalar_kernels()) continue;  // the reference is std::exp, not clamped
    INFO(std::string(kt->name));
    std::vector<float> e = lows;
    kt->exp_sum(e.data(), int64_t(e.size()), 0.0f);
    CHECK(e[0] == doctest::Approx(std::exp(-87.0f)).epsilon(1e-6));
    for (size_t i = 1; i < e.size(); ++i) CHECK(e[i] == doctest::Approx(floor_exp).epsilon(1e-6));
    for (int64_t n : {1, 5, 17, 40}) {  // full vectors and every tail shape
      std::vector<uint16_t> h(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) {  // across exponents, both signs; no NaN (hardware quiets signalling ones)
        h[size_t(i)] = uint16_t(0x3c00 + 977 * i);
        if ((h[size_t(i)] & 0x7c00) == 0x7c00) h[size_t(i)] ^= 0x4000;
      }
      std::vector<float> a(static_cast<size_t>(n)), b(static_cast<size_t>(n));
      scalar::bf16_to_f32_row(h.data(), a.data(), n), kt->bf16_to_f32(h.data(), b.data(), n);
      CHECK(std::memcmp(a.data(), b.data(), size_t(n) * 4) == 0);
      scalar::f16_to_f32_row(h.data(), a.data(), n), kt->f16_to_f32(h.data(), b.data(), n);
      CHECK(std::memcmp(a.data(), b.data(), size_t(n) * 4) == 0);
    }
  }
}

namespace {
// Attention in double, straight from the definition.
std::vector<double> attention_ref(const AttentionShape& a, const std::vector<float>& q, const std::vector<float>& k,
                                  const std::vector<float>& v) {
  std::vector<double> out(size_t(a.n * a.out_stride), 0.0);
  const int64_t group = a.n_heads / a.n_kv_heads;
  for (int64_t i = 0; i < a.n; ++i)
    for (int64_t h = 0; h < a.n_heads; ++h) {
      const int64_t off = (h / group) * a.hd, len = a.causal ? a.m - a.n + i + 1 : a.m;
      std::vector<double> s(static_cast<size_t>(len));
      double mx = -1e300, sum = 0;
      for (int64_t p = 0; p < len; ++p) {
        double d = 0;
        for (int64_t c = 0; c < a.hd; ++c) d += double(q[size_t(i * a.q_stride + h * a.hd + c)]) * k[size_t(p * a.kv_stride + off + c)];
        s[size_t(p)] = d / std::sqrt(double(a.hd));
        mx = std::max(mx, s[size_t(p)]);
      }
      for (double& x : s) sum += (x = std::exp(x - mx));
      for (int64_t p = 0; p < len; ++p)
        for (int64_t c = 0; c < a.hd; ++c)
          out[size_t(i * a.out_stride + h * a.hd + c)] += s[size_t(p)] / sum * v[size_t(p * a.kv_stride + off + c)];
    }
  return out;
}
}  // namespace

TEST_CASE("ops: multi-head attention (decode and blocked paths, causal or not, GQA, f32/f16 cache)") {
  ThreadPool pool(3);
  for (const KernelTable* kt : levels()) {
    for (auto c : {std::tuple<int64_t, int64_t, bool>{1, 1, true}, {1, 37, true}, {3, 40, true}, {45, 45, true},
                   {70, 100, true}, {50, 50, false}}) {
      const int64_t n = std::get<0>(c), m = std::get<1>(c);
      const bool causal = std::get<2>(c);
      for (DType kv_type : {DType::F32, DType::F16}) {
        AttentionShape a;
        a.n = n, a.m = m, a.n_heads = 6, a.n_kv_heads = 2, a.hd = 24, a.causal = causal;
        a.q_stride = a.out_stride = a.n_heads * a.hd + 5, a.kv_stride = a.n_kv_heads * a.hd + 3;  // padded rows
        std::vector<float> q = random_floats(size_t(n * a.q_stride), 1, 0.5f), k = random_floats(size_t(m * a.kv_stride), 2),
                           v = random_floats(size_t(m * a.kv_stride), 3);
        std::vector<uint16_t> kh(k.size()), vh(v.size());
        scalar::f32_to_f16_row(k.data(), kh.data(), int64_t(k.size()));
        scalar::f32_to_f16_row(v.data(), vh.data(), int64_t(v.size()));
        if (kv_type == DType::F16) {  // the reference sees the rounded values
          scalar::f16_to_f32_row(kh.data(), k.data(), int64_t(k.size()));
          scalar::f16_to_f32_row(vh.data(), v.data(), int64_t(v.size()));
        }
        const void* K = kv_type == DType::F16 ? static_cast<const void*>(kh.data()) : k.data();
        const void* V = kv_type == DType::F16 ? static_cast<const void*>(vh.data()) : v.data();
        std::vector<double> ref = attention_ref(a, q, k, v);
        std::vector<float> o1(size_t(n * a.out_stride), 7.0f), o3(o1);
        multi_head_attention(*kt, a, q.data(), K, V, kv_type, o1.data(), nullptr);
        multi_head_attention(*kt, a, q.data(), K, V, kv_type, o3.data(), &pool);
        INFO(std::string(kt->name) << " n=" << n << " m=" << m << " causal=" << causal << " " << dtype_name(kv_type));
        CHECK(o1 == o3);  // thread-count independent
        double err = 0;
        for (int64_t i = 0; i < n; ++i)
          for (int64_t c = 0; c < a.n_heads * a.hd; ++c) err = std::max(err, std::fabs(o1[size_t(i * a.out_stride + c)] - ref[size_t(i * a.out_stride + c)]));
        CHECK(err < 2e-5);  // values ~1: a few f32 ulps
        CHECK(o1[size_t(a.n_heads * a.hd)] == 7.0f);  // row padding untouched
      }
    }
  }
}
