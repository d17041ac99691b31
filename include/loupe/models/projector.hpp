// LLaVA's multimodal projector, mm_projector_type "mlp2x_gelu":
// Linear(vision → text) → GELU (exact erf) → Linear(text → text).
// Weights mm.0.* and mm.2.* of an mmproj GGUF (the Sequential's indices).
#pragma once
#include <vector>

#include "../io/gguf.hpp"
#include "../ops/backend.hpp"
#include "../ops/ops.hpp"
#include "tensors.hpp"

namespace loupe {

struct Projector {
  TensorView w0, b0, w2, b2;
  int64_t in_dim = 0, out_dim = 0;

  static Projector from_gguf(const GgufFile& f);

  TensorView& at(ClipField f) { return f == ClipField::Mm0W ? w0 : f == ClipField::Mm0B ? b0 : f == ClipField::Mm2W ? w2 : b2; }

  // features [n, in_dim] -> [n, out_dim] (host memory), computed on `backend` (null: the CPU)
  std::vector<float> operator()(const std::vector<float>& x, ThreadPool* pool = nullptr, Backend* backend = nullptr) const;
};

}  // namespace loupe

#ifdef LOUPE_IMPLEMENTATION
namespace loupe {

Projector Projector::from_gguf(const GgufFile& f) {
  const std::string type = f.get_str("clip.projector_type", "mlp");
  if (type != "mlp") fail(f.name(), ": projector type '", type, "' is not supported (only mlp = mlp2x_gelu)");
  Projector p;
  for (const ClipTensor& t : projector_tensors(0, 0)) p.at(t.field) = f.get_tensor(t.gguf).view;
  p.in_dim = p.w0.cols();
  p.out_dim = p.w0.rows();
  if (p.w0.ndim != 2 || p.w2.ndim != 2 || p.w2.cols() != p.out_dim || p.w2.rows() != p.out_dim)
    fail(f.name(), ": projector shapes mm.0 ", p.w0.shape_str(), " / mm.2 ", p.w2.shape_str(), " are not an mlp2x_gelu");
  if (p.b0.numel() != p.out_dim || p.b2.numel() != p.out_dim || p.b0.dtype != DType::F32 || p.b2.dtype != DType::F32)
    fail(f.name(), ": projector biases must be F32 of length ", p.out_dim);
  return p;
}

std::vector<float> Projector::operator()(const std::vector<float>& x, ThreadPool* pool, Backend* backend) const {
  Backend& be = backend ? *backend : cpu_backend();
  const int64_t n = int64_t(x.size()) / in_dim;
  BackendBuffer xs(be), h(be), y(be);
  xs.reserve(x.size() * sizeof(float));
  h.reserve(size_t(n * out_dim) * sizeof(float)), y.reserve(size_t(n * out_dim) * sizeof(float));
  be.upload(xs.as(), x.data(), x.size() * sizeof(float));
  linear(be, w0, b0, xs.as(), n, h.as(), pool);
  be.activation(Activation::GeluErf, h.as(), n * out_dim);
  linear(be, w2, b2, h.as(), n, y.as(), pool);
  std::vector<float> out(size_t(n * out_dim));
  be.download(out.data(), y.as(), out.size() * sizeof(float));
  return out;
}

}  // namespace loupe
#endif  // LOUPE_IMPLEMENTATION
