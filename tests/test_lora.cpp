// LoRA adapters against independent references:
// - reference/lora_ref.py: PEFT's LoRA forward (lora/layer.py semantics) in
//   PyTorch on tiny random models, with random adapters it writes in the
//   published layouts (PEFT safetensors, PEFT pickle, LLaVA run with
//   non_lora_trainables.bin; rslora, rank/alpha patterns, modules_to_save);
// - llama.cpp (npm node-llama-cpp) running the LoRA GGUF loupe-convert wrote on
//   the real stories260K weights.
#include "test_util.hpp"

#include <chrono>

#include <loupe/convert/convert.hpp>
#include <loupe/pipeline/lora.hpp>
#include <loupe/io/npy.hpp>
#include <loupe/pipeline/pipeline.hpp>

using namespace loupe;
namespace fs = std::filesystem;

namespace {

// max |a − b| / max |b|
double rel_err(const std::vector<float>& a, const float* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) num = std::max(num, double(std::fabs(a[i] - b[i]))), den = std::max(den, double(std::fabs(b[i])));
  return num / den;
}
double rel_err(const std::vector<float>& a, const Tensor& ref) {
  REQUIRE(int64_t(a.size()) == ref.numel());
  return rel_err(a, ref.f32(), a.size());
}
bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
}

std::string json_str(const std::string& s) {
  std::string o = "\"";
  for (char c : s) o += (c == '"' || c == '\\') ? std::string("\\") + c : std::string(1, c);
  return o + "\"";
}

// Runs lora_ref.py once for several commands (each a list of arguments).
void lora_ref(const fs::path& dir, const std::vector<std::vector<std::string>>& cmds) {
  std::string j = "[";
  for (size_t i = 0; i < cmds.size(); ++i) {
    j += i ? ",\n[" : "[";
    for (size_t k = 0; k < cmds[i].size(); ++k) j += (k ? "," : "") + json_str(cmds[i][k]);
    j += "]";
  }
  j += "]\n";
  const fs::path f = dir / "lora_ref_batch.json";
  std::ofstream(f) << j;
  loupe_test::run_python("lora_ref.py", "batch " + f.string() + " > " + (dir / "lora_ref.log").string());
}

std::string tokenizer_arg() {
  return " --tokenizer " + (loupe_test::shared_dir() / "models/stories260K-hf/tokenizer.model").string();
}

std::string convert(const fs::path& model, const fs::path& out, DType t, const std::string& name,
                    std::vector<std::pair<std::string, float>> loras = {}, std::vector<std::string>* log = nullptr) {
  ConvertOptions o;
  o.outtype = t;
  o.name = name;
  o.loras = std::move(loras);
  if (log) o.log = [log](const std::string& s) { log->push_back(s); };
  return convert_model(model.string(), out.string(), o).text_path;
}

SessionOptions exact(int64_t n_ctx) {
  SessionOptions o;
  o.n_ctx = n_ctx, o.kv_type = DType::F32;  // the references are compared at 1e-4
  return o;
}

// All-position logits of `ids` on a fresh session with the adapters of `set` (none: the base model).
std::vector<float> prefill(const LanguageModel& lm, const LoraSet& set, const std::vector<int32_t>& ids, ThreadPool* pool = nullptr) {
  Session s(lm, exact(int64_t(ids.size())));
  s.set_loras(set);
  s.feed(ids, pool, /*all_logits=*/true);
  return s.logits();
}
std::vector<float> prefill(const LanguageModel& lm, const std::vector<int32_t>& ids, ThreadPool* pool = nullptr) {
  return prefill(lm, LoraSet(lm.model), ids, pool);
}

// The same, one token at a time through the KV cache.
std::vector<float> decode(const LanguageModel& lm, const LoraSet& set, const std::vector<int32_t>& ids) {
  Session s(lm, exact(int64_t(ids.size())));
  s.set_loras(set);
  std::vector<float> logits;
  for (int32_t id : ids) {
    s.feed({id});
    logits.insert(logits.end(), s.logits().begin(), s.logits().end());
  }
  return logits;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

const std::vector<int32_t> kIds = {1, 17, 5, 99, 3, 42, 250, 7, 7, 7, 12, 200};
const char* kTokens = "1,17,5,99,3,42,250,7,7,7,12,200";

// Text fixture, built once: a random GQA LLaMA (head_dim 12, untied) and
// adapters in every PEFT flavour, with the reference's logits.
struct TextFixture {
  fs::path dir, base;
  std::string gguf;  // the base converted to F32
  fs::path a1, a2, a3;
  fs::path ref(const std::string& n) const { return dir / ("ref_" + n) / "logits.npy"; }
};

const TextFixture& text_fixture() {
  static TextFixture f = [] {
    TextFixture t;
    t.dir = loupe_test::scratch("lora_text");
    t.base = t.dir / "gqa48";
    loupe_test::run_python("llama_ref.py", "--make " + t.base.string() + " --config gqa48 --seed 11 --tokens " + kTokens +
                                               tokenizer_arg() + " > /dev/null");
    t.a1 = t.dir / "a1", t.a2 = t.dir / "a2", t.a3 = t.dir / "a3";
    const std::string b = t.base.string(), d = t.dir.string();
    auto ref = [&](const std::string& name, std::vector<std::string> loras, bool merged = false) {
      std::vector<std::string> c = {"logits", "--base", b, "--out", d + "/ref_" + name, "--tokens", kTokens};
      for (auto& l : loras) c.push_back("--lora"), c.push_back(l);
      if (merged) c.push_back("--merged");
      return c;
    };
    lora_ref(t.dir, {
        // a1: safetensors, every linear incl. lm_head, r 4, alpha 8.
        {"make", "--base", b, "--out", t.a1.string(), "--layout", "peft-safetensors", "--r", "4", "--alpha", "8", "--targets",
         "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,lm_head", "--magnitude", "0.3", "--seed", "1"},
        // a2: pickle, bf16, rslora with rank and alpha patterns (suffix and full-path keys).
        {"make", "--base", b, "--out", t.a2.string(), "--layout", "peft-bin", "--dtype", "bf16", "--r", "8", "--alpha", "16",
         "--rslora", "--rank-pattern", R"({"q_proj": 2, "model.layers.1.mlp.down_proj": 6})", "--alpha-pattern",
         R"({"v_proj": 3, "layers.0.self_attn.o_proj": 32})", "--targets", "q_proj,v_proj,o_proj,gate_proj,down_proj",
         "--magnitude", "0.4", "--seed", "2"},
        // a3: f16, q/v only, lm_head in modules_to_save (a whole replacement).
        {"make", "--base", b, "--out", t.a3.string(), "--dtype", "f16", "--r", "2", "--alpha", "4", "--targets", "q_proj,v_proj",
         "--modules-to-save", "lm_head", "--seed", "3"},
        {"make", "--base", b, "--out", d + "/bad_rank", "--break", "rank", "--seed", "4"},
        {"make", "--base", b, "--out", d + "/bad_dtype", "--break", "dtype", "--seed", "4"},
        {"make", "--base", b, "--out", d + "/bad_module", "--break", "module", "--seed", "4"},
        {"make", "--base", b, "--out", d + "/bad_target", "--break", "target", "--seed", "4"},
        ref("base", {}),
        ref("a1", {t.a1.string()}),
        ref("a2", {t.a2.string()}),
        ref("a3", {t.a3.string()}),
        ref("a1a2", {t.a1.string() + ":0.7", t.a2.string() + ":1.3"}),
        ref("a1a2_merged", {t.a1.string() + ":0.7", t.a2.string() + ":1.3"}, true),
    });
    t.gguf = convert(t.base, t.dir, DType::F32, "gqa48");
    return t;
  }();
  return f;
}

}  // namespace

TEST_CASE("lora: unmerged adapters equal PEFT's forward; 1 and 2 at once, scales, rslora, rank/alpha patterns") {
  LOUPE_REQUIRE_SHARED();
  const TextFixture& f = text_fixture();
  LanguageModel lm = LanguageModel::open(f.gguf);
  const std::vector<float> base = prefill(lm, kIds);
  CHECK(rel_err(base, read_npy(f.ref("base").string())) < 1e-4);
  // The adapters matter (so agreeing with them means something).
  CHECK(rel_err(base, read_npy(f.ref("a1").string())) > 1e-2);

  LoraSet set(lm.model);
  const LoraAdapter& a1 = set.add(LoraAdapter::load(f.a1.string(), lm.model.cfg));
  CHECK(a1.weights.size() == 2 * 7 + 1);
  const double e1 = rel_err(prefill(lm, set, kIds), read_npy(f.ref("a1").string()));
  MESSAGE("a1 (safetensors, all linears + lm_head): rel. error ", e1);
  CHECK(e1 < 1e-4);
  CHECK(rel_err(decode(lm, set, kIds), read_npy(f.ref("a1").string())) < 1e-4);
  // Thread count does not change results.
  ThreadPool pool(3);
  CHECK(same_bits(prefill(lm, set, kIds, &pool), prefill(lm, set, kIds)));

  // Removing it gives the base back, bit for bit.
  set.remove("a1");
  CHECK(same_bits(prefill(lm, set, kIds), base));

  const LoraAdapter& a2 = set.add(LoraAdapter::load(f.a2.string(), lm.model.cfg));
  CHECK(a2.rslora);
  const double e2 = rel_err(prefill(lm, set, kIds), read_npy(f.ref("a2").string()));
  MESSAGE("a2 (bf16 pickle, rslora, rank/alpha patterns): rel. error ", e2);
  CHECK(e2 < 1e-4);
  // Scaling per module as PEFT: rank_pattern "q_proj" -> r 2, alpha_pattern full path for layer 0's o_proj.
  for (const LoraWeight& w : a2.weights) {
    if (w.target == "blk.0.attn_q.weight") CHECK(w.scaling == doctest::Approx(16 / std::sqrt(2.0)));
    if (w.target == "blk.0.attn_output.weight") CHECK(w.scaling == doctest::Approx(32 / std::sqrt(8.0)));
    if (w.target == "blk.1.attn_output.weight") CHECK(w.scaling == doctest::Approx(16 / std::sqrt(8.0)));
    if (w.target == "blk.1.ffn_down.weight") CHECK(w.rank() == 6);
  }

  // Two at once with their own scales, then switched and rescaled between requests.
  set.add(LoraAdapter::load(f.a1.string(), lm.model.cfg), 0.7f);
  set.set_scale("a2", 1.3f);
  const double e12 = rel_err(prefill(lm, set, kIds), read_npy(f.ref("a1a2").string()));
  MESSAGE("a1 at 0.7 + a2 at 1.3: rel. error ", e12);
  CHECK(e12 < 1e-4);
  set.set_scale("a1", 0);  // off, still loaded
  set.set_scale("a2", 1);
  CHECK(rel_err(prefill(lm, set, kIds), read_npy(f.ref("a2").string())) < 1e-4);
  set.set_scale("a1", 1);
  set.set_scale("a2", 0);
  CHECK(rel_err(prefill(lm, set, kIds), read_npy(f.ref("a1").string())) < 1e-4);
  set.clear();
  CHECK(same_bits(prefill(lm, set, kIds), base));

  // modules_to_save: lm_head replaced while active.
  const LoraAdapter& a3 = set.add(LoraAdapter::load(f.a3.string(), lm.model.cfg));
  CHECK(a3.replaces.count("output.weight") == 1);
  CHECK(rel_err(prefill(lm, set, kIds), read_npy(f.ref("a3").string())) < 1e-4);
  LoraAdapter again = LoraAdapter::load(f.a3.string(), lm.model.cfg);
  again.name = "a3-again";
  CHECK(error_of([&] { set.add(std::move(again)); }).find("both replace 'output.weight'") != std::string::npos);
  CHECK(rel_err(prefill(lm, set, kIds), read_npy(f.ref("a3").string())) < 1e-4);  // the failed add changed nothing
  set.remove("a3");
  CHECK(same_bits(prefill(lm, set, kIds), base));
  CHECK(error_of([&] { set.set_scale("nope", 1); }).find("no adapter named 'nope'") != std::string::npos);
}

TEST_CASE("lora: merged at conversion (f32) equals PEFT's unmerged forward; the reference's own merge agrees") {
  LOUPE_REQUIRE_SHARED();
  const TextFixture& f = text_fixture();
  const Tensor ref = read_npy(f.ref("a1a2").string());
  const Tensor ref_merged = read_npy(f.ref("a1a2_merged").string());
  CHECK(rel_err(std::vector<float>(ref_merged.f32(), ref_merged.f32() + ref_merged.numel()), ref) < 1e-5);
  std::vector<std::string> log;
  const std::string merged = convert(f.base, f.dir / "merged", DType::F32, "merged",
                                     {{f.a1.string(), 0.7f}, {f.a2.string(), 1.3f}}, &log);
  LanguageModel lm = LanguageModel::open(merged);
  const double e = rel_err(prefill(lm, kIds), ref);
  MESSAGE("merged a1 at 0.7 + a2 at 1.3: rel. error ", e);
  CHECK(e < 1e-4);
  bool said = false;
  for (const std::string& l : log) said |= l.find("computed in f32") != std::string::npos;
  CHECK(said);
  // Quantised output: the merge is done in f32, then quantised (the log says so).
  log.clear();
  convert(f.base, f.dir / "merged", DType::Q8_0, "merged-q8", {{f.a1.string(), 1.0f}}, &log);
  said = false;
  for (const std::string& l : log) said |= l.find("then quantised to Q8_0") != std::string::npos;
  CHECK(said);
}

TEST_CASE("lora: llama.cpp LoRA GGUF written by loupe-convert reads back to the same results") {
  LOUPE_REQUIRE_SHARED();
  const TextFixture& f = text_fixture();
  LanguageModel lm = LanguageModel::open(f.gguf);
  ConvertOptions o;
  o.outtype = DType::F32;
  for (const auto& adapter : {std::pair{f.a1, std::string("a1")}, std::pair{f.a2, std::string("a2")}, std::pair{f.a3, std::string("a3")}}) {
    const auto& [dir, refname] = adapter;
    CAPTURE(adapter.second);  // (clang 14: INFO/CAPTURE lambdas cannot capture structured bindings)
    // No config.json in a PEFT dir: the base comes from base_model_name_or_path (a local dir here).
    LoraConvertResult r = convert_lora(dir.string(), (f.dir / "lora-gguf").string(), o);
    CHECK(r.lora_path == (f.dir / "lora-gguf" / (refname + ".gguf")).string());
    GgufFile g = GgufFile::open(r.lora_path);
    CHECK(g.get_str("general.type") == "adapter");
    CHECK(g.get_str("adapter.type") == "lora");
    CHECK(g.get_str("general.architecture") == "llama");
    if (refname == "a1") {
      CHECK(g.get_float("adapter.lora.alpha") == 8.0);
      // ggml ne [in, r] for A and [r, out] for B: torch order [r, in] and [out, r].
      CHECK(g.get_tensor("blk.0.attn_q.weight.lora_a").shape == std::vector<int64_t>{4, 48});
      CHECK(g.get_tensor("blk.0.attn_q.weight.lora_b").shape == std::vector<int64_t>{48, 4});
      CHECK(g.get_tensor("blk.1.ffn_down.weight.lora_a").shape == std::vector<int64_t>{4, 100});
      CHECK(g.get_tensor("output.weight.lora_b").shape == std::vector<int64_t>{512, 4});
      CHECK(r.replace_path.empty());
    }
    if (refname == "a3") CHECK(fs::exists(r.replace_path));
    LoraSet set(lm.model);
    set.add(LoraAdapter::load(r.lora_path, lm.model.cfg));
    const double e = rel_err(prefill(lm, set, kIds), read_npy(f.ref(refname).string()));
    MESSAGE(refname, " through the LoRA GGUF: rel. error ", e);
    CHECK(e < 1e-4);
  }
  // From bytes in memory (the browser's way), the replacement file handed over too.
  const fs::path a3 = f.dir / "lora-gguf" / "a3.gguf", a3r = f.dir / "lora-gguf" / "a3.replace.gguf";
  auto bytes = [](const fs::path& p) {
    std::string s = loupe_test::slurp(p);
    return Blob::from_bytes(std::vector<uint8_t>(s.begin(), s.end()), p.filename().string());
  };
  GgufFile lg = GgufFile::parse(bytes(a3)), rg = GgufFile::parse(bytes(a3r));
  CHECK(error_of([&] { LoraAdapter::from_gguf(lg, lm.model.cfg); }).find("a3.replace.gguf") != std::string::npos);
  LoraSet set(lm.model);
  set.add(LoraAdapter::from_gguf(lg, lm.model.cfg, &rg));
  CHECK(rel_err(prefill(lm, set, kIds), read_npy(f.ref("a3").string())) < 1e-4);
}

TEST_CASE("lora: clear errors for broken adapters and adapters of another base") {
  LOUPE_REQUIRE_SHARED();
  const TextFixture& f = text_fixture();
  const LlamaConfig cfg = LanguageModel::open(f.gguf).model.cfg;
  auto err = [&](const std::string& dir, const LlamaConfig& c) { return error_of([&] { LoraAdapter::load(dir, c); }); };
  const std::string d = f.dir.string();
  std::string e = err(d + "/bad_rank", cfg);
  CHECK(e.find("rank mismatch") != std::string::npos);
  CHECK(e.find("self_attn.q_proj") != std::string::npos);
  e = err(d + "/bad_dtype", cfg);
  CHECK(e.find("unsupported adapter dtype F64") != std::string::npos);
  CHECK(e.find("lora_A.weight") != std::string::npos);
  CHECK(err(d + "/bad_module", cfg).find("unknown target module 'model.layers.0.mlp.fc1'") != std::string::npos);
  CHECK(err(d + "/bad_target", cfg).find("unknown target module 'fc1'") != std::string::npos);
  // An adapter for a different base: the same layer count and head layout but another width.
  LlamaConfig other = cfg;
  other.dim = 40, other.head_dim = 10;
  e = err(f.a1.string(), other);
  MESSAGE(e);
  CHECK(e.find("adapter for a different base model") != std::string::npos);
  CHECK(e.find("tensor 'base_model.model.") != std::string::npos);  // names the tensor
  LlamaConfig fewer = cfg;
  fewer.n_layers = 1;
  CHECK(err(f.a1.string(), fewer).find("adapts layer 1 but the base model has 1 layers") != std::string::npos);
  // The GGUF form, onto the other base.
  ConvertOptions o;
  o.outtype = DType::F32;
  const std::string g = convert_lora(f.a1.string(), (f.dir / "err-gguf").string(), o).lora_path;
  e = err(g, other);
  CHECK(e.find(".weight.lora_a'") != std::string::npos);
  CHECK(e.find("adapter for a different base model") != std::string::npos);
  CHECK(err(d + "/nothing-here", cfg).find("no such adapter") != std::string::npos);
  CHECK(LoraAdapter::load((f.a1 / "adapter_model.safetensors").string(), cfg).weights.size() == 15);  // the file names its directory
  CHECK(err(f.gguf, cfg).find("not a LoRA adapter") != std::string::npos);
  // A base GGUF whose config cannot be found for the q/k order.
  CHECK(error_of([&] { convert_lora(d + "/bad_rank", (f.dir / "x").string(), o, d + "/none"); }).find("config.json") != std::string::npos);
}

namespace {

// The demo model's config (demo/, in the repository): a base for adapters written here.
const LlamaConfig& demo_config() {
  static const LlamaConfig c = LanguageModel::open(loupe_test::source_dir().string() + "/demo/shapes-q4_0.gguf").model.cfg;
  return c;
}

// A PEFT directory written here, without the reference: adapter_config.json as
// given and, when rank >= 0, adapter_model.safetensors with a zero F32
// lora_A [rank, in] / lora_B [out, rank] for layer 0's q_proj of `c`.
fs::path peft_dir(const std::string& name, const std::string& config, const LlamaConfig& c, int64_t rank = -1) {
  const fs::path d = loupe_test::scratch("lora_cfg_" + name);
  std::ofstream(d / "adapter_config.json") << config;
  if (rank < 0) return d;
  std::vector<int64_t> shape;
  for (const LlamaTensor& t : llama_tensors(c))
    if (t.hf == "model.layers.0.self_attn.q_proj.weight") shape = t.shape;
  REQUIRE(shape.size() == 2);
  const std::string m = "base_model.model.model.layers.0.self_attn.q_proj";
  const int64_t na = rank * shape[1] * 4, nb = shape[0] * rank * 4;
  std::string h = "{\"" + m + ".lora_A.weight\":{\"dtype\":\"F32\",\"shape\":[" + std::to_string(rank) + "," +
                  std::to_string(shape[1]) + "],\"data_offsets\":[0," + std::to_string(na) + "]},\"" + m +
                  ".lora_B.weight\":{\"dtype\":\"F32\",\"shape\":[" + std::to_string(shape[0]) + "," + std::to_string(rank) +
                  "],\"data_offsets\":[" + std::to_string(na) + "," + std::to_string(na + nb) + "]}}";
  std::ofstream f(d / "adapter_model.safetensors", std::ios::binary);
  const uint64_t len = h.size();
  for (int i = 0; i < 8; ++i) f.put(char((len >> (8 * i)) & 0xFF));
  f << h << std::string(size_t(na + nb), '\0');
  return d;
}

}  // namespace

TEST_CASE("lora: hostile adapter_config.json (catastrophic regex, deep nesting, rank 0) is a clear error naming the file") {
  const LlamaConfig& c = demo_config();
  auto err = [&](const fs::path& d) { return error_of([&] { LoraAdapter::load(d.string(), c); }); };
  // The pattern that makes a backtracking engine (std::regex) run for ever: matched in linear time here.
  auto t0 = std::chrono::steady_clock::now();
  std::string e = err(peft_dir("redos", R"({"r": 1, "target_modules": "((\\w|\\.)*)*Z"})", c, 1));
  MESSAGE(e);
  CHECK(e.find("adapter_config.json: target_modules '((\\w|\\.)*)*Z' matches no module of the base model") != std::string::npos);
  CHECK(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < 2.0);
  // ... and as a rank_pattern key it is tried on every module, quickly, matching none.
  t0 = std::chrono::steady_clock::now();
  const LoraAdapter a = LoraAdapter::load(
      peft_dir("redos_key", R"({"r": 1, "lora_alpha": 2, "target_modules": ["q_proj"], "rank_pattern": {"((\\w|\\.)*)*Z": 4},
            "alpha_pattern": {"layers\\.0\\.self_attn\\.q_proj": 3}})", c, 1).string(), c);
  CHECK(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < 2.0);
  REQUIRE(a.weights.size() == 1);
  CHECK(a.weights[0].scaling == 3.0f);  // alpha_pattern's 3 / r 1
  // Deep nesting: an error, not a stack overflow.
  const std::string deep = std::string(20000, '(') + "q_proj" + std::string(20000, ')');
  e = err(peft_dir("deep", "{\"target_modules\": \"" + deep + "\"}", c));
  CHECK(e.find("adapter_config.json: target_modules: the pattern is 40006 bytes long") != std::string::npos);
  CHECK(e.size() < 400);
  e = err(peft_dir("deep_key", "{\"rank_pattern\": {\"" + std::string(100, '(') + "q" + std::string(100, ')') + "\": 4}}", c));
  CHECK(e.find("adapter_config.json: rank_pattern '((((") != std::string::npos);
  CHECK(e.find("groups nested more than 64 deep") != std::string::npos);
  // Syntax outside the subset names the file, the key and the construct.
  e = err(peft_dir("lookahead", R"({"alpha_pattern": {"(?!lm_head)q_proj": 4}})", c));
  CHECK(e.find("adapter_config.json: alpha_pattern '(?!lm_head)q_proj': lookahead assertions") != std::string::npos);
  // Rank 0 (a division by zero in alpha / r) and other out-of-range values, named by key.
  e = err(peft_dir("rank0", R"({"r": 8, "rank_pattern": {"q_proj": 0}})", c, 0));
  MESSAGE(e);
  CHECK(e.find("adapter_config.json: rank_pattern 'q_proj' must be an integer from 1 to 65536, is 0") != std::string::npos);
  CHECK(err(peft_dir("r0", R"({"r": 0})", c)).find("adapter_config.json: r must be an integer from 1 to 65536, is 0") !=
        std::string::npos);
  CHECK(err(peft_dir("rbig", R"({"rank_pattern": {"v_proj": 1e9}})", c)).find("rank_pattern 'v_proj' must be an integer") !=
        std::string::npos);
  CHECK(err(peft_dir("rfrac", R"({"rank_pattern": {"v_proj": 2.5}})", c)).find("rank_pattern 'v_proj' must be an integer") !=
        std::string::npos);
  CHECK(err(peft_dir("rstr", R"({"rank_pattern": {"v_proj": "8"}})", c)).find("is string") != std::string::npos);
  CHECK(err(peft_dir("abig", R"({"alpha_pattern": {"v_proj": 1e39}})", c))
            .find("adapter_config.json: alpha_pattern 'v_proj' must be a finite number") != std::string::npos);
  CHECK(err(peft_dir("anull", R"({"lora_alpha": true})", c)).find("adapter_config.json: lora_alpha must be a finite number") !=
        std::string::npos);
  // Rank-0 tensors (safetensors allow 0-sized dimensions) are an error too, not a SIGFPE.
  e = err(peft_dir("tensors0", R"({"r": 8})", c, 0));
  CHECK(e.find("adapter_model.safetensors: module 'model.layers.0.self_attn.q_proj': lora_A [0, ") != std::string::npos);
  CHECK(e.find("has rank 0") != std::string::npos);
}

TEST_CASE("lora: QLoRA — an adapter on a Q4_0 base equals PEFT's forward on the dequantised Q4_0 weights") {
  LOUPE_REQUIRE_SHARED();
  const fs::path dir = loupe_test::scratch("lora_qlora"), base = dir / "mha128", ad = dir / "q";
  loupe_test::run_python("llama_ref.py", "--make " + base.string() + " --config mha128 --seed 3 --tokens " + kTokens +
                                             tokenizer_arg() + " > /dev/null");
  const std::string b = base.string(), d = dir.string();
  lora_ref(dir, {{"make", "--base", b, "--out", ad.string(), "--targets", "all-linear", "--r", "8", "--alpha", "16",
                  "--dtype", "bf16", "--magnitude", "0.3", "--seed", "7"},
                 {"logits", "--base", b, "--out", d + "/ref_q4", "--tokens", kTokens, "--lora", ad.string(), "--base-quant", "q4_0"},
                 {"logits", "--base", b, "--out", d + "/ref_q4_base", "--tokens", kTokens, "--base-quant", "q4_0"},
                 {"logits", "--base", b, "--out", d + "/ref_f32", "--tokens", kTokens, "--lora", ad.string()}});
  LanguageModel lm = LanguageModel::open(convert(base, dir, DType::Q4_0, "mha128-q4"));
  REQUIRE(lm.model.weights.layers[0].w[kAttnQ].dtype == DType::Q4_0);
  const Tensor ref_q4 = read_npy(d + "/ref_q4/logits.npy"), ref_f32 = read_npy(d + "/ref_f32/logits.npy");
  const std::vector<float> base_logits = prefill(lm, kIds);
  // loupe's Q4_0 matmul quantises activations to Q8_0 (as llama.cpp does); that is all that separates it from the reference.
  const double e_base = rel_err(base_logits, read_npy(d + "/ref_q4_base/logits.npy"));
  LoraSet set(lm.model);
  set.add(LoraAdapter::load(ad.string(), lm.model.cfg));
  const std::vector<float> ours = prefill(lm, set, kIds);
  const double e_q4 = rel_err(ours, ref_q4), e_f32 = rel_err(ours, ref_f32);
  MESSAGE("QLoRA: rel. error vs the reference on the dequantised Q4_0 base ", e_q4, " (base alone: ", e_base,
          "); vs the reference on the f32 base ", e_f32);
  CHECK(e_q4 < 5e-2);
  CHECK(e_q4 < 1.5 * e_base + 1e-3);  // the adapter adds no error of its own
  CHECK(e_f32 > 3 * e_q4);            // and the comparison can tell Q4_0 from f32 weights
  set.clear();
  CHECK(same_bits(prefill(lm, set, kIds), base_logits));
}

TEST_CASE("lora: LLaVA LoRA run (pickle + non_lora_trainables.bin) on a ShareGPT4V model: projector replaced") {
  LOUPE_REQUIRE_SHARED();
  const fs::path dir = loupe_test::scratch("lora_vlm");
  loupe_test::run_python("vlm_fixture.py", "--layout sharegpt4v --out " + dir.string() + " --seed 3 --greedy 0 > /dev/null");
  const fs::path llm = dir / "llm", l1 = dir / "l1", l2 = dir / "l2";
  const std::string d = dir.string();
  lora_ref(dir, {{"make", "--base", llm.string(), "--out", l1.string(), "--layout", "llava", "--dtype", "bf16", "--r", "4",
                  "--alpha", "8", "--magnitude", "0.3", "--seed", "8"},
                 {"make", "--base", llm.string(), "--out", l2.string(), "--layout", "llava", "--no-projector", "--seed", "9"},
                 {"logits", "--base", llm.string(), "--out", d + "/ref_l1", "--lora", l1.string(), "--vit", d + "/vit",
                  "--pixels", d + "/ref/pixel_values.npy", "--ids", d + "/ref/prompt_ids.json"}});
  ConvertOptions o;
  o.outtype = DType::F32;
  o.vision_tower = (dir / "vit").string();
  o.name = "s4v";
  const ConvertResult base = convert_model(llm.string(), (dir / "gguf").string(), o);
  LanguageModel lm = LanguageModel::open(base.text_path);
  VisionModel vm = VisionModel::open(base.mmproj_path);
  const Tensor px = read_npy(d + "/ref/pixel_values.npy");
  const Tensor ref = read_npy(d + "/ref_l1/logits.npy"), ref_feat = read_npy(d + "/ref_l1/image_features.npy");
  const std::string q = "Describe the image in detail.";
  LoraSet set(lm.model, &vm.projector);
  auto first_logits = [&](std::vector<float>* feats = nullptr) {
    DescribeOptions opt;
    opt.gen.max_tokens = 1;
    opt.session.kv_type = DType::F32;
    VisionChat chat(lm, vm, opt);
    chat.session().set_loras(set);
    chat.set_pixels(px);
    Generation g = chat.ask(q);
    if (feats) *feats = chat.image_features;
    return g.first_logits;
  };
  const std::vector<float> base_logits = first_logits();
  CHECK(rel_err(base_logits, read_npy(d + "/ref/logits.npy")) < 1e-4);

  const LoraAdapter& a = set.add(LoraAdapter::load(l1.string(), lm.model.cfg));
  CHECK(a.replaces_projector());
  CHECK(a.notes.empty());
  std::vector<float> feats;
  const double e = rel_err(first_logits(&feats), ref);
  MESSAGE("LLaVA LoRA + replaced projector: first-token logits rel. error ", e);
  CHECK(e < 1e-4);
  CHECK(rel_err(feats, ref_feat) < 1e-5);
  CHECK(rel_err(base_logits, ref.f32(), base_logits.size()) > 1e-2);

  // Switched on between set_pixels and ask: the chat re-projects the image with the adapter's projector.
  set.set_scale("l1", 0);
  {
    DescribeOptions opt;
    opt.gen.max_tokens = 1;
    opt.session.kv_type = DType::F32;
    VisionChat chat(lm, vm, opt);
    chat.session().set_loras(set);
    chat.set_pixels(px);
    chat.session().set_lora_scale("l1", 1);
    CHECK(rel_err(chat.ask(q).first_logits, ref) < 1e-4);
  }
  set.remove("l1");
  CHECK(same_bits(first_logits(), base_logits));

  // A LLaVA run without non_lora_trainables.bin: loaded, with a warning.
  const LoraAdapter b2 = LoraAdapter::load(l2.string(), lm.model.cfg);
  REQUIRE(b2.notes.size() == 1);
  CHECK(b2.notes[0].find("without non_lora_trainables.bin") != std::string::npos);
  CHECK(b2.notes[0].find("mm_projector_lr") != std::string::npos);
  CHECK(!b2.replaces_projector());

  // Merged by loupe-convert: text model and mmproj (with the replaced projector).
  o.loras = {{l1.string(), 1.0f}};
  o.name = "s4v-l1";
  const ConvertResult merged = convert_model(llm.string(), (dir / "gguf").string(), o);
  {
    LanguageModel mlm = LanguageModel::open(merged.text_path);
    VisionModel mvm = VisionModel::open(merged.mmproj_path);
    DescribeOptions opt;
    opt.gen.max_tokens = 1;
    opt.session.kv_type = DType::F32;
    VisionChat chat(mlm, mvm, opt);
    chat.set_pixels(px);
    const double em = rel_err(chat.ask(q).first_logits, ref);
    MESSAGE("merged LLaVA LoRA: rel. error ", em);
    CHECK(em < 1e-4);
  }
  // As a LoRA GGUF + its replacement file (the run's config.json gives the head counts).
  o.loras.clear();
  o.name = "";
  const LoraConvertResult r = convert_lora(l1.string(), (dir / "gguf").string(), o);
  CHECK(fs::path(r.replace_path).filename() == "l1.replace.gguf");
  set.add(LoraAdapter::load(r.lora_path, lm.model.cfg));
  CHECK(rel_err(first_logits(), ref) < 1e-4);
}

TEST_CASE("lora: PEFT adapter on transformers' LLaVA (both namings, projector in modules_to_save) equals PEFT's forward") {
  LOUPE_REQUIRE_SHARED();
  for (const std::string layout : {"llava-hf", "llava-hf-new"}) {
    INFO(layout);
    const fs::path dir = loupe_test::scratch("lora_" + layout);
    loupe_test::run_python("vlm_fixture.py", "--layout " + layout + " --out " + dir.string() + " --seed 3 --greedy 0 > /dev/null");
    const fs::path llm = dir / "llm", a1 = dir / "a1";
    const std::string d = dir.string();
    // lora_ref's default for these bases: target_modules `.*language_model.*\.(q_proj|...|down_proj)`
    // (a regular expression, as PEFT writes it for a VLM), modules_to_save ["multi_modal_projector"].
    lora_ref(dir, {{"make", "--base", llm.string(), "--out", a1.string(), "--r", "4", "--alpha", "8", "--magnitude", "0.3",
                    "--seed", "8"},
                   {"logits", "--base", llm.string(), "--out", d + "/ref_a1", "--lora", a1.string(), "--pixels",
                    d + "/ref/pixel_values.npy", "--ids", d + "/ref/prompt_ids.json"}});
    ConvertOptions o;
    o.outtype = DType::F32;
    o.name = layout;
    const ConvertResult base = convert_model(llm.string(), (dir / "gguf").string(), o);
    const LanguageModel lm = LanguageModel::open(base.text_path);
    const VisionModel vm = VisionModel::open(base.mmproj_path);
    const Tensor px = read_npy(d + "/ref/pixel_values.npy");
    const Tensor ref = read_npy(d + "/ref_a1/logits.npy");
    auto first_logits = [&](const LanguageModel& l, const VisionModel& v, const LoraSet* set) {
      DescribeOptions opt;
      opt.gen.max_tokens = 1;
      opt.session.kv_type = DType::F32;
      VisionChat chat(l, v, opt);
      if (set) chat.session().set_loras(*set);
      chat.set_pixels(px);
      return chat.ask("Describe the image in detail.").first_logits;
    };
    const std::vector<float> base_logits = first_logits(lm, vm, nullptr);
    CHECK(rel_err(base_logits, read_npy(d + "/ref/logits.npy")) < 1e-4);

    LoraSet set(lm.model, &vm.projector);
    const LoraAdapter& a = set.add(LoraAdapter::load(a1.string(), lm.model.cfg));
    CHECK(a.replaces_projector());
    CHECK(a.weights.size() == size_t(7 * lm.model.cfg.n_layers));
    const double e = rel_err(first_logits(lm, vm, &set), ref);
    MESSAGE(layout, ": adapter at run time, first-token logits rel. error ", e);
    CHECK(e < 1e-4);
    CHECK(rel_err(base_logits, ref.f32(), base_logits.size()) > 1e-2);  // the adapter changes the answer

    o.loras = {{a1.string(), 1.0f}};
    o.name = layout + "-a1";
    const ConvertResult merged = convert_model(llm.string(), (dir / "gguf").string(), o);
    const LanguageModel mlm = LanguageModel::open(merged.text_path);
    const VisionModel mvm = VisionModel::open(merged.mmproj_path);
    const double em = rel_err(first_logits(mlm, mvm, nullptr), ref);
    MESSAGE(layout, ": adapter merged by loupe-convert, rel. error ", em);
    CHECK(em < 1e-4);
  }
}

namespace {

bool have_node_llama() { return fs::exists(loupe_test::source_dir() / "node_modules/node-llama-cpp/package.json"); }

std::string ids_json(const std::vector<int32_t>& ids) {
  std::string s = "[";
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? "," : "") + std::to_string(ids[i]);
  return s + "]";
}

std::vector<int32_t> llama_cpp_greedy(const std::string& model, const std::vector<int32_t>& prompt, int n,
                                      const std::string& loras, const std::string& scales) {
  const fs::path out = fs::path(LOUPE_TEST_TMP) / "lora_llamacpp_out.json";
  std::string cmd = "node " + loupe_test::quote((loupe_test::source_dir() / "tests/llamacpp/greedy.mjs").string()) + " " +
                    loupe_test::quote(model) + " " + loupe_test::quote(ids_json(prompt)) + " " + std::to_string(n) + " " +
                    loupe_test::quote(loras) + " " + loupe_test::quote(scales) + " > " + out.string();
  INFO(cmd);
  REQUIRE(std::system(cmd.c_str()) == 0);
  const Json j = Json::parse(loupe_test::slurp(out), "greedy.mjs output");
  std::vector<int32_t> v;
  for (const Json& x : j.at("greedy").array()) v.push_back(int32_t(x.integer()));
  return v;
}

std::vector<int32_t> loupe_greedy(const LanguageModel& lm, const LoraSet& set, const std::vector<int32_t>& prompt, int n) {
  Session s(lm, exact(int64_t(prompt.size()) + n));
  s.set_loras(set);
  GenerateOptions o;
  o.max_tokens = n;
  return generate(s, prompt, {}, o).tokens;
}

}  // namespace

TEST_CASE("lora: llama.cpp and loupe agree on greedy tokens with loupe's LoRA GGUFs on real weights (stories260K)") {
  LOUPE_REQUIRE_SHARED();
  REQUIRE_MESSAGE(have_node_llama(), "node_modules/node-llama-cpp is missing: run tools/setup.sh");
  const fs::path dir = loupe_test::scratch("lora_llamacpp"), base = loupe_test::shared_dir() / "models/stories260K-hf";
  const fs::path s1 = dir / "s1", s2 = dir / "s2";
  lora_ref(dir, {{"make", "--base", base.string(), "--out", s1.string(), "--r", "8", "--alpha", "16", "--magnitude", "0.08",
                  "--seed", "5"},
                 {"make", "--base", base.string(), "--out", s2.string(), "--layout", "peft-bin", "--r", "4", "--alpha", "4",
                  "--rslora", "--targets", "q_proj,k_proj,down_proj", "--magnitude", "0.1", "--seed", "6"},
                 // lm_head on a model whose output projection is tied to the embeddings.
                 {"make", "--base", base.string(), "--out", (dir / "s3").string(), "--targets", "v_proj,lm_head", "--magnitude",
                  "0.3", "--seed", "7"},
                 {"logits", "--base", base.string(), "--out", (dir / "ref_s3").string(), "--tokens", "1,403,407,261,378", "--lora",
                  (dir / "s3").string()}});
  const std::string model = convert(base, dir, DType::F32, "stories260K");
  ConvertOptions o;
  o.outtype = DType::F32;
  const std::string g1 = convert_lora(s1.string(), dir.string(), o).lora_path;  // base config via base_model_name_or_path
  const std::string g2 = convert_lora(s2.string(), dir.string(), o, base.string()).lora_path;
  const std::vector<int32_t> prompt = {1, 403, 407, 261, 378};  // "Once upon a time"
  LanguageModel lm = LanguageModel::open(model);
  LoraSet set(lm.model);
  const std::vector<int32_t> plain = loupe_greedy(lm, set, prompt, 64);
  set.add(LoraAdapter::load(s1.string(), lm.model.cfg));  // the PEFT directory
  const std::vector<int32_t> ours = loupe_greedy(lm, set, prompt, 64);
  set.clear();
  set.add(LoraAdapter::load(g1, lm.model.cfg));  // the GGUF loupe wrote
  CHECK(loupe_greedy(lm, set, prompt, 64) == ours);
  size_t diverge = 0;
  while (diverge < plain.size() && diverge < ours.size() && plain[diverge] == ours[diverge]) ++diverge;
  MESSAGE("the adapter changes the continuation from token ", diverge);
  CHECK(diverge < 32);
  const std::vector<int32_t> theirs = llama_cpp_greedy(model, prompt, 64, g1, "1");
  CHECK(theirs == ours);

  // Two adapters with their own scales (the second rslora: its scaling is folded into B for llama.cpp).
  set.clear();
  set.add(LoraAdapter::load(s1.string(), lm.model.cfg), 0.6f);
  set.add(LoraAdapter::load(s2.string(), lm.model.cfg), 1.5f);
  const std::vector<int32_t> ours2 = loupe_greedy(lm, set, prompt, 64);
  CHECK(ours2 != ours);
  CHECK(llama_cpp_greedy(model, prompt, 64, g1 + "," + g2, "0.6,1.5") == ours2);

  // Tied embeddings: the lm_head LoRA adapts the output projection only (PEFT wraps
  // lm_head, the embedding lookup keeps the base weights) ...
  set.clear();
  set.add(LoraAdapter::load((dir / "s3").string(), lm.model.cfg));
  const double e3 = rel_err(prefill(lm, set, prompt), read_npy((dir / "ref_s3/logits.npy").string()));
  MESSAGE("lm_head LoRA on tied embeddings: rel. error ", e3);
  CHECK(e3 < 1e-4);
  // ... which a merged GGUF cannot express without untying them: refused, not dropped.
  CHECK(error_of([&] { convert(base, dir / "m", DType::F32, "m", {{(dir / "s3").string(), 1.0f}}); })
            .find("tied to the embeddings") != std::string::npos);
}
