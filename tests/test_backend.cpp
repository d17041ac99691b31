// The backend seam (ops/backend.hpp) without a GPU: the models must hand a
// backend nothing but its own memory and weight views, and never touch its
// memory themselves, or a device backend (CUDA) would read host pointers on the
// GPU and the host would read device pointers. SeamChecker is a backend whose
// memory is pages it maps itself, poisoned with NaN and kept inaccessible
// (PROT_NONE) except while one of its own ops runs: a direct read or write by
// model code crashes the test. Every op checks that each pointer it is given
// lies in an allocation of its own, with the extent the op will touch, and then
// runs the CPU backend's arithmetic. So the results must equal the CPU's bit
// for bit; a leak is a recorded violation, a crash, or a NaN.
#include <loupe/convert/convert.hpp>
#include <loupe/pipeline/pipeline.hpp>

#include <sys/mman.h>
#include <unistd.h>

#include <cmath>
#include <limits>
#include <map>

#include "convert_util.hpp"
#include "demo_util.hpp"
#include "test_util.hpp"

using namespace loupe;
namespace fs = std::filesystem;

namespace {

class SeamChecker final : public Backend {
 public:
  std::vector<std::string> violations;
  std::map<std::string, int> calls;

  std::string describe() const override { return "seam checker"; }
  bool host_memory() const override { return false; }
  void* alloc(size_t bytes) override {
    if (!bytes) return nullptr;
    void* p = mmap(nullptr, pages(bytes), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    REQUIRE(p != MAP_FAILED);
    std::fill_n(static_cast<float*>(p), bytes / 4, std::numeric_limits<float>::quiet_NaN());  // as a GPU's memory: not zeroed
    mprotect(p, pages(bytes), PROT_NONE);
    blocks_[static_cast<const char*>(p)] = bytes;
    return p;
  }
  void release(void* p) override {
    if (!p) return;
    auto it = blocks_.find(static_cast<const char*>(p));
    if (it == blocks_.end()) return violations.push_back("release of memory not allocated here");
    munmap(p, pages(it->second));
    blocks_.erase(it);
  }
  void upload(void* dst, const void* src, size_t bytes) override {
    Open open(*this);
    mine(dst, bytes, "upload dst"), host(src, "upload src");
    cpu().upload(dst, src, bytes);
  }
  void download(void* dst, const void* src, size_t bytes) override {
    Open open(*this);
    mine(src, bytes, "download src"), host(dst, "download dst");
    cpu().download(dst, src, bytes);
  }
  void copy(void* dst, const void* src, size_t bytes) override {
    Open open(*this);
    mine(dst, bytes, "copy dst"), mine(src, bytes, "copy src");
    cpu().copy(dst, src, bytes);
  }
  void matmul(const TensorView& w, const float* x, int64_t n, float* y, ThreadPool* pool, Precision p = Precision::F32) override {
    Open open(*this);
    weight(w, "matmul"), mine(x, floats(n * w.cols()), "matmul x"), mine(y, floats(n * w.rows()), "matmul y");
    cpu().matmul(w, x, n, y, pool, p);
  }
  void add_bias(const TensorView& b, float* y, int64_t n, int64_t d) override {
    Open open(*this);
    weight(b, "add_bias"), mine(y, floats(n * d), "add_bias y");
    cpu().add_bias(b, y, n, d);
  }
  void rmsnorm(const float* x, const TensorView& w, int64_t n, int64_t d, float eps, float* y) override {
    Open open(*this);
    weight(w, "rmsnorm"), mine(x, floats(n * d), "rmsnorm x"), mine(y, floats(n * d), "rmsnorm y");
    cpu().rmsnorm(x, w, n, d, eps, y);
  }
  void layernorm(const float* x, const TensorView& w, const TensorView& b, int64_t n, int64_t d, float eps, float* y) override {
    Open open(*this);
    weight(w, "layernorm"), weight(b, "layernorm"), mine(x, floats(n * d), "layernorm x"), mine(y, floats(n * d), "layernorm y");
    cpu().layernorm(x, w, b, n, d, eps, y);
  }
  void axpy(float a, const float* x, float* y, int64_t n) override {
    Open open(*this);
    mine(x, floats(n), "axpy x"), mine(y, floats(n), "axpy y");
    cpu().axpy(a, x, y, n);
  }
  void silu_mul(float* gate, const float* up, int64_t n) override {
    Open open(*this);
    mine(gate, floats(n), "silu_mul gate"), mine(up, floats(n), "silu_mul up");
    cpu().silu_mul(gate, up, n);
  }
  void activation(Activation act, float* x, int64_t n) override {
    Open open(*this);
    mine(x, floats(n), "activation");
    cpu().activation(act, x, n);
  }
  void rope(float* x, int64_t rows, int64_t heads, int64_t stride, int64_t d, const float* cs, RopeStyle style) override {
    Open open(*this);
    mine(x, floats((rows - 1) * stride + heads * d), "rope x"), mine(cs, floats(rows * d), "rope cs");
    cpu().rope(x, rows, heads, stride, d, cs, style);
  }
  void store_rows(const float* x, int64_t rows, int64_t width, void* dst, DType t, int64_t dst_stride) override {
    Open open(*this);
    mine(x, floats(rows * width), "store_rows x");
    mine(dst, size_t((rows - 1) * dst_stride + width) * (t == DType::F32 ? 4 : 2), "store_rows dst");
    cpu().store_rows(x, rows, width, dst, t, dst_stride);
  }
  void attention(const AttentionShape& a, const float* q, const void* k, const void* v, DType kv_type, float* out,
                 ThreadPool* pool) override {
    Open open(*this);
    const size_t e = kv_type == DType::F32 ? 4 : 2;
    mine(q, floats((a.n - 1) * a.q_stride + a.n_heads * a.hd), "attention q");
    mine(out, floats((a.n - 1) * a.out_stride + a.n_heads * a.hd), "attention out");
    mine(k, size_t((a.m - 1) * a.kv_stride + a.n_kv_heads * a.hd) * e, "attention k");
    mine(v, size_t((a.m - 1) * a.kv_stride + a.n_kv_heads * a.hd) * e, "attention v");
    cpu().attention(a, q, k, v, kv_type, out, pool);
  }

 private:
  // This backend's pages are readable and writable only while one of its ops runs.
  struct Open {
    SeamChecker& c;
    explicit Open(SeamChecker& c) : c(c) { c.protect(PROT_READ | PROT_WRITE); }
    ~Open() { c.protect(PROT_NONE); }
  };
  void protect(int prot) {
    for (const auto& [p, bytes] : blocks_) mprotect(const_cast<char*>(p), pages(bytes), prot);
  }
  static size_t pages(size_t bytes) {
    const size_t page = size_t(sysconf(_SC_PAGESIZE));
    return (bytes + page - 1) / page * page;
  }
  static Backend& cpu() { return cpu_backend(); }
  static size_t floats(int64_t n) { return size_t(n) * sizeof(float); }
  // [p, p + bytes) inside one allocation of this backend.
  const char* owner(const void* p) const {
    const char* c = static_cast<const char*>(p);
    auto it = blocks_.upper_bound(c);
    if (it == blocks_.begin()) return nullptr;
    --it;
    return c < it->first + it->second ? it->first : nullptr;
  }
  void mine(const void* p, size_t bytes, const char* what) {
    ++calls[what];
    const char* start = owner(p);
    if (!start) violations.push_back(std::string(what) + ": not this backend's memory");
    else if (static_cast<const char*>(p) + bytes > start + blocks_[start]) violations.push_back(std::string(what) + ": past the end of its allocation");
  }
  void host(const void* p, const char* what) {
    if (owner(p)) violations.push_back(std::string(what) + ": this backend's memory where host memory belongs");
  }
  void weight(const TensorView& w, const char* what) {
    if (!w.data) violations.push_back(std::string(what) + ": an empty weight view");
    else host(w.data, what);
  }
  std::map<const char*, size_t> blocks_;
};

std::string report(const SeamChecker& c) {
  std::string s;
  for (size_t i = 0; i < c.violations.size() && i < 5; ++i) s += c.violations[i] + "; ";
  return s;
}

}  // namespace

TEST_CASE("backend seam: the demo pipeline gives the CPU's text on a backend that checks every pointer, adapters and batches included") {
  const loupe_test::DemoModel demo = loupe_test::DemoModel::load();
  SeamChecker checker;
  ThreadPool pool(2);
  for (size_t i = 0; i < 2; ++i)
    for (float scale : {0.0f, 1.0f}) {  // the adapter also replaces the projector
      INFO(demo.name(i) << " adapter scale " << scale);
      const auto cpu = demo.chat(i, scale, nullptr, &pool, {"And the background?"});  // a second turn on the kept cache
      const auto checked = demo.chat(i, scale, &checker, &pool, {"And the background?"});
      CHECK(checked.answers == cpu.answers);
      CHECK(checked.features == cpu.features);
      CHECK_MESSAGE(checker.violations.empty(), report(checker));
    }
  // Three scenes with and without the adapter, in one Generator batch on the checker.
  const std::vector<std::string> together = demo.batched(checker, &pool, 3);
  size_t exact = 0;
  for (size_t k = 0; k < together.size(); ++k) exact += together[k] == demo.caption(k / 2, k % 2);
  CHECK(exact + 2 >= together.size());  // as test_demo_model: one miss per language at most
  CHECK_MESSAGE(checker.violations.empty(), report(checker));
  for (const char* op : {"matmul x", "rope x", "store_rows dst", "attention k", "layernorm x", "activation", "silu_mul gate", "upload dst", "download src"})
    CHECK_MESSAGE(checker.calls[op] > 0, op);
}

TEST_CASE("backend seam: real weights with an F32 KV cache and a long prompt in chunks give the CPU's greedy tokens") {
  LOUPE_REQUIRE_SHARED();
  const fs::path dir = loupe_test::scratch("backend_seam");
  const LanguageModel lm = LanguageModel::open(loupe_test::convert_text(loupe_test::shared_dir() / "models/stories260K-hf", dir, DType::F32, "s"));
  SeamChecker checker;
  std::vector<int32_t> tokens[2];
  for (int on_checker = 0; on_checker < 2; ++on_checker) {
    SessionOptions o;
    o.n_ctx = 300, o.kv_type = DType::F32, o.n_batch = 7;  // passes of 7 rows; the cache grows past its first 256 positions
    o.backend = on_checker ? &checker : nullptr;
    Session s(lm, o);
    s.feed(lm.tokenizer.encode("Once upon a time, there was a little girl named Lily.", true));
    Sampler greedy(SamplingParams{});
    for (int k = 0; k < 260; ++k) {
      tokens[on_checker].push_back(s.sample(greedy));
      s.feed({tokens[on_checker].back()});
    }
    CHECK(s.kv().capacity() == 300);
  }
  CHECK(tokens[1] == tokens[0]);
  CHECK_MESSAGE(checker.violations.empty(), report(checker));
  CHECK(checker.calls["copy src"] > 0);  // the cache grew, keeping its contents
}

TEST_CASE("backend seam: a session and a batch on different backends are refused with the backends named") {
  const LanguageModel lm = LanguageModel::open((loupe_test::source_dir() / "demo" / "shapes-q4_0.gguf").string());
  SeamChecker checker;
  Session on_cpu(lm);
  Batch batch(lm, 64, checker);
  const std::string e = loupe_test::error_of([&] { batch.add(on_cpu, std::vector<int32_t>{1, 2, 3}); });
  CHECK(e.find("CPU") != std::string::npos);
  CHECK(e.find("seam checker") != std::string::npos);
}

TEST_CASE("device choice: cpu, cuda and auto; a CUDA request without CUDA falls back to the CPU and says why") {
  CHECK(parse_device("cpu") == DeviceChoice::Cpu);
  CHECK(parse_device("cuda") == DeviceChoice::Cuda);
  CHECK(parse_device("auto") == DeviceChoice::Auto);
  CHECK(loupe_test::error_of([] { parse_device("gpu"); }) == "unknown device 'gpu' (choose cpu, cuda or auto)");

  std::vector<std::string> lines;
  const LogFn log = [&](const std::string& l) { lines.push_back(l); };
  BackendHandle cpu = open_backend(DeviceChoice::Cpu, log);
  CHECK(cpu.get() == &cpu_backend());
  CHECK(lines.empty());

  std::string why;
  if (make_cuda_backend(0, &why)) {  // a GPU here: cuda and auto give it, and say which
    for (DeviceChoice c : {DeviceChoice::Cuda, DeviceChoice::Auto}) {
      BackendHandle gpu = open_backend(c, log);
      REQUIRE(gpu.get() != &cpu_backend());
      CHECK(lines == std::vector<std::string>{"device: " + gpu.get()->describe()});
      lines.clear();
    }
    return;
  }
  MESSAGE("no CUDA backend: " << why);
  if (!built_with_cuda()) CHECK(why == "this loupe was built without CUDA (configure with -DLOUPE_CUDA=ON)");
  BackendHandle cuda = open_backend(DeviceChoice::Cuda, log);
  CHECK(cuda.get() == &cpu_backend());
  REQUIRE(lines.size() == 2);
  CHECK(lines[0] == "CUDA requested but unavailable: " + why + "; using the CPU");
  CHECK(lines[1] == "device: " + cpu_backend().describe());
  lines.clear();
  BackendHandle any = open_backend(DeviceChoice::Auto, log);
  CHECK(any.get() == &cpu_backend());
  if (built_with_cuda()) CHECK(lines == std::vector<std::string>{"no CUDA GPU: " + why + "; using the CPU"});
  else CHECK(lines.empty());  // nothing was looked for
}

TEST_CASE("backend buffers: reserve keeps the allocation when it is large enough; grow_keep keeps the contents") {
  BackendBuffer b;
  b.reserve(64);
  float* p = b.as();
  b.reserve(32);
  CHECK(b.as() == p);
  for (int i = 0; i < 16; ++i) p[i] = float(i);
  b.grow_keep(4096);
  CHECK(b.bytes() == 4096);
  for (int i = 0; i < 16; ++i) CHECK(b.as()[i] == float(i));
  BackendBuffer c = std::move(b);
  CHECK(b.bytes() == 0);
  CHECK(c.as()[15] == 15.0f);
}
