// The pipelines on the GPU against the same pipelines on the CPU (the plain
// path, proven against PyTorch, PEFT and llama.cpp elsewhere): greedy tokens
// must be equal. Where they part, the CPU's logit margin between its top two
// tokens at that step is printed: the GPU multiplies fp16-rounded activations
// by the weights (tensor cores), the CPU Q8_0-quantised ones (as llama.cpp), so
// a near-tie may fall either way; a margin above kNearTie is a failure.
// Without a GPU the binary exits 77 (skipped) with the reason.
#include <loupe/convert/convert.hpp>
#include <loupe/pipeline/pipeline.hpp>

#include <algorithm>

#include "convert_util.hpp"
#include "cuda_util.hpp"
#include "demo_util.hpp"
#include "test_util.hpp"

using namespace loupe;
using loupe_test::gpu;
namespace fs = std::filesystem;

namespace {

constexpr float kNearTie = 0.05f;  // logits

struct Greedy {
  std::vector<int32_t> tokens;
  std::vector<std::vector<float>> logits;  // before each token
};

Greedy greedy(const LanguageModel& lm, const std::vector<int32_t>& prompt, int n, Backend* be, DType kv = DType::F16) {
  SessionOptions o;
  o.n_ctx = int64_t(prompt.size()) + n + 1, o.kv_type = kv, o.backend = be;
  Session s(lm, o);
  Sampler pick(SamplingParams{});
  Greedy g;
  s.feed(prompt);
  for (int k = 0; k < n; ++k) {
    g.logits.push_back(s.logits());
    g.tokens.push_back(s.sample(pick));
    s.feed({g.tokens.back()});
  }
  return g;
}

float top2_margin(const std::vector<float>& l) {
  std::vector<float> v = l;
  std::partial_sort(v.begin(), v.begin() + 2, v.end(), std::greater<float>());
  return v[0] - v[1];
}

// Equal, or parted at a near-tie of the CPU's (printed either way).
void check_same_greedy(const Greedy& cpu, const Greedy& dev, const std::string& what) {
  const auto at = std::mismatch(cpu.tokens.begin(), cpu.tokens.end(), dev.tokens.begin());
  if (at.first == cpu.tokens.end()) {
    MESSAGE(what << ": " << cpu.tokens.size() << "/" << cpu.tokens.size() << " greedy tokens equal");
    return;
  }
  const size_t k = size_t(at.first - cpu.tokens.begin());
  const float margin = top2_margin(cpu.logits[k]);
  MESSAGE(what << ": equal for " << k << " tokens, then CPU " << *at.first << " vs GPU " << *at.second
               << " where the CPU's top-2 logit margin is " << margin);
  CHECK(margin < kNearTie);
}

}  // namespace

TEST_CASE("cuda: real weights give the CPU's greedy tokens, F32/F16/BF16/Q8_0/Q4_0, F16 and F32 KV caches") {
  Backend& dev = gpu();
  MESSAGE(dev.describe());
  LOUPE_REQUIRE_SHARED();
  const fs::path dir = loupe_test::scratch("cuda_greedy");
  struct Case {
    const char* model;
    DType type;
  };
  for (const Case& c : {Case{"stories260K-hf", DType::F32}, Case{"stories260K-hf", DType::F16}, Case{"stories260K-hf", DType::Q8_0},
                        Case{"stories260K-hf", DType::Q4_0}, Case{"llama2xs-bf16-sharded", DType::BF16},
                        Case{"llama2xs-bf16-sharded", DType::Q4_0}}) {
    const std::string what = std::string(c.model) + " " + dtype_name(c.type);
    INFO(what);
    const LanguageModel lm = LanguageModel::open(
        loupe_test::convert_text(loupe_test::shared_dir() / "models" / c.model, dir, c.type, std::string(c.model) + dtype_name(c.type)));
    const std::vector<int32_t> prompt = lm.tokenizer.encode("Once upon a time, there was a little girl named Lily. She loved to play outside", true);
    for (DType kv : {DType::F16, DType::F32}) {
      const Greedy cpu = greedy(lm, prompt, 64, nullptr, kv), on_gpu = greedy(lm, prompt, 64, &dev, kv);
      check_same_greedy(cpu, on_gpu, what + " KV " + dtype_name(kv));
      // The prompt's logits (prefill: the tensor-core GEMM, fp16 operands): within 2e-2 of the CPU's.
      const double err = loupe_test::rel_err(on_gpu.logits[0], cpu.logits[0].data(), cpu.logits[0].size());
      MESSAGE(what << " KV " << dtype_name(kv) << ": prompt logits rel. error " << err);
      CHECK(err < 2e-2);
    }
  }
}

TEST_CASE("cuda: the demo model's scenes give the CPU's captions, English and Lithuanian (LoRA per session)") {
  Backend& dev = gpu();
  const loupe_test::DemoModel demo = loupe_test::DemoModel::load();
  ThreadPool pool(2);
  double worst_features = 0;
  for (size_t i = 0; i < demo.scenes(); ++i)
    for (float scale : {0.0f, 1.0f}) {
      INFO(demo.name(i) << " adapter " << scale);
      const auto cpu = demo.chat(i, scale, nullptr, &pool, {"And the background?"}), on_gpu = demo.chat(i, scale, &dev, &pool, {"And the background?"});
      CHECK(on_gpu.answers == cpu.answers);
      worst_features = std::max(worst_features, loupe_test::rel_err(on_gpu.features, cpu.features.data(), cpu.features.size()));
    }
  // The CPU quantises activations to Q8_0 for the Q4_0 tower, the GPU rounds them to fp16.
  MESSAGE("projected image features, GPU vs CPU: worst rel. error " << worst_features);
  CHECK(worst_features < 5e-2);
}

TEST_CASE("cuda: a batch of 16 chats with and without the adapter gives the CPU's batch") {
  Backend& dev = gpu();
  const loupe_test::DemoModel demo = loupe_test::DemoModel::load();
  ThreadPool pool(2);
  const std::vector<std::string> cpu = demo.batched(cpu_backend(), &pool), on_gpu = demo.batched(dev, &pool);
  size_t exact = 0;
  for (size_t k = 0; k < cpu.size(); ++k) {
    INFO(demo.name(k / 2) << (k % 2 ? " (lt)" : " (en)"));
    CHECK(on_gpu[k] == cpu[k]);
    exact += on_gpu[k] == demo.caption(k / 2, k % 2);
  }
  MESSAGE(exact << "/" << cpu.size() << " equal the reference captions");
}
