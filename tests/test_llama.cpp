// LLaMA forward and generation against independent references:
// - real trained weights in ../shared with their known greedy continuations;
// - reference/llama_ref.py (plain PyTorch, from HF's LlamaForCausalLM) on
//   tiny random configs: GQA/MHA/MQA, tied/untied, odd head sizes.
#include "convert_util.hpp"
#include "test_util.hpp"

#include <loupe/convert/convert.hpp>
#include <loupe/pipeline/generate.hpp>
#include <loupe/io/npy.hpp>
#include <loupe/ops/kernels.hpp>

using namespace loupe;
using loupe_test::convert_text;
using loupe_test::ints;
using loupe_test::rel_err;
namespace fs = std::filesystem;

namespace {

SessionOptions exact(int64_t n_ctx, DType kv_type = DType::F32) {
  SessionOptions o;
  o.n_ctx = n_ctx, o.kv_type = kv_type;
  return o;
}

// All-position logits [n, vocab] for `ids`, by one prefill.
std::vector<float> prefill_logits(const LanguageModel& lm, const std::vector<int32_t>& ids, ThreadPool* pool = nullptr,
                                  DType kv_type = DType::F32) {
  Session s(lm, exact(int64_t(ids.size()), kv_type));
  s.feed(ids, pool, /*all_logits=*/true);
  return s.logits();
}

// The same, one token at a time through the KV cache.
std::vector<float> decode_logits(const LanguageModel& lm, const std::vector<int32_t>& ids, DType kv_type = DType::F32) {
  Session s(lm, exact(int64_t(ids.size()), kv_type));
  std::vector<float> logits;
  for (int32_t id : ids) {
    s.feed({id});
    logits.insert(logits.end(), s.logits().begin(), s.logits().end());
  }
  return logits;
}

struct Expected {
  std::string prompt;
  std::vector<int32_t> prompt_ids, greedy_ids;
};
Expected expected(const std::string& file) {
  std::string line = loupe_test::slurp(loupe_test::shared_dir() / "expected" / file);
  line = line.substr(0, line.find('\n'));
  Json j = Json::parse(line, file);
  return {j.at("prompt").str(), ints(j.at("prompt_ids")), ints(j.at("greedy_ids"))};
}

// Greedy continuation until EOS/BOS or n tokens, as the expected files define it.
std::vector<int32_t> greedy(const LanguageModel& lm, const std::vector<int32_t>& prompt, size_t n) {
  Session s(lm, exact(int64_t(prompt.size() + n)));
  GenerateOptions o;
  o.max_tokens = int(n);
  return generate(s, prompt, {}, o).tokens;
}

// The random models use the 512-piece stories260K tokenizer (the converter embeds it).
std::string tokenizer_arg() {
  return " --tokenizer " + (loupe_test::shared_dir() / "models/stories260K-hf/tokenizer.model").string();
}

size_t agree_prefix(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  size_t k = 0;
  while (k < a.size() && k < b.size() && a[k] == b[k]) ++k;
  return k;
}

}  // namespace

TEST_CASE("llama: real weights reproduce the known greedy continuations (F32)") {
  LOUPE_REQUIRE_SHARED();
  auto out = loupe_test::scratch("llama_real");
  struct Case {
    const char* dir;
    const char* expected;
  };
  for (Case c : {Case{"stories260K-hf", "stories260K-greedy.jsonl"}, Case{"llama2xs-bf16-sharded", "llama2xs-bf16-greedy.jsonl"}}) {
    CAPTURE(c.dir);
    const std::string path = convert_text(loupe_test::shared_dir() / "models" / c.dir, out, DType::F32, c.dir);
    LanguageModel lm = LanguageModel::open(path);
    Expected e = expected(c.expected);
    CHECK(lm.tokenizer.encode(e.prompt, true) == e.prompt_ids);
    CHECK(greedy(lm, e.prompt_ids, e.greedy_ids.size()) == e.greedy_ids);
    // The F16 file as well (stories260K is stored in F32; llama2xs in BF16, which F16 holds exactly here).
    const std::string p16 = convert_text(loupe_test::shared_dir() / "models" / c.dir, out, DType::F16, std::string(c.dir) + "-f16");
    size_t k16 = agree_prefix(greedy(LanguageModel::open(p16), e.prompt_ids, e.greedy_ids.size()), e.greedy_ids);
    MESSAGE(std::string(c.dir), " F16: first ", k16, " of ", e.greedy_ids.size(), " greedy tokens agree");
    if (std::string(c.dir) == "llama2xs-bf16-sharded") {
      // Stored in BF16, so a BF16 GGUF holds the weights exactly: same tokens as F32.
      const std::string pb = convert_text(loupe_test::shared_dir() / "models" / c.dir, out, DType::BF16, "llama2xs-bf16");
      CHECK(greedy(LanguageModel::open(pb), e.prompt_ids, e.greedy_ids.size()) == e.greedy_ids);
    }
  }
}

TEST_CASE("llama: stories260K from pytorch_model.bin equals the safetensors conversion byte for byte") {
  LOUPE_REQUIRE_SHARED();
  auto out = loupe_test::scratch("llama_bin");
  const fs::path src = loupe_test::shared_dir() / "models/stories260K-hf";
  // Same directory, two checkpoint formats: make a copy that only has the .bin.
  fs::path bin_only = out / "bin-only";
  fs::create_directories(bin_only);
  for (const char* f : {"config.json", "tokenizer.model", "pytorch_model.bin"}) fs::copy(src / f, bin_only / f);
  const std::string a = convert_text(src, out, DType::F32, "m"), b = convert_text(bin_only, out, DType::F32, "m-bin");
  std::string ba = loupe_test::slurp(a), bb = loupe_test::slurp(b);
  // general.name differs ("m" vs "m-bin"); everything from the tensor data on must be identical.
  GgufFile ga = GgufFile::open(a), gb = GgufFile::open(b);
  REQUIRE(ga.tensors.size() == gb.tensors.size());
  for (size_t i = 0; i < ga.tensors.size(); ++i)
    CHECK(std::memcmp(ga.tensors[i].view.data, gb.tensors[i].view.data, ga.tensors[i].view.nbytes()) == 0);
}

TEST_CASE("llama: Q8_0 and Q4_0 agreement with F32 on real weights") {
  LOUPE_REQUIRE_SHARED();
  auto out = loupe_test::scratch("llama_quant");
  for (const char* dir : {"stories260K-hf", "llama2xs-bf16-sharded"}) {
    const fs::path src = loupe_test::shared_dir() / "models" / dir;
    Expected e = expected(std::string(dir) == "stories260K-hf" ? "stories260K-greedy.jsonl" : "llama2xs-bf16-greedy.jsonl");
    LanguageModel f32 = LanguageModel::open(convert_text(src, out, DType::F32, std::string(dir) + "-f32"));
    std::vector<float> ref = prefill_logits(f32, e.prompt_ids);
    for (DType t : {DType::Q8_0, DType::Q4_0}) {
      LanguageModel q = LanguageModel::open(convert_text(src, out, t, std::string(dir) + "-" + dtype_name(t)));
      const double err = rel_err(prefill_logits(q, e.prompt_ids), ref.data(), ref.size());
      const size_t k = agree_prefix(greedy(q, e.prompt_ids, e.greedy_ids.size()), e.greedy_ids);
      MESSAGE(std::string(dir), " ", std::string(dtype_name(t)), ": prompt logits rel. error ", err, "; first ", k, " of ", e.greedy_ids.size(),
              " greedy tokens equal F32's");
      CHECK(err < (t == DType::Q8_0 ? 0.1 : 0.4));  // int8 / int4 noise on a 64-wide model, not a bug-sized error
      CHECK(k >= (t == DType::Q8_0 ? 8u : 3u));
    }
  }
}

TEST_CASE("llama: logits equal the PyTorch reference (tiny random configs)") {
  LOUPE_REQUIRE_SHARED();
  auto dir = loupe_test::scratch("llama_ref");
  for (const char* preset : {"gqa48", "mha40", "mqa60", "gqa36", "mha128"}) {
    for (const char* format : {"safetensors", "bin"}) {
      INFO(preset << " " << format);
      const fs::path m = dir / (std::string(preset) + "-" + format);
      loupe_test::run_python("llama_ref.py", "--make " + m.string() + " --config " + preset + " --seed 11 --format " + format +
                                                 " --shards " + (std::string(format) == "bin" ? "2" : "1") +
                                                 " --tokens 1,17,5,99,3,42,250,7,7,7,12,200" + tokenizer_arg() + " > /dev/null");
      LanguageModel lm = LanguageModel::open(convert_text(m, dir, DType::F32, std::string(preset) + "-" + format));
      Tensor ref = read_npy((m / "ref/logits.npy").string());
      std::vector<int32_t> ids = ints(Json::parse(loupe_test::slurp(m / "ref/tokens.json"), "tokens.json"));
      REQUIRE(ref.numel() == int64_t(ids.size()) * lm.model.cfg.n_vocab);
      const double e_prefill = rel_err(prefill_logits(lm, ids), ref.f32(), size_t(ref.numel()));
      const double e_decode = rel_err(decode_logits(lm, ids), ref.f32(), size_t(ref.numel()));
      CHECK(e_prefill < 1e-4);
      CHECK(e_decode < 1e-4);
      // F16 KV cache: storage rounding only.
      CHECK(rel_err(decode_logits(lm, ids, DType::F16), ref.f32(), size_t(ref.numel())) < 3e-3);
    }
  }
}

TEST_CASE("llama: RoPE conventions — HF rotate_half on HF-ordered q/k equals llama.cpp adjacent pairs on permuted q/k") {
  LOUPE_REQUIRE_SHARED();
  auto dir = loupe_test::scratch("llama_rope");
  const fs::path m = dir / "gqa48";
  loupe_test::run_python("llama_ref.py", "--make " + m.string() + " --config gqa48 --seed 5 --tokens 1,2,3,4,5,6,7,8" + tokenizer_arg() + " > /dev/null");
  LanguageModel lm = LanguageModel::open(convert_text(m, dir, DType::F32, "gqa48"));
  std::vector<int32_t> ids = {1, 2, 3, 4, 5, 6, 7, 8};
  std::vector<float> adjacent = prefill_logits(lm, ids);

  // Build HF-ordered q/k straight from the checkpoint (no permutation) and rotate halves.
  Checkpoint ck = Checkpoint::open(m.string());
  LanguageModel hf = lm;  // a variant of the model: HF's q/k rows, rotate_half
  hf.model.rope_style = RopeStyle::HalfSplit;
  std::vector<Tensor> keep;
  for (size_t l = 0; l < hf.model.weights.layers.size(); ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".self_attn.";
    keep.push_back(to_f32(ck.get(p + "q_proj.weight").view()));
    hf.model.weights.layers[l].w[kAttnQ] = keep.back().view();
    keep.push_back(to_f32(ck.get(p + "k_proj.weight").view()));
    hf.model.weights.layers[l].w[kAttnK] = keep.back().view();
  }
  // Different weights rows, same math: must agree to rounding.
  std::vector<float> half = prefill_logits(hf, ids);
  CHECK(rel_err(half.data(), adjacent.data(), adjacent.size()) < 1e-6);
  // And the wrong pairing is caught: HF-ordered weights with adjacent rotation differ.
  hf.model.rope_style = RopeStyle::Adjacent;
  CHECK(rel_err(prefill_logits(hf, ids), adjacent.data(), adjacent.size()) > 1e-2);
}

TEST_CASE("llama: results do not depend on the thread count") {
  LOUPE_REQUIRE_SHARED();
  auto dir = loupe_test::scratch("llama_threads");
  const fs::path m = dir / "mha128";
  loupe_test::run_python("llama_ref.py", "--make " + m.string() + " --config mha128 --seed 3" + tokenizer_arg() + " > /dev/null");
  for (DType t : {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0}) {
    LanguageModel lm = LanguageModel::open(convert_text(m, dir, t, std::string("mha128-") + dtype_name(t)));
    std::vector<int32_t> ids = {1, 5, 9, 200, 3, 3, 77};
    std::vector<float> one = prefill_logits(lm, ids);
    ThreadPool pool(3);
    std::vector<float> three = prefill_logits(lm, ids, &pool);
    CHECK(std::memcmp(one.data(), three.data(), one.size() * 4) == 0);
  }
}

TEST_CASE("llama: a model packed for the CPU's kernels (Q4_0x16) computes what the file's layout does; the file's bytes stay readable") {
  LOUPE_REQUIRE_SHARED();
  auto dir = loupe_test::scratch("llama_packed");
  const fs::path m = dir / "mha128";
  loupe_test::run_python("llama_ref.py", "--make " + m.string() + " --config mha128 --seed 5" + tokenizer_arg() + " > /dev/null");
  const std::string path = convert_text(m, dir, DType::Q4_0, "mha128-q4_0");
  LanguageModel packed = LanguageModel::open(path), plain = LanguageModel::open(path, LlamaModel::LoadOptions{false});
  // Packed exactly where this CPU's kernels have the layout (AVX-512 VNNI, AVX2), every Q4_0 matrix.
  const bool wants = kernels().pack_q4_0_x16 != nullptr;
  CHECK((packed.model.packed != nullptr) == wants);
  CHECK(plain.model.packed == nullptr);
  const Blob file = Blob::open(path);
  for (size_t l = 0; l < packed.model.weights.layers.size(); ++l)
    for (const TensorView& w : packed.model.weights.layers[l].w) {
      CHECK((w.packed != nullptr) == (wants && w.dtype == DType::Q4_0));
      // The released pages read the file again (madvise(MADV_DONTNEED) on a private mapping).
      CHECK(std::memcmp(w.data, file.data + (static_cast<const uint8_t*>(w.data) - packed.file.blob.data), w.nbytes()) == 0);
    }
  // The Q4_0x16 kernels and the panel gemm are bit-identical to the scalar kernel: a prefill gives the same bits.
  const std::vector<int32_t> ids = {1, 5, 9, 200, 3, 3, 77};
  const std::vector<float> a = prefill_logits(packed, ids), b = prefill_logits(plain, ids);
  CHECK(std::memcmp(a.data(), b.data(), a.size() * 4) == 0);
  CHECK(greedy(packed, ids, 12) == greedy(plain, ids, 12));
}

TEST_CASE("llama: a prompt longer than the context is refused") {
  LOUPE_REQUIRE_SHARED();
  auto out = loupe_test::scratch("llama_ctx");
  LanguageModel lm = LanguageModel::open(convert_text(loupe_test::shared_dir() / "models/stories260K-hf", out, DType::F32, "s"));
  Session s(lm, exact(8));
  std::string msg;
  try {
    generate_text(s, "Once upon a time there was a very long prompt", GenerateOptions{});
  } catch (const Error& e) {
    msg = e.what();
  }
  CHECK(msg.find("does not fit in the context") != std::string::npos);
}
