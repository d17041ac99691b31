// LLaMA-family decoder (LlamaForCausalLM): RMSNorm, RoPE, grouped-query
// attention with a KV cache, SwiGLU MLP, final norm, lm_head. Weights come
// from a GGUF file in llama.cpp's naming (tensors.hpp); they stay in the
// mapped file and are never written: a loaded LlamaModel is immutable and
// shared by every sequence that runs on it.
//
// What belongs to one sequence lives outside the model, as llama.cpp keeps
// llama_context apart from llama_model: its KVCache, and the LoRA adapters it
// runs with (AdaptedWeights, built by pipeline/lora.hpp). forward() advances
// several sequences in one pass, each at its own position with its own cache
// and adapters: their rows are stacked so each weight is read once for all of
// them (matrix-matrix products, not one matrix-vector product per sequence).
//
// forward() takes input *embeddings* so the vision pipeline can splice image
// features between token embeddings; embed() turns token ids into them.
#pragma once
#include <algorithm>
#include <array>
#include <functional>
#include <string>
#include <vector>

#include "../io/gguf.hpp"
#include "../ops/ops.hpp"
#include "tensors.hpp"

namespace loupe {

struct LlamaLayer {
  TensorView attn_norm, ffn_norm;           // HF: input_layernorm, post_attention_layernorm
  std::array<TensorView, kLlamaLinears> w;  // self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj (LlamaLinear order)
};

// Views of every weight, into the mapped file (or an adapter's tensors).
struct LlamaWeights {
  TensorView tok_embd, output_norm, output;  // output aliases tok_embd when embeddings are tied
  std::vector<LlamaLayer> layers;

  // The view a registry entry (tensors.hpp) names.
  TensorView& at(const LlamaTensor& t) {
    switch (t.slot) {
      case LlamaSlot::TokEmbd: return tok_embd;
      case LlamaSlot::OutputNorm: return output_norm;
      case LlamaSlot::Output: return output;
      case LlamaSlot::AttnNorm: return layers[size_t(t.layer)].attn_norm;
      case LlamaSlot::FfnNorm: return layers[size_t(t.layer)].ffn_norm;
      case LlamaSlot::Linear: break;
    }
    return layers[size_t(t.layer)].w[size_t(t.linear)];
  }
};

struct LlamaModel {
  LlamaConfig cfg;
  LlamaWeights weights;
  RopeStyle rope_style = RopeStyle::Adjacent;  // GGUF stores q/k permuted for adjacent pairs
  RopeCache rope;

  // Views point into `file`, which must outlive the model.
  static LlamaModel from_gguf(const GgufFile& f);
};

// A low-rank update of one weight, applied unmerged (LoRA; PEFT's lora/layer.py
// Linear.forward): y += scale · B·(A·x), A [r, in], B [out, r]. The views point
// into an adapter that outlives its use (pipeline/lora.hpp's LoraSet holds it).
struct LowRankDelta {
  TensorView a, b;
  float scale = 1.0f;
  bool operator==(const LowRankDelta& o) const { return a.data == o.a.data && b.data == o.b.data && scale == o.scale; }
};

// What a set of LoRA adapters makes of the model for the sequences that use
// it: the weights with whole tensors an adapter replaces swapped in, and the
// low-rank updates of each linear weight.
struct AdaptedWeights {
  LlamaWeights weights;
  std::vector<std::array<std::vector<LowRankDelta>, kLlamaLinears>> deltas;  // per layer
  std::vector<LowRankDelta> output_deltas;                                    // PEFT's lm_head
};

// Keys and values of every layer for positions [0, n_past), F16 (llama.cpp's
// default) or F32. Memory follows the positions used: each layer's buffers grow
// kChunk positions at a time up to n_ctx, so a 1000-position description of a
// 7B model holds 0.5 GiB, not the 2 GiB of a full 4096-position cache. (Each
// growth copies the layer's buffer: over a whole 4096-position context that is
// ~16 GB of memcpy against ~15 TB of weight reads, 0.1 %.)
class KVCache {
 public:
  static constexpr int64_t kChunk = 256;

  KVCache() = default;
  KVCache(const LlamaConfig& c, int64_t n_ctx, DType t = DType::F16)
      : dtype_(t), n_ctx_(n_ctx), width_(c.n_kv_heads * c.head_dim), k_(size_t(c.n_layers)), v_(size_t(c.n_layers)) {
    if (t != DType::F32 && t != DType::F16) fail("KV cache type must be F32 or F16, not ", dtype_name(t));
    if (n_ctx <= 0) fail("the context must hold at least one position, not ", n_ctx);
  }

  DType dtype() const { return dtype_; }
  int64_t n_ctx() const { return n_ctx_; }
  int64_t width() const { return width_; }      // n_kv_heads · head_dim
  int64_t capacity() const { return capacity_; }  // positions allocated
  size_t bytes() const { return 2 * k_.size() * size_t(capacity_ * width_) * elt(); }
  int64_t n_past = 0;  // positions held

  // Make room for `positions` positions (at most n_ctx).
  void reserve(int64_t positions) {
    if (positions > n_ctx_) fail("sequence of ", positions, " positions exceeds the context of ", n_ctx_);
    if (positions <= capacity_) return;
    const int64_t cap = std::min(n_ctx_, (positions + kChunk - 1) / kChunk * kChunk);
    const size_t bytes = size_t(cap * width_) * elt();
    for (auto* bufs : {&k_, &v_})
      for (std::vector<uint8_t>& b : *bufs) {
        b.reserve(bytes);  // exactly: resize() alone may double
        b.resize(bytes);
      }
    capacity_ = cap;
  }
  void clear() { n_past = 0; }

  uint8_t* k(int64_t layer, int64_t pos) { return k_[size_t(layer)].data() + size_t(pos * width_) * elt(); }
  uint8_t* v(int64_t layer, int64_t pos) { return v_[size_t(layer)].data() + size_t(pos * width_) * elt(); }
  const uint8_t* k(int64_t layer) const { return k_[size_t(layer)].data(); }
  const uint8_t* v(int64_t layer) const { return v_[size_t(layer)].data(); }

  // One position's key or value row (width floats) into the cache.
  void store(uint8_t* dst, const float* x) const;

 private:
  size_t elt() const { return dtype_ == DType::F32 ? 4 : 2; }
  DType dtype_ = DType::F16;
  int64_t n_ctx_ = 0, width_ = 0, capacity_ = 0;
  std::vector<std::vector<uint8_t>> k_, v_;  // per layer: [capacity, width]
};

// One sequence's part of a forward pass: n embeddings x [n, dim] at positions
// kv->n_past..., whose keys and values are appended to kv.
struct LlamaSeq {
  KVCache* kv = nullptr;
  const AdaptedWeights* adapted = nullptr;  // null: the model's own weights
  const float* x = nullptr;
  int64_t n = 0;
  float* logits = nullptr;  // [vocab] for the last row ([n, vocab] with all_logits); null: none wanted
  bool all_logits = false;
};

// Activations of one pass, sized for the largest pass so far and kept: after
// the first step of a given size nothing is allocated.
struct LlamaScratch {
  std::vector<float> h, xb, q, k, v, att, gate, up, tmp, rope, out_x, out, lora_t, lora_u;
  std::vector<size_t> order;                           // sequences grouped by adapters
  std::vector<int64_t> row0, out_from, out_to, out_row;  // each sequence's rows in the pass, and its logit rows
  static void grow(std::vector<float>& b, int64_t n) {
    if (b.size() < size_t(n)) b.resize(size_t(n));
  }
  // Room for `rows` rows of which `out_rows` need logits.
  void reserve(const LlamaConfig& c, int64_t rows, int64_t out_rows) {
    const int64_t qd = c.n_heads * c.head_dim, kvd = c.n_kv_heads * c.head_dim;
    for (auto* b : {&h, &xb, &tmp}) grow(*b, rows * c.dim);
    for (auto* b : {&q, &att}) grow(*b, rows * qd);
    for (auto* b : {&k, &v}) grow(*b, rows * kvd);
    for (auto* b : {&gate, &up}) grow(*b, rows * c.ffn_dim);
    grow(rope, rows * c.head_dim);
    grow(out_x, out_rows * c.dim);
    grow(out, out_rows * c.n_vocab);
  }
};

// Token ids -> embeddings [n, dim] (from the model's table, or an adapter's replacement).
void embed(const LlamaConfig& c, const TensorView& table, const int32_t* ids, int64_t n, float* out);
void embed(const LlamaModel& m, const int32_t* ids, int64_t n, float* out);

// Runs `count` sequences through the model in one pass (their rows stacked);
// appends each one's keys and values to its cache and writes its logits.
// Every row is computed as it would be alone except for the matmul kernels'
// summation order, which depends on how many rows share a weight (ops.hpp).
void forward(const LlamaModel& m, LlamaSeq* seqs, size_t count, LlamaScratch& s, ThreadPool* pool = nullptr);

}  // namespace loupe

#ifdef LOUPE_IMPLEMENTATION
#include "../ops/kernels.hpp"

namespace loupe {

namespace llama_detail {

// y [n, out] += Σ scale·(x·Aᵀ)·Bᵀ over the updates of one weight; t, u: scratch.
inline void add_low_rank(const std::vector<LowRankDelta>& ds, const float* x, int64_t n, float* y, LlamaScratch& s, ThreadPool* pool) {
  for (const LowRankDelta& d : ds) {
    const int64_t r = d.a.rows(), out = d.b.rows();
    LlamaScratch::grow(s.lora_t, n * r);
    LlamaScratch::grow(s.lora_u, n * out);
    matmul(d.a, x, n, s.lora_t.data(), pool);
    matmul(d.b, s.lora_t.data(), n, s.lora_u.data(), pool);
    const float* u = s.lora_u.data();
    for (int64_t i = 0; i < n * out; ++i) y[i] += d.scale * u[i];
  }
}

}  // namespace llama_detail

void KVCache::store(uint8_t* dst, const float* x) const {
  if (dtype_ == DType::F16) kernels().f32_to_f16(x, reinterpret_cast<uint16_t*>(dst), width_);  // = from_f32, vectorised
  else std::memcpy(dst, x, size_t(width_) * 4);
}

LlamaModel LlamaModel::from_gguf(const GgufFile& f) {
  LlamaModel m;
  LlamaConfig& c = m.cfg = read_llama_config(f);
  if (!f.tensor("token_embd.weight")) fail(f.name(), ": tensor 'token_embd.weight' is missing");
  m.weights.layers.resize(size_t(c.n_layers));
  const bool has_output = f.tensor("output.weight") != nullptr;
  for (const LlamaTensor& t : llama_tensors(c, has_output)) {
    const GgufTensor& g = f.get_tensor(t.gguf);
    if (g.shape != t.shape)
      fail(f.name(), ": tensor '", t.gguf, "' has shape ", g.view.shape_str(), ", expected ", make_view(DType::F32, t.shape, nullptr).shape_str());
    if (!dtype_info(g.dtype).supported) fail(f.name(), ": tensor '", t.gguf, "' has unsupported type ", dtype_name(g.dtype));
    if (t.shape.size() == 1 && g.dtype != DType::F32) fail(f.name(), ": norm tensor '", t.gguf, "' must be F32, is ", dtype_name(g.dtype));
    m.weights.at(t) = g.view;
  }
  if (!has_output) m.weights.output = m.weights.tok_embd;
  m.rope = RopeCache(c.head_dim, c.rope_base);
  return m;
}

void embed(const LlamaConfig& c, const TensorView& table, const int32_t* ids, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    if (ids[i] < 0 || ids[i] >= c.n_vocab) fail("token id ", ids[i], " is outside the vocabulary (", c.n_vocab, ")");
    to_f32(table.dtype, table.row(ids[i]), out + i * c.dim, c.dim);
  }
}

void embed(const LlamaModel& m, const int32_t* ids, int64_t n, float* out) { embed(m.cfg, m.weights.tok_embd, ids, n, out); }

void forward(const LlamaModel& m, LlamaSeq* seqs, size_t count, LlamaScratch& s, ThreadPool* pool) {
  const LlamaConfig& c = m.cfg;
  const int64_t qd = c.n_heads * c.head_dim, kvd = c.n_kv_heads * c.head_dim, D = c.dim;
  // Sequences with the same adapters next to each other, so each weight (and
  // each adapter's update) runs once over all their rows.
  s.order.resize(count);
  for (size_t i = 0; i < count; ++i) s.order[i] = i;
  std::sort(s.order.begin(), s.order.end(), [&](size_t a, size_t b) {  // stable, without stable_sort's buffer
    return seqs[a].adapted != seqs[b].adapted ? std::less<const AdaptedWeights*>()(seqs[a].adapted, seqs[b].adapted) : a < b;
  });
  int64_t rows = 0, out_rows = 0;
  s.row0.resize(count + 1);
  for (size_t j = 0; j < count; ++j) {
    LlamaSeq& q = seqs[s.order[j]];
    if (q.n <= 0) fail("forward: a sequence with no positions");
    for (size_t i = 0; i < j; ++i)
      if (seqs[s.order[i]].kv == q.kv) fail("forward: the same KV cache twice in one pass");
    q.kv->reserve(q.kv->n_past + q.n);
    s.row0[j] = rows;
    rows += q.n;
    if (q.logits) out_rows += q.all_logits ? q.n : 1;
  }
  s.row0[count] = rows;
  s.reserve(c, rows, out_rows);
  float *h = s.h.data(), *xb = s.xb.data(), *tmp = s.tmp.data();
  for (size_t j = 0; j < count; ++j) {
    const LlamaSeq& q = seqs[s.order[j]];
    std::copy(q.x, q.x + q.n * D, h + s.row0[j] * D);
    for (int64_t i = 0; i < q.n; ++i) m.rope.angles(q.kv->n_past + i, &s.rope[size_t((s.row0[j] + i) * c.head_dim)]);
  }
  auto weights_of = [&](size_t j) -> const LlamaWeights& {
    const AdaptedWeights* a = seqs[s.order[j]].adapted;
    return a ? a->weights : m.weights;
  };
  static const std::vector<LowRankDelta> kNone;
  auto deltas_of = [&](size_t j, int64_t l, int which) -> const std::vector<LowRankDelta>& {
    const AdaptedWeights* a = seqs[s.order[j]].adapted;
    return !a ? kNone : l < 0 ? a->output_deltas : a->deltas[size_t(l)][size_t(which)];
  };
  // y = x·Wᵀ (+ LoRA) for weight `which` of layer l (l < 0: the output
  // projection) over the rows r[j].. r[j+1] of each sequence: one matmul per run
  // of sequences sharing the weight, one low-rank update per run sharing the
  // adapter's updates.
  auto linear = [&](int64_t l, int which, const int64_t* r, const float* x, int64_t in, float* y, int64_t out) {
    auto weight = [&](size_t j) -> const TensorView& {
      return l < 0 ? weights_of(j).output : weights_of(j).layers[size_t(l)].w[size_t(which)];
    };
    for (size_t j0 = 0, j1; j0 < count; j0 = j1) {
      for (j1 = j0 + 1; j1 < count && weight(j1).data == weight(j0).data;) ++j1;
      if (r[j1] > r[j0]) matmul(weight(j0), x + r[j0] * in, r[j1] - r[j0], y + r[j0] * out, pool);
    }
    for (size_t j0 = 0, j1; j0 < count; j0 = j1) {
      for (j1 = j0 + 1; j1 < count && deltas_of(j1, l, which) == deltas_of(j0, l, which);) ++j1;
      if (r[j1] > r[j0]) llama_detail::add_low_rank(deltas_of(j0, l, which), x + r[j0] * in, r[j1] - r[j0], y + r[j0] * out, s, pool);
    }
  };
  // RMSNorm of rows [from[j], to[j]) into y from row r[j], each sequence with its own (possibly replaced) weight.
  auto norm = [&](const TensorView& (*pick)(const LlamaWeights&, int64_t), int64_t l, const int64_t* from, const int64_t* to,
                  const int64_t* r, float* y) {
    for (size_t j = 0; j < count; ++j)
      rmsnorm(h + from[j] * D, static_cast<const float*>(pick(weights_of(j), l).data), to[j] - from[j], D, c.rms_eps, y + r[j] * D);
  };
  const int64_t* r = s.row0.data();
  auto attn_norm = [](const LlamaWeights& w, int64_t l) -> const TensorView& { return w.layers[size_t(l)].attn_norm; };
  auto ffn_norm = [](const LlamaWeights& w, int64_t l) -> const TensorView& { return w.layers[size_t(l)].ffn_norm; };

  float *q = s.q.data(), *k = s.k.data(), *v = s.v.data(), *att = s.att.data(), *gate = s.gate.data(), *up = s.up.data();
  for (int64_t l = 0; l < c.n_layers; ++l) {
    norm(attn_norm, l, r, r + 1, r, xb);  // input_layernorm, every row (r[j] to r[j + 1])
    linear(l, kAttnQ, r, xb, D, q, qd);
    linear(l, kAttnK, r, xb, D, k, kvd);
    linear(l, kAttnV, r, xb, D, v, kvd);
    for (size_t j = 0; j < count; ++j) {
      KVCache& kv = *seqs[s.order[j]].kv;
      for (int64_t i = r[j]; i < r[j + 1]; ++i) {
        const float* cs = &s.rope[size_t(i * c.head_dim)];
        for (int64_t hh = 0; hh < c.n_heads; ++hh) m.rope.apply(&q[i * qd + hh * c.head_dim], cs, m.rope_style);
        for (int64_t hh = 0; hh < c.n_kv_heads; ++hh) m.rope.apply(&k[i * kvd + hh * c.head_dim], cs, m.rope_style);
        const int64_t pos = kv.n_past + (i - r[j]);
        kv.store(kv.k(l, pos), &k[i * kvd]);
        kv.store(kv.v(l, pos), &v[i * kvd]);
      }
      // Causal attention of this sequence's rows against its own cache.
      AttentionShape a;
      a.n = r[j + 1] - r[j], a.m = kv.n_past + a.n, a.n_heads = c.n_heads, a.n_kv_heads = c.n_kv_heads;
      a.hd = c.head_dim, a.q_stride = a.out_stride = qd, a.kv_stride = kvd, a.causal = true;
      multi_head_attention(a, q + r[j] * qd, kv.k(l), kv.v(l), kv.dtype(), att + r[j] * qd, pool);
    }
    linear(l, kAttnOut, r, att, qd, tmp, D);
    for (int64_t i = 0; i < rows * D; ++i) h[i] += tmp[i];

    norm(ffn_norm, l, r, r + 1, r, xb);  // post_attention_layernorm
    linear(l, kFfnGate, r, xb, D, gate, c.ffn_dim);
    linear(l, kFfnUp, r, xb, D, up, c.ffn_dim);
    silu_mul(gate, up, rows * c.ffn_dim);
    linear(l, kFfnDown, r, gate, c.ffn_dim, tmp, D);
    for (int64_t i = 0; i < rows * D; ++i) h[i] += tmp[i];
  }

  // Final norm and lm_head on the rows that want logits (every row, or the last).
  std::vector<int64_t>& from = s.out_from;
  std::vector<int64_t>& to = s.out_to;
  std::vector<int64_t>& orow = s.out_row;
  from.resize(count), to.resize(count), orow.resize(count + 1);
  orow[0] = 0;
  for (size_t j = 0; j < count; ++j) {
    const LlamaSeq& sq = seqs[s.order[j]];
    to[j] = r[j + 1];
    from[j] = !sq.logits ? to[j] : sq.all_logits ? r[j] : to[j] - 1;
    orow[j + 1] = orow[j] + to[j] - from[j];
  }
  auto output_norm = [](const LlamaWeights& w, int64_t) -> const TensorView& { return w.output_norm; };
  norm(output_norm, -1, from.data(), to.data(), orow.data(), s.out_x.data());
  linear(-1, 0, orow.data(), s.out_x.data(), D, s.out.data(), c.n_vocab);
  for (size_t j = 0; j < count; ++j)
    if (float* dst = seqs[s.order[j]].logits) std::copy(s.out.data() + orow[j] * c.n_vocab, s.out.data() + orow[j + 1] * c.n_vocab, dst);
  for (size_t j = 0; j < count; ++j) seqs[j].kv->n_past += seqs[j].n;
}

}  // namespace loupe
#endif  // LOUPE_IMPLEMENTATION
