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
#include "../ops/ops.hpp"

namespace loupe {

struct ClipConfig {
  int64_t image_size = 336, patch_size = 14, dim = 0, ffn_dim = 0, n_heads = 0;
  int64_t n_layers_run = 0;  // blocks to run: hidden_states[n_layers_run] is the feature layer
  float eps = 1e-5f;
  bool gelu = false;  // clip.use_gelu: exact GELU instead of quick_gelu
  std::array<float, 3> mean{}, std{};
  std::string aspect_ratio = "pad";  // LLaVA's image_aspect_ratio: "pad" or "none"
  int64_t n_patches() const { return (image_size / patch_size) * (image_size / patch_size); }
};

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
};

namespace clip_detail {
inline const float* f32(const TensorView& v) { return static_cast<const float*>(v.data); }
}  // namespace clip_detail

inline ClipModel ClipModel::from_gguf(const GgufFile& f) {
  if (f.get_str("general.architecture") != "clip") fail(f.name(), ": not an mmproj file (general.architecture is '", f.get_str("general.architecture"), "', expected clip)");
  if (!f.get_bool("clip.has_vision_encoder", false)) fail(f.name(), ": the file has no vision encoder");
  ClipModel m;
  ClipConfig& c = m.cfg;
  c.image_size = f.get_int("clip.vision.image_size");
  c.patch_size = f.get_int("clip.vision.patch_size");
  c.dim = f.get_int("clip.vision.embedding_length");
  c.ffn_dim = f.get_int("clip.vision.feed_forward_length");
  c.n_heads = f.get_int("clip.vision.attention.head_count");
  c.eps = float(f.get_float("clip.vision.attention.layer_norm_epsilon", 1e-5));
  c.gelu = f.get_bool("clip.use_gelu", false);
  c.aspect_ratio = f.get_str("clip.vision.image_aspect_ratio", "pad");
  if (c.aspect_ratio != "pad" && c.aspect_ratio != "none" && c.aspect_ratio != "square")
    fail(f.name(), ": image_aspect_ratio '", c.aspect_ratio, "' is not supported (pad or none)");
  const GgufValue& mean = f.get_array("clip.vision.image_mean", GgufType::F32);
  const GgufValue& sd = f.get_array("clip.vision.image_std", GgufType::F32);
  if (mean.arr.size() != 3 || sd.arr.size() != 3) fail(f.name(), ": image_mean / image_std must have 3 values");
  for (int i = 0; i < 3; ++i) c.mean[size_t(i)] = float(mean.arr[size_t(i)].f), c.std[size_t(i)] = float(sd.arr[size_t(i)].f);
  if (c.dim <= 0 || c.n_heads <= 0 || c.dim % c.n_heads || c.patch_size <= 0 || c.image_size % c.patch_size)
    fail(f.name(), ": inconsistent clip.vision metadata (width ", c.dim, ", heads ", c.n_heads, ", image ", c.image_size,
         ", patch ", c.patch_size, ")");

  // Blocks present in the file; legacy converters drop the unused last block.
  int64_t present = 0;
  while (f.tensor("v.blk." + std::to_string(present) + ".attn_q.weight")) ++present;
  const int64_t block_count = f.get_int("clip.vision.block_count");
  int64_t run = std::min(block_count, present);
  // clip.vision.feature_layer: indices into hidden_states (0 = embeddings); LLaVA uses one.
  if (const GgufValue* fl = f.find("clip.vision.feature_layer")) {
    if (fl->type != GgufType::ARRAY || fl->arr.empty()) fail(f.name(), ": clip.vision.feature_layer must be a non-empty array");
    if (fl->arr.size() > 1) fail(f.name(), ": several feature layers (", fl->arr.size(), ") are not supported");
    run = fl->arr[0].i;
    if (run < 1 || run > present)
      fail(f.name(), ": feature layer ", run, " needs ", run, " blocks, the file has ", present);
  }
  c.n_layers_run = run;

  auto get = [&](const std::string& name, std::vector<int64_t> shape) {
    const GgufTensor& t = f.get_tensor(name);
    if (t.shape != shape)
      fail(f.name(), ": tensor '", name, "' has shape ", t.view.shape_str(), ", expected ", make_view(DType::F32, shape, nullptr).shape_str());
    return t.view;
  };
  auto get_f32 = [&](const std::string& name, std::vector<int64_t> shape) {
    TensorView v = get(name, std::move(shape));
    if (v.dtype != DType::F32) fail(f.name(), ": tensor '", name, "' must be F32, is ", dtype_name(v.dtype));
    return v;
  };
  const int64_t D = c.dim, P = c.patch_size;
  TensorView pw = get("v.patch_embd.weight", {D, 3, P, P});
  m.patch_w = make_view(pw.dtype, {D, 3 * P * P}, pw.data);
  if (f.tensor("v.patch_embd.bias")) fail(f.name(), ": a patch embedding bias is not expected in a CLIP tower");
  m.class_embd = get_f32("v.class_embd", {D});
  m.pos_embd = get_f32("v.position_embd.weight", {c.n_patches() + 1, D});
  m.pre_ln_w = get_f32("v.pre_ln.weight", {D});
  m.pre_ln_b = get_f32("v.pre_ln.bias", {D});
  for (int64_t l = 0; l < run; ++l) {
    const std::string p = "v.blk." + std::to_string(l) + ".";
    ClipLayer L;
    L.ln1_w = get_f32(p + "ln1.weight", {D});
    L.ln1_b = get_f32(p + "ln1.bias", {D});
    L.q_w = get(p + "attn_q.weight", {D, D});
    L.q_b = get_f32(p + "attn_q.bias", {D});
    L.k_w = get(p + "attn_k.weight", {D, D});
    L.k_b = get_f32(p + "attn_k.bias", {D});
    L.v_w = get(p + "attn_v.weight", {D, D});
    L.v_b = get_f32(p + "attn_v.bias", {D});
    L.o_w = get(p + "attn_out.weight", {D, D});
    L.o_b = get_f32(p + "attn_out.bias", {D});
    L.ln2_w = get_f32(p + "ln2.weight", {D});
    L.ln2_b = get_f32(p + "ln2.bias", {D});
    // fc1 maps dim -> ffn. llama.cpp's legacy converter stored fc1 as "ffn_down"
    // and fc2 as "ffn_up"; tell them apart by shape, as llama.cpp does.
    const GgufTensor& up = f.get_tensor(p + "ffn_up.weight");
    const bool legacy = up.shape.size() == 2 && up.shape[1] == c.ffn_dim && c.ffn_dim != D;
    const std::string fc1 = legacy ? "ffn_down" : "ffn_up", fc2 = legacy ? "ffn_up" : "ffn_down";
    L.fc1_w = get(p + fc1 + ".weight", {c.ffn_dim, D});
    L.fc1_b = get_f32(p + fc1 + ".bias", {c.ffn_dim});
    L.fc2_w = get(p + fc2 + ".weight", {D, c.ffn_dim});
    L.fc2_b = get_f32(p + fc2 + ".bias", {D});
    m.layers.push_back(L);
  }
  return m;
}

// Bidirectional multi-head attention over n positions: q, k, v, out [n, heads·hd].
inline void self_attention(const float* q, const float* k, const float* v, int64_t n, int64_t heads, int64_t hd, float* out,
                           ThreadPool* pool) {
  AttentionShape a;
  a.n = a.m = n, a.n_heads = a.n_kv_heads = heads, a.hd = hd;
  a.q_stride = a.kv_stride = a.out_stride = heads * hd, a.causal = false;
  multi_head_attention(a, q, k, v, DType::F32, out, pool);
}

// pixel_values [3, S, S] -> features [n_patches, dim] (hidden_states[feature layer], CLS dropped).
// `hidden` (optional) receives every hidden state [n_layers_run + 1][n_patches + 1, dim].
inline std::vector<float> clip_encode(const ClipModel& m, const float* pixels, ThreadPool* pool = nullptr,
                                      std::vector<std::vector<float>>* hidden = nullptr) {
  using clip_detail::f32;
  const ClipConfig& c = m.cfg;
  const int64_t S = c.image_size, P = c.patch_size, G = S / P, N = G * G, T = N + 1, D = c.dim, K = 3 * P * P;
  // im2col: one row of 3·P·P pixels per patch, in the conv kernel's (c, y, x) order.
  std::vector<float> cols(static_cast<size_t>(N * K)), x(static_cast<size_t>(T * D));
  for (int64_t gy = 0; gy < G; ++gy)
    for (int64_t gx = 0; gx < G; ++gx) {
      float* r = &cols[size_t((gy * G + gx) * K)];
      for (int64_t ch = 0; ch < 3; ++ch)
        for (int64_t y = 0; y < P; ++y)
          for (int64_t xx = 0; xx < P; ++xx) *r++ = pixels[(ch * S + gy * P + y) * S + gx * P + xx];
    }
  matmul(m.patch_w, cols.data(), N, x.data() + D, pool);
  std::copy(f32(m.class_embd), f32(m.class_embd) + D, x.data());
  const float* pos = f32(m.pos_embd);
  for (int64_t i = 0; i < T * D; ++i) x[size_t(i)] += pos[i];
  layernorm(x.data(), f32(m.pre_ln_w), f32(m.pre_ln_b), T, D, c.eps, x.data());
  if (hidden) hidden->assign(1, x);

  std::vector<float> h(x.size()), q(x.size()), k(x.size()), v(x.size()), att(x.size()), ff(static_cast<size_t>(T * c.ffn_dim));
  for (const ClipLayer& L : m.layers) {
    layernorm(x.data(), f32(L.ln1_w), f32(L.ln1_b), T, D, c.eps, h.data());
    linear(L.q_w, f32(L.q_b), h.data(), T, q.data(), pool);
    linear(L.k_w, f32(L.k_b), h.data(), T, k.data(), pool);
    linear(L.v_w, f32(L.v_b), h.data(), T, v.data(), pool);
    self_attention(q.data(), k.data(), v.data(), T, c.n_heads, D / c.n_heads, att.data(), pool);
    linear(L.o_w, f32(L.o_b), att.data(), T, h.data(), pool);
    for (size_t i = 0; i < x.size(); ++i) x[i] += h[i];

    layernorm(x.data(), f32(L.ln2_w), f32(L.ln2_b), T, D, c.eps, h.data());
    linear(L.fc1_w, f32(L.fc1_b), h.data(), T, ff.data(), pool);
    if (c.gelu) for (float& e : ff) e = gelu_erf(e);
    else quick_gelu(ff.data(), int64_t(ff.size()));
    linear(L.fc2_w, f32(L.fc2_b), ff.data(), T, h.data(), pool);
    for (size_t i = 0; i < x.size(); ++i) x[i] += h[i];
    if (hidden) hidden->push_back(x);
  }
  return std::vector<float>(x.begin() + D, x.end());  // drop CLS
}

}  // namespace loupe
