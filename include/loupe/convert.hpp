// Hugging Face checkpoints -> llama.cpp-compatible GGUF.
//
// The text model (LlamaForCausalLM keys, also inside LLaVA / ShareGPT4V
// checkpoints) becomes <name>.gguf with llama.cpp's tensor names and `llama.*`
// metadata, the tokenizer embedded as tokenizer.ggml.*. q_proj/k_proj rows are
// permuted from HF's rotate_half layout to llama.cpp's adjacent-pair layout
// (the inverse of the permutation HF's convert_llama_weights_to_hf applies).
// Tensors are converted and written one at a time from the mmapped checkpoint.
#pragma once
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include "checkpoint.hpp"
#include "gguf.hpp"
#include "gguf_vocab.hpp"
#include "json.hpp"
#include "progress.hpp"

namespace loupe {

struct ConvertOptions {
  DType outtype = DType::F16;    // type of the 2-D weight matrices
  std::string name;              // output base name; default: the model directory's name
  std::string vision_tower;      // directory of a separate CLIPVisionModel (ShareGPT4V)
  bool progress = true;          // progress bar on a terminal
  std::function<void(const std::string&)> log = [](const std::string& s) { std::fprintf(stderr, "%s\n", s.c_str()); };
};

struct ConvertResult {
  std::string text_path, mmproj_path;  // mmproj_path empty for a text-only model
};

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

// LlamaConfig keys of a HF config.json.
struct HfTextConfig {
  std::string model_type;
  int64_t dim = 0, ffn_dim = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0, n_vocab = 0, n_ctx = 0;
  double rms_eps = 1e-6, rope_theta = 10000.0;
  bool tied = false;

  static HfTextConfig parse(const Json& j) {
    HfTextConfig c;
    c.model_type = j.get_or<std::string>("model_type", "");
    static const char* known[] = {"llama", "share4v", "llava", "llava_llama"};
    bool ok = false;
    for (const char* k : known) ok |= c.model_type == k;
    if (!ok) fail(j.where(), "unknown architecture: model_type '", c.model_type, "' (supported: llama, share4v, llava)");
    c.dim = j.at("hidden_size").integer();
    c.ffn_dim = j.at("intermediate_size").integer();
    c.n_layers = j.at("num_hidden_layers").integer();
    c.n_heads = j.at("num_attention_heads").integer();
    c.n_kv_heads = j.get_or<int64_t>("num_key_value_heads", c.n_heads);
    c.n_vocab = j.at("vocab_size").integer();
    c.n_ctx = j.get_or<int64_t>("max_position_embeddings", 2048);
    c.rms_eps = j.get_or<double>("rms_norm_eps", 1e-6);
    c.rope_theta = j.get_or<double>("rope_theta", 10000.0);
    c.tied = j.get_or<bool>("tie_word_embeddings", false);
    if (const Json* rs = j.find("rope_scaling"); rs && !rs->is_null())
      fail(j.where(), "rope_scaling is not supported");
    if (c.dim <= 0 || c.n_heads <= 0 || c.n_kv_heads <= 0 || c.dim % c.n_heads || c.n_heads % c.n_kv_heads ||
        (c.dim / c.n_heads) % 2)
      fail(j.where(), "inconsistent sizes: hidden_size ", c.dim, ", num_attention_heads ", c.n_heads,
           ", num_key_value_heads ", c.n_kv_heads);
    return c;
  }
};

namespace convert_detail {

// One output tensor: where it comes from and how to transform it.
struct Plan {
  std::string out_name;
  const SourceTensor* src = nullptr;
  std::vector<int64_t> shape;  // expected HF shape
  DType type = DType::F32;
  int64_t permute_heads = 0;   // > 0: q/k rows to llama.cpp's layout with this many heads
};

// Row r of the output takes HF row src_row(r): within each head, HF keeps the
// two rotation halves apart (i, i + d/2); llama.cpp interleaves them (2i, 2i+1).
inline int64_t permuted_source_row(int64_t r, int64_t head_dim) {
  const int64_t h = r / head_dim, j = r % head_dim, i = j / 2, half = j % 2;
  return h * head_dim + half * (head_dim / 2) + i;
}

inline void produce(const Plan& p, std::vector<uint8_t>& out) {
  const TensorView v = p.src->view();
  const int64_t cols = v.cols(), rows = v.rows();
  const int64_t head_dim = p.permute_heads ? rows / p.permute_heads : 0;
  std::vector<float> row(static_cast<size_t>(cols));
  const size_t rb = row_bytes(p.type, cols);
  out.resize(rb * size_t(rows));
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t s = p.permute_heads ? permuted_source_row(r, head_dim) : r;
    to_f32(v.dtype, v.row(s), row.data(), cols);
    from_f32(p.type, row.data(), out.data() + size_t(r) * rb, cols);
  }
}

inline std::string shape_str(const std::vector<int64_t>& s) { return make_view(DType::F32, s, nullptr).shape_str(); }

}  // namespace convert_detail

// The type a tensor is stored in: 1-D tensors stay F32; quantised types need
// rows that are a multiple of 32 (otherwise F16, reported); with Q4_0 the
// output projection gets Q8_0, as llama.cpp gives it a higher-precision type.
inline DType choose_type(const std::string& gguf_name, const std::vector<int64_t>& shape, DType outtype,
                         const std::function<void(const std::string&)>& log) {
  if (shape.size() < 2) return DType::F32;
  DType t = outtype;
  if (t == DType::Q4_0 && gguf_name == "output.weight") t = DType::Q8_0;
  if (is_quantized(t) && shape.back() % QK) {
    if (log) log("note: " + gguf_name + " " + convert_detail::shape_str(shape) + ": row length " + std::to_string(shape.back()) +
                 " is not a multiple of 32, stored as F16 instead of " + dtype_name(t));
    t = DType::F16;
  }
  return t;
}

// Writes the text model of the HF directory `dir` (config.json, checkpoint,
// tokenizer.model) to `out_path`.
inline void convert_text_model(const std::string& dir, const Checkpoint& ck, const Json& config, const std::string& out_path,
                               const ConvertOptions& opt, const std::string& name) {
  using namespace convert_detail;
  namespace fs = std::filesystem;
  const HfTextConfig c = HfTextConfig::parse(config);
  const std::string tok_path = (fs::path(dir) / "tokenizer.model").string();
  if (!fs::exists(tok_path)) fail(dir, ": tokenizer.model is missing (the text model needs its SentencePiece tokenizer)");
  const Tokenizer tok = Tokenizer::load(tok_path);

  const int64_t hd = c.dim / c.n_heads, q = c.n_heads * hd, kv = c.n_kv_heads * hd;
  std::vector<Plan> plans;
  auto need = [&](const std::string& hf, const std::string& out, std::vector<int64_t> shape, int64_t permute = 0) {
    const SourceTensor* s = ck.find(hf);
    if (!s) fail(dir, ": tensor '", hf, "' is missing from the checkpoint");
    if (s->shape != shape)
      fail(dir, ": tensor '", hf, "' has shape ", s->shape_str(), " but config.json implies ", shape_str(shape));
    if (s->dtype != DType::F32 && s->dtype != DType::F16 && s->dtype != DType::BF16)
      fail(dir, ": tensor '", hf, "' has unsupported dtype ", dtype_name(s->dtype), " (F32, F16 or BF16 expected)");
    plans.push_back({out, s, shape, choose_type(out, shape, opt.outtype, opt.log), permute});
  };
  need("model.embed_tokens.weight", "token_embd.weight", {c.n_vocab, c.dim});
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string hf = "model.layers." + std::to_string(l) + ".", g = "blk." + std::to_string(l) + ".";
    need(hf + "input_layernorm.weight", g + "attn_norm.weight", {c.dim});
    need(hf + "self_attn.q_proj.weight", g + "attn_q.weight", {q, c.dim}, c.n_heads);
    need(hf + "self_attn.k_proj.weight", g + "attn_k.weight", {kv, c.dim}, c.n_kv_heads);
    need(hf + "self_attn.v_proj.weight", g + "attn_v.weight", {kv, c.dim});
    need(hf + "self_attn.o_proj.weight", g + "attn_output.weight", {c.dim, q});
    need(hf + "post_attention_layernorm.weight", g + "ffn_norm.weight", {c.dim});
    need(hf + "mlp.gate_proj.weight", g + "ffn_gate.weight", {c.ffn_dim, c.dim});
    need(hf + "mlp.up_proj.weight", g + "ffn_up.weight", {c.ffn_dim, c.dim});
    need(hf + "mlp.down_proj.weight", g + "ffn_down.weight", {c.dim, c.ffn_dim});
  }
  need("model.norm.weight", "output_norm.weight", {c.dim});
  if (!c.tied) need("lm_head.weight", "output.weight", {c.n_vocab, c.dim});
  else if (plans.front().type == DType::Q4_0) plans.front().type = DType::Q8_0;  // tied: token_embd is the output too

  // Everything else must be accounted for: vision / projector tensors belong to
  // the mmproj, rotary caches are recomputed; anything unknown is an error.
  static const std::regex known_extra(
      R"(^(model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq|lm_head\.weight|model\.mm_projector\..*|model\.vision_tower\..*)$)");
  std::map<std::string, bool> used;
  for (const Plan& p : plans) used[p.src->name] = true;
  for (const SourceTensor& t : ck.tensors)
    if (!used.count(t.name) && !std::regex_match(t.name, known_extra))
      fail(dir, ": unknown tensor '", t.name, "' ", t.shape_str(), " (not part of a LLaMA / LLaVA checkpoint)");

  GgufWriter w;
  w.set("general.architecture", GgufValue::str("llama"));
  w.set("general.name", GgufValue::str(name));
  w.set("general.file_type", GgufValue::u32(gguf_file_type(opt.outtype)));
  if (is_quantized(opt.outtype)) w.set("general.quantization_version", GgufValue::u32(2));
  w.set("llama.vocab_size", GgufValue::u32(uint32_t(c.n_vocab)));
  w.set("llama.context_length", GgufValue::u32(uint32_t(c.n_ctx)));
  w.set("llama.embedding_length", GgufValue::u32(uint32_t(c.dim)));
  w.set("llama.block_count", GgufValue::u32(uint32_t(c.n_layers)));
  w.set("llama.feed_forward_length", GgufValue::u32(uint32_t(c.ffn_dim)));
  w.set("llama.rope.dimension_count", GgufValue::u32(uint32_t(hd)));
  w.set("llama.attention.head_count", GgufValue::u32(uint32_t(c.n_heads)));
  w.set("llama.attention.head_count_kv", GgufValue::u32(uint32_t(c.n_kv_heads)));
  w.set("llama.attention.layer_norm_rms_epsilon", GgufValue::f32(float(c.rms_eps)));
  w.set("llama.rope.freq_base", GgufValue::f32(float(c.rope_theta)));
  write_vocab(w, tok, c.n_vocab);

  size_t total = 0;
  for (const Plan& p : plans) {
    w.add_tensor(p.out_name, p.type, p.shape, [p](std::vector<uint8_t>& out) { produce(p, out); });
    total += w.tensors.back().nbytes();
  }
  ProgressBar bar("writing " + fs::path(out_path).filename().string(), plans.size(), total, opt.progress && ProgressBar::stderr_is_tty());
  w.write_file(out_path, [&](size_t n, size_t bytes) { bar.update(n, bytes); });
  bar.finish();
}

// Convert a Hugging Face model directory. Writes <out_dir>/<name>.gguf, and
// <out_dir>/mmproj-<name>.gguf when the model has a vision tower + projector.
inline ConvertResult convert_model(const std::string& dir, const std::string& out_dir, const ConvertOptions& opt = {}) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(dir)) fail(dir, ": not a directory (expected a Hugging Face model directory)");
  const std::string cfg_path = (fs::path(dir) / "config.json").string();
  if (!fs::exists(cfg_path)) fail(dir, ": config.json is missing");
  const Json config = Json::load(cfg_path);
  const Checkpoint ck = Checkpoint::open(dir);
  std::string name = opt.name;
  if (name.empty()) name = fs::path(dir).lexically_normal().filename().string();
  if (name.empty()) name = fs::absolute(dir).lexically_normal().parent_path().filename().string();
  fs::create_directories(out_dir);
  ConvertResult r;
  r.text_path = (fs::path(out_dir) / (name + ".gguf")).string();
  convert_text_model(dir, ck, config, r.text_path, opt, name);
  return r;
}

}  // namespace loupe
