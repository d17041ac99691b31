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
#include <regex>
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
    LlamaConfig l;
    l.n_vocab = c.n_vocab, l.dim = c.dim, l.n_layers = c.n_layers, l.n_heads = c.n_heads, l.n_kv_heads = c.n_kv_heads;
    l.ffn_dim = c.ffn_dim, l.n_ctx = c.n_ctx, l.rms_eps = float(c.rms_eps), l.rope_base = float(c.rope_theta);
    const std::string src = j.source ? *j.source : std::string("config.json");
    check_llama_sizes(l, src, kHfLlamaKeys);
    if (c.n_vocab < 1) fail(src, ": vocab_size ", c.n_vocab, " is out of range");
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

// Writes the text model of the HF directory `dir` (config.json, checkpoint,
// tokenizer.model) to `out_path`.
inline void convert_text_model(const std::string& dir, const Checkpoint& ck, const Json& config, OutputFiles& out, const std::string& out_path,
                               const ConvertOptions& opt, const std::string& name, LoraMerge* merge = nullptr) {
  namespace fs = std::filesystem;
  const HfTextConfig c = HfTextConfig::parse(config);
  const std::string tok_path = (fs::path(dir) / "tokenizer.model").string();
  if (!fs::exists(tok_path)) fail(dir, ": tokenizer.model is missing (the text model needs its SentencePiece tokenizer)");
  const Tokenizer tok = Tokenizer::load(tok_path);

  const LlamaConfig lc = llama_config(c);
  TensorPlanner tp{opt, {}, {}};
  for (const LlamaTensor& t : llama_tensors(lc, !c.tied)) tp.add(ck, dir, t.hf, t.gguf, t.shape, Storage::Matrix, t.permute_heads);
  if (c.tied && tp.plans.front().type == DType::Q4_0) tp.plans.front().type = DType::Q8_0;  // tied: token_embd is the output too

  // Everything else must be accounted for: vision / projector tensors belong to
  // the mmproj, rotary caches are recomputed; anything unknown is an error.
  static const std::regex known_extra(
      R"(^(model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq|lm_head\.weight|model\.mm_projector\..*|model\.vision_tower\..*)$)");
  for (const SourceTensor& t : ck.tensors)
    if (!tp.used.count(t.name) && !std::regex_match(t.name, known_extra))
      fail(dir, ": unknown tensor '", t.name, "' ", t.shape_str(), " (not part of a LLaMA / LLaVA checkpoint)");

  GgufWriter w;
  write_llama_config(w, lc);
  w.set("general.name", GgufValue::str(name));
  w.set("general.file_type", GgufValue::u32(gguf_file_type(opt.outtype)));
  if (is_quantized(opt.outtype)) w.set("general.quantization_version", GgufValue::u32(2));
  write_vocab(w, tok, c.n_vocab);
  if (merge) merge->apply(tp.plans, true);
  tp.write(w, out, out_path);
}

// Where the vision tower's weights and config come from.
struct VisionSource {
  std::string config_dir;       // holds config.json (+ preprocessor_config.json); empty: inferred
  std::optional<Checkpoint> own;  // a separate tower checkpoint
  std::string prefix;           // key prefix of vision_model.* in its checkpoint
  std::string where;            // for messages
};

// CLIPVisionModel hyper-parameters (config.json of the tower, or its
// vision_config when it is a whole CLIPModel).
struct HfVisionConfig {
  int64_t dim = 0, ffn_dim = 0, n_layers = 0, n_heads = 0, image_size = 0, patch_size = 0, projection_dim = 0;
  double eps = 1e-5;
  std::string act = "quick_gelu";
  std::array<double, 3> mean{0.48145466, 0.4578275, 0.40821073}, std{0.26862954, 0.26130258, 0.27577711};  // CLIP's
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

inline HfVisionConfig read_vision_config(const std::string& dir) {
  namespace fs = std::filesystem;
  HfVisionConfig v;
  const Json top = Json::load((fs::path(dir) / "config.json").string());
  const Json& j = top.find("vision_config") ? top.at("vision_config") : top;
  v.dim = j.at("hidden_size").integer();
  v.ffn_dim = j.at("intermediate_size").integer();
  v.n_layers = j.at("num_hidden_layers").integer();
  v.n_heads = j.at("num_attention_heads").integer();
  v.image_size = j.at("image_size").integer();
  v.patch_size = j.at("patch_size").integer();
  v.projection_dim = j.get_or<int64_t>("projection_dim", top.get_or<int64_t>("projection_dim", 0));
  v.eps = j.get_or<double>("layer_norm_eps", 1e-5);
  v.act = j.get_or<std::string>("hidden_act", "quick_gelu");
  if (v.act != "quick_gelu" && v.act != "gelu") fail(dir, "/config.json: hidden_act '", v.act, "' is not supported (quick_gelu or gelu)");
  check_vision_sizes(v, (fs::path(dir) / "config.json").string());
  const fs::path pp = fs::path(dir) / "preprocessor_config.json";
  if (fs::exists(pp)) {
    const Json p = Json::load(pp.string());
    for (const char* key : {"image_mean", "image_std"}) {
      const Json* a = p.find(key);
      if (!a) continue;
      if (a->array().size() != 3) fail(pp.string(), ": ", key, " must have 3 values");
      auto& dst = std::string(key) == "image_mean" ? v.mean : v.std;
      for (size_t i = 0; i < 3; ++i) dst[i] = a->array()[i].number();
    }
    check_vision_sizes(v, pp.string());  // image_mean / image_std
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
      fail(pp.string(), ": crop_size ", crop, " / size ", resize, " differ from the tower's image_size ", v.image_size,
           " (only the standard CLIP preprocessing is supported)");
  }
  return v;
}

// Writes mmproj-<name>.gguf: CLIP tower (blocks up to the selected feature layer)
// + mlp2x_gelu projector, with clip.* metadata in llama.cpp's layout.
inline void convert_mmproj(const std::string& dir, const Checkpoint& llm, const Json& config, const VisionSource& vs,
                           OutputFiles& out, const std::string& out_path, const ConvertOptions& opt, const std::string& name,
                           LoraMerge* merge = nullptr) {
  const Checkpoint& vck = vs.own ? *vs.own : llm;
  const std::string& vwhere = vs.own ? vs.where : dir;
  const std::string P = vs.prefix;  // "vision_model." or "model.vision_tower.vision_tower.vision_model."
  HfVisionConfig v;
  if (!vs.config_dir.empty()) {
    v = read_vision_config(vs.config_dir);
  } else {
    // No tower config: sizes from the weights, heads from the hub id.
    const std::string hub = config.get_or<std::string>("mm_vision_tower", "");
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
    v.n_heads = known_tower_heads(hub);
    if (!v.n_heads)
      fail(dir, ": the checkpoint embeds vision tower '", hub, "' but no tower config.json was found; pass --vision-tower DIR");
    check_vision_sizes(v, vwhere + " (the tower's sizes, read from its weights)");
  }
  const std::string select_feature = config.get_or<std::string>("mm_vision_select_feature", "patch");
  if (select_feature != "patch") fail(dir, "/config.json: mm_vision_select_feature '", select_feature, "' is not supported (patch)");
  const std::string proj_type = config.get_or<std::string>("mm_projector_type", "linear");
  if (proj_type != "mlp2x_gelu") fail(dir, "/config.json: mm_projector_type '", proj_type, "' is not supported (mlp2x_gelu)");
  const int64_t select = config.get_or<int64_t>("mm_vision_select_layer", -2);
  const int64_t feature_layer = select >= 0 ? select : v.n_layers + select + 1;  // index into hidden_states
  if (feature_layer < 1 || feature_layer > v.n_layers)
    fail(dir, "/config.json: mm_vision_select_layer ", select, " is outside the tower's ", v.n_layers, " layers");
  const std::string aspect = config.get_or<std::string>("image_aspect_ratio", "square");
  const HfTextConfig tc = HfTextConfig::parse(config);
  const int64_t mm_hidden = config.get_or<int64_t>("mm_hidden_size", v.dim);
  if (mm_hidden != v.dim) fail(dir, "/config.json: mm_hidden_size ", mm_hidden, " does not match the tower's width ", v.dim);

  ClipConfig cc;
  cc.image_size = v.image_size, cc.patch_size = v.patch_size, cc.dim = v.dim, cc.ffn_dim = v.ffn_dim, cc.n_heads = v.n_heads;
  cc.n_layers_run = feature_layer, cc.projection_dim = v.projection_dim, cc.eps = float(v.eps), cc.gelu = v.act == "gelu";
  for (size_t i = 0; i < 3; ++i) cc.mean[i] = float(v.mean[i]), cc.std[i] = float(v.std[i]);
  cc.aspect_ratio = aspect == "pad" ? "pad" : "none";
  TensorPlanner tp{opt, {}, {}};
  for (const ClipTensor& t : clip_tensors(cc, tc.dim)) {
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

// Finds the vision tower for an LLaVA-style config: --vision-tower, the
// checkpoint itself, or a directory beside the model named like the hub id.
inline std::optional<VisionSource> find_vision_tower(const std::string& dir, const Checkpoint& ck, const Json& config,
                                                     const ConvertOptions& opt) {
  namespace fs = std::filesystem;
  const std::string hub = config.get_or<std::string>("mm_vision_tower", config.get_or<std::string>("vision_tower", ""));
  const bool has_projector = ck.find("model.mm_projector.0.weight") != nullptr;
  if (hub.empty() && !has_projector) return std::nullopt;  // a plain LLaMA
  if (!has_projector) fail(dir, ": config.json names vision tower '", hub, "' but the checkpoint has no model.mm_projector.* tensors");
  const std::string embedded = "model.vision_tower.vision_tower.vision_model.";
  auto open_tower_dir = [&](const std::string& tdir) {
    if (!fs::exists(fs::path(tdir) / "config.json")) fail(tdir, ": config.json is missing (expected a CLIPVisionModel directory)");
    VisionSource vs;
    vs.config_dir = tdir;
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
      if (fs::exists(cand / "config.json")) return open_tower_dir(cand.string());
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
  const std::string cfg_path = (fs::path(dir) / "config.json").string();
  if (!fs::exists(cfg_path)) fail(dir, ": config.json is missing");
  const Json config = Json::load(cfg_path);
  const Checkpoint ck = Checkpoint::open(dir);
  std::string name = opt.name;
  if (name.empty()) name = fs::path(dir).lexically_normal().filename().string();
  if (name.empty()) name = fs::absolute(dir).lexically_normal().parent_path().filename().string();
  // Resolve the tower before writing anything, so a missing tower leaves no files.
  const std::optional<VisionSource> tower = find_vision_tower(dir, ck, config, opt);
  std::optional<LoraMerge> merge;
  if (!opt.loras.empty()) {
    const LlamaConfig lc = llama_config(HfTextConfig::parse(config));
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
  convert_text_model(dir, ck, config, files, r.text_path, opt, name, merge ? &*merge : nullptr);
  if (tower) {
    r.mmproj_path = (fs::path(out_dir) / ("mmproj-" + name + ".gguf")).string();
    convert_mmproj(dir, ck, config, *tower, files, r.mmproj_path, opt, name, merge ? &*merge : nullptr);
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
    if (!b.empty() && fs::exists(fs::path(b) / "config.json")) cfg = (fs::path(b) / "config.json").string();
  }
  if (cfg.empty())
    fail(path, ": the base model's config.json is needed (its head counts give the q/k row order): pass --base-config DIR");
  const LlamaConfig lc = llama_config(HfTextConfig::parse(Json::load(cfg)));
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
