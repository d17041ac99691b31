// LLaMA-family decoder (LlamaForCausalLM): RMSNorm, RoPE, grouped-query
// attention with a KV cache, SwiGLU MLP, final norm, lm_head. Weights come
// from a GGUF file in llama.cpp's naming; they stay in the mapped file.
//
// forward() takes input *embeddings* so the vision pipeline can splice image
// features between token embeddings; embed() turns token ids into them.
// Prefill (n > 1) and decode (n == 1) run the same code on the same weights:
// matmul() is matrix-matrix for n > 1 and matrix-vector for n == 1.
#pragma once
#include <array>
#include <string>
#include <vector>

#include "../io/gguf.hpp"
#include "../ops/ops.hpp"

namespace loupe {

struct LlamaConfig {
  int64_t n_vocab = 0, dim = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0, ffn_dim = 0, n_ctx = 0, head_dim = 0;
  float rms_eps = 1e-5f, rope_base = 10000.0f;
};

// A low-rank update of one weight, applied unmerged (LoRA; PEFT's lora/layer.py
// Linear.forward): y += scale · B·(A·x), A [r, in], B [out, r]. The views point
// into an adapter that outlives its activation (lora.hpp's LoraSet sees to it).
struct LowRankDelta {
  TensorView a, b;
  float scale = 1.0f;
};

// y [n, out] += Σ scale·(x·Aᵀ)·Bᵀ over the active updates of one weight.
inline void add_low_rank(const std::vector<LowRankDelta>& ds, const float* x, int64_t n, float* y, ThreadPool* pool) {
  for (const LowRankDelta& d : ds) {
    const int64_t r = d.a.rows(), out = d.b.rows();
    std::vector<float> t(static_cast<size_t>(n * r)), u(static_cast<size_t>(n * out));
    matmul(d.a, x, n, t.data(), pool);
    matmul(d.b, t.data(), n, u.data(), pool);
    for (size_t i = 0; i < u.size(); ++i) y[i] += d.scale * u[i];
  }
}

// The adaptable linear weights of a layer, in HF's order.
enum LlamaLinear : int { kAttnQ, kAttnK, kAttnV, kAttnOut, kFfnGate, kFfnUp, kFfnDown, kLlamaLinears };

struct LlamaLayer {
  TensorView attn_norm, wq, wk, wv, wo;     // HF: input_layernorm, self_attn.{q,k,v,o}_proj
  TensorView ffn_norm, w_gate, w_up, w_down;  // HF: post_attention_layernorm, mlp.{gate,up,down}_proj
  std::array<std::vector<LowRankDelta>, kLlamaLinears> lora;  // active LoRA updates per weight (none: empty)
};

struct LlamaModel {
  LlamaConfig cfg;
  TensorView tok_embd, output_norm, output;  // output aliases tok_embd when embeddings are tied
  std::vector<LlamaLayer> layers;
  RopeStyle rope_style = RopeStyle::Adjacent;  // GGUF stores q/k permuted for adjacent pairs
  RopeCache rope;
  std::vector<LowRankDelta> output_lora;  // LoRA updates of the output projection (PEFT's lm_head)
  uint64_t adapter_revision = 0;          // bumped whenever the active adapters change (stale caches)

  // Views point into `file`, which must outlive the model.
  static LlamaModel from_gguf(const GgufFile& f);
};

// Keys and values of every layer for positions [0, n_past). F32 or F16.
struct KVCache {
  DType dtype = DType::F32;
  int64_t n_ctx = 0, width = 0, n_past = 0;  // width = n_kv_heads · head_dim
  std::vector<std::vector<uint8_t>> k, v;    // per layer: [n_ctx, width]

  KVCache() = default;
  KVCache(const LlamaConfig& c, int64_t ctx, DType t = DType::F32) : dtype(t), n_ctx(ctx), width(c.n_kv_heads * c.head_dim) {
    if (t != DType::F32 && t != DType::F16) fail("KV cache type must be F32 or F16, not ", dtype_name(t));
    const size_t bytes = size_t(ctx * width) * (t == DType::F32 ? 4 : 2);
    k.assign(size_t(c.n_layers), std::vector<uint8_t>(bytes));
    v.assign(size_t(c.n_layers), std::vector<uint8_t>(bytes));
  }
  void store(std::vector<uint8_t>& buf, int64_t pos, const float* x) const {
    uint8_t* dst = buf.data() + size_t(pos * width) * (dtype == DType::F32 ? 4 : 2);
    if (dtype == DType::F16) kernels().f32_to_f16(x, reinterpret_cast<uint16_t*>(dst), width);  // = from_f32, vectorised
    else from_f32(dtype, x, dst, width);
  }
  void load(const std::vector<uint8_t>& buf, int64_t pos, float* x) const {
    const uint8_t* src = buf.data() + size_t(pos * width) * (dtype == DType::F32 ? 4 : 2);
    if (dtype == DType::F16) kernels().f16_to_f32(reinterpret_cast<const uint16_t*>(src), x, width);
    else to_f32(dtype, src, x, width);
  }
};

inline LlamaModel LlamaModel::from_gguf(const GgufFile& f) {
  const std::string arch = f.get_str("general.architecture");
  if (arch != "llama") fail(f.name(), ": architecture '", arch, "' is not supported (expected llama)");
  LlamaModel m;
  LlamaConfig& c = m.cfg;
  c.dim = f.get_int("llama.embedding_length");
  c.n_layers = f.get_int("llama.block_count");
  c.n_heads = f.get_int("llama.attention.head_count");
  c.n_kv_heads = f.get_int("llama.attention.head_count_kv", c.n_heads);
  c.ffn_dim = f.get_int("llama.feed_forward_length");
  c.n_ctx = f.get_int("llama.context_length", 2048);
  c.rms_eps = float(f.get_float("llama.attention.layer_norm_rms_epsilon", 1e-5));
  c.rope_base = float(f.get_float("llama.rope.freq_base", 10000.0));
  if (c.dim <= 0 || c.n_layers <= 0 || c.n_heads <= 0 || c.n_kv_heads <= 0 || c.dim % c.n_heads || c.n_heads % c.n_kv_heads)
    fail(f.name(), ": inconsistent llama metadata (dim ", c.dim, ", heads ", c.n_heads, ", kv heads ", c.n_kv_heads, ")");
  c.head_dim = c.dim / c.n_heads;
  if (c.head_dim % 2) fail(f.name(), ": head dimension ", c.head_dim, " is odd; RoPE needs pairs");
  if (f.get_int("llama.rope.dimension_count", c.head_dim) != c.head_dim)
    fail(f.name(), ": partial rotary embeddings (llama.rope.dimension_count) are not supported");

  auto get = [&](const std::string& name, std::vector<int64_t> shape) {
    const GgufTensor& t = f.get_tensor(name);
    if (t.shape != shape) {
      std::string want = make_view(DType::F32, shape, nullptr).shape_str();
      fail(f.name(), ": tensor '", name, "' has shape ", t.view.shape_str(), ", expected ", want);
    }
    if (!dtype_info(t.dtype).supported) fail(f.name(), ": tensor '", name, "' has unsupported type ", dtype_name(t.dtype));
    return t.view;
  };
  auto get_f32 = [&](const std::string& name, int64_t n) {
    TensorView v = get(name, {n});
    if (v.dtype != DType::F32) fail(f.name(), ": norm tensor '", name, "' must be F32, is ", dtype_name(v.dtype));
    return v;
  };
  const GgufTensor& emb = f.get_tensor("token_embd.weight");
  c.n_vocab = emb.shape[0];
  m.tok_embd = get("token_embd.weight", {c.n_vocab, c.dim});
  m.output_norm = get_f32("output_norm.weight", c.dim);
  m.output = f.tensor("output.weight") ? get("output.weight", {c.n_vocab, c.dim}) : m.tok_embd;
  const int64_t q = c.n_heads * c.head_dim, kv = c.n_kv_heads * c.head_dim;
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    LlamaLayer L;
    L.attn_norm = get_f32(p + "attn_norm.weight", c.dim);
    L.wq = get(p + "attn_q.weight", {q, c.dim});
    L.wk = get(p + "attn_k.weight", {kv, c.dim});
    L.wv = get(p + "attn_v.weight", {kv, c.dim});
    L.wo = get(p + "attn_output.weight", {c.dim, q});
    L.ffn_norm = get_f32(p + "ffn_norm.weight", c.dim);
    L.w_gate = get(p + "ffn_gate.weight", {c.ffn_dim, c.dim});
    L.w_up = get(p + "ffn_up.weight", {c.ffn_dim, c.dim});
    L.w_down = get(p + "ffn_down.weight", {c.dim, c.ffn_dim});
    m.layers.push_back(L);
  }
  m.rope = RopeCache(c.head_dim, c.rope_base);
  return m;
}

// Token ids -> embeddings [n, dim].
inline void embed(const LlamaModel& m, const int32_t* ids, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    if (ids[i] < 0 || ids[i] >= m.cfg.n_vocab) fail("token id ", ids[i], " is outside the vocabulary (", m.cfg.n_vocab, ")");
    to_f32(m.tok_embd.dtype, m.tok_embd.row(ids[i]), out + i * m.cfg.dim, m.cfg.dim);
  }
}

// Causal self-attention of n new positions [pos0, pos0+n) against the cache,
// which already holds their keys/values. q, out: [n, n_heads·head_dim].
inline void attention(const LlamaConfig& c, const KVCache& kv, const std::vector<uint8_t>& kbuf,
                      const std::vector<uint8_t>& vbuf, const float* q, int64_t n, int64_t pos0, float* out,
                      ThreadPool* pool) {
  AttentionShape a;
  a.n = n, a.m = pos0 + n, a.n_heads = c.n_heads, a.n_kv_heads = c.n_kv_heads, a.hd = c.head_dim;
  a.q_stride = a.out_stride = c.n_heads * c.head_dim, a.kv_stride = kv.width, a.causal = true;
  multi_head_attention(a, q, kbuf.data(), vbuf.data(), kv.dtype, out, pool);
}

// Run n positions (embeddings x [n, dim]) starting at kv.n_past; appends to the
// cache. Writes logits [n, vocab] when all_logits, else the last row only [vocab].
inline void forward(const LlamaModel& m, KVCache& kv, const float* x, int64_t n, float* logits, bool all_logits,
                    ThreadPool* pool = nullptr) {
  const LlamaConfig& c = m.cfg;
  const int64_t pos0 = kv.n_past;
  if (pos0 + n > kv.n_ctx) fail("sequence of ", pos0 + n, " positions exceeds the context of ", kv.n_ctx);
  const int64_t qd = c.n_heads * c.head_dim, kvd = c.n_kv_heads * c.head_dim;
  std::vector<float> h(x, x + n * c.dim), xb(size_t(n * c.dim)), q(size_t(n * qd)), k(size_t(n * kvd)),
      v(size_t(n * kvd)), att(size_t(n * qd)), gate(size_t(n * c.ffn_dim)), up(size_t(n * c.ffn_dim)),
      tmp(size_t(n * c.dim));
  std::vector<float> rope_cs(size_t(n * c.head_dim));  // RoPE cos/sin per position, shared by every layer
  for (int64_t i = 0; i < n; ++i) m.rope.angles(pos0 + i, &rope_cs[size_t(i * c.head_dim)]);
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const LlamaLayer& L = m.layers[size_t(l)];
    rmsnorm(h.data(), static_cast<const float*>(L.attn_norm.data), n, c.dim, c.rms_eps, xb.data());
    matmul(L.wq, xb.data(), n, q.data(), pool);
    matmul(L.wk, xb.data(), n, k.data(), pool);
    matmul(L.wv, xb.data(), n, v.data(), pool);
    add_low_rank(L.lora[kAttnQ], xb.data(), n, q.data(), pool);
    add_low_rank(L.lora[kAttnK], xb.data(), n, k.data(), pool);
    add_low_rank(L.lora[kAttnV], xb.data(), n, v.data(), pool);
    for (int64_t i = 0; i < n; ++i) {
      const float* cs = &rope_cs[size_t(i * c.head_dim)];
      for (int64_t hh = 0; hh < c.n_heads; ++hh) m.rope.apply(&q[size_t(i * qd + hh * c.head_dim)], cs, m.rope_style);
      for (int64_t hh = 0; hh < c.n_kv_heads; ++hh) m.rope.apply(&k[size_t(i * kvd + hh * c.head_dim)], cs, m.rope_style);
      kv.store(kv.k[size_t(l)], pos0 + i, &k[size_t(i * kvd)]);
      kv.store(kv.v[size_t(l)], pos0 + i, &v[size_t(i * kvd)]);
    }
    attention(c, kv, kv.k[size_t(l)], kv.v[size_t(l)], q.data(), n, pos0, att.data(), pool);
    matmul(L.wo, att.data(), n, tmp.data(), pool);
    add_low_rank(L.lora[kAttnOut], att.data(), n, tmp.data(), pool);
    for (size_t i = 0; i < h.size(); ++i) h[i] += tmp[i];

    rmsnorm(h.data(), static_cast<const float*>(L.ffn_norm.data), n, c.dim, c.rms_eps, xb.data());
    matmul(L.w_gate, xb.data(), n, gate.data(), pool);
    matmul(L.w_up, xb.data(), n, up.data(), pool);
    add_low_rank(L.lora[kFfnGate], xb.data(), n, gate.data(), pool);
    add_low_rank(L.lora[kFfnUp], xb.data(), n, up.data(), pool);
    silu_mul(gate.data(), up.data(), n * c.ffn_dim);
    matmul(L.w_down, gate.data(), n, tmp.data(), pool);
    add_low_rank(L.lora[kFfnDown], gate.data(), n, tmp.data(), pool);
    for (size_t i = 0; i < h.size(); ++i) h[i] += tmp[i];
  }
  kv.n_past += n;
  const int64_t first = all_logits ? 0 : n - 1, rows = n - first;
  rmsnorm(h.data() + first * c.dim, static_cast<const float*>(m.output_norm.data), rows, c.dim, c.rms_eps, xb.data());
  matmul(m.output, xb.data(), rows, logits, pool);
  add_low_rank(m.output_lora, xb.data(), rows, logits, pool);
}

}  // namespace loupe
