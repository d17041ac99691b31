// Hugging Face checkpoints -> llama.cpp-compatible GGUF.
//
// The text model (LlamaForCausalLM keys, also inside LLaVA / ShareGPT4V
// checkpoints) becomes <name>.gguf with llama.cpp's tensor names and `llama.*`
// metadata, the tokenizer embedded as tokenizer.ggml.*. q_proj/k_proj rows are
// permuted from HF's rotate_half layout to llama.cpp's adjacent-pair layout
// (the inverse of the permutation HF's convert_llama_weights_to_hf applies).
// Tensors are converted and written one at a time from the mmapped checkpoint.
#pragma once
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <cmath>
#include <array>
#include <string>
#include <vector>

#include "../io/checkpoint.hpp"
#include "../io/gguf.hpp"
#include "../text/gguf_vocab.hpp"
#include "../io/json.hpp"
#include "../models/lora_adapter.hpp"
#include "../models/tensors.hpp"
#include "../ops/ops.hpp"
#include "../core/log.hpp"

namespace loupe {

struct ConvertOptions {
  DType outtype = DType::F16;    // type of the 2-D weight matrices
  std::string name;              // output base name; default: the model directory's name
  std::string vision_tower;      // directory of a separate CLIPVisionModel (ShareGPT4V)
  ProgressFn progress;           // writing each file (the CLI draws a bar)
  std::vector<std::pair<std::string, float>> loras;  // LoRA adapters (path, scale) merged into the weights
  LogFn log;                     // notes for the user (fallbacks to f16, merged adapters)
};

struct ConvertResult {
  std::string text_path, mmproj_path;  // mmproj_path empty for a text-only model
};

// LlamaConfig keys of a HF config.json (or of a LlavaConfig's text_config).
struct HfTextConfig {
  std::string model_type;
  int64_t dim = 0, ffn_dim = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0, n_vocab = 0, n_ctx = 0;
  double rms_eps = 1e-6, rope_theta = 10000.0;
  bool tied = false;

  // `defaults`: a key left out takes LlamaConfig's default (transformers'
  // models/llama/configuration_llama.py), as transformers reads a text_config
  // it saved with only the keys that differ (llava-hf/llava-1.5-7b-hf's has 6);
  // LLaVA's flat config.json has every size, and one missing is an error.
  static HfTextConfig parse(const Json& j, bool defaults = false) {
    HfTextConfig c;
    c.model_type = j.get_or<std::string>("model_type", defaults ? "llama" : "");
    static const char* known[] = {"llama", "share4v", "llava", "llava_llama"};
    bool ok = false;
    for (const char* k : known) ok |= c.model_type == k;
    if (!ok) fail(j.where(), "unknown architecture: model_type '", c.model_type, "' (supported: llama, share4v, llava)");
    auto size = [&](const char* key, int64_t dflt) { return defaults ? j.get_or<int64_t>(key, dflt) : j.at(key).integer(); };
    c.dim = size("hidden_size", 4096);
    c.ffn_dim = size("intermediate_size", 11008);
    c.n_layers = size("num_hidden_layers", 32);
    c.n_heads = size("num_attention_heads", 32);
    c.n_kv_heads = j.get_or<int64_t>("num_key_value_heads", c.n_heads);
    c.n_vocab = size("vocab_size", 32000);
    c.n_ctx = j.get_or<int64_t>("max_position_embeddings", 2048);
    c.rms_eps = j.get_or<double>("rms_norm_eps", 1e-6);
    c.rope_theta = j.get_or<double>("rope_theta", 10000.0);
    c.tied = j.get_or<bool>("tie_word_embeddings", false);
    if (const Json* rs = j.find("rope_scaling"); rs && !rs->is_null())
      fail(j.where(), "rope_scaling is not supported");
    LlamaConfig l;
    l.n_vocab = c.n_vocab, l.dim = c.dim, l.n_layers = c.n_layers, l.n_heads = c.n_heads, l.n_kv_heads = c.n_kv_heads;
    l.ffn_dim = c.ffn_dim, l.n_ctx = c.n_ctx, l.rms_eps = float(c.rms_eps), l.rope_base = float(c.rope_theta);
    const std::string src = j.source ? *j.source : std::string("config.json");
    check_llama_sizes(l, src, kHfLlamaKeys);
    if (c.n_vocab < 1) fail(src, ": vocab_size ", c.n_vocab, " is out of range");
    if (const Json* hd = j.find("head_dim"); hd && !hd->is_null() && hd->integer() != c.dim / c.n_heads)
      fail(src, ": head_dim ", hd->integer(), " is not hidden_size / num_attention_heads (", c.dim / c.n_heads, "): not supported");
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
  std::vector<std::pair<const LoraWeight*, float>> lora;  // LoRA updates merged in, with their scales
};

inline void produce(const Plan& p, std::vector<uint8_t>& out) {
  // (4-D conv kernels are treated as [out, everything else] rows.)
  const TensorView v = p.src->view();
  const int64_t cols = v.cols(), rows = v.rows();
  const int64_t head_dim = p.permute_heads ? rows / p.permute_heads : 0;
  const size_t rb = row_bytes(p.type, cols);
  out.resize(rb * size_t(rows));
  // LoRA merge, PEFT's merge(): W += scaling·B·A (times each adapter's scale), in
  // f32 on the checkpoint's weights before the output type's rounding or
  // quantisation. B's rows are already in the output's (llama.cpp's) row order.
  // B·A as a GEMM: matmul(Aᵀ, rows of B) = rows of B·A.
  std::vector<Tensor> at(p.lora.size()), bf(p.lora.size());
  for (size_t i = 0; i < p.lora.size(); ++i) {
    const Tensor a = to_f32(p.lora[i].first->a.view());
    const int64_t r = a.shape[0];
    at[i] = Tensor(DType::F32, {cols, r});
    for (int64_t k = 0; k < r; ++k)
      for (int64_t c = 0; c < cols; ++c) at[i].f32()[c * r + k] = a.f32()[k * cols + c];
    bf[i] = to_f32(p.lora[i].first->b.view());
  }
  constexpr int64_t kBlock = 64;
  std::vector<float> blk(static_cast<size_t>(std::min(kBlock, rows) * cols)), delta(p.lora.empty() ? 0 : blk.size());
  for (int64_t r0 = 0; r0 < rows; r0 += kBlock) {
    const int64_t m = std::min(kBlock, rows - r0);
    for (int64_t i = 0; i < m; ++i) {
      const int64_t s = p.permute_heads ? qk_source_row(r0 + i, head_dim) : r0 + i;
      to_f32(v.dtype, v.row(s), blk.data() + i * cols, cols);
    }
    for (size_t k = 0; k < p.lora.size(); ++k) {
      const int64_t r = at[k].shape[1];
      matmul(at[k].view(), bf[k].f32() + r0 * r, m, delta.data());
      const float sc = p.lora[k].second * p.lora[k].first->scaling;
      for (int64_t j = 0; j < m * cols; ++j) blk[size_t(j)] += sc * delta[size_t(j)];
    }
    for (int64_t i = 0; i < m; ++i) from_f32(p.type, blk.data() + i * cols, out.data() + size_t(r0 + i) * rb, cols);
  }
}

inline std::string shape_str(const std::vector<int64_t>& s) { return make_view(DType::F32, s, nullptr).shape_str(); }

}  // namespace convert_detail

// The LlamaConfig a converted model will have (LoRA adapters are checked against it).
inline LlamaConfig llama_config(const HfTextConfig& h) {
  LlamaConfig c;
  c.n_vocab = h.n_vocab, c.dim = h.dim, c.n_layers = h.n_layers, c.n_heads = h.n_heads, c.n_kv_heads = h.n_kv_heads;
  c.ffn_dim = h.ffn_dim, c.n_ctx = h.n_ctx, c.head_dim = h.dim / h.n_heads;
  c.rms_eps = float(h.rms_eps), c.rope_base = float(h.rope_theta);
  return c;
}

// LoRA adapters merged at conversion (--model ... --lora DIR[:scale]): their
// updates are attached to the plans of the weights they adapt (produce() adds
// them), and tensors they replace (the LLaVA projector, modules_to_save) become
// those plans' sources.
struct LoraMerge {
  std::vector<std::pair<LoraAdapter, float>> adapters;  // with their scales
  std::deque<SourceTensor> sources;                     // replacement tensors as converter sources
  std::map<std::string, std::string> replaced;          // tensor -> adapter that replaced it

  // Attaches the updates and replacements to `plans`; for the text model,
  // everything but the projector must have found its tensor (nothing is dropped).
  void apply(std::vector<convert_detail::Plan>& plans, bool text_model) {
    std::map<std::string, bool> found;
    for (const convert_detail::Plan& p : plans) found[p.out_name] = true;
    for (const auto& [a, scale] : adapters) {
      if (!text_model || scale == 0.0f) continue;
      for (const LoraWeight& w : a.weights)
        if (!found.count(w.target))
          fail(a.source, ": cannot merge the LoRA of '", w.target, "': the model has no such tensor",
               w.target == "output.weight" ? " (its output projection is tied to the embeddings; use the adapter at run time)" : "");
      for (const auto& r : a.replaces)
        if (!lora_detail::is_projector_name(r.first) && !found.count(r.first))
          fail(a.source, ": cannot merge the replacement of '", r.first, "': the model has no such tensor",
               r.first == "output.weight" ? " (its output projection is tied to the embeddings; use the adapter at run time)" : "");
    }
    for (convert_detail::Plan& p : plans)
      for (const auto& [a, scale] : adapters) {
        if (scale == 0.0f) continue;
        for (const LoraWeight& w : a.weights)
          if (w.target == p.out_name) p.lora.push_back({&w, scale});
        auto it = a.replaces.find(p.out_name);
        if (it == a.replaces.end()) continue;
        auto [prev, fresh] = replaced.emplace(p.out_name, a.name);
        if (!fresh) fail("adapters '", prev->second, "' and '", a.name, "' both replace '", p.out_name, "': merge one of them");
        const Tensor& t = it->second;
        if (t.shape != p.shape)
          fail(a.source, ": replacement for '", p.out_name, "' has shape ", t.view().shape_str(), " but the model's is ",
               convert_detail::shape_str(p.shape), " (adapter for a different model?)");
        SourceTensor st;
        st.name = a.name + ": " + p.out_name;
        st.dtype = t.dtype;
        st.shape = t.shape;
        st.data = Blob::from_bytes(t.bytes, st.name);
        sources.push_back(std::move(st));
        p.src = &sources.back();
        p.permute_heads = 0;  // replacements are kept in llama.cpp's row order
      }
  }
};

// Writes `w` to `path` as part of the set `out` (it appears when the set is
// committed, with the conversion's other files), reporting each tensor to `progress`.
inline void write_with_progress(const GgufWriter& w, OutputFiles& out, const std::string& path, size_t total_bytes,
                                const ProgressFn& progress) {
  Progress p;
  p.task = "writing " + std::filesystem::path(path).filename().string();
  p.total = w.tensors.size(), p.bytes_total = total_bytes;
  w.write_file(out, path, [&](size_t n, size_t bytes) {
    if (!progress) return;
    p.done = n, p.bytes_done = bytes;
    progress(p);
  });
}

// The type a tensor is stored in: 1-D tensors stay F32; quantised types need
// rows that are a multiple of 32 (otherwise F16, reported); with Q4_0 the
// output projection gets Q8_0, as llama.cpp gives it a higher-precision type.
inline DType choose_type(const std::string& gguf_name, const std::vector<int64_t>& shape, DType outtype,
                         const LogFn& log) {
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

// Collects the output tensors of one GGUF file from one or more checkpoints,
// checking each source's shape and dtype, then streams them into the file.
struct TensorPlanner {
  const ConvertOptions& opt;
  std::vector<convert_detail::Plan> plans;
  std::map<std::string, bool> used;  // source names taken

  // `storage`: F32, the patch convolution's type, or choose_type's rule for a matrix (1-D: F32).
  void add(const Checkpoint& ck, const std::string& where, const std::string& src, const std::string& out,
           std::vector<int64_t> shape, Storage storage = Storage::Matrix, int64_t permute = 0) {
    const SourceTensor* s = ck.find(src);
    if (!s) fail(where, ": tensor '", src, "' is missing from the checkpoint");
    if (s->shape != shape)
      fail(where, ": tensor '", src, "' has shape ", s->shape_str(), " but the config implies ", convert_detail::shape_str(shape));
    if (s->dtype != DType::F32 && s->dtype != DType::F16 && s->dtype != DType::BF16)
      fail(where, ": tensor '", src, "' has unsupported dtype ", dtype_name(s->dtype), " (F32, F16 or BF16 expected)");
    const DType type = storage == Storage::F32    ? DType::F32
                       : storage == Storage::Conv ? (opt.outtype == DType::F32 ? DType::F32 : DType::F16)
                                                  : choose_type(out, shape, opt.outtype, opt.log);
    plans.push_back({out, s, shape, type, permute, {}});
    used[s->name] = true;
  }

  void write(GgufWriter& w, OutputFiles& out, const std::string& path) const {
    namespace fs = std::filesystem;
    size_t total = 0;
    for (const convert_detail::Plan& p : plans) {
      w.add_tensor(p.out_name, p.type, p.shape, [p](std::vector<uint8_t>& out) { convert_detail::produce(p, out); });
      total += w.tensors.back().nbytes();
    }
    write_with_progress(w, out, path, total, opt.progress);
  }
};

// Writes the text model of the HF directory `dir` (checkpoint, tokenizer.model
// and the tokens added to it) to `out_path`.
// `chat_template`: the loupe chat template the checkpoint's format needs ("" for vicuna_v1).
// `where`: the checkpoint, for messages.
inline void convert_text_model(const std::string& dir, const std::string& where, const Checkpoint& ck, const HfTextConfig& c,
                               const CheckpointNaming& naming, const std::string& chat_template, OutputFiles& out,
                               const std::string& out_path, const ConvertOptions& opt, const std::string& name,
                               LoraMerge* merge = nullptr) {
  namespace fs = std::filesystem;
  const std::string tok_path = (fs::path(dir) / "tokenizer.model").string();
  if (!fs::exists(tok_path)) fail(dir, ": tokenizer.model is missing (the text model needs its SentencePiece tokenizer)");
  const Tokenizer tok = Tokenizer::load(tok_path);

  const LlamaConfig lc = llama_config(c);
  TensorPlanner tp{opt, {}, {}};
  for (const LlamaTensor& t : llama_tensors(lc, !c.tied, naming)) tp.add(ck, where, t.hf, t.gguf, t.shape, Storage::Matrix, t.permute_heads);
  if (c.tied && tp.plans.front().type == DType::Q4_0) tp.plans.front().type = DType::Q8_0;  // tied: token_embd is the output too

  // Everything else must be accounted for: vision / projector tensors belong to
  // the mmproj, rotary caches are recomputed; anything unknown is an error.
  auto known_extra = [&](const std::string& n) {
    auto starts = [&](const std::string& p) { return n.compare(0, p.size(), p) == 0; };
    auto ends = [&](const std::string& x) { return n.size() >= x.size() && n.compare(n.size() - x.size(), x.size(), x) == 0; };
    return starts(naming.tower) || starts(naming.projector) || n == std::string(naming.lm_head) + "weight" ||
           (starts(std::string(naming.text) + "layers.") && ends(".self_attn.rotary_emb.inv_freq"));
  };
  for (const SourceTensor& t : ck.tensors)
    if (!tp.used.count(t.name) && !known_extra(t.name))
      fail(where, ": unknown tensor '", t.name, "' ", t.shape_str(), " (not part of a LLaMA / LLaVA checkpoint in ", naming.what,
           " naming)");

  GgufWriter w;
  write_llama_config(w, lc);
  w.set("general.name", GgufValue::str(name));
  w.set("general.file_type", GgufValue::u32(gguf_file_type(opt.outtype)));
  if (is_quantized(opt.outtype)) w.set("general.quantization_version", GgufValue::u32(2));
  write_vocab(w, tok, c.n_vocab, read_added_tokens(dir, tok));
  if (!chat_template.empty()) w.set(kChatTemplateKey, GgufValue::str(chat_template));
  if (merge) merge->apply(tp.plans, true);
  tp.write(w, out, out_path);
}

// CLIPVisionModel hyper-parameters (config.json of the tower, or its
// vision_config when it is a whole CLIPModel or a LlavaConfig).
struct HfVisionConfig {
  int64_t dim = 0, ffn_dim = 0, n_layers = 0, n_heads = 0, image_size = 0, patch_size = 0, projection_dim = 0;
  double eps = 1e-5;
  std::string act = "quick_gelu";
  std::array<double, 3> mean{0.48145466, 0.4578275, 0.40821073}, std{0.26862954, 0.26130258, 0.27577711};  // CLIP's
  bool pad = false;  // preprocessor_config.json's do_pad (LlavaImageProcessor): pad to a square first
};

// Where the vision tower's weights and config come from.
struct VisionSource {
  std::optional<HfVisionConfig> config;  // from a config.json; none: inferred from the weights
  std::optional<Checkpoint> own;         // a separate tower checkpoint
  std::string prefix;                    // key prefix of vision_model.* in its checkpoint
  std::string where;                     // for messages
};

// Known towers named by hub id in LLaVA configs, for checkpoints that embed the
// weights but ship no tower config. Sizes not given here are read from shapes.
inline int64_t known_tower_heads(const std::string& hub_id) {
  if (hub_id.find("clip-vit-large-patch14") != std::string::npos || hub_id.find("vit-large336") != std::string::npos) return 16;
  if (hub_id.find("clip-vit-base-patch") != std::string::npos) return 12;
  return 0;
}

// check_clip_sizes for a tower's config.json (or its weights' shapes).
inline void check_vision_sizes(const HfVisionConfig& v, const std::string& where) {
  ClipConfig c;
  c.image_size = v.image_size, c.patch_size = v.patch_size, c.dim = v.dim, c.ffn_dim = v.ffn_dim, c.n_heads = v.n_heads;
  c.eps = float(v.eps);
  for (size_t i = 0; i < 3; ++i) c.mean[i] = float(v.mean[i]), c.std[i] = float(v.std[i]);
  check_clip_sizes(c, v.n_layers, where, kHfClipKeys);
}

// A CLIPVisionConfig object. `defaults`: keys left out take CLIPVisionConfig's
// defaults (transformers' models/clip/configuration_clip.py: ViT-B/32 at 224),
// as transformers reads a vision_config it saved with only the keys that
// differ; a tower's own config.json must give every size.
inline HfVisionConfig parse_vision_config(const Json& j, const std::string& where, bool defaults) {
  HfVisionConfig v;
  auto size = [&](const char* key, int64_t dflt) { return defaults ? j.get_or<int64_t>(key, dflt) : j.at(key).integer(); };
  v.dim = size("hidden_size", 768);
  v.ffn_dim = size("intermediate_size", 3072);
  v.n_layers = size("num_hidden_layers", 12);
  v.n_heads = size("num_attention_heads", 12);
  v.image_size = size("image_size", 224);
  v.patch_size = size("patch_size", 32);
  v.projection_dim = j.get_or<int64_t>("projection_dim", defaults ? 512 : 0);
  v.eps = j.get_or<double>("layer_norm_eps", 1e-5);
  v.act = j.get_or<std::string>("hidden_act", "quick_gelu");
  if (v.act != "quick_gelu" && v.act != "gelu") fail(where, ": hidden_act '", v.act, "' is not supported (quick_gelu or gelu)");
  check_vision_sizes(v, where);
  return v;
}

// preprocessor_config.json beside a tower: CLIP's mean and std, a resize and
// crop to the tower's size (the only geometry supported), LlavaImageProcessor's do_pad.
inline void read_preprocessor_config(HfVisionConfig& v, const std::string& path) {
  const Json p = Json::load(path);
  for (const char* key : {"image_mean", "image_std"}) {
    const Json* a = p.find(key);
    if (!a) continue;
    if (a->array().size() != 3) fail(path, ": ", key, " must have 3 values");
    auto& dst = std::string(key) == "image_mean" ? v.mean : v.std;
    for (size_t i = 0; i < 3; ++i) dst[i] = a->array()[i].number();
  }
  check_vision_sizes(v, path);  // image_mean / image_std
  // crop_size / size may be ints (CLIPFeatureExtractor) or objects (CLIPImageProcessor).
  auto side = [&](const char* key, const char* sub) -> int64_t {
    const Json* x = p.find(key);
    if (!x) return 0;
    if (x->is_number()) return x->integer();
    if (const Json* s = x->find(sub)) return s->integer();
    if (const Json* h = x->find("height")) return h->integer();
    return 0;
  };
  const int64_t crop = side("crop_size", "height"), resize = side("size", "shortest_edge");
  if ((crop && crop != v.image_size) || (resize && resize != v.image_size))
    fail(path, ": crop_size ", crop, " / size ", resize, " differ from the tower's image_size ", v.image_size,
         " (only the standard CLIP preprocessing is supported)");
  v.pad = p.get_or<bool>("do_pad", false);
}

// A tower directory: config.json (a CLIPVisionModel's, or a CLIPModel's with
// vision_config) and its preprocessor_config.json.
inline HfVisionConfig read_vision_config(const std::string& dir) {
  namespace fs = std::filesystem;
  const std::string path = (fs::path(dir) / "config.json").string();
  const Json top = Json::load(path);
  const Json& j = top.find("vision_config") ? top.at("vision_config") : top;
  HfVisionConfig v = parse_vision_config(j, path, false);
  if (!j.find("projection_dim")) v.projection_dim = top.get_or<int64_t>("projection_dim", 0);  // a CLIPModel's
  const fs::path pp = fs::path(dir) / "preprocessor_config.json";
  if (fs::exists(pp)) read_preprocessor_config(v, pp.string());
  return v;
}

// What config.json says about the model, in either layout: LLaVA's flat one
// (LlamaConfig keys and mm_*; a plain LLaMA too), or transformers' LlavaConfig
// (models/llava/configuration_llava.py: text_config, vision_config,
// vision_feature_layer, vision_feature_select_strategy, projector_hidden_act).
struct HfModelConfig {
  std::string path;             // config.json, for messages
  bool transformers = false;    // a LlavaConfig (LlavaForConditionalGeneration)
  HfTextConfig text;
  std::string tower_id;         // LLaVA: mm_vision_tower, the hub id of its tower
  std::optional<HfVisionConfig> tower;  // LlavaConfig: vision_config + preprocessor_config.json
  int64_t select_layer = -2;    // index into hidden_states, negative from the end
  bool keep_cls = false;        // the CLS position is a feature too ("full", LLaVA's "cls_patch")
  std::string aspect = "none";  // "pad" to a square in the mean colour first, or "none"
  int64_t mm_hidden = 0;        // LLaVA's mm_hidden_size (0: not given)
  std::string projector = "mlp2x_gelu";  // LLaVA's mm_projector_type, checked when there is a tower
  const char* select_key = "mm_vision_select_layer";  // for messages
  std::string chat_template;    // LlavaConfig: llava_hf (its chat_template.json); LLaVA: the default, vicuna_v1

  // A model directory's config.json.
  static HfModelConfig load(const std::string& dir) {
    const std::string path = (std::filesystem::path(dir) / "config.json").string();
    if (!std::filesystem::exists(path)) fail(dir, ": config.json is missing");
    return read(path);
  }
  // A config.json (its preprocessor_config.json beside it).
  static HfModelConfig read(const std::string& path) {
    namespace fs = std::filesystem;
    HfModelConfig c;
    c.path = path;
    const std::string dir = fs::path(path).parent_path().string();
    const Json j = Json::load(c.path);
    if (!j.is_object()) fail(c.path, ": expected a JSON object");
    // LLaVA's own config.json says "llava" too, but with the LLaMA sizes at the top.
    c.transformers = j.get_or<std::string>("model_type", "") == "llava" && !j.find("hidden_size");
    if (!c.transformers) {
      c.text = HfTextConfig::parse(j);
      c.tower_id = j.get_or<std::string>("mm_vision_tower", j.get_or<std::string>("vision_tower", ""));
      const std::string feature = j.get_or<std::string>("mm_vision_select_feature", "patch");
      if (feature != "patch" && feature != "cls_patch")
        fail(c.path, ": mm_vision_select_feature '", feature, "' is not supported (patch or cls_patch)");
      c.keep_cls = feature == "cls_patch";
      c.projector = j.get_or<std::string>("mm_projector_type", "linear");
      c.select_layer = j.get_or<int64_t>("mm_vision_select_layer", -2);
      c.aspect = j.get_or<std::string>("image_aspect_ratio", "square") == "pad" ? "pad" : "none";
      c.mm_hidden = j.get_or<int64_t>("mm_hidden_size", 0);
      return c;
    }
    const Json empty = Json::parse("{}", c.path);
    const Json* tc = j.find("text_config");
    c.text = HfTextConfig::parse(tc && !tc->is_null() ? *tc : empty, true);
    // No vision_config: LlavaConfig's own default, CLIP ViT-L/14 at 336.
    const Json* vc = j.find("vision_config");
    if (vc && !vc->is_null()) {
      const std::string type = vc->get_or<std::string>("model_type", "clip_vision_model");
      if (type != "clip_vision_model")
        fail(c.path, ": vision_config model_type '", type, "' is not supported (clip_vision_model)");
      c.tower = parse_vision_config(*vc, c.path + " (vision_config)", true);
    } else {
      c.tower = parse_vision_config(Json::parse(R"({"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
          "num_attention_heads": 16, "image_size": 336, "patch_size": 14, "projection_dim": 768})", c.path), c.path, true);
    }
    const fs::path pp = fs::path(dir) / "preprocessor_config.json";
    if (fs::exists(pp)) read_preprocessor_config(*c.tower, pp.string());
    c.aspect = c.tower->pad ? "pad" : "none";
    c.select_key = "vision_feature_layer";
    c.chat_template = "llava_hf";
    if (const Json* fl = j.find("vision_feature_layer"); fl && fl->is_array()) {
      if (fl->array().size() != 1)
        fail(c.path, ": vision_feature_layer lists ", fl->array().size(), " layers; several feature layers are not supported");
      c.select_layer = fl->array()[0].integer();
    } else {
      c.select_layer = j.get_or<int64_t>("vision_feature_layer", -2);
    }
    const std::string strategy = j.get_or<std::string>("vision_feature_select_strategy", "default");
    if (strategy != "default" && strategy != "full")
      fail(c.path, ": vision_feature_select_strategy '", strategy, "' is not supported (default or full)");
    c.keep_cls = strategy == "full";
    const std::string act = j.get_or<std::string>("projector_hidden_act", "gelu");
    if (act != "gelu") fail(c.path, ": projector_hidden_act '", act, "' is not supported (gelu)");
    if (!j.get_or<bool>("multimodal_projector_bias", true))
      fail(c.path, ": multimodal_projector_bias false is not supported (the projector has biases)");
    return c;
  }
};

// Writes mmproj-<name>.gguf: CLIP tower (blocks up to the selected feature layer)
// + mlp2x_gelu projector, with clip.* metadata in llama.cpp's layout.
inline void convert_mmproj(const std::string& dir, const Checkpoint& llm, const HfModelConfig& config, const VisionSource& vs,
                           const CheckpointNaming& naming, OutputFiles& out, const std::string& out_path,
                           const ConvertOptions& opt, const std::string& name, LoraMerge* merge = nullptr) {
  const Checkpoint& vck = vs.own ? *vs.own : llm;
  const std::string& vwhere = vs.own ? vs.where : dir;
  const std::string P = vs.prefix;  // "vision_model." or "model.vision_tower.vision_tower.vision_model." ...
  HfVisionConfig v;
  if (vs.config) {
    v = *vs.config;
  } else {
    // No tower config: sizes from the weights, heads from the hub id.
    const SourceTensor& pe = vck.get(P + "embeddings.patch_embedding.weight");
    const SourceTensor& pos = vck.get(P + "embeddings.position_embedding.weight");
    const SourceTensor& fc1 = vck.get(P + clip_block_hf(0) + "mlp.fc1.weight");
    if (pe.shape.size() != 4 || pos.shape.size() != 2 || fc1.shape.size() != 2 || pos.shape[0] < 2)
      fail(vwhere, ": the tower's patch embedding (", pe.shape_str(), "), position embedding (", pos.shape_str(),
           ") or first MLP (", fc1.shape_str(), ") has the wrong number of dimensions");
    v.dim = pe.shape[0];
    v.patch_size = pe.shape[2];
    v.ffn_dim = fc1.shape[0];
    while (vck.find(P + clip_block_hf(v.n_layers) + "self_attn.q_proj.weight")) ++v.n_layers;
    const int64_t g = int64_t(std::lround(std::sqrt(double(pos.shape[0] - 1))));
    v.image_size = g * v.patch_size;
    v.n_heads = known_tower_heads(config.tower_id);
    if (!v.n_heads)
      fail(dir, ": the checkpoint embeds vision tower '", config.tower_id, "' but no tower config.json was found; pass --vision-tower DIR");
    check_vision_sizes(v, vwhere + " (the tower's sizes, read from its weights)");
  }
  if (config.projector != "mlp2x_gelu")
    fail(config.path, ": mm_projector_type '", config.projector, "' is not supported (mlp2x_gelu)");
  const int64_t select = config.select_layer;
  const int64_t feature_layer = select >= 0 ? select : v.n_layers + select + 1;  // index into hidden_states
  if (feature_layer < 1 || feature_layer > v.n_layers)
    fail(config.path, ": ", config.select_key, " ", select, " is outside the tower's ", v.n_layers, " layers");
  if (config.mm_hidden && config.mm_hidden != v.dim)
    fail(config.path, ": mm_hidden_size ", config.mm_hidden, " does not match the tower's width ", v.dim);

  ClipConfig cc;
  cc.image_size = v.image_size, cc.patch_size = v.patch_size, cc.dim = v.dim, cc.ffn_dim = v.ffn_dim, cc.n_heads = v.n_heads;
  cc.n_layers_run = feature_layer, cc.projection_dim = v.projection_dim, cc.eps = float(v.eps), cc.gelu = v.act == "gelu";
  for (size_t i = 0; i < 3; ++i) cc.mean[i] = float(v.mean[i]), cc.std[i] = float(v.std[i]);
  cc.aspect_ratio = config.aspect;
  cc.keep_cls = config.keep_cls;
  if (cc.keep_cls && opt.log)
    opt.log("note: the image features keep the CLS position (" + std::string(config.transformers ? "full" : "cls_patch") +
            "): loupe reads that from " + kFeatureSelectKey + "; llama.cpp ignores the key and drops it");
  TensorPlanner tp{opt, {}, {}};
  for (const ClipTensor& t : clip_tensors(cc, config.text.dim, naming)) {
    if (t.projector()) tp.add(llm, dir, t.hf, t.gguf, t.shape, t.storage);
    else tp.add(vck, vwhere, P + t.hf, t.gguf, t.shape, t.storage);
  }

  GgufWriter w;
  write_clip_config(w, cc);
  w.set("general.name", GgufValue::str(name));
  w.set("general.description", GgufValue::str("image encoder for LLaVA"));
  w.set("general.file_type", GgufValue::u32(gguf_file_type(opt.outtype)));
  if (is_quantized(opt.outtype)) w.set("general.quantization_version", GgufValue::u32(2));
  if (merge) merge->apply(tp.plans, false);
  tp.write(w, out, out_path);
}

// Finds the vision tower: in a LlavaConfig checkpoint, the checkpoint itself;
// for LLaVA's layout --vision-tower, the checkpoint itself, or a directory
// beside the model named like the hub id.
inline std::optional<VisionSource> find_vision_tower(const std::string& dir, const Checkpoint& ck, const HfModelConfig& config,
                                                     const CheckpointNaming& naming, const ConvertOptions& opt) {
  namespace fs = std::filesystem;
  const std::string& hub = config.tower_id;
  const bool has_projector = ck.find(projector_tensors(0, 0, naming)[0].hf) != nullptr;
  const std::string embedded = std::string(naming.tower) + "vision_model.";
  if (config.transformers) {
    if (!has_projector || !ck.find(embedded + "embeddings.class_embedding"))
      fail(dir, ": config.json describes a LlavaForConditionalGeneration but the checkpoint has no ",
           has_projector ? embedded : std::string(naming.projector), "* tensors");
    if (!opt.vision_tower.empty())
      fail(opt.vision_tower, ": --vision-tower is for LLaVA checkpoints without their tower; ", dir, " holds its own");
    VisionSource vs;
    vs.config = config.tower;
    vs.prefix = embedded;
    vs.where = dir;
    return vs;
  }
  if (hub.empty() && !has_projector) return std::nullopt;  // a plain LLaMA
  if (!has_projector)
    fail(dir, ": config.json names vision tower '", hub, "' but the checkpoint has no ", naming.projector, "* tensors");
  auto open_tower_dir = [&](const std::string& tdir) {
    if (!fs::exists(fs::path(tdir) / "config.json")) fail(tdir, ": config.json is missing (expected a CLIPVisionModel directory)");
    VisionSource vs;
    vs.config = read_vision_config(tdir);
    vs.where = tdir;
    if (ck.find(embedded + "embeddings.class_embedding")) {
      vs.prefix = embedded;  // weights inside the LLM checkpoint win; the dir gives the config
    } else {
      vs.own = Checkpoint::open(tdir);
      vs.prefix = vs.own->find("vision_model.embeddings.class_embedding") ? "vision_model." : "";
      if (vs.prefix.empty()) fail(tdir, ": no vision_model.* tensors (expected a CLIPVisionModel checkpoint)");
    }
    return vs;
  };
  if (!opt.vision_tower.empty()) return open_tower_dir(opt.vision_tower);
  // Beside the model: <parent>/<last part of the hub id>, <dir>/<last part>, or the id as a local path.
  std::vector<fs::path> tried;
  const std::string leaf = fs::path(hub).filename().string();
  if (!hub.empty()) {
    for (fs::path cand : {fs::path(dir).parent_path() / leaf, fs::path(dir) / leaf, fs::path(hub)}) {
      tried.push_back(cand);
      std::error_code ec;  // the hub id comes from config.json: an odd one is simply not found
      if (fs::exists(cand / "config.json", ec)) return open_tower_dir(cand.string());
    }
  }
  if (ck.find(embedded + "embeddings.class_embedding")) {
    VisionSource vs;
    vs.prefix = embedded;
    vs.where = dir;
    return vs;
  }
  std::string looked;
  for (auto& t : tried) looked += "\n  " + t.string();
  fail(dir, ": the vision tower '", hub, "' is neither in the checkpoint nor given; pass --vision-tower DIR (looked in:", looked, ")");
}

// What a model directory holds, whatever its layout: the config, the
// checkpoint (tensors under Hugging Face's names, in `naming`) and the tower.
struct ModelSource {
  HfModelConfig config;
  Checkpoint ck;
  const CheckpointNaming* naming = &kLlavaNaming;
  std::optional<VisionSource> tower;
  std::string where;  // the checkpoint, for messages
};

// A path a config names, as the MindSpore port resolves it (from its working
// directory: the model directory or the config's folder or its parent), or "".
inline std::string find_near(const std::string& path, const std::vector<std::filesystem::path>& bases) {
  namespace fs = std::filesystem;
  if (path.empty()) return "";
  std::error_code ec;  // the path comes from a config: an odd one is simply not found
  if (fs::path(path).is_absolute()) return fs::exists(path, ec) ? path : "";
  for (const fs::path& b : bases)
    if (fs::exists(b / path, ec)) return (b / path).string();
  return "";
}

// The MindSpore ShareGPT4V port's directory (mindone examples/sharegpt_4v,
// eval/run_share4v.py): DIR holds the LLM's .ckpt and tokenizer.model; the
// config (LLaVA's flat one) is DIR/config.json or DIR/configs/config.json, its
// mm_vision_tower the tower's config folder and mm_vision_tower_path the ViT
// .ckpt (else --vision-tower FILE.ckpt, or the .ckpt beside the LLM's with
// "vit" in its name). Names are read back as Hugging Face's (hf_name_from_mindspore).
// None when DIR holds no .ckpt file.
inline std::optional<ModelSource> open_mindspore_dir(const std::string& dir, const ConvertOptions& opt) {
  namespace fs = std::filesystem;
  std::vector<std::string> ckpts;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file() && e.path().extension() == ".ckpt") ckpts.push_back(e.path().string());
  if (ckpts.empty()) return std::nullopt;
  std::sort(ckpts.begin(), ckpts.end());
  std::string cfg = (fs::path(dir) / "config.json").string();
  if (!fs::exists(cfg)) cfg = (fs::path(dir) / "configs" / "config.json").string();
  if (!fs::exists(cfg))
    fail(dir, ": a MindSpore checkpoint directory needs its config.json (looked for ", dir, "/config.json and ", dir,
         "/configs/config.json)");
  ModelSource m;
  m.config = HfModelConfig::read(cfg);
  if (m.config.transformers) fail(cfg, ": a LlavaConfig beside MindSpore .ckpt files is not supported (the port's config is LLaVA's)");
  const Json j = Json::load(cfg);
  const fs::path cdir = fs::path(cfg).parent_path();
  const std::vector<fs::path> bases = {fs::path(dir), cdir, cdir.parent_path(), fs::current_path()};
  // The tower: its .ckpt and the folder of its config.json.
  std::string vit_ckpt, vit_config = find_near(m.config.tower_id, bases);
  if (!vit_config.empty() && !fs::exists(fs::path(vit_config) / "config.json")) vit_config.clear();
  if (!opt.vision_tower.empty()) {
    if (fs::is_directory(opt.vision_tower)) {
      for (const auto& e : fs::directory_iterator(opt.vision_tower))
        if (e.path().extension() == ".ckpt") vit_ckpt = e.path().string();
      if (vit_ckpt.empty()) fail(opt.vision_tower, ": no .ckpt file in this folder (--vision-tower takes the ViT's .ckpt)");
      if (fs::exists(fs::path(opt.vision_tower) / "config.json")) vit_config = opt.vision_tower;
    } else {
      vit_ckpt = opt.vision_tower;
    }
  } else if (const std::string p = j.get_or<std::string>("mm_vision_tower_path", ""); !p.empty()) {
    vit_ckpt = find_near(p, bases);
    if (vit_ckpt.empty()) fail(cfg, ": mm_vision_tower_path '", p, "' is not found beside the model or the config; pass --vision-tower FILE.ckpt");
  } else {
    for (const std::string& c : ckpts)
      if (fs::path(c).filename().string().find("vit") != std::string::npos) vit_ckpt = c;
  }
  std::vector<std::string> llm;
  for (const std::string& c : ckpts)
    if (vit_ckpt.empty() || !fs::equivalent(c, vit_ckpt)) llm.push_back(c);
  if (llm.size() != 1) {
    std::string list;
    for (const std::string& c : llm) list += "\n  " + c;
    fail(dir, ": expected one MindSpore checkpoint of the language model, found ", llm.size(), list.empty() ? "" : ":", list);
  }
  m.ck = Checkpoint::open_file(llm[0]);
  m.ck.rename(hf_name_from_mindspore);
  m.where = llm[0] + " (the port's names read as Hugging Face's)";
  if (opt.log) opt.log("reading the MindSpore checkpoint " + llm[0] + " (the port's parameter names)");
  if (vit_ckpt.empty()) {
    if (!m.config.tower_id.empty())
      fail(dir, ": config.json names vision tower '", m.config.tower_id, "' but no ViT .ckpt was found; pass --vision-tower FILE.ckpt");
    return m;
  }
  VisionSource vs;
  vs.own = Checkpoint::open_file(vit_ckpt);
  vs.own->rename(hf_name_from_mindspore);
  vs.prefix = "vision_model.";
  vs.where = vit_ckpt + " (the port's names read as Hugging Face's)";
  if (!vs.own->find("vision_model.embeddings.class_embedding"))
    fail(vit_ckpt, ": no vision_tower.vision_model.* or vision_model.* parameters (expected the port's ViT checkpoint)");
  if (!vit_config.empty()) vs.config = read_vision_config(vit_config);
  m.tower = std::move(vs);
  return m;
}

// A Hugging Face model directory (LLaVA's, ShareGPT4V's or transformers'
// layout), or the MindSpore port's.
inline ModelSource open_model_dir(const std::string& dir, const ConvertOptions& opt) {
  namespace fs = std::filesystem;
  bool hf = false;
  for (const char* n : {"model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json", "pytorch_model.bin"})
    hf |= fs::exists(fs::path(dir) / n);
  if (!hf)
    if (std::optional<ModelSource> ms = open_mindspore_dir(dir, opt)) return std::move(*ms);
  ModelSource m;
  m.where = dir;
  m.config = HfModelConfig::load(dir);
  m.ck = Checkpoint::open(dir);
  m.naming = &detect_naming([&](const std::string& n) { return m.ck.find(n) != nullptr; });
  if (m.config.transformers && m.naming == &kLlavaNaming)
    fail(dir, ": config.json describes a LlavaForConditionalGeneration but the checkpoint has neither ",
         kLlavaHfNaming.text, "embed_tokens.weight nor ", kLlavaHf452Naming.text, "embed_tokens.weight");
  if (opt.log && m.naming != &kLlavaNaming) opt.log("reading " + std::string(m.naming->what) + " tensor names");
  m.tower = find_vision_tower(dir, m.ck, m.config, *m.naming, opt);
  return m;
}

// Re-quantise an existing GGUF (llama.cpp's or ours; text model or mmproj) to
// opt.outtype with the same type rules as a conversion from Hugging Face:
// metadata is kept, each weight matrix goes through f32 (quantised sources are
// dequantised first, and the log says so).
inline std::string requantize_gguf(const std::string& path, const std::string& out_dir, const ConvertOptions& opt) {
  namespace fs = std::filesystem;
  const GgufFile g = GgufFile::open(path);
  const std::string arch = g.get_str("general.architecture", "");
  std::string name = opt.name.empty() ? fs::path(path).stem().string() : opt.name;
  if (!opt.name.empty() && arch == "clip") name = "mmproj-" + opt.name;
  const std::string out = (fs::path(out_dir) / (name + ".gguf")).string();
  if (fs::exists(out) && fs::equivalent(out, path)) fail(out, ": refusing to overwrite the input file (choose another -o or --name)");
  GgufWriter w;
  for (const auto& [k, v] : g.kv)
    if (k != "general.alignment") w.set(k, v);
  w.set("general.file_type", GgufValue::u32(gguf_file_type(opt.outtype)));
  if (is_quantized(opt.outtype)) w.set("general.quantization_version", GgufValue::u32(2));
  size_t requantised = 0;
  size_t total = 0;
  for (const GgufTensor& t : g.tensors) {
    if (!dtype_info(t.dtype).supported) fail(path, ": tensor '", t.name, "' has type ", dtype_name(t.dtype), ", which loupe cannot read");
    // Norms, biases, the conv kernel and CLIP's position embeddings keep their type (as convert_mmproj writes them).
    const bool keep = t.shape.size() != 2 || t.name == "v.position_embd.weight";
    DType type = keep ? t.dtype : choose_type(t.name, t.shape, opt.outtype, opt.log);
    if (!keep && arch == "llama" && type == DType::Q4_0 && !g.tensor("output.weight") && t.name == "token_embd.weight") type = DType::Q8_0;
    if (type != t.dtype && is_quantized(t.dtype)) ++requantised;
    const TensorView v = t.view;
    w.add_tensor(t.name, type, t.shape, [v, type](std::vector<uint8_t>& buf) {
      const int64_t cols = v.cols();
      std::vector<float> row(static_cast<size_t>(cols));
      const size_t rb = row_bytes(type, cols);
      buf.resize(rb * size_t(v.rows()));
      for (int64_t r = 0; r < v.rows(); ++r) {
        if (type == v.dtype) { std::memcpy(buf.data() + size_t(r) * rb, v.row(r), rb); continue; }
        to_f32(v.dtype, v.row(r), row.data(), cols);
        from_f32(type, row.data(), buf.data() + size_t(r) * rb, cols);
      }
    });
    total += w.tensors.back().nbytes();
  }
  if (requantised && opt.log)
    opt.log("note: " + std::to_string(requantised) + " tensors were already quantised: they are dequantised to f32 and requantised (extra rounding)");
  OutputFiles files;
  write_with_progress(w, files, out, total, opt.progress);
  files.commit();
  return out;
}

// Convert a Hugging Face model directory. Writes <out_dir>/<name>.gguf, and
// <out_dir>/mmproj-<name>.gguf when the model has a vision tower + projector.
// A .gguf file instead of a directory is re-quantised (requantize_gguf).
inline ConvertResult convert_model(const std::string& dir, const std::string& out_dir, const ConvertOptions& opt = {}) {
  namespace fs = std::filesystem;
  if (fs::is_regular_file(dir)) {
    Blob head = Blob::open(dir);
    if (head.size >= 4 && std::memcmp(head.data, "GGUF", 4) == 0) {
      if (!opt.loras.empty())
        fail(dir, ": merging a LoRA into a GGUF is not supported; give the Hugging Face directory (the merge is then done in f32)");
      ConvertResult r;
      (GgufFile::parse(head).get_str("general.architecture", "") == "clip" ? r.mmproj_path : r.text_path) =
          requantize_gguf(dir, out_dir, opt);
      return r;
    }
  }
  if (!fs::is_directory(dir)) fail(dir, ": not a directory (expected a Hugging Face model directory or a GGUF file)");
  // Resolve the tower before writing anything, so a missing tower leaves no files.
  const ModelSource src = open_model_dir(dir, opt);
  const HfModelConfig& config = src.config;
  const Checkpoint& ck = src.ck;
  const CheckpointNaming& naming = *src.naming;
  const std::optional<VisionSource>& tower = src.tower;
  std::string name = opt.name;
  if (name.empty()) name = fs::path(dir).lexically_normal().filename().string();
  if (name.empty()) name = fs::absolute(dir).lexically_normal().parent_path().filename().string();
  std::optional<LoraMerge> merge;
  if (!opt.loras.empty()) {
    const LlamaConfig lc = llama_config(config.text);
    merge.emplace();
    for (const auto& [path, scale] : opt.loras) {
      LoraAdapter a = LoraAdapter::load(path, lc);
      if (opt.log) {
        for (const std::string& n : a.notes) opt.log(n);
        char sc[32];
        std::snprintf(sc, sizeof sc, "%g", double(scale));
        opt.log("merging LoRA " + a.summary() + " at scale " + sc + ": W + scale·s·B·A is computed in f32 from the checkpoint's weights, then " +
                (is_quantized(opt.outtype) ? std::string("quantised to ") : std::string("stored as ")) + dtype_name(opt.outtype));
        if (a.replaces_projector() && !tower) opt.log("note: " + a.name + " replaces the projector, but this model has no vision tower");
      }
      merge->adapters.emplace_back(std::move(a), scale);
    }
  }
  // Both files appear together, replacing earlier ones only then: a failure
  // in the second leaves the output folder as it was (all or nothing).
  OutputFiles files;
  ConvertResult r;
  r.text_path = (fs::path(out_dir) / (name + ".gguf")).string();
  convert_text_model(dir, src.where, ck, config.text, naming, config.chat_template, files, r.text_path, opt, name,
                     merge ? &*merge : nullptr);
  if (tower) {
    r.mmproj_path = (fs::path(out_dir) / ("mmproj-" + name + ".gguf")).string();
    convert_mmproj(dir, ck, config, *tower, naming, files, r.mmproj_path, opt, name, merge ? &*merge : nullptr);
  }
  files.commit();
  return r;
}

struct LoraConvertResult {
  std::string lora_path, replace_path;  // replace_path empty when the adapter replaces no tensor
};

// loupe-convert --lora PATH (no --model): a PEFT / LLaVA LoRA directory (or a
// LoRA GGUF) -> <out_dir>/<name>.gguf, llama.cpp's LoRA GGUF, plus
// <name>.replace.gguf when the adapter replaces whole tensors (write_lora_gguf).
// The q/k row order needs the base's head counts: from `base_config` (a
// directory or its config.json), else the adapter directory's own config.json
// (LLaVA runs save one), else adapter_config.json's base_model_name_or_path when
// that is a local directory.
inline LoraConvertResult convert_lora(const std::string& path, const std::string& out_dir, const ConvertOptions& opt,
                                      const std::string& base_config = "") {
  namespace fs = std::filesystem;
  std::string cfg;
  if (!base_config.empty()) {
    cfg = fs::is_directory(base_config) ? (fs::path(base_config) / "config.json").string() : base_config;
    if (!fs::is_regular_file(cfg)) fail(base_config, ": no config.json there (--base-config takes the base model's directory or its config.json)");
  } else if (fs::is_directory(path) && fs::exists(fs::path(path) / "config.json")) {
    cfg = (fs::path(path) / "config.json").string();
  } else if (fs::is_directory(path) && fs::exists(fs::path(path) / "adapter_config.json")) {
    const std::string b = Json::load((fs::path(path) / "adapter_config.json").string()).get_or<std::string>("base_model_name_or_path", "");
    std::error_code ec;  // base_model_name_or_path is often a hub id, not a folder here
    if (!b.empty() && fs::exists(fs::path(b) / "config.json", ec)) cfg = (fs::path(b) / "config.json").string();
  }
  if (cfg.empty())
    fail(path, ": the base model's config.json is needed (its head counts give the q/k row order): pass --base-config DIR");
  const LlamaConfig lc = llama_config(HfModelConfig::read(cfg).text);
  LoraAdapter a = LoraAdapter::load(path, lc);
  if (!opt.name.empty()) a.name = opt.name;
  if (opt.log) {
    for (const std::string& n : a.notes) opt.log(n);
    opt.log("LoRA " + a.summary());
  }
  LoraConvertResult r;
  r.lora_path = (fs::path(out_dir) / (a.name + ".gguf")).string();
  r.replace_path = write_lora_gguf(a, r.lora_path, opt.outtype);
  return r;
}

}  // namespace loupe
