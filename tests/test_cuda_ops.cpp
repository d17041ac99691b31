// The CUDA backend's ops against the CPU backend (the scalar/SIMD code of
// ops.hpp) on random inputs, ragged shapes and every weight type. Output
// buffers are poisoned with NaN bits (0xFF bytes) first, so an element a kernel
// forgets to write fails the comparison. Data moves through the backend's own
// upload/download.
//
// Without a usable GPU (no driver, no device, built without LOUPE_CUDA) the
// binary prints "SKIP: <why>" and exits with 77, ctest's SKIP_RETURN_CODE.
//
// Tolerances, relative to max |ref| (of the whole output unless said):
//  - f32-accumulating ops (norms, elementwise, rope, attention with F32 or F16
//    keys/values, the GEMV path n ≤ 8): 1e-4. Both sides compute in f32 from
//    the same values (F16 caches and quantised weights widen exactly); only
//    the summation order and libm's expf/erff differ, ~1e-6.
//  - the tensor-core GEMM path (n > 8): 3e-3 of the row's max |ref|. x and W
//    are rounded to fp16 (unit roundoff u = 2^-11 ≈ 4.9e-4) and multiplied
//    exactly into f32 sums, so y_io is off by Σ_k x_k·w_k·(δ_k + ε_k), |δ|,|ε| ≤ u,
//    random in sign: about u·sqrt(2/3·Σ_k (x_k·w_k)²) ≈ 0.8·u·|typical y| for
//    any K (K = 32 … 4096 here), i.e. ~1e-4 of a row whose max is 3-4× typical;
//    3e-3 leaves ~3× room over the worst seen when this rounding is emulated
//    on the CPU (1.0e-3, in the one-element rows). A row of one element (out = 1) has a "max" that
//    may be near 0 by chance, so each element's scale is floored at its own
//    sqrt(Σ_k (x_k·w_k)²) (the rms of its terms, which the error scales with):
//    there the worst of 577 rows is ≈3.3σ ≈ 1.3e-3.
//  - store_rows: bit-identical (f16 rounding is to nearest even on both sides).
// The CPU backend quantises x to Q8_0 for Q4_0/Q8_0 weights (as llama.cpp),
// the GPU does not; so the reference for every weight type is the CPU's f32
// product with the weights dequantised (exact). The CPU's own quantised
// product is checked too, as a sanity check that both read the blocks alike (a
// misread nibble or scale is off by O(1)): within 5e-2, its x-quantisation
// error (≈1/254 of each block's max per element; up to 1.5e-2 seen here).
#include <doctest/doctest.h>

#include <loupe/ops/backend.hpp>
#include <loupe/ops/ops.hpp>

#include "cuda_util.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>

using namespace loupe;
using loupe_test::gpu;

namespace {

ThreadPool& pool() {  // for the CPU references
  static ThreadPool p(int(std::max(1u, std::min(16u, std::thread::hardware_concurrency()))));
  return p;
}

constexpr double kF32Tol = 1e-4;
constexpr double kGemmTol = 3e-3;
constexpr double kQ8xTol = 5e-2;

std::vector<float> random_floats(size_t n, uint32_t seed, float scale = 1.0f, float mean = 0.0f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(mean, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(g);
  return v;
}

// Device memory of the GPU backend, poisoned with 0xFF bytes (NaN as f32 and
// f16) unless filled from a host vector.
class DevBuf {
 public:
  explicit DevBuf(size_t bytes) : bytes_(bytes), p_(gpu().alloc(bytes)) {
    const std::vector<uint8_t> ff(bytes, 0xff);
    gpu().upload(p_, ff.data(), bytes);
  }
  template <class T>
  explicit DevBuf(const std::vector<T>& host) : bytes_(host.size() * sizeof(T)), p_(gpu().alloc(bytes_)) {
    gpu().upload(p_, host.data(), bytes_);
  }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  ~DevBuf() { gpu().release(p_); }

  float* f() const { return static_cast<float*>(p_); }
  void* get() const { return p_; }
  template <class T = float>
  std::vector<T> download() const {
    std::vector<T> h(bytes_ / sizeof(T));
    gpu().download(h.data(), p_, bytes_);
    return h;
  }

 private:
  size_t bytes_;
  void* p_;
};

std::vector<float> nan_floats(size_t n) { return std::vector<float>(n, std::numeric_limits<float>::quiet_NaN()); }

// max |got − ref| / max |ref|; infinite where got has a non-finite value that
// ref does not (an unwritten, poisoned element).
double rel_err(const std::vector<float>& got, const std::vector<float>& ref) {
  if (got.size() != ref.size()) return std::numeric_limits<double>::infinity();
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i]) && std::isfinite(ref[i])) return std::numeric_limits<double>::infinity();
    num = std::max(num, double(std::fabs(got[i] - ref[i])));
    den = std::max(den, double(std::fabs(ref[i])));
  }
  return den > 0 ? num / den : num;
}

// The same per row of `cols`, each element's scale being the larger of its
// row's max |ref| and terms[i] = sqrt(Σ_k (x_k·w_k)²) (see the header); the
// worst element's value.
double row_rel_err(const std::vector<float>& got, const std::vector<float>& ref, const std::vector<float>& terms, size_t cols) {
  if (got.size() != ref.size() || terms.size() != ref.size()) return std::numeric_limits<double>::infinity();
  double worst = 0;
  for (size_t r0 = 0; r0 < got.size(); r0 += cols) {
    double row_max = 0;
    for (size_t i = r0; i < r0 + cols; ++i) row_max = std::max(row_max, double(std::fabs(ref[i])));
    for (size_t i = r0; i < r0 + cols; ++i) {
      if (!std::isfinite(got[i])) return std::numeric_limits<double>::infinity();
      const double scale = std::max(row_max, double(terms[i]));
      if (scale > 0) worst = std::max(worst, std::fabs(double(got[i]) - ref[i]) / scale);
    }
  }
  return worst;
}

void expect_close(const std::vector<float>& got, const std::vector<float>& ref, double tol, const std::string& what) {
  const double err = rel_err(got, ref);
  INFO(what << ": relative error " << err << " (tolerance " << tol << ")");
  CHECK(err <= tol);
}

// A float vector as an F32 weight view (norm weights, biases).
TensorView f32_view(const std::vector<float>& v) { return make_view(DType::F32, {int64_t(v.size())}, v.data()); }

// ------------------------------------------------------------------ matmul

// y = x·Wᵀ on the GPU (poisoned y) and the references; checks both.
void check_matmul(const TensorView& w, int64_t n, uint32_t seed, const std::string& what) {
  const int64_t out = w.rows(), in = w.cols();
  const std::vector<float> x = random_floats(size_t(n * in), seed);
  DevBuf dx(x), dy(size_t(n * out) * 4);
  gpu().matmul(w, dx.f(), n, dy.f(), nullptr);
  const std::vector<float> got = dy.download();

  const Tensor wf = to_f32(w);  // exact dequantisation / widening
  std::vector<float> ref(size_t(n * out));
  cpu_backend().matmul(wf.view(), x.data(), n, ref.data(), &pool());
  const std::string ctx = what + " " + dtype_name(w.dtype) + " out=" + std::to_string(out) + " in=" + std::to_string(in) +
                          " n=" + std::to_string(n);
  if (n <= 8) {
    expect_close(got, ref, kF32Tol, ctx + " (GEMV)");
  } else {
    // terms = sqrt((x²)·(W²)ᵀ): the rms scale of each dot product's terms.
    std::vector<float> x2 = x, terms(ref.size());
    Tensor w2 = to_f32(w);
    for (float& v : x2) v *= v;
    for (int64_t i = 0; i < w2.numel(); ++i) w2.f32()[i] *= w2.f32()[i];
    cpu_backend().matmul(w2.view(), x2.data(), n, terms.data(), &pool());
    for (float& v : terms) v = std::sqrt(std::max(v, 0.0f));
    const double err = row_rel_err(got, ref, terms, size_t(out));
    INFO(ctx << " (tensor-core GEMM): worst row's relative error " << err << " (tolerance " << kGemmTol << ")");
    CHECK(err <= kGemmTol);
  }
  if (is_quantized(w.dtype)) {
    std::vector<float> refq(size_t(n * out));
    cpu_backend().matmul(w, x.data(), n, refq.data(), &pool());
    expect_close(got, refq, kQ8xTol, ctx + " vs the CPU's Q8_0-activation product");
  }
}

std::vector<int64_t> row_lengths(DType t) {
  std::vector<int64_t> v{32, 64, 4096};
  if (!is_quantized(t)) v.insert(v.end(), {40, 1027});
  return v;
}

// ------------------------------------------------------------------ attention

struct AttnCase {
  int64_t n, m, heads, kv_heads, hd;
  bool causal;
};

// Padded strides everywhere; the output's padding must stay poisoned.
void check_attention(const AttnCase& c, DType kv, uint32_t seed) {
  AttentionShape a;
  a.n = c.n, a.m = c.m, a.n_heads = c.heads, a.n_kv_heads = c.kv_heads, a.hd = c.hd, a.causal = c.causal;
  a.q_stride = c.heads * c.hd + 5;
  a.kv_stride = c.kv_heads * c.hd + 8;
  a.out_stride = c.heads * c.hd + 3;
  const std::vector<float> q = random_floats(size_t(a.n * a.q_stride), seed);
  std::vector<float> kf = random_floats(size_t(a.m * a.kv_stride), seed + 1), vf = random_floats(size_t(a.m * a.kv_stride), seed + 2);
  std::vector<uint16_t> kh, vh;
  if (kv == DType::F16) {
    kh.resize(kf.size()), vh.resize(vf.size());
    for (size_t i = 0; i < kf.size(); ++i) kh[i] = f32_to_fp16(kf[i]), vh[i] = f32_to_fp16(vf[i]);
  }
  const void* hk = kv == DType::F16 ? static_cast<const void*>(kh.data()) : kf.data();
  const void* hv = kv == DType::F16 ? static_cast<const void*>(vh.data()) : vf.data();
  std::vector<float> ref = nan_floats(size_t(a.n * a.out_stride));
  cpu_backend().attention(a, q.data(), hk, hv, kv, ref.data(), &pool());

  const size_t kv_bytes = kf.size() * (kv == DType::F16 ? 2 : 4);
  DevBuf dq(q), dk(kv_bytes), dv(kv_bytes), dout(ref.size() * 4);
  gpu().upload(dk.get(), hk, kv_bytes);
  gpu().upload(dv.get(), hv, kv_bytes);
  gpu().attention(a, dq.f(), dk.get(), dv.get(), kv, dout.f(), nullptr);
  const std::vector<float> got_all = dout.download();

  // The heads' values compared; the padding after them must be untouched.
  std::vector<float> got, want;
  bool padding_kept = true;
  for (int64_t i = 0; i < a.n; ++i)
    for (int64_t j = 0; j < a.out_stride; ++j) {
      const size_t at = size_t(i * a.out_stride + j);
      if (j < a.n_heads * a.hd) got.push_back(got_all[at]), want.push_back(ref[at]);
      else padding_kept &= std::isnan(got_all[at]);
    }
  const std::string ctx = std::string("attention ") + dtype_name(kv) + " n=" + std::to_string(c.n) + " m=" + std::to_string(c.m) +
                          " heads=" + std::to_string(c.heads) + "/" + std::to_string(c.kv_heads) + " hd=" + std::to_string(c.hd) +
                          (c.causal ? " causal" : " full");
  expect_close(got, want, kF32Tol, ctx);
  INFO(ctx);
  CHECK(padding_kept);
}

}  // namespace

TEST_CASE("cuda: the device, and memory round trips") {
  Backend& be = gpu();
  MESSAGE("device: " << be.describe());
  CHECK(be.describe().rfind("CUDA: ", 0) == 0);
  CHECK_FALSE(be.host_memory());
  CHECK(be.alloc(0) == nullptr);
  const std::vector<float> h = random_floats(100003, 1);
  DevBuf a(h), b(h.size() * 4);
  be.copy(b.get(), a.get(), h.size() * 4);
  const std::vector<float> back = b.download();
  CHECK(std::memcmp(back.data(), h.data(), h.size() * 4) == 0);
}

TEST_CASE("cuda: matmul, every weight type, GEMV (n <= 8) and tensor-core GEMM (n > 8) paths, ragged shapes") {
  gpu();
  uint32_t seed = 100;
  for (int64_t out : {1, 33, 100, 4096})
    for (int64_t in : {32, 64, 4096, 40, 1027}) {
      const std::vector<float> wf = random_floats(size_t(out * in), ++seed, 0.05f);
      for (DType t : {DType::Q4_0, DType::Q8_0, DType::F16, DType::BF16, DType::F32}) {
        const std::vector<int64_t> ins = row_lengths(t);
        if (std::find(ins.begin(), ins.end(), in) == ins.end()) continue;
        const Tensor w = convert(make_view(DType::F32, {out, in}, wf.data()), t);
        for (int64_t n : {1, 3, 8, 9, 77, 577}) check_matmul(w.view(), n, ++seed, "contiguous");
      }
    }
}

TEST_CASE("cuda: matmul with strided weight rows, and a weight replaced at the same address") {
  gpu();
  const int64_t out = 100, in = 256, pad = 64;
  for (DType t : {DType::Q4_0, DType::Q8_0, DType::F16, DType::BF16, DType::F32}) {
    // Rows of `in` inside rows of `in + pad`: uploaded row by row, packed.
    const std::vector<float> wf = random_floats(size_t(out * (in + pad)), 7, 0.05f);
    const Tensor wide = convert(make_view(DType::F32, {out, in + pad}, wf.data()), t);
    TensorView v = make_view(t, {out, in}, wide.bytes.data());
    v.stride[0] = row_bytes(t, in + pad);
    for (int64_t n : {1, 9}) check_matmul(v, n, 8, "strided");

    // New contents at the same address (a freed adapter's memory reused): the
    // cached copy must not be served.
    Tensor w = convert(make_view(DType::F32, {out, in}, wf.data()), t);
    check_matmul(w.view(), 3, 9, "before replacement");
    const std::vector<float> wf2 = random_floats(size_t(out * in), 10, 0.05f);
    const Tensor w2 = convert(make_view(DType::F32, {out, in}, wf2.data()), t);
    std::memcpy(w.bytes.data(), w2.bytes.data(), w.bytes.size());
    for (int64_t n : {3, 20}) check_matmul(w.view(), n, 11, "after replacement");
  }
}

TEST_CASE("cuda: matmul and attention reject what they cannot compute") {
  Backend& be = gpu();
  DevBuf x(64 * 4 * 40), y(64 * 4 * 40);
  std::vector<uint8_t> bytes(4096);
  const TensorView q4k = make_view(DType::Q4_K, {2, 256}, bytes.data());
  CHECK_THROWS_AS(be.matmul(q4k, x.f(), 1, y.f(), nullptr), Error);
  TensorView q40 = make_view(DType::Q4_0, {2, 32}, bytes.data());
  q40.shape[1] = 40;  // a row that is not whole blocks
  CHECK_THROWS_AS(be.matmul(q40, x.f(), 1, y.f(), nullptr), Error);
  AttentionShape a;
  a.n = 1, a.m = 1, a.n_heads = 1, a.n_kv_heads = 1, a.hd = 257, a.q_stride = a.kv_stride = a.out_stride = 257;
  CHECK_THROWS_AS(be.attention(a, x.f(), x.get(), x.get(), DType::F32, y.f(), nullptr), Error);
  a.hd = 16;
  CHECK_THROWS_AS(be.attention(a, x.f(), x.get(), x.get(), DType::BF16, y.f(), nullptr), Error);
  CHECK_THROWS_AS(be.store_rows(x.f(), 1, 4, y.get(), DType::BF16, 4), Error);
}

TEST_CASE("cuda: add_bias, rmsnorm, layernorm") {
  gpu();
  uint32_t seed = 200;
  for (int64_t n : {1, 3, 77})
    for (int64_t d : {33, 1024, 4096}) {
      const std::string ctx = " n=" + std::to_string(n) + " d=" + std::to_string(d);
      const std::vector<float> x = random_floats(size_t(n * d), ++seed, 2.0f, 0.5f);
      const std::vector<float> w = random_floats(size_t(d), ++seed, 0.3f, 1.0f), b = random_floats(size_t(d), ++seed);
      DevBuf dx(x);
      {
        std::vector<float> ref = x;
        cpu_backend().add_bias(f32_view(b), ref.data(), n, d);
        DevBuf dy(x);
        gpu().add_bias(f32_view(b), dy.f(), n, d);
        expect_close(dy.download(), ref, kF32Tol, "add_bias" + ctx);
      }
      for (float eps : {1e-5f, 1e-6f}) {
        std::vector<float> ref(x.size());
        cpu_backend().rmsnorm(x.data(), f32_view(w), n, d, eps, ref.data());
        DevBuf dy(x.size() * 4);
        gpu().rmsnorm(dx.f(), f32_view(w), n, d, eps, dy.f());
        expect_close(dy.download(), ref, kF32Tol, "rmsnorm" + ctx);
      }
      for (bool bias : {true, false}) {
        // Rows with a large mean: the two-pass variance must not cancel.
        const std::vector<float> xm = random_floats(size_t(n * d), ++seed, 1.0f, 30.0f);
        const TensorView bv = bias ? f32_view(b) : TensorView{};
        std::vector<float> ref(xm.size());
        cpu_backend().layernorm(xm.data(), f32_view(w), bv, n, d, 1e-5f, ref.data());
        DevBuf dxm(xm), dy(xm.size() * 4);
        gpu().layernorm(dxm.f(), f32_view(w), bv, n, d, 1e-5f, dy.f());
        expect_close(dy.download(), ref, kF32Tol, std::string("layernorm") + (bias ? "" : " (no bias)") + ctx);
      }
    }
}

TEST_CASE("cuda: axpy, silu_mul, gelu (erf), quick_gelu") {
  gpu();
  uint32_t seed = 300;
  // 5 000 001: more than one element per thread of the capped grid.
  for (int64_t n : {1, 1000, 5000001}) {
    const std::string ctx = " n=" + std::to_string(n);
    const std::vector<float> x = random_floats(size_t(n), ++seed, 3.0f), y = random_floats(size_t(n), ++seed, 3.0f);
    DevBuf dx(x);
    for (float a : {1.0f, -0.37f}) {
      std::vector<float> ref = y;
      cpu_backend().axpy(a, x.data(), ref.data(), n);
      DevBuf dy(y);
      gpu().axpy(a, dx.f(), dy.f(), n);
      expect_close(dy.download(), ref, kF32Tol, "axpy a=" + std::to_string(a) + ctx);
    }
    {
      std::vector<float> ref = x;
      cpu_backend().silu_mul(ref.data(), y.data(), n);
      DevBuf dg(x), du(y);
      gpu().silu_mul(dg.f(), du.f(), n);
      expect_close(dg.download(), ref, kF32Tol, "silu_mul" + ctx);
    }
    for (Activation act : {Activation::GeluErf, Activation::QuickGelu}) {
      std::vector<float> ref = x;
      cpu_backend().activation(act, ref.data(), n);
      DevBuf dg(x);
      gpu().activation(act, dg.f(), n);
      expect_close(dg.download(), ref, kF32Tol, std::string(act == Activation::GeluErf ? "gelu_erf" : "quick_gelu") + ctx);
    }
  }
}

TEST_CASE("cuda: rope (adjacent and half-split pairs) on strided rows") {
  gpu();
  uint32_t seed = 400;
  for (int64_t d : {64, 128})
    for (int64_t rows : {1, 5, 77})
      for (int64_t heads : {4, 32}) {
        const int64_t stride = heads * d + 16;  // the padding must come back unchanged
        const RopeCache rc(d, 10000.0f);
        std::vector<float> cs(size_t(rows * d));
        for (int64_t i = 0; i < rows; ++i) rc.angles(1000 + 37 * i, cs.data() + i * d);
        const std::vector<float> x = random_floats(size_t(rows * stride), ++seed);
        DevBuf dcs(cs);
        for (RopeStyle style : {RopeStyle::Adjacent, RopeStyle::HalfSplit}) {
          std::vector<float> ref = x;
          cpu_backend().rope(ref.data(), rows, heads, stride, d, cs.data(), style);
          DevBuf dx(x);
          gpu().rope(dx.f(), rows, heads, stride, d, dcs.f(), style);
          expect_close(dx.download(), ref, kF32Tol,
                       std::string("rope ") + (style == RopeStyle::Adjacent ? "adjacent" : "half-split") + " d=" + std::to_string(d) +
                           " rows=" + std::to_string(rows) + " heads=" + std::to_string(heads));
        }
      }
}

TEST_CASE("cuda: store_rows into F32 and F16 caches, bit-identical, gaps untouched") {
  gpu();
  uint32_t seed = 500;
  for (DType t : {DType::F32, DType::F16})
    for (int64_t rows : {1, 7, 300})
      for (int64_t width : {33, 1024}) {
        const int64_t dst_stride = width + 5;
        const size_t es = t == DType::F16 ? 2 : 4, bytes = size_t(rows * dst_stride) * es;
        const std::vector<float> x = random_floats(size_t(rows * width), ++seed, 10.0f);
        std::vector<uint8_t> ref(bytes, 0xff);
        cpu_backend().store_rows(x.data(), rows, width, ref.data(), t, dst_stride);
        DevBuf dx(x), dst(bytes);
        gpu().store_rows(dx.f(), rows, width, dst.get(), t, dst_stride);
        const std::vector<uint8_t> got = dst.download<uint8_t>();
        INFO("store_rows " << dtype_name(t) << " rows=" << rows << " width=" << width);
        CHECK(std::memcmp(got.data(), ref.data(), bytes) == 0);
      }
}

TEST_CASE("cuda: attention, decode (split-K) against the CPU, GQA and MHA, F16 and F32 caches") {
  gpu();
  uint32_t seed = 600;
  for (DType kv : {DType::F16, DType::F32})
    for (int64_t kvh : {8, 32})
      for (int64_t m : {1, 2, 63, 1023, 1024, 1025, 2500, 4100}) check_attention({1, m, 32, kvh, 128, true}, kv, seed += 3);
  // Other head sizes (80: not a multiple of 32; 256: the largest).
  for (DType kv : {DType::F16, DType::F32})
    for (int64_t hd : {64, 80, 256}) check_attention({1, 777, 8, 2, hd, true}, kv, seed += 3);
}

TEST_CASE("cuda: attention, prefill and vision shapes") {
  gpu();
  uint32_t seed = 700;
  for (DType kv : {DType::F16, DType::F32}) {
    check_attention({608, 608, 32, 8, 128, true}, kv, seed += 3);   // causal prefill, GQA
    check_attention({32, 608, 32, 32, 128, true}, kv, seed += 3);   // 32 new tokens after 576 cached
    check_attention({32, 608, 32, 8, 128, true}, kv, seed += 3);
    check_attention({4, 3000, 32, 8, 128, true}, kv, seed += 3);    // a few queries, many splits, ragged visibility
    check_attention({577, 577, 16, 16, 64, false}, kv, seed += 3);  // CLIP ViT-L/14-336: non-causal
  }
}
