// One model, many sessions: the loaded model is shared read-only, every
// session has its own KV cache and adapters, and a Batch advances several
// sessions in one pass over the weights. Each property is checked against the
// plain path — one session alone, whose own agreement with PyTorch / PEFT /
// llama.cpp test_llama, test_lora and test_llamacpp prove — and against the
// known greedy continuations of the real models in ../shared/expected.
//
// Which kernels differ between a sequence alone and in a batch, and why: a
// quantised matmul takes the gemv kernels for 1-3 rows (f32 accumulation in
// SIMD lanes) and the repacked-panel gemm from 4 rows (bit-identical to the
// scalar kernel); F32/F16 weights go through Eigen below 8 rows and the
// AVX-512 f32 gemm from 8 (ops.hpp). Attention, norms, RoPE and activations
// are per sequence and per row, the same code whatever the batch. So logits
// differ in the last bits only; greedy tokens must not.
#include <loupe/convert/convert.hpp>
#include <loupe/pipeline/pipeline.hpp>

#include <atomic>
#include <cstdlib>
#include <new>
#include <thread>

#include "convert_util.hpp"
#include "test_util.hpp"

// Every heap allocation of the process, counted (for "a decode step allocates nothing").
// (GCC cannot see that these new and delete belong together once inlined.)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
static std::atomic<long> g_allocations{0};
void* operator new(std::size_t n) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

using namespace loupe;
using loupe_test::convert_text;
using loupe_test::ints;
using loupe_test::rel_err;
namespace fs = std::filesystem;

namespace {

struct Expected {
  std::vector<int32_t> prompt, greedy;
};
Expected expected(const std::string& file) {
  std::string line = loupe_test::slurp(loupe_test::shared_dir() / "expected" / file);
  const Json j = Json::parse(line.substr(0, line.find('\n')), file);
  return {ints(j.at("prompt_ids")), ints(j.at("greedy_ids"))};
}

SessionOptions options(int64_t n_ctx, DType kv = DType::F16) {
  SessionOptions o;
  o.n_ctx = n_ctx, o.kv_type = kv;
  return o;
}

GenerateOptions greedy(int n) {
  GenerateOptions o;
  o.max_tokens = n;
  return o;
}

// Greedy continuations of `prompts` generated together, each on its own
// session (with adapters[i] when given), in passes of at most max_rows rows.
std::vector<std::vector<int32_t>> batched(const LanguageModel& lm, const std::vector<std::vector<int32_t>>& prompts, int n,
                                          const std::vector<LoraSet>& adapters = {}, int64_t max_rows = 512,
                                          ThreadPool* pool = nullptr) {
  std::vector<Session> sessions;
  for (size_t i = 0; i < prompts.size(); ++i) {
    sessions.emplace_back(lm, options(256));
    if (!adapters.empty()) sessions.back().set_loras(adapters[i]);
  }
  Batch batch(lm, max_rows);
  Generator gen(batch);
  std::vector<std::vector<int32_t>> out(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i)
    gen.submit(sessions[i], prompts[i], {}, greedy(n), nullptr, [&out, i](Generation&& g) { out[i] = g.tokens; });
  gen.run(pool);
  return out;
}

// The same, one session at a time.
std::vector<int32_t> alone(const LanguageModel& lm, const std::vector<int32_t>& prompt, int n, const LoraSet* adapters = nullptr,
                           ThreadPool* pool = nullptr) {
  Session s(lm, options(256));
  if (adapters) s.set_loras(*adapters);
  return generate(s, prompt, {}, greedy(n), nullptr, pool).tokens;
}

// Prompts of different lengths (so the sequences sit at different positions), the expected one first.
std::vector<std::vector<int32_t>> prompts_with(const std::vector<int32_t>& first, const Tokenizer& tok) {
  std::vector<std::vector<int32_t>> p = {first};
  for (const char* text : {"Lily and Ben went to the park. They saw a big", "The cat", "One day, a little bird wanted to fly to the"})
    p.push_back(tok.encode(text, true));
  return p;
}

// Two PEFT adapters of stories260K (lora_ref.py: PEFT's own layout and scaling).
std::vector<std::shared_ptr<const LoraAdapter>> story_adapters(const LanguageModel& lm, const fs::path& dir) {
  const std::string base = (loupe_test::shared_dir() / "models/stories260K-hf").string();
  loupe_test::run_python("lora_ref.py", "make --base " + base + " --out " + (dir / "a").string() +
                                            " --r 8 --alpha 16 --magnitude 0.08 --seed 5 > /dev/null");
  loupe_test::run_python("lora_ref.py", "make --base " + base + " --out " + (dir / "b").string() +
                                            " --layout peft-bin --r 4 --alpha 4 --targets q_proj,v_proj,down_proj,lm_head"
                                            " --magnitude 0.3 --seed 6 > /dev/null");
  return {std::make_shared<const LoraAdapter>(LoraAdapter::load((dir / "a").string(), lm.model.cfg)),
          std::make_shared<const LoraAdapter>(LoraAdapter::load((dir / "b").string(), lm.model.cfg))};
}

// Every byte of every weight view (the model's views, into the mapping).
uint64_t weights_hash(const LlamaModel& m) {
  uint64_t h = 1469598103934665603ull;
  auto add = [&h](const TensorView& v) {
    h = (h ^ uint64_t(reinterpret_cast<uintptr_t>(v.data))) * 1099511628211ull;
    const auto* p = static_cast<const uint8_t*>(v.data);
    for (size_t i = 0; i < v.nbytes(); ++i) h = (h ^ p[i]) * 1099511628211ull;
  };
  add(m.weights.tok_embd), add(m.weights.output_norm), add(m.weights.output);
  for (const LlamaLayer& L : m.weights.layers) {
    add(L.attn_norm), add(L.ffn_norm);
    for (const TensorView& w : L.w) add(w);
  }
  return h;
}

}  // namespace

TEST_CASE("batch: each sequence's greedy tokens equal its tokens alone and the real models' known continuations") {
  LOUPE_REQUIRE_SHARED();
  const fs::path dir = loupe_test::scratch("session_greedy");
  struct Case {
    const char* model;
    const char* expected;
    DType type;
  };
  for (const Case& c : {Case{"stories260K-hf", "stories260K-greedy.jsonl", DType::F32},
                        Case{"stories260K-hf", "stories260K-greedy.jsonl", DType::Q4_0},
                        Case{"llama2xs-bf16-sharded", "llama2xs-bf16-greedy.jsonl", DType::BF16}}) {
    INFO(c.model << " " << dtype_name(c.type));
    const LanguageModel lm =
        LanguageModel::open(convert_text(loupe_test::shared_dir() / "models" / c.model, dir, c.type, std::string(c.model) + dtype_name(c.type)));
    const Expected e = expected(c.expected);
    const auto prompts = prompts_with(e.prompt, lm.tokenizer);
    const int n = int(e.greedy.size());
    const auto together = batched(lm, prompts, n);
    for (size_t i = 0; i < prompts.size(); ++i) CHECK(together[i] == alone(lm, prompts[i], n));
    if (c.type != DType::Q4_0) CHECK(together[0] == e.greedy);  // the expected files are F32 / bf16 continuations
    // Passes of 5 rows: the prompts are read in chunks that share passes with the others' decode steps.
    CHECK(batched(lm, prompts, n, {}, 5) == together);
  }
}

TEST_CASE("batch: in F32 a batched sequence's logits agree with its logits alone within 1e-5, at every step") {
  LOUPE_REQUIRE_SHARED();
  const fs::path dir = loupe_test::scratch("session_logits");
  const LanguageModel lm = LanguageModel::open(convert_text(loupe_test::shared_dir() / "models/stories260K-hf", dir, DType::F32, "s"));
  const auto ad = story_adapters(lm, dir);
  const auto prompts = prompts_with(expected("stories260K-greedy.jsonl").prompt, lm.tokenizer);
  // Sessions 0 and 2 without adapters, 1 with a, 3 with a and b: one pass mixes three sets of weights.
  std::vector<LoraSet> sets(prompts.size(), LoraSet(lm.model));
  sets[1].add(ad[0]);
  sets[3].add(ad[0], 0.5f), sets[3].add(ad[1], 1.5f);
  constexpr int kSteps = 24;
  // Alone: the prompt, then kSteps greedy tokens; the logits after each feed.
  std::vector<std::vector<std::vector<float>>> solo(prompts.size()), together(prompts.size());
  std::vector<std::vector<int32_t>> tokens(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    Session s(lm, options(128, DType::F32));
    s.set_loras(sets[i]);
    s.feed(prompts[i]);
    Sampler greedy_pick(SamplingParams{});
    for (int k = 0; k < kSteps; ++k) {
      solo[i].push_back(s.logits());
      tokens[i].push_back(s.sample(greedy_pick));
      s.feed({tokens[i].back()});
    }
  }
  // Together: the same inputs, every session in each pass.
  std::vector<Session> sessions;
  for (size_t i = 0; i < prompts.size(); ++i) sessions.emplace_back(lm, options(128, DType::F32)), sessions.back().set_loras(sets[i]);
  Batch batch(lm);
  for (int k = -1; k < kSteps - 1; ++k) {
    for (size_t i = 0; i < prompts.size(); ++i)
      if (k < 0) batch.add(sessions[i], prompts[i]);
      else batch.add(sessions[i], tokens[i][size_t(k)]);
    batch.run();
    for (size_t i = 0; i < prompts.size(); ++i) together[i].push_back(sessions[i].logits());
  }
  double worst = 0;
  for (size_t i = 0; i < prompts.size(); ++i)
    for (int k = 0; k < kSteps; ++k) worst = std::max(worst, rel_err(together[i][size_t(k)], solo[i][size_t(k)].data(), solo[i][size_t(k)].size()));
  MESSAGE("F32, 4 sequences, 3 adapter sets in one pass: worst logit rel. error vs alone ", worst);
  CHECK(worst < 1e-5);
  CHECK(worst > 0);  // 1 row (Eigen gemv) vs 4 rows (Eigen gemm): the summation order differs, as the header says
}

TEST_CASE("sessions: the model is shared read-only; two sessions with different adapters run at the same time, each as alone") {
  LOUPE_REQUIRE_SHARED();
  const fs::path dir = loupe_test::scratch("session_threads");
  const LanguageModel lm = LanguageModel::open(convert_text(loupe_test::shared_dir() / "models/stories260K-hf", dir, DType::F32, "s"));
  const uint64_t before = weights_hash(lm.model);
  const auto ad = story_adapters(lm, dir);
  LoraSet with_a(lm.model), with_b(lm.model);
  with_a.add(ad[0]);
  with_b.add(ad[1]);
  const std::vector<int32_t> prompt = expected("stories260K-greedy.jsonl").prompt;
  const std::vector<int32_t> base = alone(lm, prompt, 64), a = alone(lm, prompt, 64, &with_a), b = alone(lm, prompt, 64, &with_b);
  CHECK(base == expected("stories260K-greedy.jsonl").greedy);
  CHECK(a != base);
  CHECK(b != base);
  CHECK(a != b);
  // Two threads, each with its own session (and pool), on the one model, several rounds.
  for (int round = 0; round < 3; ++round) {
    std::vector<int32_t> ta, tb;
    std::thread t1([&] {
      ThreadPool pool(2);
      ta = alone(lm, prompt, 64, &with_a, &pool);
    });
    std::thread t2([&] { tb = alone(lm, prompt, 64, &with_b); });
    t1.join(), t2.join();
    CHECK(ta == a);
    CHECK(tb == b);
  }
  // And the three in one batch.
  const auto together = batched(lm, {prompt, prompt, prompt}, 64, {LoraSet(lm.model), with_a, with_b});
  CHECK(together[0] == base);
  CHECK(together[1] == a);
  CHECK(together[2] == b);
  // Adapters changed nothing in the model.
  CHECK(weights_hash(lm.model) == before);
  // Switching a session's adapter forgets its cache: the next feed starts from the session's own weights.
  Session s(lm, options(128));
  s.feed(prompt);
  CHECK(s.n_past() == int64_t(prompt.size()));
  s.add_lora(ad[0]);
  CHECK(s.n_past() == 0);
}

TEST_CASE("kv cache: F16 by default, memory follows the positions used") {
  LOUPE_REQUIRE_SHARED();
  const fs::path dir = loupe_test::scratch("session_kv");
  const LanguageModel lm = LanguageModel::open(convert_text(loupe_test::shared_dir() / "models/stories260K-hf", dir, DType::F32, "s"));
  const LlamaConfig& c = lm.model.cfg;
  Session s(lm, options(2000));
  CHECK(s.kv().dtype() == DType::F16);
  CHECK(s.kv().bytes() == 0);
  const size_t per_position = size_t(2 * c.n_layers * c.n_kv_heads * c.head_dim * 2);
  s.feed(lm.tokenizer.encode("Once upon a time", true));
  CHECK(s.kv().capacity() == KVCache::kChunk);
  CHECK(s.kv().bytes() == size_t(KVCache::kChunk) * per_position);
  std::vector<int32_t> more(300, 403);
  s.feed(more);
  CHECK(s.kv().capacity() >= s.n_past());
  CHECK(s.kv().capacity() < s.n_past() + KVCache::kChunk);
  CHECK(s.kv().capacity() < 2000);
  // Past the context: refused, and nothing was fed.
  const int64_t held = s.n_past();
  CHECK(loupe_test::error_of([&] { s.feed(std::vector<int32_t>(2000, 403)); }).find("does not fit in the context") != std::string::npos);
  CHECK(s.n_past() == held);
  CHECK(s.positions().size() == size_t(held));
}

TEST_CASE("decode: after the first steps, a decode step of a batch allocates nothing") {
  LOUPE_REQUIRE_SHARED();
  const fs::path dir = loupe_test::scratch("session_alloc");
  for (DType t : {DType::F32, DType::F16, DType::Q4_0}) {
    const LanguageModel lm = LanguageModel::open(convert_text(loupe_test::shared_dir() / "models/stories260K-hf", dir, t,
                                                         std::string("s-") + dtype_name(t)));
    const auto ad = story_adapters(lm, dir / dtype_name(t));
    for (int threads : {1, 2}) {
      INFO(dtype_name(t) << ", " << threads << " threads");
      ThreadPool pool(threads);
      std::vector<Session> sessions;
      for (int i = 0; i < 3; ++i) sessions.emplace_back(lm, options(200));
      sessions[1].add_lora(ad[0]);
      Batch batch(lm);
      for (Session& s : sessions) batch.add(s, lm.tokenizer.encode("Once upon a time", true));
      batch.run(&pool);
      Sampler greedy_pick(SamplingParams{});
      constexpr int kSteps = 40, kWarm = 4;  // the first steps grow the scratch buffers
      long during = 0;
      for (int step = 0; step < kSteps; ++step) {
        const long before = g_allocations.load();
        for (Session& s : sessions) batch.add(s, s.sample(greedy_pick));
        batch.run(&pool);
        if (step >= kWarm) during += g_allocations.load() - before;
      }
      // One thread: nothing at all. Two: a worker may meet an op for the first time
      // late (tasks are claimed dynamically) and grow its thread-local scratch once.
      if (threads == 1) CHECK(during == 0);
      else CHECK(during < 4);
    }
  }
}
