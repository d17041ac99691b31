// The CUDA backend (backend.hpp's Backend on one GPU). Everything is queued on
// the backend's own stream, in call order; download() and synchronize() wait.
// Weights are uploaded once, in their block format, and kept (WeightCache);
// the kernels are in kernels.cuh.
//
// Needs compute capability 8.0+ (the GEMM's fp16 tensor-core tiles as tuned
// here; bf16 weights are widened on the fly).
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <mutex>

#include "loupe/ops/backend.hpp"
#include "kernels.cuh"

namespace loupe {

namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail("CUDA: ", what, ": ", cudaGetErrorString(e));
}

// A launch's configuration errors show at once; faults inside a kernel show at
// the next synchronising call (download, synchronize), also as loupe::Error.
void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

cuda::WeightKind weight_kind(DType t, const char* op) {
  switch (t) {
    case DType::F32: return cuda::kF32;
    case DType::F16: return cuda::kF16;
    case DType::BF16: return cuda::kBF16;
    case DType::Q8_0: return cuda::kQ8_0;
    case DType::Q4_0: return cuda::kQ4_0;
    default: fail(op, ": unsupported weight type ", dtype_name(t), " on CUDA");
  }
}

// FNV-1a over up to 256 bytes sampled evenly over [p, p + n): cheap enough to
// run on every lookup, and tells a new tensor at a freed one's address apart.
uint64_t fingerprint(const uint8_t* p, size_t n) {
  uint64_t h = 1469598103934665603ull;
  const size_t samples = std::min<size_t>(n, 256);
  for (size_t s = 0; s < samples; ++s) {
    h ^= p[samples == n ? s : s * (n - 1) / (samples - 1)];
    h *= 1099511628211ull;
  }
  return h ^ n;
}

class CudaBackend final : public Backend {
 public:
  CudaBackend(int device, const cudaDeviceProp& prop) : dev_(device), sms_(prop.multiProcessorCount) {
    char buf[64];
    std::snprintf(buf, sizeof buf, " (sm_%d%d, %.1f GiB)", prop.major, prop.minor, double(prop.totalGlobalMem) / (1024.0 * 1024 * 1024));
    name_ = std::string("CUDA: ") + prop.name + buf;
    set_device();
    check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
  }

  ~CudaBackend() override {
    // No throwing here: errors (a context already torn down at exit) are ignored.
    cudaSetDevice(dev_);
    cudaStreamSynchronize(stream_);
    for (auto& kv : cache_) cudaFree(kv.second.dev);
    cudaFree(scratch_);
    cudaStreamDestroy(stream_);
  }

  std::string describe() const override { return name_; }
  bool host_memory() const override { return false; }

  // ---------------------------------------------------------------- memory

  void* alloc(size_t bytes) override {
    if (bytes == 0) return nullptr;
    set_device();
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
      cudaGetLastError();  // clear it: out of memory is not sticky
      fail("CUDA: cudaMalloc of ", bytes, " bytes: ", cudaGetErrorString(e));
    }
    return p;
  }
  void release(void* p) override {
    if (!p) return;
    set_device();
    // Kernels queued earlier may still read p.
    check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    check(cudaFree(p), "cudaFree");
  }
  void upload(void* dst, const void* host_src, size_t bytes) override {
    if (!bytes) return;
    set_device();
    check(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, stream_), "cudaMemcpyAsync (upload)");
    // The caller may free or reuse host_src as soon as we return.
    check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize (upload)");
  }
  void download(void* host_dst, const void* src, size_t bytes) override {
    if (!bytes) return;
    set_device();
    check(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, stream_), "cudaMemcpyAsync (download)");
    check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize (download)");
  }
  void copy(void* dst, const void* src, size_t bytes) override {
    if (!bytes) return;
    set_device();
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_), "cudaMemcpyAsync (copy)");
  }
  void prepare(const TensorView& w) override { weight(w); }
  void synchronize() override {
    set_device();
    check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  }

  // ------------------------------------------------------------------- ops

  // Precision::Bf16 or not: the tensor-core GEMM multiplies fp16 operands anyway (f32 sums).
  void matmul(const TensorView& w, const float* x, int64_t n, float* y, ThreadPool*, Precision = Precision::F32) override {
    const int64_t out = w.rows(), in = w.cols();
    if (n <= 0 || out <= 0) return;
    const cuda::WeightKind wk = weight_kind(w.dtype, "matmul");
    if (is_quantized(w.dtype) && in % QK)
      fail("matmul: quantised weight row length ", in, " is not a multiple of ", QK);
    const uint8_t* dw = weight(w);
    if (n <= 8) {
      const unsigned blocks = unsigned((out + cuda::kGemvWarps - 1) / cuda::kGemvWarps);
      switch (wk) {
        case cuda::kF32: gemv<cuda::kF32>(blocks, dw, out, in, x, n, y); break;
        case cuda::kF16: gemv<cuda::kF16>(blocks, dw, out, in, x, n, y); break;
        case cuda::kBF16: gemv<cuda::kBF16>(blocks, dw, out, in, x, n, y); break;
        case cuda::kQ8_0: gemv<cuda::kQ8_0>(blocks, dw, out, in, x, n, y); break;
        case cuda::kQ4_0: gemv<cuda::kQ4_0>(blocks, dw, out, in, x, n, y); break;
      }
      check_launch("gemv_kernel");
      return;
    }
    if ((n + cuda::kBM - 1) / cuda::kBM > 65535) fail("matmul: ", n, " rows is too many for one CUDA launch");
    const dim3 grid(unsigned((out + cuda::kBN - 1) / cuda::kBN), unsigned((n + cuda::kBM - 1) / cuda::kBM));
    switch (wk) {
      case cuda::kF32: cuda::gemm_wmma_kernel<cuda::kF32><<<grid, cuda::kGemmThreads, 0, stream_>>>(dw, out, in, x, n, y); break;
      case cuda::kF16: cuda::gemm_wmma_kernel<cuda::kF16><<<grid, cuda::kGemmThreads, 0, stream_>>>(dw, out, in, x, n, y); break;
      case cuda::kBF16: cuda::gemm_wmma_kernel<cuda::kBF16><<<grid, cuda::kGemmThreads, 0, stream_>>>(dw, out, in, x, n, y); break;
      case cuda::kQ8_0: cuda::gemm_wmma_kernel<cuda::kQ8_0><<<grid, cuda::kGemmThreads, 0, stream_>>>(dw, out, in, x, n, y); break;
      case cuda::kQ4_0: cuda::gemm_wmma_kernel<cuda::kQ4_0><<<grid, cuda::kGemmThreads, 0, stream_>>>(dw, out, in, x, n, y); break;
    }
    check_launch("gemm_wmma_kernel");
  }

  void add_bias(const TensorView& b, float* y, int64_t n, int64_t d) override {
    if (n <= 0 || d <= 0) return;
    const float* db = f32_vector(b, d, "add_bias: bias");
    cuda::add_bias_kernel<<<elt_blocks(n * d), cuda::kEltThreads, 0, stream_>>>(db, y, n, d);
    check_launch("add_bias_kernel");
  }

  void rmsnorm(const float* x, const TensorView& w, int64_t n, int64_t d, float eps, float* y) override {
    if (n <= 0 || d <= 0) return;
    const float* dw = f32_vector(w, d, "rmsnorm: weight");
    check_rows(n, "rmsnorm");
    cuda::rmsnorm_kernel<<<unsigned(n), cuda::kNormThreads, 0, stream_>>>(x, dw, d, eps, y);
    check_launch("rmsnorm_kernel");
  }

  void layernorm(const float* x, const TensorView& w, const TensorView& b, int64_t n, int64_t d, float eps, float* y) override {
    if (n <= 0 || d <= 0) return;
    const float* dw = f32_vector(w, d, "layernorm: weight");
    const float* db = b.data ? f32_vector(b, d, "layernorm: bias") : nullptr;
    check_rows(n, "layernorm");
    cuda::layernorm_kernel<<<unsigned(n), cuda::kNormThreads, 0, stream_>>>(x, dw, db, d, eps, y);
    check_launch("layernorm_kernel");
  }

  void axpy(float a, const float* x, float* y, int64_t n) override {
    if (n <= 0) return;
    set_device();
    cuda::axpy_kernel<<<elt_blocks(n), cuda::kEltThreads, 0, stream_>>>(a, x, y, n);
    check_launch("axpy_kernel");
  }

  void silu_mul(float* gate, const float* up, int64_t n) override {
    if (n <= 0) return;
    set_device();
    cuda::silu_mul_kernel<<<elt_blocks(n), cuda::kEltThreads, 0, stream_>>>(gate, up, n);
    check_launch("silu_mul_kernel");
  }

  void activation(Activation act, float* x, int64_t n) override {
    if (n <= 0) return;
    set_device();
    if (act == Activation::QuickGelu) cuda::quick_gelu_kernel<<<elt_blocks(n), cuda::kEltThreads, 0, stream_>>>(x, n);
    else cuda::gelu_erf_kernel<<<elt_blocks(n), cuda::kEltThreads, 0, stream_>>>(x, n);
    check_launch("activation kernel");
  }

  void rope(float* x, int64_t rows, int64_t heads, int64_t stride, int64_t d, const float* cs, RopeStyle style) override {
    const int64_t pairs = rows * heads * (d / 2);
    if (pairs <= 0) return;
    set_device();
    cuda::rope_kernel<<<elt_blocks(pairs), cuda::kEltThreads, 0, stream_>>>(x, rows, heads, stride, d, cs, style == RopeStyle::Adjacent);
    check_launch("rope_kernel");
  }

  void store_rows(const float* x, int64_t rows, int64_t width, void* dst, DType t, int64_t dst_stride) override {
    if (t != DType::F32 && t != DType::F16) fail("store_rows: type must be F32 or F16, not ", dtype_name(t));
    if (rows <= 0 || width <= 0) return;
    set_device();
    if (t == DType::F16) cuda::store_rows_kernel<true><<<elt_blocks(rows * width), cuda::kEltThreads, 0, stream_>>>(x, rows, width, dst, dst_stride);
    else cuda::store_rows_kernel<false><<<elt_blocks(rows * width), cuda::kEltThreads, 0, stream_>>>(x, rows, width, dst, dst_stride);
    check_launch("store_rows_kernel");
  }

  void attention(const AttentionShape& a, const float* q, const void* k, const void* v, DType kv_type, float* out,
                 ThreadPool*) override {
    if (kv_type != DType::F32 && kv_type != DType::F16) fail("attention: keys/values must be F32 or F16, not ", dtype_name(kv_type));
    if (a.n <= 0 || a.n_heads <= 0 || a.hd <= 0) return;
    if (a.hd > cuda::kAttnMaxHd) fail("attention: head dimension ", a.hd, " is more than the CUDA kernel's ", cuda::kAttnMaxHd);
    if (a.n_kv_heads <= 0 || a.n_heads % a.n_kv_heads)
      fail("attention: ", a.n_heads, " heads cannot share ", a.n_kv_heads, " key/value heads");
    cuda::AttnParams p{};
    p.n = a.n, p.m = a.m, p.heads = a.n_heads, p.kv_heads = a.n_kv_heads, p.hd = a.hd;
    p.q_stride = a.q_stride, p.kv_stride = a.kv_stride, p.out_stride = a.out_stride;
    p.causal = a.causal;
    p.scale = 1.0f / std::sqrt(float(a.hd));
    // Splits: enough blocks for ~4 per SM when there are few (query, head)
    // pairs (decode), one split per ≤1024 keys otherwise; chunks of ≥64 keys
    // so that a split is worth its combine.
    const int64_t rows = a.n * a.n_heads;
    const int64_t want = std::max<int64_t>(1, (4 * int64_t(sms_) + rows - 1) / rows);
    int64_t chunk = (std::max<int64_t>(a.m, 1) + want - 1) / want;
    chunk = std::min<int64_t>(cuda::kAttnMaxChunk, std::max<int64_t>(64, (chunk + 31) / 32 * 32));
    p.chunk = chunk;
    p.splits = std::max<int64_t>(1, (a.m + chunk - 1) / chunk);
    const int64_t blocks = rows * p.splits;
    if (blocks > int64_t(0x7fffffff)) fail("attention: ", blocks, " blocks is too many for one CUDA launch");

    set_device();
    // The two kernels share the scratch: queue both under one lock so that
    // another host thread's attention cannot slip in between.
    std::lock_guard<std::mutex> lock(scratch_mu_);
    float *pm = nullptr, *pl = nullptr, *po = nullptr;
    if (p.splits > 1) {
      const size_t need = size_t(blocks) * size_t(a.hd + 2) * sizeof(float);
      if (need > scratch_bytes_) {
        check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");  // the old scratch may be in use
        check(cudaFree(scratch_), "cudaFree");
        scratch_ = nullptr, scratch_bytes_ = 0;
        scratch_ = static_cast<float*>(alloc(need));
        scratch_bytes_ = need;
      }
      pm = scratch_, pl = scratch_ + blocks, po = scratch_ + 2 * blocks;
    }
    if (kv_type == DType::F16)
      cuda::attn_partial_kernel<true><<<unsigned(blocks), cuda::kAttnThreads, 0, stream_>>>(p, q, k, v, pm, pl, po, out);
    else
      cuda::attn_partial_kernel<false><<<unsigned(blocks), cuda::kAttnThreads, 0, stream_>>>(p, q, k, v, pm, pl, po, out);
    check_launch("attn_partial_kernel");
    if (p.splits > 1) {
      cuda::attn_combine_kernel<<<unsigned(rows), cuda::kAttnThreads, 0, stream_>>>(p, pm, pl, po, out);
      check_launch("attn_combine_kernel");
    }
  }

 private:
  struct Entry {
    size_t span = 0;        // host bytes covered: (rows − 1)·row_stride + row_bytes
    size_t bytes = 0;       // device bytes: rows · row_bytes
    uint64_t fp = 0;
    DType dtype = DType::F32;
    int64_t rows = 0, cols = 0;
    size_t row_stride = 0;
    void* dev = nullptr;
  };

  void set_device() const { check(cudaSetDevice(dev_), "cudaSetDevice"); }  // per host thread; cheap when current

  unsigned elt_blocks(int64_t n) const {
    return unsigned(std::min<int64_t>((n + cuda::kEltThreads - 1) / cuda::kEltThreads, int64_t(sms_) * 32));
  }
  static void check_rows(int64_t n, const char* op) {
    if (n > int64_t(0x7fffffff)) fail(op, ": ", n, " rows is too many for one CUDA launch");
  }

  // An F32 vector weight (norm weights, biases) of length ≥ d, on the device.
  const float* f32_vector(const TensorView& w, int64_t d, const char* what) {
    if (w.dtype != DType::F32) fail(what, " must be F32 on CUDA, not ", dtype_name(w.dtype));
    if (w.numel() < d) fail(what, " has ", w.numel(), " elements, needs ", d);
    return reinterpret_cast<const float*>(weight(w));
  }

  // The device copy of a host weight, uploaded on first use. Keyed by the host
  // address; the byte size, shape and a fingerprint of the bytes must match too,
  // or it is a different tensor (a freed adapter's address reused) and the old
  // copy goes. Entries cover disjoint host ranges: a new tensor overlapping old
  // ones means their memory was freed, and they are dropped.
  const uint8_t* weight(const TensorView& w) {
    const int64_t rows = w.rows(), cols = w.cols();
    const size_t rb = row_bytes(w.dtype, cols);
    const size_t bytes = size_t(rows) * rb;
    if (bytes == 0) return nullptr;
    if (!w.data) fail("CUDA: weight ", w.shape_str(), " has no data");
    const size_t stride = rows > 1 ? w.row_stride() : rb;
    if (stride < rb) fail("CUDA: weight ", w.shape_str(), " rows overlap (row stride ", stride, " < ", rb, " bytes)");
    const size_t span = size_t(rows - 1) * stride + rb;
    const auto* host = static_cast<const uint8_t*>(w.data);
    const uint64_t fp = fingerprint(host, span);

    set_device();
    std::lock_guard<std::mutex> lock(cache_mu_);
    auto it = cache_.find(host);
    if (it != cache_.end()) {
      const Entry& e = it->second;
      if (e.span == span && e.bytes == bytes && e.fp == fp && e.dtype == w.dtype && e.rows == rows && e.cols == cols &&
          e.row_stride == stride)
        return static_cast<const uint8_t*>(e.dev);
    }
    // Drop every entry whose host range meets [host, host + span).
    auto first = cache_.lower_bound(host);
    if (first != cache_.begin()) {
      auto prev = std::prev(first);
      if (prev->first + prev->second.span > host) first = prev;
    }
    auto last = first;
    while (last != cache_.end() && last->first < host + span) ++last;
    if (first != last) {
      check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");  // queued kernels may read them
      for (auto e = first; e != last; ++e) check(cudaFree(e->second.dev), "cudaFree");
      cache_.erase(first, last);
    }

    Entry e;
    e.span = span, e.bytes = bytes, e.fp = fp, e.dtype = w.dtype, e.rows = rows, e.cols = cols, e.row_stride = stride;
    e.dev = alloc(bytes);
    if (stride == rb)
      check(cudaMemcpyAsync(e.dev, host, bytes, cudaMemcpyHostToDevice, stream_), "cudaMemcpyAsync (weight)");
    else  // strided rows: packed contiguous on the device
      check(cudaMemcpy2DAsync(e.dev, rb, host, stride, rb, size_t(rows), cudaMemcpyHostToDevice, stream_), "cudaMemcpy2DAsync (weight)");
    const cudaError_t s = cudaStreamSynchronize(stream_);  // once per weight; host memory may go right after
    if (s != cudaSuccess) {
      cudaFree(e.dev);
      check(s, "cudaStreamSynchronize (weight upload)");
    }
    cache_.emplace(host, e);
    return static_cast<const uint8_t*>(e.dev);
  }

  template <int WT>
  void gemv(unsigned blocks, const uint8_t* w, int64_t out, int64_t in, const float* x, int64_t n, float* y) {
    constexpr int T = cuda::kGemvWarps * 32;
    switch (n) {
      case 1: cuda::gemv_kernel<WT, 1><<<blocks, T, 0, stream_>>>(w, out, in, x, y); break;
      case 2: cuda::gemv_kernel<WT, 2><<<blocks, T, 0, stream_>>>(w, out, in, x, y); break;
      case 3: cuda::gemv_kernel<WT, 3><<<blocks, T, 0, stream_>>>(w, out, in, x, y); break;
      case 4: cuda::gemv_kernel<WT, 4><<<blocks, T, 0, stream_>>>(w, out, in, x, y); break;
      case 5: cuda::gemv_kernel<WT, 5><<<blocks, T, 0, stream_>>>(w, out, in, x, y); break;
      case 6: cuda::gemv_kernel<WT, 6><<<blocks, T, 0, stream_>>>(w, out, in, x, y); break;
      case 7: cuda::gemv_kernel<WT, 7><<<blocks, T, 0, stream_>>>(w, out, in, x, y); break;
      default: cuda::gemv_kernel<WT, 8><<<blocks, T, 0, stream_>>>(w, out, in, x, y); break;
    }
  }

  int dev_;
  int sms_;
  std::string name_;
  cudaStream_t stream_ = nullptr;

  std::mutex cache_mu_;
  std::map<const uint8_t*, Entry> cache_;

  std::mutex scratch_mu_;
  float* scratch_ = nullptr;
  size_t scratch_bytes_ = 0;
};

// Whether the driver library is there at all: cudart reports its absence as
// "CUDA driver version is insufficient", which misleads on a machine without one.
bool have_driver_library() {
  void* h = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL);
  if (!h) return false;
  dlclose(h);
  return true;
}

}  // namespace

std::unique_ptr<Backend> make_cuda_backend(int device, std::string* why) {
  auto no = [&](const std::string& reason) -> std::unique_ptr<Backend> {
    if (why) *why = reason;
    return nullptr;
  };
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    cudaGetLastError();
    if (!have_driver_library()) return no("no NVIDIA driver (libcuda.so.1 not found)");
    return no(std::string("cudaGetDeviceCount: ") + cudaGetErrorString(e));
  }
  if (count == 0) return no("no CUDA device found");
  if (device < 0 || device >= count)
    return no("CUDA device " + std::to_string(device) + " does not exist (" + std::to_string(count) + " device(s))");
  cudaDeviceProp prop{};
  const cudaError_t pe = cudaGetDeviceProperties(&prop, device);
  if (pe != cudaSuccess) return no(std::string("cudaGetDeviceProperties: ") + cudaGetErrorString(pe));
  if (prop.major < 8)
    return no(std::string(prop.name) + " has compute capability " + std::to_string(prop.major) + "." + std::to_string(prop.minor) +
              "; loupe's CUDA kernels need 8.0 or newer");
  try {
    return std::make_unique<CudaBackend>(device, prop);
  } catch (const Error& err) {
    return no(err.what());
  }
}

}  // namespace loupe
