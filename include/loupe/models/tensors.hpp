// The registry: what a model file holds, in one place. Hyper-parameters, the
// GGUF metadata keys they are stored under (llama.cpp's gguf-py constants:
// LLM_KV_* for llama, clip.* as its legacy convert_image_encoder_to_gguf.py
// writes them), and every tensor's two names (llama.cpp's and Hugging Face's),
// its shape and the row permutation q/k get. The loaders (llama.hpp, clip.hpp,
// projector.hpp), the converter, the LoRA readers and the benchmark's
// synthetic models all read it from here.
#pragma once
#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "../io/gguf.hpp"

namespace loupe {

// ------------------------------------------------------ checkpoint naming

// How a checkpoint names the parts of a LLaVA model: the prefixes in front of
// LlamaForCausalLM's own names below "model." ("layers.3.self_attn.q_proj"),
// of CLIPVisionModel's "vision_model.*", and of the projector's two linears.
// Three generations are published:
//  - LLaVA's own LlavaLlamaForCausalLM (liuhaotian/llava-v1.5-*, ShareGPT4V):
//    model.layers.*, lm_head.*, model.vision_tower.vision_tower.vision_model.*,
//    model.mm_projector.{0,2}.* (an nn.Sequential); a plain LLaMA is this too;
//  - transformers' LlavaForConditionalGeneration before 4.52 (llava-hf/*):
//    language_model.model.*, language_model.lm_head.*, vision_tower.vision_model.*,
//    multi_modal_projector.linear_{1,2}.* (LlavaMultiModalProjector);
//  - the same class from 4.52 on, whose _checkpoint_conversion_mapping renames
//    the older keys (models/llava/modeling_llava.py): model.language_model.*,
//    lm_head.*, model.vision_tower.vision_model.*, model.multi_modal_projector.*.
// PEFT adapters trained on each name their modules the same way.
struct CheckpointNaming {
  const char* what;       // for messages
  const char* text;       // in front of "embed_tokens", "layers.N.", "norm"
  const char* lm_head;    // in front of "weight" of the output projection
  const char* tower;      // in front of "vision_model."
  const char* projector;  // in front of the projector's linears
  const char* linear[2];  // the projector's two linears
};
inline constexpr CheckpointNaming kLlavaNaming{"LLaVA (LlavaLlamaForCausalLM)", "model.", "lm_head.",
                                              "model.vision_tower.vision_tower.", "model.mm_projector.", {"0.", "2."}};
inline constexpr CheckpointNaming kLlavaHfNaming{"transformers' LlavaForConditionalGeneration (before 4.52)",
                                                "language_model.model.", "language_model.lm_head.", "vision_tower.",
                                                "multi_modal_projector.", {"linear_1.", "linear_2."}};
inline constexpr CheckpointNaming kLlavaHf452Naming{"transformers' LlavaForConditionalGeneration (4.52 and later)",
                                                   "model.language_model.", "lm_head.", "model.vision_tower.",
                                                   "model.multi_modal_projector.", {"linear_1.", "linear_2."}};
inline constexpr const CheckpointNaming* kCheckpointNamings[] = {&kLlavaNaming, &kLlavaHfNaming, &kLlavaHf452Naming};

// The naming whose token embedding `has(name)` finds (LLaVA's by default).
template <class Has>
const CheckpointNaming& detect_naming(Has&& has) {
  for (const CheckpointNaming* n : kCheckpointNamings)
    if (has(std::string(n->text) + "embed_tokens.weight")) return *n;
  return kLlavaNaming;
}

// The MindSpore port of ShareGPT4V (mindone examples/sharegpt_4v): its
// share4v/tools/convert_weights.py renames the Hugging Face parameters
// (model.layers.N.self_attn.q_proj -> model.layers.N.attention.wq, mlp.gate_proj
// -> feed_forward.w1, norms, embeddings as embedding_table, the CLIP tower's
// LayerNorms as gamma / beta, the tower under vision_tower.), transposing
// nothing. Its current network keeps Hugging Face's names but the embedding's,
// so both are read. The Hugging Face name of such a parameter:
inline std::string hf_name_from_mindspore(std::string n) {
  static const std::pair<const char*, const char*> parts[] = {
      {".attention.wq.", ".self_attn.q_proj."},        {".attention.wk.", ".self_attn.k_proj."},
      {".attention.wv.", ".self_attn.v_proj."},        {".attention.wo.", ".self_attn.o_proj."},
      {".feed_forward.w1.", ".mlp.gate_proj."},        {".feed_forward.w3.", ".mlp.up_proj."},
      {".feed_forward.w2.", ".mlp.down_proj."},        {".attention_norm.", ".input_layernorm."},
      {".ffn_norm.", ".post_attention_layernorm."},    {"model.norm_out.", "model.norm."},
      {".embed_tokens.embedding_table", ".embed_tokens.weight"},
      {".position_embedding.embedding_table", ".position_embedding.weight"}};
  auto ends = [&](const std::string& x) { return n.size() >= x.size() && n.compare(n.size() - x.size(), x.size(), x) == 0; };
  if (n.rfind("vision_tower.vision_model.", 0) == 0) n.erase(0, 13);  // the tower's own checkpoint
  for (const auto& [ms, hf] : parts)
    if (const size_t at = n.find(ms); at != std::string::npos) n.replace(at, std::strlen(ms), hf);
  if (n.rfind("vision_model.", 0) == 0) {  // nn.LayerNorm's weight / bias as MindSpore's gamma / beta
    if (ends(".gamma")) n.replace(n.size() - 6, 6, ".weight");
    else if (ends(".beta")) n.replace(n.size() - 5, 5, ".bias");
  }
  return n;
}

// ------------------------------------------------------------------ LLaMA

struct LlamaConfig {
  int64_t n_vocab = 0, dim = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0, ffn_dim = 0, n_ctx = 0, head_dim = 0;
  float rms_eps = 1e-5f, rope_base = 10000.0f;
};

// The adaptable linear weights of a layer, in HF's order.
enum LlamaLinear : int { kAttnQ, kAttnK, kAttnV, kAttnOut, kFfnGate, kFfnUp, kFfnDown, kLlamaLinears };

// Where a tensor sits in the model: one of the three outside the blocks, or a
// block's norm or linear weight.
enum class LlamaSlot { TokEmbd, OutputNorm, Output, AttnNorm, FfnNorm, Linear };

struct LlamaTensor {
  std::string gguf;  // llama.cpp's name: "blk.3.attn_q.weight"
  std::string hf;    // LlamaForCausalLM's: "model.layers.3.self_attn.q_proj.weight"
  std::vector<int64_t> shape;  // PyTorch order
  LlamaSlot slot = LlamaSlot::TokEmbd;
  int64_t layer = -1;          // block index, -1 outside the blocks
  LlamaLinear linear = kAttnQ;  // for LlamaSlot::Linear
  int64_t permute_heads = 0;   // q/k: rows permuted per head (qk_source_row), 0: stored as in HF
  std::string hf_module() const { return hf.substr(0, hf.size() - 7); }  // without ".weight" (PEFT's module name)
};

// Every tensor of a LLaMA model in file order (llama.cpp's convert_hf_to_gguf
// order), `hf` names as `naming` gives them; `output` false for tied
// embeddings (no lm_head / output.weight).
inline std::vector<LlamaTensor> llama_tensors(const LlamaConfig& c, bool output = true,
                                              const CheckpointNaming& naming = kLlavaNaming) {
  const int64_t q = c.n_heads * c.head_dim, kv = c.n_kv_heads * c.head_dim;
  const std::string m = naming.text;
  std::vector<LlamaTensor> t;
  t.push_back({"token_embd.weight", m + "embed_tokens.weight", {c.n_vocab, c.dim}, LlamaSlot::TokEmbd});
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string g = "blk." + std::to_string(l) + ".", h = m + "layers." + std::to_string(l) + ".";
    auto lin = [&](const char* gn, const char* hn, std::vector<int64_t> shape, LlamaLinear which, int64_t heads = 0) {
      t.push_back({g + gn + ".weight", h + hn + ".weight", std::move(shape), LlamaSlot::Linear, l, which, heads});
    };
    t.push_back({g + "attn_norm.weight", h + "input_layernorm.weight", {c.dim}, LlamaSlot::AttnNorm, l});
    lin("attn_q", "self_attn.q_proj", {q, c.dim}, kAttnQ, c.n_heads);
    lin("attn_k", "self_attn.k_proj", {kv, c.dim}, kAttnK, c.n_kv_heads);
    lin("attn_v", "self_attn.v_proj", {kv, c.dim}, kAttnV);
    lin("attn_output", "self_attn.o_proj", {c.dim, q}, kAttnOut);
    t.push_back({g + "ffn_norm.weight", h + "post_attention_layernorm.weight", {c.dim}, LlamaSlot::FfnNorm, l});
    lin("ffn_gate", "mlp.gate_proj", {c.ffn_dim, c.dim}, kFfnGate);
    lin("ffn_up", "mlp.up_proj", {c.ffn_dim, c.dim}, kFfnUp);
    lin("ffn_down", "mlp.down_proj", {c.dim, c.ffn_dim}, kFfnDown);
  }
  t.push_back({"output_norm.weight", m + "norm.weight", {c.dim}, LlamaSlot::OutputNorm});
  if (output) t.push_back({"output.weight", std::string(naming.lm_head) + "weight", {c.n_vocab, c.dim}, LlamaSlot::Output});
  return t;
}

// The q/k row permutation. Row r of llama.cpp's layout is row qk_source_row(r)
// of HF's: HF keeps a head's two rotation halves apart (i, i + d/2, rotate_half),
// llama.cpp interleaves them (2i, 2i+1) — the inverse of the permutation HF's
// convert_llama_weights_to_hf.py applies. Same RoPE, other pairing (ops.hpp's RopeStyle).
inline int64_t qk_source_row(int64_t r, int64_t head_dim) {
  const int64_t h = r / head_dim, j = r % head_dim;
  return h * head_dim + (j % 2) * (head_dim / 2) + j / 2;
}

// A size read from a file, checked before anything is computed from it.
inline void check_size(const std::string& where, const char* key, int64_t v, int64_t lo, int64_t hi) {
  if (v < lo || v > hi) fail(where, ": ", key, " ", v, " is out of range (", lo, " to ", hi, ")");
}
// A real number read from a file: finite, lo < v <= hi.
inline void check_real(const std::string& where, const char* key, double v, double lo, double hi) {
  if (!(v > lo && v <= hi)) fail(where, ": ", key, " ", v, " is out of range (more than ", lo, ", at most ", hi, ")");
}

// Names of a LLaMA's sizes in the file they are read from, for messages.
struct LlamaSizeKeys {
  const char *dim, *n_layers, *n_heads, *n_kv_heads, *ffn_dim, *n_ctx, *n_vocab, *rms_eps, *rope_base;
};
inline constexpr LlamaSizeKeys kHfLlamaKeys{"hidden_size",     "num_hidden_layers",       "num_attention_heads",
                                            "num_key_value_heads", "intermediate_size",   "max_position_embeddings",
                                            "vocab_size",      "rms_norm_eps",            "rope_theta"};
inline constexpr LlamaSizeKeys kGgufLlamaKeys{"llama.embedding_length",       "llama.block_count",
                                              "llama.attention.head_count",   "llama.attention.head_count_kv",
                                              "llama.feed_forward_length",    "llama.context_length",
                                              "token_embd.weight rows",       "llama.attention.layer_norm_rms_epsilon",
                                              "llama.rope.freq_base"};

// A LLaMA's sizes as read from a file (config.json or llama.*), checked before
// anything is allocated from them: heads divide the width, kv heads divide the
// heads, the head dimension is even (RoPE pairs), and every size within bounds
// far above published LLaMAs (Llama 3.1 405B: width 16384, MLP 53248, 126
// layers, 128k positions; vocabularies to 256k) so that a config with
// num_hidden_layers 300000000 is an error, not an allocation that grows until
// the machine runs out. n_vocab 0 means "not known yet" (GGUF: from the tensor).
inline void check_llama_sizes(const LlamaConfig& c, const std::string& where, const LlamaSizeKeys& k) {
  constexpr int64_t kMaxWidth = 65536, kMaxLayers = 1024, kMaxCtx = int64_t(1) << 24, kMaxVocab = int64_t(1) << 24;
  check_size(where, k.dim, c.dim, 1, kMaxWidth);
  check_size(where, k.n_layers, c.n_layers, 1, kMaxLayers);
  check_size(where, k.n_heads, c.n_heads, 1, c.dim);
  check_size(where, k.n_kv_heads, c.n_kv_heads, 1, c.n_heads);
  if (c.dim % c.n_heads) fail(where, ": ", k.dim, " ", c.dim, " is not a multiple of ", k.n_heads, " ", c.n_heads);
  if (c.n_heads % c.n_kv_heads) fail(where, ": ", k.n_heads, " ", c.n_heads, " is not a multiple of ", k.n_kv_heads, " ", c.n_kv_heads);
  if ((c.dim / c.n_heads) % 2) fail(where, ": head dimension ", c.dim / c.n_heads, " is odd; RoPE needs pairs");
  check_size(where, k.ffn_dim, c.ffn_dim, 1, 4 * kMaxWidth);
  check_size(where, k.n_ctx, c.n_ctx, 1, kMaxCtx);
  check_size(where, k.n_vocab, c.n_vocab, 0, kMaxVocab);
  check_real(where, k.rms_eps, c.rms_eps, 0, 1);
  check_real(where, k.rope_base, c.rope_base, 0, 1e12);
}

// llama.* metadata (llama.cpp's LLM_KV_*), read with llama.cpp's defaults and checked.
inline LlamaConfig read_llama_config(const GgufFile& f) {
  const std::string arch = f.get_str("general.architecture");
  if (arch != "llama") fail(f.name(), ": architecture '", arch, "' is not supported (expected llama)");
  LlamaConfig c;
  c.dim = f.get_int("llama.embedding_length");
  c.n_layers = f.get_int("llama.block_count");
  c.n_heads = f.get_int("llama.attention.head_count");
  c.n_kv_heads = f.get_int("llama.attention.head_count_kv", c.n_heads);
  c.ffn_dim = f.get_int("llama.feed_forward_length");
  c.n_ctx = f.get_int("llama.context_length", 2048);
  c.rms_eps = float(f.get_float("llama.attention.layer_norm_rms_epsilon", 1e-5));
  c.rope_base = float(f.get_float("llama.rope.freq_base", 10000.0));
  if (const GgufTensor* e = f.tensor("token_embd.weight"); e && e->shape.size() == 2) c.n_vocab = e->shape[0];
  check_llama_sizes(c, f.name(), kGgufLlamaKeys);
  c.head_dim = c.dim / c.n_heads;
  if (f.get_int("llama.rope.dimension_count", c.head_dim) != c.head_dim)
    fail(f.name(), ": partial rotary embeddings (llama.rope.dimension_count) are not supported");
  return c;
}

// loupe's own key: the name of the chat template (text/chat.hpp) the model was
// trained with, where that is not vicuna_v1 (llama.cpp ignores it).
inline constexpr const char* kChatTemplateKey = "loupe.chat_template";

inline void write_llama_config(GgufWriter& w, const LlamaConfig& c) {
  w.set("general.architecture", GgufValue::str("llama"));
  w.set("llama.vocab_size", GgufValue::u32(uint32_t(c.n_vocab)));
  w.set("llama.context_length", GgufValue::u32(uint32_t(c.n_ctx)));
  w.set("llama.embedding_length", GgufValue::u32(uint32_t(c.dim)));
  w.set("llama.block_count", GgufValue::u32(uint32_t(c.n_layers)));
  w.set("llama.feed_forward_length", GgufValue::u32(uint32_t(c.ffn_dim)));
  w.set("llama.rope.dimension_count", GgufValue::u32(uint32_t(c.head_dim)));
  w.set("llama.attention.head_count", GgufValue::u32(uint32_t(c.n_heads)));
  w.set("llama.attention.head_count_kv", GgufValue::u32(uint32_t(c.n_kv_heads)));
  w.set("llama.attention.layer_norm_rms_epsilon", GgufValue::f32(c.rms_eps));
  w.set("llama.rope.freq_base", GgufValue::f32(c.rope_base));
}

// general.file_type values (llama.cpp's LLAMA_FTYPE_*).
inline uint32_t gguf_file_type(DType t) {
  switch (t) {
    case DType::F32: return 0;
    case DType::F16: return 1;
    case DType::Q4_0: return 2;
    case DType::Q8_0: return 7;
    case DType::BF16: return 32;
    default: fail("cannot write ", dtype_name(t), " files");
  }
}

// ---------------------------------------------------- CLIP tower + projector

struct ClipConfig {
  int64_t image_size = 336, patch_size = 14, dim = 0, ffn_dim = 0, n_heads = 0;
  int64_t n_layers_run = 0;    // blocks to run: hidden_states[n_layers_run] is the feature layer
  int64_t projection_dim = 0;  // CLIP's text-image projection width (metadata only; LLaVA does not use it)
  float eps = 1e-5f;
  bool gelu = false;  // clip.use_gelu: exact GELU instead of quick_gelu
  std::array<float, 3> mean{0.48145466f, 0.4578275f, 0.40821073f}, std{0.26862954f, 0.26130258f, 0.27577711f};  // CLIP's
  std::string aspect_ratio = "pad";  // LLaVA's image_aspect_ratio: "pad" or "none"
  // transformers' vision_feature_select_strategy "full": the CLS position is an
  // image feature too ("default", and LLaVA's mm_vision_select_feature "patch", drop it).
  bool keep_cls = false;
  int64_t grid() const { return image_size / patch_size; }
  int64_t n_patches() const { return grid() * grid(); }
  int64_t n_features() const { return n_patches() + (keep_cls ? 1 : 0); }  // image positions in the prompt
};

// Names of a tower's sizes in the file they are read from, for messages.
struct ClipSizeKeys {
  const char *image_size, *patch_size, *dim, *ffn_dim, *n_heads, *n_layers;
};
inline constexpr ClipSizeKeys kHfClipKeys{"image_size",        "patch_size",          "hidden_size",
                                          "intermediate_size", "num_attention_heads", "num_hidden_layers"};
inline constexpr ClipSizeKeys kGgufClipKeys{"clip.vision.image_size",          "clip.vision.patch_size",
                                            "clip.vision.embedding_length",    "clip.vision.feed_forward_length",
                                            "clip.vision.attention.head_count", "clip.vision.block_count"};

// A tower's sizes as read from a file (config.json by the converter, clip.* by
// the loader), checked before anything is computed from them: all positive,
// the image a whole number of patches, the width a whole number of heads, and
// within bounds far above any published CLIP-style tower (ViT-22B: width 6144,
// MLP 24576, 48 layers; SigLIP at 980 px: a 70 x 70 grid) that keep tensor
// sizes and the attention's positions x positions scores in range. `n_layers`:
// the tower's blocks. Fails naming `where`, the key and its value.
inline void check_clip_sizes(const ClipConfig& c, int64_t n_layers, const std::string& where, const ClipSizeKeys& k) {
  constexpr int64_t kMaxImage = 4096, kMaxGrid = 256, kMaxWidth = 65536, kMaxLayers = 1024;
  check_size(where, k.image_size, c.image_size, 1, kMaxImage);
  check_size(where, k.patch_size, c.patch_size, 1, c.image_size);
  if (c.image_size % c.patch_size)
    fail(where, ": ", k.image_size, " ", c.image_size, " is not a multiple of ", k.patch_size, " ", c.patch_size);
  if (c.grid() > kMaxGrid)
    fail(where, ": ", k.image_size, " ", c.image_size, " / ", k.patch_size, " ", c.patch_size, " is a grid of ", c.grid(),
         " x ", c.grid(), " patches, more than ", kMaxGrid, " x ", kMaxGrid);
  check_size(where, k.dim, c.dim, 1, kMaxWidth);
  check_size(where, k.ffn_dim, c.ffn_dim, 1, 4 * kMaxWidth);
  check_size(where, k.n_heads, c.n_heads, 1, c.dim);
  if (c.dim % c.n_heads) fail(where, ": ", k.dim, " ", c.dim, " is not a multiple of ", k.n_heads, " ", c.n_heads);
  check_size(where, k.n_layers, n_layers, 1, kMaxLayers);
  check_real(where, "layer_norm_eps", c.eps, 0, 1);
  for (size_t i = 0; i < 3; ++i) check_real(where, "image_std", c.std[i], 1e-6, 1e6), check_real(where, "image_mean", c.mean[i], -1e6, 1e6);
}

// How a tensor is stored when converted: F32 (norms, biases, embeddings added
// to activations), the patch convolution (F16 unless the output is F32), or a
// weight matrix (the requested type).
enum class Storage { F32, Conv, Matrix };

// Where a tensor sits: the embeddings, a block's field, or the projector.
enum class ClipField {
  ClassEmbd, PatchEmbd, PosEmbd, PreLnW, PreLnB,
  QW, QB, KW, KB, VW, VB, OW, OB, Ln1W, Ln1B, Fc1W, Fc1B, Fc2W, Fc2B, Ln2W, Ln2B,
  Mm0W, Mm0B, Mm2W, Mm2B
};

struct ClipTensor {
  std::string gguf, hf;  // hf: relative to the tower's "vision_model." (or the projector's full name)
  std::vector<int64_t> shape;
  Storage storage = Storage::Matrix;
  ClipField field = ClipField::ClassEmbd;
  int64_t layer = -1;  // block index, -1 outside the blocks
  bool projector() const { return field >= ClipField::Mm0W; }  // mm.*: from the LLaVA checkpoint, not the tower
};

// A tower block's name prefix: llama.cpp's, and Hugging Face's below "vision_model.".
inline std::string clip_block_gguf(int64_t l) { return "v.blk." + std::to_string(l) + "."; }
inline std::string clip_block_hf(int64_t l) { return "encoder.layers." + std::to_string(l) + "."; }

// LLaVA's mlp2x_gelu projector (Linear, GELU, Linear) -> mm.{0,2}.*; `hf`
// names (full, as the checkpoint has them) as `naming` gives them.
inline std::vector<ClipTensor> projector_tensors(int64_t vision_dim, int64_t text_dim,
                                                 const CheckpointNaming& naming = kLlavaNaming) {
  const std::string l1 = std::string(naming.projector) + naming.linear[0], l2 = std::string(naming.projector) + naming.linear[1];
  return {{"mm.0.weight", l1 + "weight", {text_dim, vision_dim}, Storage::Matrix, ClipField::Mm0W},
          {"mm.0.bias", l1 + "bias", {text_dim}, Storage::F32, ClipField::Mm0B},
          {"mm.2.weight", l2 + "weight", {text_dim, text_dim}, Storage::Matrix, ClipField::Mm2W},
          {"mm.2.bias", l2 + "bias", {text_dim}, Storage::F32, ClipField::Mm2B}};
}

// The tower's tensors up to block n_layers_run, then the mlp2x_gelu projector
// (`text_dim` wide); in the order the converter writes them.
inline std::vector<ClipTensor> clip_tensors(const ClipConfig& c, int64_t text_dim, const CheckpointNaming& naming = kLlavaNaming) {
  using F = ClipField;
  const int64_t D = c.dim, P = c.patch_size, FF = c.ffn_dim;
  std::vector<ClipTensor> t;
  t.push_back({"v.class_embd", "embeddings.class_embedding", {D}, Storage::F32, F::ClassEmbd});
  t.push_back({"v.patch_embd.weight", "embeddings.patch_embedding.weight", {D, 3, P, P}, Storage::Conv, F::PatchEmbd});
  t.push_back({"v.position_embd.weight", "embeddings.position_embedding.weight", {c.n_patches() + 1, D}, Storage::F32, F::PosEmbd});
  t.push_back({"v.pre_ln.weight", "pre_layrnorm.weight", {D}, Storage::F32, F::PreLnW});  // sic: HF's name
  t.push_back({"v.pre_ln.bias", "pre_layrnorm.bias", {D}, Storage::F32, F::PreLnB});
  for (int64_t l = 0; l < c.n_layers_run; ++l) {
    const std::string g = clip_block_gguf(l), h = clip_block_hf(l);
    auto add = [&](const std::string& gn, const std::string& hn, std::vector<int64_t> shape, Storage st, F f) {
      t.push_back({g + gn, h + hn, std::move(shape), st, f, l});
    };
    const struct {
      const char *hf, *gguf;
      F w, b;
    } attn[] = {{"q_proj", "attn_q", F::QW, F::QB}, {"k_proj", "attn_k", F::KW, F::KB},
                {"v_proj", "attn_v", F::VW, F::VB}, {"out_proj", "attn_out", F::OW, F::OB}};
    for (const auto& a : attn) {
      add(std::string(a.gguf) + ".weight", std::string("self_attn.") + a.hf + ".weight", {D, D}, Storage::Matrix, a.w);
      add(std::string(a.gguf) + ".bias", std::string("self_attn.") + a.hf + ".bias", {D}, Storage::F32, a.b);
    }
    add("ln1.weight", "layer_norm1.weight", {D}, Storage::F32, F::Ln1W);
    add("ln1.bias", "layer_norm1.bias", {D}, Storage::F32, F::Ln1B);
    // fc1 (dim -> ffn) is "ffn_up" in llama.cpp's current naming (its legacy converter swapped the two).
    add("ffn_up.weight", "mlp.fc1.weight", {FF, D}, Storage::Matrix, F::Fc1W);
    add("ffn_up.bias", "mlp.fc1.bias", {FF}, Storage::F32, F::Fc1B);
    add("ffn_down.weight", "mlp.fc2.weight", {D, FF}, Storage::Matrix, F::Fc2W);
    add("ffn_down.bias", "mlp.fc2.bias", {D}, Storage::F32, F::Fc2B);
    add("ln2.weight", "layer_norm2.weight", {D}, Storage::F32, F::Ln2W);
    add("ln2.bias", "layer_norm2.bias", {D}, Storage::F32, F::Ln2B);
  }
  for (const ClipTensor& p : projector_tensors(D, text_dim, naming)) t.push_back(p);
  return t;
}

inline constexpr const char* kFeatureSelectKey = "loupe.vision.feature_select_strategy";

// clip.* metadata as llama.cpp's LLaVA mmproj files hold it. Blocks beyond the
// feature layer are not written, so block_count = feature layer.
inline void write_clip_config(GgufWriter& w, const ClipConfig& c) {
  w.set("general.architecture", GgufValue::str("clip"));
  w.set("clip.has_text_encoder", GgufValue::boolean(false));
  w.set("clip.has_vision_encoder", GgufValue::boolean(true));
  w.set("clip.has_llava_projector", GgufValue::boolean(true));
  w.set("clip.projector_type", GgufValue::str("mlp"));
  w.set("clip.vision.image_size", GgufValue::u32(uint32_t(c.image_size)));
  w.set("clip.vision.patch_size", GgufValue::u32(uint32_t(c.patch_size)));
  w.set("clip.vision.embedding_length", GgufValue::u32(uint32_t(c.dim)));
  w.set("clip.vision.feed_forward_length", GgufValue::u32(uint32_t(c.ffn_dim)));
  w.set("clip.vision.projection_dim", GgufValue::u32(uint32_t(c.projection_dim)));
  w.set("clip.vision.attention.head_count", GgufValue::u32(uint32_t(c.n_heads)));
  w.set("clip.vision.attention.layer_norm_epsilon", GgufValue::f32(c.eps));
  w.set("clip.vision.block_count", GgufValue::u32(uint32_t(c.n_layers_run)));
  w.set("clip.vision.feature_layer", GgufValue::array(GgufType::I32, std::vector<int32_t>{int32_t(c.n_layers_run)}));
  w.set("clip.vision.image_mean", GgufValue::array(GgufType::F32, std::vector<float>(c.mean.begin(), c.mean.end())));
  w.set("clip.vision.image_std", GgufValue::array(GgufType::F32, std::vector<float>(c.std.begin(), c.std.end())));
  w.set("clip.vision.image_aspect_ratio", GgufValue::str(c.aspect_ratio));
  w.set("clip.vision.mm_projector_type", GgufValue::str("mlp2x_gelu"));
  w.set("clip.use_gelu", GgufValue::boolean(c.gelu));
  // loupe's own key (llama.cpp's LLaVA path always drops the CLS position).
  w.set(kFeatureSelectKey, GgufValue::str(c.keep_cls ? "full" : "default"));
}

// clip.* metadata back, checked; n_layers_run from clip.vision.feature_layer
// (or every block the file has: llama.cpp's legacy converter drops the unused
// last block and writes no feature layer).
inline ClipConfig read_clip_config(const GgufFile& f) {
  if (f.get_str("general.architecture") != "clip")
    fail(f.name(), ": not an mmproj file (general.architecture is '", f.get_str("general.architecture"), "', expected clip)");
  if (!f.get_bool("clip.has_vision_encoder", false)) fail(f.name(), ": the file has no vision encoder");
  ClipConfig c;
  c.image_size = f.get_int("clip.vision.image_size");
  c.patch_size = f.get_int("clip.vision.patch_size");
  c.dim = f.get_int("clip.vision.embedding_length");
  c.ffn_dim = f.get_int("clip.vision.feed_forward_length");
  c.n_heads = f.get_int("clip.vision.attention.head_count");
  c.projection_dim = f.get_int("clip.vision.projection_dim", 0);
  c.eps = float(f.get_float("clip.vision.attention.layer_norm_epsilon", 1e-5));
  c.gelu = f.get_bool("clip.use_gelu", false);
  c.aspect_ratio = f.get_str("clip.vision.image_aspect_ratio", "pad");
  if (c.aspect_ratio != "pad" && c.aspect_ratio != "none" && c.aspect_ratio != "square")
    fail(f.name(), ": image_aspect_ratio '", c.aspect_ratio, "' is not supported (pad or none)");
  const std::string select = f.get_str(kFeatureSelectKey, "default");
  if (select != "default" && select != "full")
    fail(f.name(), ": ", kFeatureSelectKey, " '", select, "' is not supported (default or full)");
  c.keep_cls = select == "full";
  const GgufValue& mean = f.get_array("clip.vision.image_mean", GgufType::F32);
  const GgufValue& sd = f.get_array("clip.vision.image_std", GgufType::F32);
  if (mean.arr.size() != 3 || sd.arr.size() != 3) fail(f.name(), ": image_mean / image_std must have 3 values");
  for (size_t i = 0; i < 3; ++i) c.mean[i] = float(mean.arr[i].f), c.std[i] = float(sd.arr[i].f);
  const int64_t blocks = f.get_int("clip.vision.block_count");
  check_clip_sizes(c, blocks, f.name(), kGgufClipKeys);
  int64_t present = 0;
  while (f.tensor(clip_block_gguf(present) + "attn_q.weight")) ++present;
  c.n_layers_run = std::min(blocks, present);
  // clip.vision.feature_layer: indices into hidden_states (0 = embeddings); LLaVA uses one.
  if (const GgufValue* fl = f.find("clip.vision.feature_layer")) {
    if (fl->type != GgufType::ARRAY || fl->arr.empty()) fail(f.name(), ": clip.vision.feature_layer must be a non-empty array");
    if (fl->arr.size() > 1) fail(f.name(), ": several feature layers (", fl->arr.size(), ") are not supported");
    c.n_layers_run = fl->arr[0].i;
    if (c.n_layers_run < 1 || c.n_layers_run > present)
      fail(f.name(), ": feature layer ", c.n_layers_run, " needs ", c.n_layers_run, " blocks, the file has ", present);
  }
  return c;
}

}  // namespace loupe
