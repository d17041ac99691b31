// Text generation: a LLaMA GGUF with its embedded tokenizer, and the
// prefill + decode loop with sampling, stop strings and per-token streaming.
#pragma once
#include <chrono>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "../text/gguf_vocab.hpp"
#include "../models/llama.hpp"
#include "../text/sampler.hpp"
#include "../text/stop.hpp"

namespace loupe {

// A text model file: the mapping, the model views into it and its tokenizer.
struct LanguageModel {
  GgufFile file;
  LlamaModel model;
  Tokenizer tokenizer;

  static LanguageModel open(const std::string& path) { return from_file(GgufFile::open(path)); }
  // From a parsed file (e.g. bytes already in memory: GgufFile::parse(Blob::from_bytes(...))).
  static LanguageModel from_file(GgufFile file) {
    LanguageModel lm;
    lm.file = std::move(file);
    lm.model = LlamaModel::from_gguf(lm.file);
    lm.tokenizer = read_vocab(lm.file);
    if (int64_t(lm.tokenizer.size()) != lm.model.cfg.n_vocab)
      fail(lm.file.name(), ": tokenizer has ", lm.tokenizer.size(), " tokens, the model ", lm.model.cfg.n_vocab);
    return lm;
  }
  // GgufFile owns the mapping through a shared_ptr, so moving keeps views valid.
};

struct GenerateOptions {
  int max_tokens = 128;
  SamplingParams sampling;
  std::vector<std::string> stop;  // stop strings (not included in the output)
  bool stop_at_eos = true;
  // The first generated piece's leading space is dropped, as tokenizer.decode()
  // does for a standalone answer; keep it when continuing a prompt on screen.
  bool answer_starts_text = true;
};

struct GenerateStats {
  int64_t prompt_tokens = 0, generated = 0;
  double prefill_ms = 0, decode_ms = 0;
  double prefill_tok_s() const { return prefill_ms > 0 ? 1000.0 * double(prompt_tokens) / prefill_ms : 0; }
  double decode_tok_s() const { return decode_ms > 0 ? 1000.0 * double(generated) / decode_ms : 0; }
};

struct Generation {
  std::vector<int32_t> tokens;  // generated ids (without the prompt; EOS not included)
  std::string text;
  GenerateStats stats;
  std::vector<float> first_logits;  // logits the first token was sampled from (for --dump)
};

// Called with each newly decoded piece of text; return false to stop.
using TokenCallback = std::function<bool(std::string_view text)>;

// Prefills `prompt` embeddings [n, dim] (positions kv.n_past...) and then
// samples up to max_tokens tokens. `history` holds the prompt's token ids for the
// repetition penalty (image positions have none).
inline Generation generate_from_embeddings(const LlamaModel& m, const Tokenizer& tok, KVCache& kv,
                                           const std::vector<float>& prompt, std::vector<int32_t> history,
                                           const GenerateOptions& opt, const TokenCallback& on_text = nullptr,
                                           ThreadPool* pool = nullptr) {
  using clock = std::chrono::steady_clock;
  const int64_t dim = m.cfg.dim, n = int64_t(prompt.size()) / dim, V = m.cfg.n_vocab;
  if (n <= 0) fail("generate: empty prompt");
  if (kv.n_past + n > kv.n_ctx)
    fail("prompt of ", n, " positions does not fit in the context (", kv.n_ctx - kv.n_past, " positions left of ", kv.n_ctx, ")");
  Generation g;
  std::vector<float> logits(static_cast<size_t>(V)), x(static_cast<size_t>(dim));
  auto t0 = clock::now();
  forward(m, kv, prompt.data(), n, logits.data(), false, pool);
  auto t1 = clock::now();
  g.stats.prompt_tokens = n;
  g.stats.prefill_ms = std::chrono::duration<double, std::milli>(t1 - t0).count();

  g.first_logits = logits;
  Sampler sampler(opt.sampling);
  StreamDecoder dec(tok, opt.answer_starts_text);
  StopMatcher stops(opt.stop);
  auto emit = [&](const std::string& s) {
    g.text += s;
    return s.empty() || !on_text || on_text(s);
  };
  for (int i = 0; i < opt.max_tokens; ++i) {
    const int32_t id = sampler.sample(logits.data(), int32_t(V), history);
    if (opt.stop_at_eos && id == tok.eos()) break;
    g.tokens.push_back(id);
    history.push_back(id);
    bool go = emit(stops.push(dec.push(id)));
    if (stops.stopped() || !go) break;
    if (i + 1 == opt.max_tokens) break;
    if (kv.n_past >= kv.n_ctx) break;  // context full: stop cleanly
    embed(m, &id, 1, x.data());
    forward(m, kv, x.data(), 1, logits.data(), false, pool);
  }
  if (!stops.stopped()) emit(stops.push(dec.flush())), emit(stops.flush());
  g.stats.generated = int64_t(g.tokens.size());
  g.stats.decode_ms = std::chrono::duration<double, std::milli>(clock::now() - t1).count();
  return g;
}

// Text prompt -> generation (BOS first when the tokenizer wants it).
// The generated text continues the prompt, so its leading space is kept.
inline Generation generate_text(const LanguageModel& lm, KVCache& kv, const std::string& prompt, GenerateOptions opt,
                                const TokenCallback& on_text = nullptr, ThreadPool* pool = nullptr) {
  opt.answer_starts_text = false;
  std::vector<int32_t> ids = lm.tokenizer.encode(prompt, lm.tokenizer.settings().add_bos && kv.n_past == 0);
  std::vector<float> x(ids.size() * size_t(lm.model.cfg.dim));
  embed(lm.model, ids.data(), int64_t(ids.size()), x.data());
  return generate_from_embeddings(lm.model, lm.tokenizer, kv, x, ids, opt, on_text, pool);
}

}  // namespace loupe
