// LoRA adapters (Hu et al. 2021): the low-rank updates W + s·B·A of a
// fine-tune, read from the three forms they are published in and held in one:
//
//   - PEFT directories: adapter_config.json + adapter_model.safetensors or
//     adapter_model.bin; keys base_model.model.<module>.lora_A.weight [r, in]
//     and .lora_B.weight [out, r];
//   - LLaVA / ShareGPT4V LoRA runs: the same plus non_lora_trainables.bin,
//     whose model.mm_projector.* replaces the base projector while the adapter
//     is active, and the run's config.json;
//   - llama.cpp's LoRA GGUF: general.type=adapter, adapter.type=lora,
//     adapter.lora.alpha, tensors <base tensor>.lora_a [r, in] / .lora_b [out, r].
//
// The held form: one LoraWeight per adapted weight, named by llama.cpp's tensor
// name ("blk.3.attn_q.weight"), A and B widened to f32 (exact; the unmerged
// update's two small matmuls then run at full speed instead of widening F16 /
// BF16 rows on every token, for twice an F16 adapter's memory), B's rows in
// llama.cpp's q/k order (the
// converter permutes q_proj/k_proj rows from HF's rotate_half layout; B's rows
// get the same permutation, A is unaffected), and PEFT's scaling as
// lora/layer.py's update_layer computes it: alpha/r, or alpha/√r with
// use_rslora, r and alpha per module from rank_pattern / alpha_pattern
// (peft.utils.other.get_pattern_key: the first pattern key k, in file order,
// for which re.match(r"(.*\.)?(k)$", module name) matches).
// Tensors an adapter replaces outright (the LLaVA projector, PEFT's
// modules_to_save) are kept whole under their GGUF names.
#pragma once
#include <cmath>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "../io/checkpoint.hpp"
#include "../io/gguf.hpp"
#include "../io/json.hpp"
#include "../text/module_pattern.hpp"
#include "tensors.hpp"

namespace loupe {

struct LoraWeight {
  std::string target;    // the adapted weight, llama.cpp's name: "blk.3.attn_q.weight", "output.weight"
  std::string source;    // where it came from ("file: tensor"), for messages
  Tensor a, b;           // A [r, in], B [out, r] in f32 (B's rows in llama.cpp's order)
  float scaling = 1.0f;  // PEFT's scaling[adapter]: the update is scaling·B·A
  int64_t rank() const { return a.shape[0]; }
};

struct LoraAdapter {
  std::string name;    // what the API and messages call it (default: the directory's or file's name)
  std::string source;  // the directory or file it was read from
  std::vector<LoraWeight> weights;
  std::map<std::string, Tensor> replaces;  // GGUF name -> tensor used instead of the base's while active
  std::vector<std::string> notes;          // warnings for the user (e.g. a LLaVA run without its projector)
  // adapter_config.json's defaults (or the GGUF's alpha), for messages and the GGUF writer.
  double alpha = 0;
  int64_t r = 0;
  bool rslora = false;

  bool replaces_projector() const { return replaces.count("mm.0.weight") > 0; }
  int64_t max_rank() const {
    int64_t m = 0;
    for (const LoraWeight& w : weights) m = std::max(m, w.rank());
    return m;
  }
  // One line for logs: "name: 224 weights, rank 8, replaces the projector".
  std::string summary() const {
    std::string s = name + ": " + std::to_string(weights.size()) + " LoRA weights, rank " + std::to_string(max_rank());
    size_t other = 0;
    for (const auto& r : replaces) other += r.first.rfind("mm.", 0) != 0;
    if (replaces_projector()) s += ", replaces the projector";
    if (other) s += ", replaces " + std::to_string(other) + " whole tensor" + (other > 1 ? "s" : "");
    return s;
  }

  // A PEFT / LLaVA LoRA directory or a LoRA GGUF (with its replacement file when
  // it names one), checked against the base model `base`.
  static LoraAdapter load(const std::string& path, const LlamaConfig& base);
  static LoraAdapter from_peft_dir(const std::string& dir, const LlamaConfig& base);
  // `replace_file`: the <name>.replace.gguf the adapter names in loupe.adapter.replace_file (if any).
  static LoraAdapter from_gguf(const GgufFile& f, const LlamaConfig& base, const GgufFile* replace_file = nullptr);
};

// adapter_config.json as loupe reads it (PEFT's LoraConfig), checked before any
// weight is read: the directory is untrusted input, so r, lora_alpha and the
// rank_pattern / alpha_pattern values are range-checked (a rank of 0 would
// divide by zero) and every regular expression is compiled by ModulePattern
// (linear-time, bounded), never by std::regex.
struct PeftLoraConfig {
  static constexpr int64_t kMaxRank = 65536;  // far above any published adapter's

  std::string path;  // adapter_config.json, for messages
  int64_t r = 8;     // PEFT's LoraConfig defaults
  double alpha = 8.0;
  bool rslora = false;
  std::vector<std::string> notes;
  // target_modules (PEFT's check_target_module_exists): a list of module-name
  // suffixes (name == t or name ends with "." + t), a regular expression the
  // whole name must match (re.fullmatch), or "all-linear" (every linear layer
  // but the output). None: the tensors decide.
  bool all_linear = false;
  std::vector<std::string> target_list;
  std::optional<ModulePattern> target_re;
  // rank_pattern / alpha_pattern in file order, each key compiled as PEFT's
  // get_pattern_key matches it: (.*\.)?(key) against the whole module name.
  struct Pattern {
    std::string key;
    ModulePattern re;
    double value;
  };
  std::vector<Pattern> rank_pattern, alpha_pattern;

  // Parses and checks `cfg` (read from `path`); the target list and regular
  // expression must name modules of `base`.
  // `naming`: how the base model's checkpoint names its modules (PEFT's module
  // names are those of the model it wrapped).
  static PeftLoraConfig parse(const Json& cfg, const std::string& path, const LlamaConfig& base,
                              const CheckpointNaming& naming = kLlavaNaming);
  bool targets(const std::string& module) const;
  int64_t rank_for(const std::string& module) const;  // rank_pattern's first match, else r
  double alpha_for(const std::string& module) const;  // alpha_pattern's first match, else lora_alpha
};

namespace lora_detail {
inline bool is_projector_name(const std::string& gguf) { return gguf.rfind("mm.", 0) == 0; }
inline std::vector<int64_t> shape_of(const TensorView& v) { return {v.shape.begin(), v.shape.begin() + v.ndim}; }
}  // namespace lora_detail

// Writes `a` as a llama.cpp LoRA GGUF at `path`, A and B in `type` (F32, F16 or
// BF16). llama.cpp scales every weight by adapter_scale·alpha/rank with one
// adapter.lora.alpha; a weight whose PEFT scaling differs (rslora,
// rank/alpha patterns) gets the ratio folded into its B. Tensors the adapter
// replaces outright have no place in llama.cpp's format: they go to
// <stem>.replace.gguf beside it (general.type=adapter, adapter.type=replace,
// GGUF tensor names), which the adapter names in loupe.adapter.replace_file;
// llama.cpp ignores the key. Returns the replacement file's path, or "".
// Both files appear together or neither does; with `into` they join that set
// and appear when it is committed.
std::string write_lora_gguf(const LoraAdapter& a, const std::string& path, DType type = DType::F32,
                            OutputFiles* into = nullptr);

}  // namespace loupe

#ifdef LOUPE_IMPLEMENTATION

namespace loupe {

namespace lora_detail {

// One weight of the base an adapter may touch: PEFT's module name, llama.cpp's
// tensor name, its shape, and the heads its rows are permuted by (q/k) or 0.
struct Slot {
  std::string hf, gguf;
  std::vector<int64_t> shape;
  int64_t heads = 0;
};

// The linear modules a LoRA may target (PEFT names without ".weight").
inline std::vector<Slot> linear_slots(const LlamaConfig& c, const CheckpointNaming& naming) {
  std::vector<Slot> s;
  for (const LlamaTensor& t : llama_tensors(c, true, naming))
    if (t.slot == LlamaSlot::Linear || t.slot == LlamaSlot::Output) s.push_back({t.hf_module(), t.gguf, t.shape, t.permute_heads});
  return s;
}

// Whole tensors an adapter may replace (PEFT names with ".weight").
inline std::vector<Slot> replaceable_slots(const LlamaConfig& c, const CheckpointNaming& naming) {
  std::vector<Slot> s;
  for (const LlamaTensor& t : llama_tensors(c, true, naming)) s.push_back({t.hf, t.gguf, t.shape, t.permute_heads});
  return s;
}

// The projector's tensors: model.mm_projector.{0,2}.* (or transformers'
// multi_modal_projector.linear_{1,2}.*) -> mm.{0,2}.* (shapes are checked
// against the vision model when the adapter is activated or merged).
inline std::string projector_gguf_name(const std::string& hf, const CheckpointNaming& naming) {
  for (const ClipTensor& t : projector_tensors(0, 0, naming))
    if (t.hf == hf) return t.gguf;
  return "";
}


// An owned copy of `v` with its rows permuted per head (heads > 0), in `to`
// (or the source's dtype when `to` is null).
inline Tensor copy_rows(const TensorView& v, int64_t heads, std::optional<DType> to = std::nullopt) {
  const DType t = to ? *to : v.dtype;
  Tensor out(t, std::vector<int64_t>(v.shape.begin(), v.shape.begin() + v.ndim));
  const int64_t rows = v.rows(), cols = v.cols(), head_dim = heads ? rows / heads : 0;
  const size_t rb = row_bytes(t, cols);
  std::vector<float> tmp(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t s = heads ? qk_source_row(r, head_dim) : r;
    if (t == v.dtype) {
      std::memcpy(out.bytes.data() + size_t(r) * rb, v.row(s), rb);
    } else {
      to_f32(v.dtype, v.row(s), tmp.data(), cols);
      from_f32(t, tmp.data(), out.bytes.data() + size_t(r) * rb, cols);
    }
  }
  return out;
}

inline std::string shape_str(const std::vector<int64_t>& s) { return make_view(DType::F32, s, nullptr).shape_str(); }

inline bool starts_with(const std::string& s, const std::string& p) { return s.rfind(p, 0) == 0; }
inline bool ends_with(const std::string& s, const std::string& p) {
  return s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0;
}

// "dir/name/" or "dir/name.gguf" -> "name".
inline std::string name_of(const std::string& path) {
  namespace fs = std::filesystem;
  fs::path p = fs::path(path).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  return std::filesystem::is_directory(p) ? p.filename().string() : p.stem().string();
}

// A replacement tensor for `slot` from `v`: norms (1-D) and projector tensors in
// F32 (the forward reads them as float*), matrices in their own float dtype.
inline Tensor replacement(const TensorView& v, int64_t heads, bool force_f32) {
  return copy_rows(v, heads, (force_f32 || v.ndim == 1) ? std::optional<DType>(DType::F32) : std::nullopt);
}

// PEFT's modules_to_save keys: "<module>.modules_to_save[.<adapter>].(weight|bias)"
// -> "<module>.(weight|bias)"; other names unchanged. (The regular expression
// ^(.*)\.modules_to_save(\.[^.]+)?\.(weight|bias)$ with its greedy (.*): the
// shorter form, without an adapter name, wins.)
inline std::string strip_modules_to_save(const std::string& k) {
  const std::string tag = ".modules_to_save";
  const size_t dot = k.rfind('.');
  if (dot == std::string::npos) return k;
  const std::string kind = k.substr(dot + 1);
  if (kind != "weight" && kind != "bias") return k;
  std::string head = k.substr(0, dot);
  if (!ends_with(head, tag)) {
    const size_t d2 = head.rfind('.');  // an adapter name: one non-empty segment
    if (d2 == std::string::npos || d2 + 1 == head.size()) return k;
    head = head.substr(0, d2);
    if (!ends_with(head, tag)) return k;
  }
  return head.substr(0, head.size() - tag.size()) + "." + kind;
}

// How the base model an adapter was trained on names its modules, from the
// adapter's tensor names (PEFT's "base_model.model." removed).
inline const CheckpointNaming& adapter_naming(const Checkpoint& ck) {
  for (const CheckpointNaming* n : {&kLlavaHf452Naming, &kLlavaHfNaming})
    for (const SourceTensor& t : ck.tensors) {
      const std::string k = starts_with(t.name, "base_model.model.") ? t.name.substr(17) : t.name;
      if (starts_with(k, n->text) || starts_with(k, n->projector)) return *n;
    }
  return kLlavaNaming;
}

// "model.layers.<n>.<a LLaMA linear>" -> "<n>", else "" (for the message about
// an adapter of a deeper model).
inline std::string llama_layer_of(const std::string& module, const CheckpointNaming& naming) {
  const std::string p = std::string(naming.text) + "layers.";
  if (!starts_with(module, p)) return "";
  size_t i = p.size();
  while (i < module.size() && module[i] >= '0' && module[i] <= '9') ++i;
  if (i == p.size() || i >= module.size() || module[i] != '.') return "";
  static const char* const linears[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                        "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
  const std::string rest = module.substr(i + 1);
  for (const char* l : linears)
    if (rest == l) return module.substr(p.size(), i - p.size());
  return "";
}

// A config string for a message: long ones (a hostile pattern) cut short.
inline std::string shorten(const std::string& s) { return s.size() > 80 ? s.substr(0, 80) + "..." : s; }

// A config number for a message: 0, 2.5, 1e+09.
inline std::string number_str(double d) {
  char b[32];
  std::snprintf(b, sizeof b, "%g", d);
  return b;
}

// r or a rank_pattern value: an integer in 1..kMaxRank (0 would divide by zero in alpha / r).
inline int64_t checked_rank(const Json& v, const std::string& path, const std::string& what) {
  const double d = v.is_number() ? v.number() : 0.0;
  if (!v.is_number() || !(d >= 1 && d <= double(PeftLoraConfig::kMaxRank)) || d != std::floor(d))
    fail(path, ": ", what, " must be an integer from 1 to ", PeftLoraConfig::kMaxRank, ", is ",
         v.is_number() ? number_str(d) : std::string(Json::type_name(v.type)));
  return int64_t(d);
}

// lora_alpha or an alpha_pattern value: finite, and alpha / r finite in float.
inline double checked_alpha(const Json& v, const std::string& path, const std::string& what) {
  if (!v.is_number() || !std::isfinite(v.number()) || std::fabs(v.number()) > double(std::numeric_limits<float>::max()))
    fail(path, ": ", what, " must be a finite number, is ",
         v.is_number() ? number_str(v.number()) : std::string(Json::type_name(v.type)));
  return v.number();
}

// rank_pattern / alpha_pattern: {key: value} in file order, keys compiled as
// peft.utils.other.get_pattern_key matches them.
inline std::vector<PeftLoraConfig::Pattern> read_patterns(const Json& cfg, const char* name, const std::string& path) {
  std::vector<PeftLoraConfig::Pattern> out;
  const Json* obj = cfg.find(name);
  if (!obj || obj->is_null()) return out;
  if (!obj->is_object()) fail(path, ": ", name, " must be an object ({module pattern: value})");
  for (size_t i = 0; i < obj->keys().size(); ++i) {
    const std::string& key = obj->keys()[i];
    const std::string what = std::string(name) + " '" + shorten(key) + "'";
    const double value = std::string(name) == "rank_pattern" ? double(checked_rank(obj->values()[i], path, what))
                                                             : checked_alpha(obj->values()[i], path, what);
    out.push_back({key, ModulePattern("(.*\\.)?(" + key + ")", path + ": " + what), value});
  }
  return out;
}

}  // namespace lora_detail

PeftLoraConfig PeftLoraConfig::parse(const Json& cfg, const std::string& path, const LlamaConfig& base,
                                     const CheckpointNaming& naming) {
  using namespace lora_detail;
  if (!cfg.is_object()) fail(path, ": expected a JSON object");
  const std::string peft_type = cfg.get_or<std::string>("peft_type", "LORA");
  if (peft_type != "LORA") fail(path, ": peft_type '", shorten(peft_type), "' is not supported (only LORA)");
  if (cfg.get_or<bool>("use_dora", false)) fail(path, ": use_dora is true: DoRA adapters are not supported");
  if (cfg.get_or<bool>("lora_bias", false)) fail(path, ": lora_bias is true: LoRA B biases are not supported");

  PeftLoraConfig c;
  c.path = path;
  if (const Json* r = cfg.find("r"); r && !r->is_null()) c.r = checked_rank(*r, path, "r");
  if (const Json* al = cfg.find("lora_alpha"); al && !al->is_null()) c.alpha = checked_alpha(*al, path, "lora_alpha");
  c.rslora = cfg.get_or<bool>("use_rslora", false);
  c.rank_pattern = read_patterns(cfg, "rank_pattern", path);
  c.alpha_pattern = read_patterns(cfg, "alpha_pattern", path);
  if (cfg.get_or<bool>("fan_in_fan_out", false))
    c.notes.push_back(path + ": fan_in_fan_out is ignored for LLaMA's nn.Linear layers (as PEFT does)");

  const std::vector<Slot> linears = linear_slots(base, naming);
  const char* module_names = "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head";
  const Json* tm = cfg.find("target_modules");
  if (tm && tm->is_array()) {
    for (const Json& t : tm->array()) {
      if (!t.is_string()) fail(path, ": target_modules must be a list of module names or a string");
      c.target_list.push_back(t.str());
    }
  } else if (tm && tm->is_string()) {
    if (tm->str() == "all-linear") c.all_linear = true;
    else c.target_re.emplace(tm->str(), path + ": target_modules");
  } else if (tm && !tm->is_null()) {
    fail(path, ": target_modules must be a list of module names or a string");
  }
  for (const std::string& t : c.target_list) {
    bool found = false;
    for (const Slot& s : linears) found |= s.hf == t || ends_with(s.hf, "." + t);
    if (!found) fail(path, ": unknown target module '", shorten(t), "': a LLaMA adapter may target ", module_names);
  }
  if (c.target_re) {
    bool found = false;
    for (const Slot& s : linears) found = found || c.target_re->fullmatch(s.hf);
    if (!found)
      fail(path, ": target_modules '", shorten(tm->str()), "' matches no module of the base model (", module_names, ")");
  }
  return c;
}

bool PeftLoraConfig::targets(const std::string& module) const {
  if (all_linear) return module != "lm_head";
  if (target_re) return target_re->fullmatch(module);
  if (target_list.empty()) return true;  // no list: the tensors decide
  for (const std::string& t : target_list)
    if (module == t || lora_detail::ends_with(module, "." + t)) return true;
  return false;
}

int64_t PeftLoraConfig::rank_for(const std::string& module) const {
  for (const Pattern& p : rank_pattern)
    if (p.re.fullmatch(module)) return int64_t(p.value);
  return r;
}

double PeftLoraConfig::alpha_for(const std::string& module) const {
  for (const Pattern& p : alpha_pattern)
    if (p.re.fullmatch(module)) return p.value;
  return alpha;
}

LoraAdapter LoraAdapter::from_peft_dir(const std::string& dir, const LlamaConfig& base) {
  namespace fs = std::filesystem;
  using namespace lora_detail;
  const fs::path d(dir);
  const std::string cfg_path = (d / "adapter_config.json").string();
  if (!fs::exists(cfg_path)) fail(dir, ": adapter_config.json is missing (expected a PEFT LoRA directory)");
  std::string wpath = (d / "adapter_model.safetensors").string();
  if (!fs::exists(wpath)) wpath = (d / "adapter_model.bin").string();
  // Module names (in the tensors and in target_modules) are as the base model's
  // checkpoint has them, which the tensors tell; without tensors the config's
  // own errors come first.
  std::optional<Checkpoint> weights;
  if (fs::exists(wpath)) weights = Checkpoint::open_file(wpath);
  const CheckpointNaming& naming = weights ? adapter_naming(*weights) : kLlavaNaming;
  const PeftLoraConfig cfg = PeftLoraConfig::parse(Json::load(cfg_path), cfg_path, base, naming);
  if (!weights) fail(dir, ": neither adapter_model.safetensors nor adapter_model.bin is there");
  const Checkpoint& ck = *weights;

  LoraAdapter a;
  a.name = name_of(dir);
  a.source = dir;
  a.r = cfg.r;
  a.alpha = cfg.alpha;
  a.rslora = cfg.rslora;
  a.notes = cfg.notes;
  const std::vector<Slot> linears = linear_slots(base, naming), whole = replaceable_slots(base, naming);
  auto module_names = [&] {
    return std::string("q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head");
  };

  auto check_float = [&](const SourceTensor& t, const std::string& file) {
    if (t.dtype != DType::F32 && t.dtype != DType::F16 && t.dtype != DType::BF16)
      fail(file, ": tensor '", t.name, "' has unsupported adapter dtype ", dtype_name(t.dtype), " (F32, F16 or BF16 expected)");
  };
  // Whole-tensor replacements (modules_to_save, non_lora_trainables): HF name -> GGUF.
  auto add_replacement = [&](const std::string& hf, const SourceTensor& t, const std::string& file) {
    check_float(t, file);
    const std::string pg = projector_gguf_name(hf, naming);
    if (!pg.empty()) {
      a.replaces[pg] = replacement(t.view(), 0, true);
      return;
    }
    for (const Slot& s : whole)
      if (s.hf == hf) {
        if (t.shape != s.shape)
          fail(file, ": tensor '", t.name, "' has shape ", t.shape_str(), " but the base model's ", hf, " is ",
               shape_str(s.shape), " (adapter for a different base model?)");
        a.replaces[s.gguf] = replacement(t.view(), s.heads, false);
        return;
      }
    if (hf.find("vision_tower") != std::string::npos)
      fail(file, ": tensor '", t.name, "' replaces vision tower weights, which loupe does not support");
    fail(file, ": tensor '", t.name, "' is neither a LoRA weight nor a tensor of the base model");
  };

  struct Pair {
    const SourceTensor *a = nullptr, *b = nullptr;
  };
  std::map<std::string, Pair> pairs;  // module -> A, B
  for (const SourceTensor& t : ck.tensors) {
    std::string k = t.name;
    if (starts_with(k, "base_model.model.")) k = k.substr(17);
    if (k.find(".lora_embedding_A") != std::string::npos || k.find(".lora_embedding_B") != std::string::npos)
      fail(wpath, ": tensor '", t.name, "' is an embedding LoRA, which loupe does not support");
    if (k.find(".lora_magnitude_vector") != std::string::npos)
      fail(wpath, ": tensor '", t.name, "' is a DoRA magnitude, which loupe does not support");
    size_t p = k.find(".lora_A.");
    const bool is_a = p != std::string::npos;
    if (!is_a) p = k.find(".lora_B.");
    if (p == std::string::npos) {
      // modules_to_save: "<module>.weight" (older PEFT: "<module>.modules_to_save.<adapter>.weight").
      k = strip_modules_to_save(k);
      add_replacement(k, t, wpath);
      continue;
    }
    const std::string module = k.substr(0, p), rest = k.substr(p + 8);
    if (rest != "weight" && !(ends_with(rest, ".weight") && rest.find('.') == rest.size() - 7))
      fail(wpath, ": tensor '", t.name, "': LoRA ", is_a ? "A" : "B", " ",
           ends_with(rest, "bias") ? "biases are not supported" : "tensor with an unexpected name");
    Pair& pr = pairs[module];
    (is_a ? pr.a : pr.b) = &t;
  }

  for (const auto& [module, pr] : pairs) {
    const SourceTensor* any = pr.a ? pr.a : pr.b;
    const Slot* slot = nullptr;
    for (const Slot& s : linears)
      if (s.hf == module) slot = &s;
    if (!slot) {
      if (const std::string layer = llama_layer_of(module, naming); !layer.empty())
        fail(wpath, ": tensor '", any->name, "' adapts layer ", layer, " but the base model has ", base.n_layers,
             " layers (adapter for a different base model?)");
      fail(wpath, ": tensor '", any->name, "': unknown target module '", module, "' (a LLaMA adapter may target ",
           module_names(), ")");
    }
    if (!pr.a || !pr.b)
      fail(wpath, ": module '", module, "' has lora_", pr.a ? "A" : "B", " but no lora_", pr.a ? "B" : "A");
    if (!cfg.targets(module))
      fail(wpath, ": tensor '", any->name, "' adapts '", module, "', which adapter_config.json's target_modules does not name");
    check_float(*pr.a, wpath);
    check_float(*pr.b, wpath);
    const SourceTensor &A = *pr.a, &B = *pr.b;
    if (A.shape.size() != 2 || B.shape.size() != 2) fail(wpath, ": '", A.name, "' and '", B.name, "' must be matrices");
    const int64_t rank = A.shape[0];
    if (B.shape[1] != rank)
      fail(wpath, ": rank mismatch in module '", module, "': lora_A ", A.shape_str(), " has rank ", rank, " but lora_B ",
           B.shape_str(), " has rank ", B.shape[1]);
    if (rank < 1) fail(wpath, ": module '", module, "': lora_A ", A.shape_str(), " has rank 0");  // safetensors allow 0-sized dims
    if (A.shape[1] != slot->shape[1] || B.shape[0] != slot->shape[0])
      fail(wpath, ": tensor '", A.shape[1] != slot->shape[1] ? A.name : B.name, "' (", (A.shape[1] != slot->shape[1] ? A : B).shape_str(),
           ") does not fit the base model's ", module, " ", shape_str(slot->shape), " (adapter for a different base model?)");
    const double r_cfg = double(cfg.rank_for(module));  // ≥ 1: checked when parsed
    const double alpha = cfg.alpha_for(module);
    if (double(rank) != r_cfg)
      fail(wpath, ": rank mismatch in module '", module, "': the tensors have rank ", rank,
           " but adapter_config.json gives r = ", r_cfg, " (r / rank_pattern)");
    LoraWeight w;
    w.target = slot->gguf;
    w.source = wpath + ": " + A.name;
    w.a = copy_rows(A.view(), 0, DType::F32);
    w.b = copy_rows(B.view(), slot->heads, DType::F32);
    w.scaling = float(a.rslora ? alpha / std::sqrt(r_cfg) : alpha / r_cfg);
    a.weights.push_back(std::move(w));
  }
  if (a.weights.empty() && a.replaces.empty()) fail(wpath, ": the adapter holds no LoRA weights");

  // LLaVA / ShareGPT4V runs: the trained projector (and anything else trained
  // outside the LoRA) is in non_lora_trainables.bin, which LLaVA's loader
  // applies after stripping "base_model." and then "model." from "model.model.".
  const fs::path nlt = d / "non_lora_trainables.bin";
  std::optional<Json> run;
  if (fs::exists(d / "config.json")) run = Json::load((d / "config.json").string());
  const bool llava = run && (run->find("mm_projector_type") || run->find("mm_vision_tower") ||
                             run->get_or<std::string>("model_type", "") == "llava" ||
                             run->get_or<std::string>("model_type", "") == "share4v");
  if (fs::exists(nlt)) {
    const Checkpoint extra = Checkpoint::open_file(nlt.string());
    for (const SourceTensor& t : extra.tensors) {
      std::string k = t.name;
      if (starts_with(k, "base_model.")) k = k.substr(11);
      if (starts_with(k, "model.model.")) k = k.substr(6);
      add_replacement(k, t, nlt.string());
    }
    if (!a.replaces_projector() && llava)
      a.notes.push_back("warning: " + nlt.string() + " holds no model.mm_projector.* weights: the base model's projector is used");
  } else if (llava) {
    std::string why;
    if (run->get_or<bool>("tune_mm_mlp_adapter", false)) why = "tune_mm_mlp_adapter is true";
    if (const Json* lr = run->find("mm_projector_lr"); lr && lr->is_number()) {
      char num[32];
      std::snprintf(num, sizeof num, "%g", lr->number());
      why = std::string("mm_projector_lr is ") + num;
    }
    a.notes.push_back("warning: " + dir + " is a LLaVA LoRA run without non_lora_trainables.bin" +
                      (why.empty() ? std::string(" (where LLaVA saves the projector it trains)")
                                   : " although its config.json says the projector was trained (" + why + ")") +
                      ": the base model's projector is used, so answers about images will differ from the fine-tune's");
  }
  return a;
}

LoraAdapter LoraAdapter::from_gguf(const GgufFile& f, const LlamaConfig& base, const GgufFile* replace_file) {
  using namespace lora_detail;
  const std::string type = f.get_str("general.type", "");
  if (type != "adapter") fail(f.name(), ": not a LoRA adapter (general.type is '", type, "', expected 'adapter')");
  const std::string atype = f.get_str("adapter.type", "");
  if (atype != "lora") fail(f.name(), ": adapter.type is '", atype, "', expected 'lora'");
  const std::string arch = f.get_str("general.architecture", "");
  if (arch != "llama") fail(f.name(), ": adapter for architecture '", arch, "', the base model is llama");
  LoraAdapter a;
  a.name = name_of(f.name());  // the file's name, as for directories (general.name when there is none)
  if (a.name.empty()) a.name = f.get_str("general.name", "lora");
  a.source = f.name();
  a.alpha = f.get_float("adapter.lora.alpha", 0.0);
  if (!std::isfinite(a.alpha) || std::fabs(a.alpha) > double(std::numeric_limits<float>::max()))
    fail(f.name(), ": adapter.lora.alpha must be a finite number, is ", a.alpha);

  const std::vector<Slot> linears = linear_slots(base, kLlavaNaming), whole = replaceable_slots(base, kLlavaNaming);
  std::map<std::string, std::pair<const GgufTensor*, const GgufTensor*>> pairs;
  for (const GgufTensor& t : f.tensors) {
    if (ends_with(t.name, ".lora_a")) {
      pairs[t.name.substr(0, t.name.size() - 7)].first = &t;
    } else if (ends_with(t.name, ".lora_b")) {
      pairs[t.name.substr(0, t.name.size() - 7)].second = &t;
    } else if (ends_with(t.name, "_norm.weight")) {
      // mergekit-extract-lora stores whole norm vectors (llama.cpp skips them; they are the fine-tune's norms).
      const Slot* s = nullptr;
      for (const Slot& x : whole)
        if (x.gguf == t.name) s = &x;
      if (!s || t.shape != s->shape)
        fail(f.name(), ": tensor '", t.name, "' ", t.view.shape_str(), " does not fit the base model");
      a.replaces[t.name] = replacement(t.view, 0, true);
    } else {
      fail(f.name(), ": LoRA tensor '", t.name, "' has an unexpected name (expected <base tensor>.lora_a / .lora_b)");
    }
  }
  for (const auto& [target, pr] : pairs) {
    const Slot* slot = nullptr;
    for (const Slot& s : linears)
      if (s.gguf == target) slot = &s;
    if (!slot)
      fail(f.name(), ": LoRA for '", target, "', which the base model ",
           target == "token_embd.weight" ? "has, but embedding LoRAs are not supported" : "does not have (adapter for a different base model?)");
    if (!pr.first || !pr.second) fail(f.name(), ": '", target, "' has ", pr.first ? "lora_a but no lora_b" : "lora_b but no lora_a");
    const GgufTensor &A = *pr.first, &B = *pr.second;
    for (const GgufTensor* t : {&A, &B})
      if (t->dtype != DType::F32 && t->dtype != DType::F16 && t->dtype != DType::BF16 && t->dtype != DType::Q8_0)
        fail(f.name(), ": tensor '", t->name, "' has unsupported adapter dtype ", dtype_name(t->dtype), " (F32, F16, BF16 or Q8_0 expected)");
    if (A.shape.size() != 2 || B.shape.size() != 2) fail(f.name(), ": '", A.name, "' and '", B.name, "' must be matrices");
    if (A.shape[0] != B.shape[1])
      fail(f.name(), ": rank mismatch for '", target, "': lora_a ", A.view.shape_str(), " has rank ", A.shape[0], " but lora_b ",
           B.view.shape_str(), " has rank ", B.shape[1]);
    if (A.shape[1] != slot->shape[1] || B.shape[0] != slot->shape[0])
      fail(f.name(), ": tensor '", A.shape[1] != slot->shape[1] ? A.name : B.name, "' (",
           (A.shape[1] != slot->shape[1] ? A : B).view.shape_str(), ") does not fit the base model's ", target, " ",
           shape_str(slot->shape), " (adapter for a different base model?)");
    LoraWeight w;
    w.target = target;
    w.source = f.name() + ": " + A.name;
    w.a = copy_rows(A.view, 0, DType::F32);
    w.b = copy_rows(B.view, 0, DType::F32);  // already in llama.cpp's row order
    // llama.cpp: scale = adapter_scale · alpha / rank, or adapter_scale when alpha is 0.
    w.scaling = a.alpha != 0 ? float(a.alpha) / float(A.shape[0]) : 1.0f;
    a.weights.push_back(std::move(w));
  }
  a.r = a.max_rank();

  const std::string rf = f.get_str("loupe.adapter.replace_file", "");
  if (!rf.empty() && !replace_file)
    fail(f.name(), ": the adapter replaces whole tensors (e.g. the LLaVA projector) kept in '", rf, "': load that file too");
  if (replace_file) {
    const GgufFile& g = *replace_file;
    if (g.get_str("general.type", "") != "adapter" || g.get_str("adapter.type", "") != "replace")
      fail(g.name(), ": not a loupe replacement file (general.type 'adapter', adapter.type 'replace' expected)");
    for (const GgufTensor& t : g.tensors) {
      if (!is_projector_name(t.name)) {
        const Slot* s = nullptr;
        for (const Slot& x : whole)
          if (x.gguf == t.name) s = &x;
        if (!s) fail(g.name(), ": tensor '", t.name, "' is not a tensor of the base model");
        if (t.shape != s->shape)
          fail(g.name(), ": tensor '", t.name, "' has shape ", t.view.shape_str(), " but the base model's is ", shape_str(s->shape),
               " (adapter for a different base model?)");
      }
      if (t.dtype != DType::F32 && t.dtype != DType::F16 && t.dtype != DType::BF16)
        fail(g.name(), ": tensor '", t.name, "' has unsupported dtype ", dtype_name(t.dtype));
      a.replaces[t.name] = replacement(t.view, 0, is_projector_name(t.name));
    }
  }
  if (a.weights.empty() && a.replaces.empty()) fail(f.name(), ": the adapter holds no LoRA tensors");
  return a;
}

LoraAdapter LoraAdapter::load(const std::string& path, const LlamaConfig& base) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_directory(path, ec)) return from_peft_dir(path, base);
  if (!fs::exists(path, ec)) fail(path, ": no such adapter (expected a PEFT / LLaVA LoRA directory or a LoRA GGUF)");
  Blob head = Blob::open(path);
  if (head.size < 4 || std::memcmp(head.data, "GGUF", 4) != 0) {
    // adapter_config.json or adapter_model.* named directly: the directory is meant.
    const fs::path dir = fs::path(path).parent_path();
    if (fs::exists(dir / "adapter_config.json")) return from_peft_dir(dir.empty() ? "." : dir.string(), base);
    fail(path, ": not a LoRA GGUF, and no adapter_config.json beside it (expected a PEFT / LLaVA LoRA directory or a LoRA GGUF)");
  }
  GgufFile f = GgufFile::parse(std::move(head));
  const std::string rf = f.get_str("loupe.adapter.replace_file", "");
  if (rf.empty()) return from_gguf(f, base);
  if (rf.find('/') != std::string::npos || rf.find('\\') != std::string::npos)
    fail(path, ": loupe.adapter.replace_file '", rf, "' is not a plain file name");
  const std::string rpath = (fs::path(path).parent_path() / rf).string();
  // (ec: a name from the file that is too long or odd is "missing", not an exception)
  if (!fs::exists(rpath, ec))
    fail(path, ": the adapter's replacement tensors (e.g. the LLaVA projector) should be in ", rpath, ", which is missing");
  GgufFile g = GgufFile::open(rpath);
  return from_gguf(f, base, &g);
}

// Writes `a` as a llama.cpp LoRA GGUF at `path`, A and B in `type` (F32, F16 or
// BF16). llama.cpp scales every weight by adapter_scale·alpha/rank with one
// adapter.lora.alpha; a weight whose PEFT scaling differs (rslora,
// rank/alpha patterns) gets the ratio folded into its B. Tensors the adapter
// replaces outright have no place in llama.cpp's format: they go to
// <stem>.replace.gguf beside it (general.type=adapter, adapter.type=replace,
// GGUF tensor names), which the adapter names in loupe.adapter.replace_file;
// llama.cpp ignores the key. Returns the replacement file's path, or "".
std::string write_lora_gguf(const LoraAdapter& a, const std::string& path, DType type, OutputFiles* into) {
  namespace fs = std::filesystem;
  if (type != DType::F32 && type != DType::F16 && type != DType::BF16)
    fail(path, ": LoRA GGUFs are written in f32, f16 or bf16, not ", dtype_name(type));
  if (a.weights.empty()) fail(a.source, ": the adapter has no LoRA weights to write as a llama.cpp LoRA GGUF");
  // One alpha: the config's when it gives every standard (non-rslora) weight its
  // scaling, else the first non-zero weight's (alpha_pattern may give a weight 0,
  // which could not carry the others' ratios).
  double alpha = a.alpha;
  if (a.rslora || a.alpha <= 0) {
    alpha = 0;
    for (const LoraWeight& lw : a.weights)
      if (lw.scaling != 0) {
        alpha = double(lw.scaling) * double(lw.rank());
        break;
      }
  }
  GgufWriter w;
  w.set("general.architecture", GgufValue::str("llama"));
  w.set("general.type", GgufValue::str("adapter"));
  w.set("general.name", GgufValue::str(a.name));
  w.set("adapter.type", GgufValue::str("lora"));
  w.set("adapter.lora.alpha", GgufValue::f32(float(alpha)));
  std::string rpath;
  if (!a.replaces.empty()) {
    const std::string stem = fs::path(path).stem().string();
    rpath = (fs::path(path).parent_path() / (stem + ".replace.gguf")).string();
    w.set("loupe.adapter.replace_file", GgufValue::str(stem + ".replace.gguf"));
  }
  for (const LoraWeight& lw : a.weights) {
    const float llama_scale = float(alpha) / float(lw.rank());
    const double ratio = llama_scale != 0 ? double(lw.scaling) / double(llama_scale) : 0.0;  // 0: every weight scales by 0
    w.add_tensor(lw.target + ".lora_a", convert(lw.a.view(), type));
    if (std::fabs(ratio - 1.0) <= 1e-7) {
      w.add_tensor(lw.target + ".lora_b", convert(lw.b.view(), type));
    } else {
      Tensor b = to_f32(lw.b.view());
      for (int64_t i = 0; i < b.numel(); ++i) b.f32()[i] = float(double(b.f32()[i]) * ratio);
      w.add_tensor(lw.target + ".lora_b", convert(b.view(), type));
    }
  }
  OutputFiles own;
  OutputFiles& out = into ? *into : own;
  if (!rpath.empty()) {
    GgufWriter r;
    r.set("general.architecture", GgufValue::str("llama"));
    r.set("general.type", GgufValue::str("adapter"));
    r.set("general.name", GgufValue::str(a.name));
    r.set("adapter.type", GgufValue::str("replace"));
    for (const auto& [name, t] : a.replaces) r.add_tensor(name, t);
    r.write_file(out, rpath);
  }
  w.write_file(out, path);
  if (!into) own.commit();
  return rpath;
}

}  // namespace loupe
#endif  // LOUPE_IMPLEMENTATION
