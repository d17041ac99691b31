// llama.cpp itself (npm node-llama-cpp's prebuilt binaries) reads the GGUF files
// loupe-convert writes: same greedy tokens as loupe, same tokenisation of the
// embedded vocabulary.
#include "convert_util.hpp"
#include "test_util.hpp"

#include <loupe/convert/convert.hpp>
#include <loupe/pipeline/generate.hpp>

using namespace loupe;
using loupe_test::convert_text;
using loupe_test::ints;
namespace fs = std::filesystem;

namespace {

bool have_node_llama() { return fs::exists(loupe_test::source_dir() / "node_modules/node-llama-cpp/package.json"); }

#define LOUPE_REQUIRE_LLAMACPP()                                                                      \
  do {                                                                                                \
    LOUPE_REQUIRE_SHARED();                                                                           \
    REQUIRE_MESSAGE(have_node_llama(), "node_modules/node-llama-cpp is missing: run tools/setup.sh"); \
  } while (0)

std::string ids_json(const std::vector<int32_t>& ids) {
  std::string s = "[";
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? "," : "") + std::to_string(ids[i]);
  return s + "]";
}

// Runs tests/llamacpp/greedy.mjs and parses its JSON.
Json llama_cpp(const std::string& model, const std::vector<int32_t>& prompt, int n, const std::string& text = "") {
  const fs::path out = fs::path(LOUPE_TEST_TMP) / "llamacpp_out.json";
  std::string cmd = "node " + loupe_test::quote((loupe_test::source_dir() / "tests/llamacpp/greedy.mjs").string()) + " " +
                    loupe_test::quote(model) + " " + loupe_test::quote(ids_json(prompt)) + " " + std::to_string(n) +
                    " '' 1" + (text.empty() ? "" : " " + loupe_test::quote(text)) + " > " + out.string();
  INFO(cmd);
  REQUIRE(std::system(cmd.c_str()) == 0);
  return Json::parse(loupe_test::slurp(out), "greedy.mjs output");
}

std::vector<int32_t> loupe_greedy(const std::string& path, const std::vector<int32_t>& prompt, int n) {
  LanguageModel lm = LanguageModel::open(path);
  SessionOptions so;
  so.n_ctx = int64_t(prompt.size()) + n;
  so.kv_type = DType::F32;  // as the figures in README were measured
  Session s(lm, so);
  GenerateOptions o;
  o.max_tokens = n;
  return generate(s, prompt, {}, o).tokens;
}

}  // namespace

TEST_CASE("llama.cpp: greedy tokens on loupe's GGUF files of the real models") {
  LOUPE_REQUIRE_LLAMACPP();
  auto out = loupe_test::scratch("llamacpp_real");
  const std::vector<int32_t> prompt = {1, 403, 407, 261, 378};  // "Once upon a time"
  for (const char* model : {"stories260K-hf", "llama2xs-bf16-sharded"}) {
    for (DType t : {DType::F32, DType::F16, DType::Q8_0, DType::Q4_0}) {
      const std::string path = convert_text(loupe_test::shared_dir() / "models" / model, out, t, std::string(model) + "-" + dtype_name(t));
      std::vector<int32_t> ours = loupe_greedy(path, prompt, 64);
      std::vector<int32_t> theirs = ints(llama_cpp(path, prompt, 64).at("greedy"));
      size_t k = 0;
      while (k < ours.size() && k < theirs.size() && ours[k] == theirs[k]) ++k;
      MESSAGE(std::string(model), " ", std::string(dtype_name(t)), ": loupe and llama.cpp agree on the first ", k,
              " of 64 greedy tokens");
      // Float weights: the same tokens throughout. Quantised: both engines
      // quantise activations to Q8_0 but sum in different orders, so a near-tie
      // may flip late in the sequence; the opening must agree.
      if (t == DType::F32 || t == DType::F16) CHECK(ours == theirs);
      else CHECK(k >= 16);
    }
  }
}

TEST_CASE("llama.cpp: tokenises with loupe's embedded LLaMA-2 vocabulary exactly as loupe does") {
  LOUPE_REQUIRE_LLAMACPP();
  auto dir = loupe_test::scratch("llamacpp_vocab");
  const fs::path m = dir / "v32k";
  loupe_test::run_python("llama_ref.py", "--make " + m.string() +
                         " --config '{\"hidden_size\": 32, \"intermediate_size\": 64, \"num_hidden_layers\": 1, "
                         "\"num_attention_heads\": 2, \"vocab_size\": 32000}' --seed 1 --tokens 1,2 --tokenizer " +
                         (loupe_test::shared_dir() / "tokenizers/llama2.model").string() + " > /dev/null");
  const std::string path = convert_text(m, dir, DType::F16, "v32k");
  LanguageModel lm = LanguageModel::open(path);
  const fs::path text = loupe_test::shared_dir() / "text/udhr_lit.txt";
  Json j = llama_cpp(path, {1}, 1, "@" + text.string());
  const auto& lines = j.at("tokenize").array();
  std::string all = loupe_test::slurp(text);
  size_t i = 0, bad = 0;
  for (size_t p = 0; p <= all.size(); ++i) {
    size_t q = all.find('\n', p);
    if (q == std::string::npos) q = all.size();
    REQUIRE(i < lines.size());
    bad += ints(lines[i]) != lm.tokenizer.encode(all.substr(p, q - p), true);
    p = q + 1;
  }
  CHECK(i == lines.size());
  CHECK(bad == 0);
}
