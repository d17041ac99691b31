// Q8_0 / Q4_0 bytes against an independent numpy quantiser written from ggml's
// published algorithm (reference/quant_ref.py); fp16/bf16 conversions
// against numpy's float16 casts and exhaustive properties.
#include "test_util.hpp"

#include <loupe/ops/kernels.hpp>
#include <loupe/io/npy.hpp>
#include <loupe/ops/kernels/scalar.hpp>
#include <loupe/core/quant.hpp>

#include <cmath>

using namespace loupe;

TEST_CASE("quant: Q8_0 and Q4_0 bytes equal the numpy reference of ggml's algorithm") {
  auto dir = loupe_test::scratch("quant");
  const std::string x = (dir / "x.npy").string();
  loupe_test::run_python("quant_ref.py", "--gen-input " + x + " --rows 24 --cols 160 --seed 3");
  Tensor in = read_npy(x);
  REQUIRE(in.shape.size() == 2);
  const int64_t rows = in.shape[0], cols = in.shape[1];
  for (const char* type : {"q8_0", "q4_0"}) {
    const DType t = dtype_from_name(type);
    const std::string out = (dir / (std::string(type) + ".bin")).string();
    loupe_test::run_python("quant_ref.py", "--in " + x + " --type " + type + " --out " + out);
    const std::string want = loupe_test::slurp(out);
    Tensor q = convert(in.view(), t);
    REQUIRE(q.bytes.size() == want.size());
    size_t diff = 0;
    for (size_t i = 0; i < want.size(); ++i) diff += q.bytes[i] != uint8_t(want[i]);
    INFO(type << ": " << diff << " bytes differ");
    CHECK(diff == 0);

    // Dequantisation agrees with the reference's dequantiser exactly.
    const std::string deq = (dir / (std::string(type) + "_deq.npy")).string();
    loupe_test::run_python("quant_ref.py", "--dequant --in " + out + " --type " + type + " --cols " + std::to_string(cols) + " --out " + deq);
    Tensor ref = read_npy(deq);
    Tensor back = to_f32(q.view());
    REQUIRE(ref.numel() == rows * cols);
    CHECK(std::memcmp(ref.f32(), back.f32(), size_t(rows * cols) * 4) == 0);
  }
}

TEST_CASE("quant: fp16 and bf16 conversions round to nearest even (numpy reference)") {
  auto dir = loupe_test::scratch("halfs");
  const std::string py = R"(
import numpy as np, sys
np.seterr(all="ignore")
rng = np.random.default_rng(7)
bits = rng.integers(0, 2**32, size=200000, dtype=np.uint64).astype(np.uint32)
special = np.array([0, 0x80000000, 0x7f800000, 0xff800000, 0x477ff000, 0x477fefff, 0x477fe000, 0x33000000,
                    0x33000001, 0x387fe000, 0x38800000, 0x3f800000, 0x3f801000, 0x3f803000], dtype=np.uint32)
bits = np.concatenate([special, bits])
x = bits.view(np.float32)
x = x[np.isfinite(x)]
np.save(sys.argv[1] + '/x.npy', x)
np.save(sys.argv[1] + '/h.npy', x.astype(np.float16).view(np.uint16).astype(np.int32))
# bf16 round-to-nearest-even by integer arithmetic on the f32 bits
b = x.view(np.uint32).astype(np.uint64)
np.save(sys.argv[1] + '/all.npy', np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32))
np.save(sys.argv[1] + '/b.npy', (((b + 0x7fff + ((b >> 16) & 1)) >> 16) & 0xffff).astype(np.int32))
)";
  std::ofstream(dir / "gen.py") << py;
  REQUIRE(std::system(("/usr/bin/python3 " + (dir / "gen.py").string() + " " + dir.string()).c_str()) == 0);
  Tensor x = read_npy((dir / "x.npy").string()), h = read_npy((dir / "h.npy").string()), b = read_npy((dir / "b.npy").string());
  Tensor all = read_npy((dir / "all.npy").string());
  size_t bad_h = 0, bad_b = 0, bad_back = 0;
  for (uint32_t k = 0; k < 65536; ++k) {
    const float want = all.f32()[k], got = fp16_to_f32(uint16_t(k));
    bad_back += std::isnan(want) ? !std::isnan(got) : f32_bits(want) != f32_bits(got);
  }
  for (int64_t i = 0; i < x.numel(); ++i) {
    const float v = x.f32()[i];
    bad_h += f32_to_fp16(v) != uint16_t(h.f32()[i]);
    bad_b += f32_to_bf16(v) != uint16_t(b.f32()[i]);
  }
  CHECK(bad_h == 0);
  CHECK(bad_b == 0);
  CHECK(bad_back == 0);
}

// llama.cpp's own quantisers, straight from the libggml-base.so that npm's
// node-llama-cpp ships: the same bytes for the same floats.
#include <dlfcn.h>

#include <random>

TEST_CASE("quant: bytes equal ggml's own quantize_row_q{4,8}_0_ref and fp16/bf16 rows (libggml-base.so); block dots equal ggml_vec_dot_q{4,8}_0_q8_0_generic (libggml-cpu)") {
  namespace fs = std::filesystem;
  fs::path lib;
  const fs::path bins = loupe_test::source_dir() / "node_modules/@node-llama-cpp/linux-x64/bins";
  if (fs::exists(bins))
    for (auto& d : fs::directory_iterator(bins))
      if (fs::exists(d.path() / "libggml-base.so")) lib = d.path() / "libggml-base.so";
  REQUIRE_MESSAGE(!lib.empty(), "node_modules/@node-llama-cpp/linux-x64 is missing: run tools/setup.sh");
  void* h = dlopen(lib.c_str(), RTLD_NOW | RTLD_LOCAL);
  REQUIRE_MESSAGE(h, dlerror());
  using QuantFn = void (*)(const float*, void*, int64_t);
  using RowFn = void (*)(const float*, uint16_t*, int64_t);
  auto q4 = reinterpret_cast<QuantFn>(dlsym(h, "quantize_row_q4_0_ref"));
  auto q8 = reinterpret_cast<QuantFn>(dlsym(h, "quantize_row_q8_0_ref"));
  auto h16 = reinterpret_cast<RowFn>(dlsym(h, "ggml_fp32_to_fp16_row"));
  auto b16 = reinterpret_cast<RowFn>(dlsym(h, "ggml_fp32_to_bf16_row_ref"));
  REQUIRE((q4 && q8 && h16 && b16));

  std::mt19937 rng(42);
  std::normal_distribution<float> nd;
  std::uniform_int_distribution<int> pick(0, 5);
  const int64_t n = 32 * 4096;
  std::vector<float> x(static_cast<size_t>(n));
  for (int64_t b = 0; b < n / 32; ++b) {
    const int kind = pick(rng);  // mix of distributions, plus exact ties and zero blocks
    for (int j = 0; j < 32; ++j) {
      float v = nd(rng);
      if (kind == 1) v *= 1e-3f;
      if (kind == 2) v = float(int(v * 8)) / 8;  // values on the rounding grid
      if (kind == 3) v = j == 5 ? 2.0f : j == 9 ? -2.0f : v;  // ±max ties
      if (kind == 4) v = 0.0f;
      if (kind == 5) v *= 1e4f;
      x[size_t(b * 32 + j)] = v;
    }
  }
  std::vector<uint8_t> ours(size_t(n / 32) * 34), theirs(ours.size());
  quantize_row_q4_0(x.data(), reinterpret_cast<BlockQ4_0*>(ours.data()), n);
  q4(x.data(), theirs.data(), n);
  CHECK(std::memcmp(ours.data(), theirs.data(), size_t(n / 32) * 18) == 0);
  quantize_row_q8_0(x.data(), reinterpret_cast<BlockQ8_0*>(ours.data()), n);
  q8(x.data(), theirs.data(), n);
  CHECK(std::memcmp(ours.data(), theirs.data(), size_t(n / 32) * 34) == 0);
  std::vector<uint16_t> a(static_cast<size_t>(n)), b(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) a[size_t(i)] = f32_to_fp16(x[size_t(i)]);
  h16(x.data(), b.data(), n);
  CHECK(a == b);
  for (int64_t i = 0; i < n; ++i) a[size_t(i)] = f32_to_bf16(x[size_t(i)]);
  b16(x.data(), b.data(), n);
  CHECK(a == b);

  // Block dot products against ggml-cpu's portable ggml_vec_dot_q{4,8}_0_q8_0_generic
  // (the formula every SIMD kernel of ops.hpp is held to through kernels_scalar.hpp).
  void* hc = dlopen((lib.parent_path() / "libggml-cpu-x64.so").c_str(), RTLD_NOW | RTLD_LOCAL);
  REQUIRE_MESSAGE(hc, dlerror());
  using DotFn = void (*)(int, float*, size_t, const void*, size_t, const void*, size_t, int);
  auto d4 = reinterpret_cast<DotFn>(dlsym(hc, "ggml_vec_dot_q4_0_q8_0_generic"));
  auto d8 = reinterpret_cast<DotFn>(dlsym(hc, "ggml_vec_dot_q8_0_q8_0_generic"));
  auto cpu_init = reinterpret_cast<void (*)()>(dlsym(hc, "ggml_cpu_init"));  // fills its fp16 tables
  REQUIRE((d4 && d8 && cpu_init));
  cpu_init();
  std::vector<BlockQ4_0> w4(size_t(n / 32));
  std::vector<BlockQ8_0> w8(size_t(n / 32)), xq(size_t(n / 32));
  std::vector<float> w(x.rbegin(), x.rend());  // another vector of the same mix
  quantize_row_q4_0(w.data(), w4.data(), n);
  quantize_row_q8_0(w.data(), w8.data(), n);
  quantize_row_q8_0(x.data(), xq.data(), n);
  for (int64_t len : {int64_t(32), int64_t(160), int64_t(4096), n}) {
    float g4 = 0, g8 = 0;
    d4(int(len), &g4, 0, w4.data(), 0, xq.data(), 0, 1);
    d8(int(len), &g8, 0, w8.data(), 0, xq.data(), 0, 1);
    CHECK(scalar::dot_q4_0_q8_0(w4.data(), xq.data(), len / 32) == g4);
    CHECK(scalar::dot_q8_0_q8_0(w8.data(), xq.data(), len / 32) == g8);
  }
  dlclose(hc);
  dlclose(h);
}
