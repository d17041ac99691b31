// CLIP vision tower (HF CLIPVisionModel) as LLaVA uses it: patch embedding,
// class token, position embeddings, pre-LayerNorm, pre-LN transformer blocks
// with quick_gelu (or GELU) MLPs. encode() returns hidden_states[feature_layer]
// with the CLS position dropped (mm_vision_select_feature = "patch").
// Weights come from an mmproj GGUF in llama.cpp's naming (v.*, clip.vision.*).
#pragma once
#include <array>
#include <string>
#include <vector>

#include "../io/gguf.hpp"
#include "../ops/backend.hpp"
#include "../ops/ops.hpp"
#include "tensors.hpp"

namespace loupe {

struct ClipLayer {
  TensorView ln1_w, ln1_b, q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b;
  TensorView ln2_w, ln2_b, fc1_w, fc1_b, fc2_w, fc2_b;  // fc1: dim -> ffn, fc2: ffn -> dim
};

struct ClipModel {
  ClipConfig cfg;
  TensorView patch_w;  // [dim, 3·p·p] (the conv kernel flattened)
  TensorView class_embd, pos_embd, pre_ln_w, pre_ln_b;
  std::vector<ClipLayer> layers;

  static ClipModel from_gguf(const GgufFile& f);
  TensorView& at(const ClipTensor& t);  // the view a registry entry (tensors.hpp) names
};

// pixel_values [3, S, S] -> features [n_features, dim] (hidden_states[feature layer], CLS dropped
// unless cfg.keep_cls).
// `hidden` (optional) receives every hidden state [n_layers_run + 1][n_patches + 1, dim].
// Runs on `backend` (null: the CPU); pixels and the result are host memory.
// precision: the linear layers' (ops.hpp's Precision; Bf16 on CPUs with AVX512-BF16
// about halves the encode time of F16/F32 towers, features ~1e-3 relative from F32).
std::vector<float> clip_encode(const ClipModel& m, const float* pixels, ThreadPool* pool = nullptr,
                               std::vector<std::vector<float>>* hidden = nullptr, Backend* backend = nullptr,
                               Precision precision = Precision::F32);

}  // namespace loupe

#ifdef LOUPE_IMPLEMENTATION
namespace loupe {

ClipModel ClipModel::from_gguf(const GgufFile& f) {
  ClipModel m;
  const ClipConfig& c = m.cfg = read_clip_config(f);
  m.layers.resize(size_t(c.n_layers_run));
  for (const ClipTensor& t : clip_tensors(c, 0)) {
    if (t.projector()) continue;
    std::string name = t.gguf;
    if (t.field == ClipField::Fc1W || t.field == ClipField::Fc1B || t.field == ClipField::Fc2W || t.field == ClipField::Fc2B) {
      // llama.cpp's legacy converter stored fc1 as "ffn_down" and fc2 as "ffn_up";
      // tell them apart by shape, as llama.cpp does.
      const GgufTensor& up = f.get_tensor(clip_block_gguf(t.layer) + "ffn_up.weight");
      const bool legacy = up.shape.size() == 2 && up.shape[1] == c.ffn_dim && c.ffn_dim != c.dim;
      if (legacy) name = name.find("ffn_up") != std::string::npos ? name.replace(name.find("ffn_up"), 6, "ffn_down")
                                                                  : name.replace(name.find("ffn_down"), 8, "ffn_up");
    }
    const GgufTensor& g = f.get_tensor(name);
    if (g.shape != t.shape)
      fail(f.name(), ": tensor '", name, "' has shape ", g.view.shape_str(), ", expected ", make_view(DType::F32, t.shape, nullptr).shape_str());
    if (t.storage == Storage::F32 && g.dtype != DType::F32) fail(f.name(), ": tensor '", name, "' must be F32, is ", dtype_name(g.dtype));
    m.at(t) = g.view;
  }
  if (f.tensor("v.patch_embd.bias")) fail(f.name(), ": a patch embedding bias is not expected in a CLIP tower");
  m.patch_w = make_view(m.patch_w.dtype, {c.dim, 3 * c.patch_size * c.patch_size}, m.patch_w.data);  // the conv kernel as a matrix
  return m;
}

TensorView& ClipModel::at(const ClipTensor& t) {
  using F = ClipField;
  switch (t.field) {
    case F::ClassEmbd: return class_embd;
    case F::PatchEmbd: return patch_w;
    case F::PosEmbd: return pos_embd;
    case F::PreLnW: return pre_ln_w;
    case F::PreLnB: return pre_ln_b;
    default: break;
  }
  ClipLayer& L = layers[size_t(t.layer)];
  switch (t.field) {
    case F::QW: return L.q_w;
    case F::QB: return L.q_b;
    case F::KW: return L.k_w;
    case F::KB: return L.k_b;
    case F::VW: return L.v_w;
    case F::VB: return L.v_b;
    case F::OW: return L.o_w;
    case F::OB: return L.o_b;
    case F::Ln1W: return L.ln1_w;
    case F::Ln1B: return L.ln1_b;
    case F::Fc1W: return L.fc1_w;
    case F::Fc1B: return L.fc1_b;
    case F::Fc2W: return L.fc2_w;
    case F::Fc2B: return L.fc2_b;
    case F::Ln2W: return L.ln2_w;
    case F::Ln2B: return L.ln2_b;
    default: fail("clip: tensor '", t.gguf, "' is not part of the tower");
  }
}

std::vector<float> clip_encode(const ClipModel& m, const float* pixels, ThreadPool* pool,
                               std::vector<std::vector<float>>* hidden, Backend* backend, Precision precision) {
  const ClipConfig& c = m.cfg;
  const int64_t S = c.image_size, P = c.patch_size, G = S / P, N = G * G, T = N + 1, D = c.dim, K = 3 * P * P;
  Backend& be = backend ? *backend : cpu_backend();
  // im2col: one row of 3·P·P pixels per patch, in the conv kernel's (c, y, x) order.
  std::vector<float> cols(static_cast<size_t>(N * K));
  for (int64_t gy = 0; gy < G; ++gy)
    for (int64_t gx = 0; gx < G; ++gx) {
      float* r = &cols[size_t((gy * G + gx) * K)];
      for (int64_t ch = 0; ch < 3; ++ch)
        for (int64_t y = 0; y < P; ++y)
          for (int64_t xx = 0; xx < P; ++xx) *r++ = pixels[(ch * S + gy * P + y) * S + gx * P + xx];
    }
  auto buffer = [&](int64_t floats) {
    BackendBuffer b(be);
    b.reserve(size_t(floats) * sizeof(float));
    return b;
  };
  BackendBuffer xcols = buffer(N * K), xs = buffer(T * D), hs = buffer(T * D), qs = buffer(T * D), ks = buffer(T * D),
                vs = buffer(T * D), atts = buffer(T * D), ffs = buffer(T * c.ffn_dim);
  float *x = xs.as(), *h = hs.as(), *q = qs.as(), *k = ks.as(), *v = vs.as(), *att = atts.as(), *ff = ffs.as();
  auto keep = [&] {  // hidden_states[i], for --dump and tests
    if (!hidden) return;
    hidden->emplace_back(size_t(T * D));
    be.download(hidden->back().data(), x, size_t(T * D) * sizeof(float));
  };
  be.upload(xcols.as(), cols.data(), cols.size() * sizeof(float));
  be.matmul(m.patch_w, xcols.as(), N, x + D, pool, precision);
  be.upload(x, m.class_embd.data, size_t(D) * sizeof(float));
  be.add_bias(m.pos_embd, x, 1, T * D);  // position embeddings, [T, D] as one row
  be.layernorm(x, m.pre_ln_w, m.pre_ln_b, T, D, c.eps, x);
  if (hidden) hidden->clear();
  keep();

  for (const ClipLayer& L : m.layers) {
    be.layernorm(x, L.ln1_w, L.ln1_b, T, D, c.eps, h);
    linear(be, L.q_w, L.q_b, h, T, q, pool, precision);
    linear(be, L.k_w, L.k_b, h, T, k, pool, precision);
    linear(be, L.v_w, L.v_b, h, T, v, pool, precision);
    AttentionShape a;  // bidirectional
    a.n = a.m = T, a.n_heads = a.n_kv_heads = c.n_heads, a.hd = D / c.n_heads;
    a.q_stride = a.kv_stride = a.out_stride = D, a.causal = false;
    be.attention(a, q, k, v, DType::F32, att, pool);
    linear(be, L.o_w, L.o_b, att, T, h, pool, precision);
    be.axpy(1.0f, h, x, T * D);

    be.layernorm(x, L.ln2_w, L.ln2_b, T, D, c.eps, h);
    linear(be, L.fc1_w, L.fc1_b, h, T, ff, pool, precision);
    be.activation(c.gelu ? Activation::GeluErf : Activation::QuickGelu, ff, T * c.ffn_dim);
    linear(be, L.fc2_w, L.fc2_b, ff, T, h, pool, precision);
    be.axpy(1.0f, h, x, T * D);
    keep();
  }
  const int64_t skip = c.keep_cls ? 0 : 1;  // CLS dropped by default
  std::vector<float> out(size_t((T - skip) * D));
  be.download(out.data(), x + skip * D, out.size() * sizeof(float));
  return out;
}

}  // namespace loupe
#endif  // LOUPE_IMPLEMENTATION
