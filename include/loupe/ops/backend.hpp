// The seam between the models and the hardware they run on. Models (llama.hpp,
// clip.hpp, projector.hpp) call a Backend for every op of a forward pass; the
// CPU backend calls the functions of ops.hpp (bit for bit what they computed
// before the seam), the CUDA backend (src/cuda, built with LOUPE_CUDA=ON) runs
// its kernels on the GPU.
//
// Memory: activations, KV caches and scratch live in the backend's memory
// (host memory for the CPU, device memory for CUDA) and are only touched
// through the backend. Weights stay TensorViews of host memory (the mapped
// GGUF, an adapter's tensors): the model is immutable and backend-agnostic. A
// device backend uploads each weight once, in its block format, the first time
// an op uses it (or ahead of time through prepare()), and keeps it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "../core/log.hpp"
#include "../core/tensor.hpp"
#include "../core/threadpool.hpp"
#include "ops.hpp"

namespace loupe {

enum class Activation { GeluErf, QuickGelu };  // nn.GELU(), CLIP's quick_gelu

class Backend {
 public:
  virtual ~Backend() = default;
  // "CPU (avx512_vnni)", "CUDA: NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)".
  virtual std::string describe() const = 0;
  // True when the backend's memory is host memory (pointers may be read directly).
  virtual bool host_memory() const = 0;

  // ---- Memory of this backend (bytes; alloc(0) may return null).
  virtual void* alloc(size_t bytes) = 0;
  virtual void release(void* p) = 0;
  virtual void upload(void* dst, const void* host_src, size_t bytes) = 0;
  virtual void download(void* host_dst, const void* src, size_t bytes) = 0;
  virtual void copy(void* dst, const void* src, size_t bytes) = 0;  // both in this backend's memory
  // Weights a model will use, uploaded now rather than on first use (device backends).
  virtual void prepare(const TensorView&) {}

  // ---- Ops. x, y, q, k, v, out, gate, up, cs: this backend's memory.
  // y[n, out] = x[n, in] · Wᵀ (ops.hpp's matmul; p: how exact float weights' products must be).
  virtual void matmul(const TensorView& w, const float* x, int64_t n, float* y, ThreadPool* pool, Precision p = Precision::F32) = 0;
  // y[n, d] += b[d] per row (b: an F32 weight of length d).
  virtual void add_bias(const TensorView& b, float* y, int64_t n, int64_t d) = 0;
  virtual void rmsnorm(const float* x, const TensorView& w, int64_t n, int64_t d, float eps, float* y) = 0;
  virtual void layernorm(const float* x, const TensorView& w, const TensorView& b, int64_t n, int64_t d, float eps, float* y) = 0;
  virtual void axpy(float a, const float* x, float* y, int64_t n) = 0;  // y += a·x
  virtual void silu_mul(float* gate, const float* up, int64_t n) = 0;   // gate = silu(gate)·up
  virtual void activation(Activation act, float* x, int64_t n) = 0;
  // RoPE (ops.hpp's RopeCache::apply) on `heads` head vectors of size d per row,
  // rows `stride` floats apart; cs [rows, d]: each row's cos/sin (RopeCache::angles).
  virtual void rope(float* x, int64_t rows, int64_t heads, int64_t stride, int64_t d, const float* cs, RopeStyle style) = 0;
  // rows × width floats into a KV cache of type t (F32 or F16), rows dst_stride elements apart.
  virtual void store_rows(const float* x, int64_t rows, int64_t width, void* dst, DType t, int64_t dst_stride) = 0;
  virtual void attention(const AttentionShape& a, const float* q, const void* k, const void* v, DType kv_type, float* out,
                         ThreadPool* pool) = 0;
  // Waits for the work queued so far (device backends; download() waits too).
  virtual void synchronize() {}
};

// torch.nn.Linear on a backend: y = x·Wᵀ + b (b may be an empty view: no bias).
inline void linear(Backend& be, const TensorView& w, const TensorView& b, const float* x, int64_t n, float* y, ThreadPool* pool,
                   Precision p = Precision::F32) {
  be.matmul(w, x, n, y, pool, p);
  if (b.data) be.add_bias(b, y, n, w.rows());
}

// The CPU backend: the ops of ops.hpp with this CPU's kernels. Shared, stateless.
Backend& cpu_backend();

// The CUDA backend on GPU `device`, or null with the reason in *why (no
// driver, no device, built without LOUPE_CUDA).
std::unique_ptr<Backend> make_cuda_backend(int device = 0, std::string* why = nullptr);

// Whether this build has the CUDA backend (LOUPE_CUDA=ON).
bool built_with_cuda();

// What a user asks for with --device: the CPU, a CUDA GPU, or a GPU where there is one.
enum class DeviceChoice { Cpu, Cuda, Auto };
DeviceChoice parse_device(const std::string& s);  // "cpu" | "cuda" | "auto" (else an error naming the choices)

// The backend for a choice: CUDA when asked (or auto) and available, else the
// CPU, with a line for the user saying which and why (`log` may be null; auto
// in a build without CUDA says nothing: there was nothing to look for).
// The returned pointer owns a device backend; for the CPU it holds nothing and
// get() is &cpu_backend().
struct BackendHandle {
  std::unique_ptr<Backend> owned;
  Backend* backend = nullptr;
  Backend& operator*() const { return *backend; }
  Backend* get() const { return backend; }
};
BackendHandle open_backend(DeviceChoice choice, const LogFn& log = nullptr);

// Grow-only memory of a backend (scratch, KV caches): allocated once, kept.
class BackendBuffer {
 public:
  BackendBuffer() = default;
  explicit BackendBuffer(Backend& be) : be_(&be) {}
  BackendBuffer(BackendBuffer&& o) noexcept : be_(o.be_), p_(std::exchange(o.p_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  BackendBuffer& operator=(BackendBuffer&& o) noexcept {
    if (this != &o) reset(), be_ = o.be_, p_ = std::exchange(o.p_, nullptr), bytes_ = std::exchange(o.bytes_, 0);
    return *this;
  }
  ~BackendBuffer() { reset(); }

  Backend& backend() const { return *be_; }
  size_t bytes() const { return bytes_; }
  template <class T = float>
  T* as() const { return static_cast<T*>(p_); }

  // At least `bytes`; contents are not kept (scratch).
  void reserve(size_t bytes) {
    if (bytes <= bytes_) return;
    reset();
    p_ = be_->alloc(bytes), bytes_ = bytes;
  }
  // Exactly `bytes` (more than now), the old contents copied over (KV caches).
  void grow_keep(size_t bytes) {
    if (bytes <= bytes_) return;
    void* p = be_->alloc(bytes);
    if (p_) be_->copy(p, p_, bytes_);
    reset();
    p_ = p, bytes_ = bytes;
  }
  void reset() {
    if (p_) be_->release(p_);
    p_ = nullptr, bytes_ = 0;
  }

 private:
  Backend* be_ = &cpu_backend();
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace loupe

#ifdef LOUPE_IMPLEMENTATION
#include <cstdlib>
#include <cstring>

#include "kernels.hpp"

namespace loupe {

namespace backend_detail {

class CpuBackend final : public Backend {
 public:
  std::string describe() const override { return std::string("CPU (") + kernels().name + ")"; }
  bool host_memory() const override { return true; }
  void* alloc(size_t bytes) override {
    if (bytes == 0) return nullptr;
    void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (!p) fail("out of memory allocating ", bytes, " bytes");
    return p;
  }
  void release(void* p) override { std::free(p); }
  void upload(void* dst, const void* src, size_t bytes) override { if (bytes) std::memcpy(dst, src, bytes); }
  void download(void* dst, const void* src, size_t bytes) override { if (bytes) std::memcpy(dst, src, bytes); }
  void copy(void* dst, const void* src, size_t bytes) override { if (bytes) std::memcpy(dst, src, bytes); }

  void matmul(const TensorView& w, const float* x, int64_t n, float* y, ThreadPool* pool, Precision p = Precision::F32) override {
    loupe::matmul(w, x, n, y, pool, p);
  }
  void add_bias(const TensorView& b, float* y, int64_t n, int64_t d) override {
    const float* bb = static_cast<const float*>(b.data);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t r = 0; r < d; ++r) y[i * d + r] += bb[r];
  }
  void rmsnorm(const float* x, const TensorView& w, int64_t n, int64_t d, float eps, float* y) override {
    loupe::rmsnorm(x, static_cast<const float*>(w.data), n, d, eps, y);
  }
  void layernorm(const float* x, const TensorView& w, const TensorView& b, int64_t n, int64_t d, float eps, float* y) override {
    loupe::layernorm(x, static_cast<const float*>(w.data), static_cast<const float*>(b.data), n, d, eps, y);
  }
  void axpy(float a, const float* x, float* y, int64_t n) override {
    for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];  // a = 1 (residuals): exactly y + x
  }
  void silu_mul(float* gate, const float* up, int64_t n) override { loupe::silu_mul(gate, up, n); }
  void activation(Activation act, float* x, int64_t n) override {
    if (act == Activation::QuickGelu) loupe::quick_gelu(x, n);
    else for (int64_t i = 0; i < n; ++i) x[i] = gelu_erf(x[i]);
  }
  void rope(float* x, int64_t rows, int64_t heads, int64_t stride, int64_t d, const float* cs, RopeStyle style) override {
    RopeCache r;  // apply() with given angles reads only d
    r.d = d;
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t h = 0; h < heads; ++h) r.apply(x + i * stride + h * d, cs + i * d, style);
  }
  void store_rows(const float* x, int64_t rows, int64_t width, void* dst, DType t, int64_t dst_stride) override {
    if (t != DType::F32 && t != DType::F16) fail("store_rows: type must be F32 or F16, not ", dtype_name(t));
    for (int64_t i = 0; i < rows; ++i) {
      if (t == DType::F16) kernels().f32_to_f16(x + i * width, static_cast<uint16_t*>(dst) + i * dst_stride, width);
      else std::memcpy(static_cast<float*>(dst) + i * dst_stride, x + i * width, size_t(width) * 4);
    }
  }
  void attention(const AttentionShape& a, const float* q, const void* k, const void* v, DType kv_type, float* out,
                 ThreadPool* pool) override {
    multi_head_attention(a, q, k, v, kv_type, out, pool);
  }
};

}  // namespace backend_detail

Backend& cpu_backend() {
  static backend_detail::CpuBackend cpu;
  return cpu;
}

#ifdef LOUPE_WITH_CUDA
bool built_with_cuda() { return true; }  // make_cuda_backend: src/cuda/cuda_backend.cu
#else
bool built_with_cuda() { return false; }
std::unique_ptr<Backend> make_cuda_backend(int, std::string* why) {
  if (why) *why = "this loupe was built without CUDA (configure with -DLOUPE_CUDA=ON)";
  return nullptr;
}
#endif

DeviceChoice parse_device(const std::string& s) {
  if (s == "cpu") return DeviceChoice::Cpu;
  if (s == "cuda") return DeviceChoice::Cuda;
  if (s == "auto") return DeviceChoice::Auto;
  fail("unknown device '", s, "' (choose cpu, cuda or auto)");
}

BackendHandle open_backend(DeviceChoice choice, const LogFn& log) {
  BackendHandle h;
  if (choice != DeviceChoice::Cpu) {
    std::string why;
    h.owned = make_cuda_backend(0, &why);
    if (h.owned) {
      h.backend = h.owned.get();
      if (log) log("device: " + h.backend->describe());
      return h;
    }
    if (log && (choice == DeviceChoice::Cuda || built_with_cuda()))
      log(std::string(choice == DeviceChoice::Cuda ? "CUDA requested but unavailable: " : "no CUDA GPU: ") + why + "; using the CPU");
  }
  h.backend = &cpu_backend();
  if (log && choice == DeviceChoice::Cuda) log("device: " + h.backend->describe());
  return h;
}

}  // namespace loupe
#endif  // LOUPE_IMPLEMENTATION
