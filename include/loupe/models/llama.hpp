// LLaMA-family decoder (LlamaForCausalLM): RMSNorm, RoPE, grouped-query
// attention with a KV cache, SwiGLU MLP, final norm, lm_head. Weights come
// from a GGUF file in llama.cpp's naming (tensors.hpp); they stay in the
// mapped file and are never written (Q4_0 matrices are also packed once, at
// load, for the CPU's decode kernels: LoadOptions): a loaded LlamaModel is
// immutable and shared by every sequence that runs on it.
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
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "../io/gguf.hpp"
#include "../ops/backend.hpp"
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

  // Owns the Q4_0 matrices packed for this CPU's kernels (TensorView::packed), or null.
  std::shared_ptr<const void> packed;

  struct LoadOptions {
    // Pack the Q4_0 matrices where this CPU's kernels have a faster layout for
    // them (KernelTable::pack_q4_0_x16) and release their pages of the file:
    // for a model run on the CPU. A model that only runs on a GPU needs no copy.
    bool pack_for_cpu = true;
  };
  // Views point into `file`, which must outlive the model.
  static LlamaModel from_gguf(const GgufFile& f, const LoadOptions& o);
  static LlamaModel from_gguf(const GgufFile& f) { return from_gguf(f, LoadOptions{}); }
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
// default) or F32, in a backend's memory (host memory for the CPU, the GPU's for
// CUDA). Memory follows the positions used: each layer's buffers grow kChunk
// positions at a time up to n_ctx, so a 1000-position description of a 7B
// model holds 0.5 GiB, not the 2 GiB of a full 4096-position cache. (Each
// growth copies the layer's buffer: over a whole 4096-position context that is
// ~16 GB of memcpy against ~15 TB of weight reads, 0.1 %.)
class KVCache {
 public:
  static constexpr int64_t kChunk = 256;

  KVCache() = default;
  KVCache(const LlamaConfig& c, int64_t n_ctx, DType t = DType::F16, Backend& be = cpu_backend())
      : be_(&be), dtype_(t), n_ctx_(n_ctx), width_(c.n_kv_heads * c.head_dim) {
    if (t != DType::F32 && t != DType::F16) fail("KV cache type must be F32 or F16, not ", dtype_name(t));
    if (n_ctx <= 0) fail("the context must hold at least one position, not ", n_ctx);
    for (int64_t l = 0; l < 2 * c.n_layers; ++l) bufs_.emplace_back(be);
  }

  Backend& backend() const { return *be_; }
  DType dtype() const { return dtype_; }
  int64_t n_ctx() const { return n_ctx_; }
  int64_t width() const { return width_; }      // n_kv_heads · head_dim
  int64_t capacity() const { return capacity_; }  // positions allocated
  size_t bytes() const { return bufs_.size() * size_t(capacity_ * width_) * elt(); }
  int64_t n_past = 0;  // positions held

  // Make room for `positions` positions (at most n_ctx).
  void reserve(int64_t positions) {
    if (positions > n_ctx_) fail("sequence of ", positions, " positions exceeds the context of ", n_ctx_);
    if (positions <= capacity_) return;
    const int64_t cap = std::min(n_ctx_, (positions + kChunk - 1) / kChunk * kChunk);
    for (BackendBuffer& b : bufs_) b.grow_keep(size_t(cap * width_) * elt());
    capacity_ = cap;
  }
  void clear() { n_past = 0; }

  // Layer `layer`'s keys or values from position pos on ([capacity, width], this backend's memory).
  void* k(int64_t layer, int64_t pos = 0) const { return bufs_[size_t(2 * layer)].as<uint8_t>() + size_t(pos * width_) * elt(); }
  void* v(int64_t layer, int64_t pos = 0) const { return bufs_[size_t(2 * layer + 1)].as<uint8_t>() + size_t(pos * width_) * elt(); }

 private:
  size_t elt() const { return dtype_ == DType::F32 ? 4 : 2; }
  Backend* be_ = &cpu_backend();
  DType dtype_ = DType::F16;
  int64_t n_ctx_ = 0, width_ = 0, capacity_ = 0;
  std::vector<BackendBuffer> bufs_;  // per layer: keys, values [capacity, width]
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

// Activations of one pass, in the backend's memory, sized for the largest pass
// so far and kept: after the first step of a given size nothing is allocated.
struct LlamaScratch {
  explicit LlamaScratch(Backend& be = cpu_backend())
      : be(&be), h(be), xb(be), q(be), k(be), v(be), att(be), gate(be), up(be), tmp(be), rope(be), out_x(be), out(be),
        lora_t(be), lora_u(be) {}
  Backend* be;
  BackendBuffer h, xb, q, k, v, att, gate, up, tmp, rope, out_x, out, lora_t, lora_u;
  std::vector<float> rope_host;                          // each row's RoPE angles, computed here, then uploaded
  std::vector<size_t> order;                             // sequences grouped by adapters
  std::vector<int64_t> row0, out_from, out_to, out_row;  // each sequence's rows in the pass, and its logit rows
  static void grow(BackendBuffer& b, int64_t floats) { b.reserve(size_t(floats) * sizeof(float)); }
  // Room for `rows` rows of which `out_rows` need logits.
  void reserve(const LlamaConfig& c, int64_t rows, int64_t out_rows) {
    const int64_t qd = c.n_heads * c.head_dim, kvd = c.n_kv_heads * c.head_dim;
    for (auto* b : {&h, &xb, &tmp}) grow(*b, rows * c.dim);
    for (auto* b : {&q, &att}) grow(*b, rows * qd);
    for (auto* b : {&k, &v}) grow(*b, rows * kvd);
    for (auto* b : {&gate, &up}) grow(*b, rows * c.ffn_dim);
    grow(rope, rows * c.head_dim);
    if (rope_host.size() < size_t(rows * c.head_dim)) rope_host.resize(size_t(rows * c.head_dim));
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
// It runs on the scratch's backend, which must be the caches' too; x and logits
// are host memory.
void forward(const LlamaModel& m, LlamaSeq* seqs, size_t count, LlamaScratch& s, ThreadPool* pool = nullptr);

}  // namespace loupe

#ifdef LOUPE_IMPLEMENTATION
#include "../ops/kernels.hpp"

namespace loupe {

namespace llama_detail {

// y [n, out] += Σ scale·(x·Aᵀ)·Bᵀ over the updates of one weight; t, u: scratch.
inline void add_low_rank(const std::vector<LowRankDelta>& ds, const float* x, int64_t n, float* y, LlamaScratch& s, ThreadPool* pool) {
  Backend& be = *s.be;
  for (const LowRankDelta& d : ds) {
    const int64_t r = d.a.rows(), out = d.b.rows();
    LlamaScratch::grow(s.lora_t, n * r);
    LlamaScratch::grow(s.lora_u, n * out);
    be.matmul(d.a, x, n, s.lora_t.as(), pool);
    be.matmul(d.b, s.lora_t.as(), n, s.lora_u.as(), pool);
    be.axpy(d.scale, s.lora_u.as(), y, n * out);
  }
}

// The Q4_0 matrices a forward pass multiplies by, copied once into the kernels'
// layout. Each matrix's file pages are released as soon as it is copied, so the
// process holds one copy of the weights, not two (peak RSS: the file and one
// matrix; llama.cpp's CPU backend keeps both).
void pack_for_cpu(LlamaModel& m, const GgufFile& f) {
  const KernelTable& kt = kernels();
  if (!kt.pack_q4_0_x16) return;
  std::vector<TensorView*> todo;
  auto take = [&](TensorView& v) {
    if (v.dtype == DType::Q4_0 && v.ndim == 2 && v.contiguous() && scalar::x16_packable(v.rows(), v.cols())) todo.push_back(&v);
  };
  for (LlamaLayer& l : m.weights.layers)
    for (TensorView& w : l.w) take(w);
  take(m.weights.output);
  if (todo.empty()) return;
  std::vector<size_t> at(todo.size() + 1, 0);  // each matrix 64-byte aligned
  for (size_t i = 0; i < todo.size(); ++i) at[i + 1] = at[i] + (todo[i]->nbytes() + 63) / 64 * 64;
  auto buf = std::make_shared<AlignedBuffer<uint8_t>>();
  buf->resize(at.back());
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  // Most of the time is the kernel clearing fresh pages (perf, 7B: 50 % in
  // clear_page_erms, 19 % packing): huge pages take fewer faults, and the matrices
  // are packed on several threads so the clearing is too. 7B Q4_0 from the page
  // cache, Zen 4, 2 cores: 2.7 s on one thread with 4 KB pages, 0.7–1.6 s so.
  {
    const auto page = uintptr_t(::sysconf(_SC_PAGESIZE)), p = uintptr_t(buf->data());
    const uintptr_t a = (p + page - 1) / page * page, e = (p + at.back()) / page * page;
    if (e > a) ::madvise(reinterpret_cast<void*>(a), e - a, MADV_HUGEPAGE);
  }
#endif
  ThreadPool pool(int(std::clamp(std::thread::hardware_concurrency(), 1u, 8u)));
  pool.parallel_for(int64_t(todo.size()), [&](int64_t i) {
    TensorView& v = *todo[size_t(i)];
    uint8_t* out = buf->data() + at[size_t(i)];
    kt.pack_q4_0_x16(static_cast<const uint8_t*>(v.data), v.row_stride(), v.rows(), v.cols() / QK, out);
    v.packed = out;
    f.blob.release(v.data, v.nbytes());
  });
  m.packed = std::move(buf);
}
}  // namespace llama_detail

LlamaModel LlamaModel::from_gguf(const GgufFile& f, const LoadOptions& o) {
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
  if (o.pack_for_cpu) llama_detail::pack_for_cpu(m, f);
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
  Backend& be = *s.be;
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
    if (&q.kv->backend() != &be) fail("forward: a KV cache on ", q.kv->backend().describe(), " in a pass on ", be.describe());
    for (size_t i = 0; i < j; ++i)
      if (seqs[s.order[i]].kv == q.kv) fail("forward: the same KV cache twice in one pass");
    q.kv->reserve(q.kv->n_past + q.n);
    s.row0[j] = rows;
    rows += q.n;
    if (q.logits) out_rows += q.all_logits ? q.n : 1;
  }
  s.row0[count] = rows;
  s.reserve(c, rows, out_rows);
  float *h = s.h.as(), *xb = s.xb.as(), *tmp = s.tmp.as(), *cs = s.rope.as();
  for (size_t j = 0; j < count; ++j) {
    const LlamaSeq& q = seqs[s.order[j]];
    be.upload(h + s.row0[j] * D, q.x, size_t(q.n * D) * sizeof(float));
    for (int64_t i = 0; i < q.n; ++i) m.rope.angles(q.kv->n_past + i, &s.rope_host[size_t((s.row0[j] + i) * c.head_dim)]);
  }
  be.upload(cs, s.rope_host.data(), size_t(rows * c.head_dim) * sizeof(float));
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
      if (r[j1] > r[j0]) be.matmul(weight(j0), x + r[j0] * in, r[j1] - r[j0], y + r[j0] * out, pool);
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
      if (to[j] > from[j]) be.rmsnorm(h + from[j] * D, pick(weights_of(j), l), to[j] - from[j], D, c.rms_eps, y + r[j] * D);
  };
  const int64_t* r = s.row0.data();
  auto attn_norm = [](const LlamaWeights& w, int64_t l) -> const TensorView& { return w.layers[size_t(l)].attn_norm; };
  auto ffn_norm = [](const LlamaWeights& w, int64_t l) -> const TensorView& { return w.layers[size_t(l)].ffn_norm; };

  float *q = s.q.as(), *k = s.k.as(), *v = s.v.as(), *att = s.att.as(), *gate = s.gate.as(), *up = s.up.as();
  for (int64_t l = 0; l < c.n_layers; ++l) {
    norm(attn_norm, l, r, r + 1, r, xb);  // input_layernorm, every row (r[j] to r[j + 1])
    linear(l, kAttnQ, r, xb, D, q, qd);
    linear(l, kAttnK, r, xb, D, k, kvd);
    linear(l, kAttnV, r, xb, D, v, kvd);
    for (size_t j = 0; j < count; ++j) {
      KVCache& kv = *seqs[s.order[j]].kv;
      const int64_t n = r[j + 1] - r[j];
      be.rope(q + r[j] * qd, n, c.n_heads, qd, c.head_dim, cs + r[j] * c.head_dim, m.rope_style);
      be.rope(k + r[j] * kvd, n, c.n_kv_heads, kvd, c.head_dim, cs + r[j] * c.head_dim, m.rope_style);
      be.store_rows(k + r[j] * kvd, n, kvd, kv.k(l, kv.n_past), kv.dtype(), kvd);
      be.store_rows(v + r[j] * kvd, n, kvd, kv.v(l, kv.n_past), kv.dtype(), kvd);
      // Causal attention of this sequence's rows against its own cache.
      AttentionShape a;
      a.n = r[j + 1] - r[j], a.m = kv.n_past + a.n, a.n_heads = c.n_heads, a.n_kv_heads = c.n_kv_heads;
      a.hd = c.head_dim, a.q_stride = a.out_stride = qd, a.kv_stride = kvd, a.causal = true;
      be.attention(a, q + r[j] * qd, kv.k(l), kv.v(l), kv.dtype(), att + r[j] * qd, pool);
    }
    linear(l, kAttnOut, r, att, qd, tmp, D);
    be.axpy(1.0f, tmp, h, rows * D);

    norm(ffn_norm, l, r, r + 1, r, xb);  // post_attention_layernorm
    linear(l, kFfnGate, r, xb, D, gate, c.ffn_dim);
    linear(l, kFfnUp, r, xb, D, up, c.ffn_dim);
    be.silu_mul(gate, up, rows * c.ffn_dim);
    linear(l, kFfnDown, r, gate, c.ffn_dim, tmp, D);
    be.axpy(1.0f, tmp, h, rows * D);
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
  norm(output_norm, -1, from.data(), to.data(), orow.data(), s.out_x.as());
  linear(-1, 0, orow.data(), s.out_x.as(), D, s.out.as(), c.n_vocab);
  for (size_t j = 0; j < count; ++j)
    if (float* dst = seqs[s.order[j]].logits)
      be.download(dst, s.out.as() + orow[j] * c.n_vocab, size_t((orow[j + 1] - orow[j]) * c.n_vocab) * sizeof(float));
  for (size_t j = 0; j < count; ++j) seqs[j].kv->n_past += seqs[j].n;
}

}  // namespace loupe
#endif  // LOUPE_IMPLEMENTATION
