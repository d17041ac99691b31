// Generation: prefill + decode with sampling, stop strings and per-token
// streaming, for one session or many at once.
//
// A Generator runs any number of requests (each on its own session) by
// continuous batching: every step() is one forward pass holding the next token
// of every decoding request and, in the rows left, chunks of the prompts still
// being read. generate() is the same machinery with one request: there is one
// generation loop in loupe.
#pragma once
#include <chrono>
#include <functional>
#include <list>
#include <string>
#include <string_view>
#include <vector>

#include "../text/stop.hpp"
#include "session.hpp"

namespace loupe {

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

enum class FinishReason { Stop, Length, Cancelled };  // EOS or a stop string; max_tokens or the context; the callback

struct Generation {
  std::vector<int32_t> tokens;  // generated ids (without the prompt; EOS not included)
  std::string text;
  GenerateStats stats;
  FinishReason finish = FinishReason::Stop;
  std::vector<float> first_logits;  // logits the first token was sampled from (for --dump)
};

// Called with each newly decoded piece of text; return false to stop.
using TokenCallback = std::function<bool(std::string_view text)>;

class Generator {
 public:
  // Passes run on `batch` (its max_rows bounds the rows of one step).
  explicit Generator(Batch& batch) : batch_(&batch) {}

  // Starts a request on session `s`: the prompt `ids` (or embeddings x [ids.size(), dim]
  // with each position's id or marker, as Session::feed), then up to opt.max_tokens
  // tokens. `done` is called with the result when it finishes. The session must
  // not be used elsewhere until then.
  void submit(Session& s, std::vector<int32_t> ids, std::vector<float> x, const GenerateOptions& opt,
              TokenCallback on_text = nullptr, std::function<void(Generation&&)> done = nullptr);

  // Ends the request running on `s` at the next step (FinishReason::Cancelled): a
  // client that went away. Its `done` is still called.
  void cancel(const Session& s);

  bool busy() const { return !running_.empty(); }
  size_t running() const { return running_.size(); }

  // One forward pass: a token for every decoding request, prompt chunks for
  // the others in the rows left. Finished requests are handed to their `done`.
  void step(ThreadPool* pool = nullptr);

  // Steps until every request has finished.
  void run(ThreadPool* pool = nullptr) {
    while (busy()) step(pool);
  }

 private:
  using clock = std::chrono::steady_clock;
  struct Request {
    Session* s;
    std::vector<int32_t> ids;
    std::vector<float> x;
    GenerateOptions opt;
    TokenCallback on_text;
    std::function<void(Generation&&)> done;
    Sampler sampler;
    StreamDecoder dec;
    StopMatcher stops;
    Generation g;
    int64_t fed = 0;   // prompt positions queued so far
    int32_t next = 0;  // the sampled token to feed next
    bool finished = false, cancelled = false;
    clock::time_point t0 = clock::now(), t1;

    Request(Session& s_, std::vector<int32_t> ids_, std::vector<float> x_, const GenerateOptions& o, TokenCallback cb,
            std::function<void(Generation&&)> d)
        : s(&s_), ids(std::move(ids_)), x(std::move(x_)), opt(o), on_text(std::move(cb)), done(std::move(d)),
          sampler(o.sampling), dec(s_.model().tokenizer, o.answer_starts_text), stops(o.stop) {
      g.stats.prompt_tokens = int64_t(ids.size());
    }

    bool emit(const std::string& piece) {
      g.text += piece;
      return piece.empty() || !on_text || on_text(piece);
    }
    // After a pass that ended this request's input: sample, stream, decide whether to go on.
    void sample_next();
    void end(FinishReason why);
  };
  Batch* batch_;
  std::list<Request> running_;  // stable addresses while steps run
  std::vector<Request*> fed_;   // the requests in the current pass
};

// Feeds `ids` (or embeddings x for those positions) to the session after what
// it holds and samples up to opt.max_tokens tokens.
Generation generate(Session& s, std::vector<int32_t> ids, std::vector<float> x, const GenerateOptions& opt,
                    const TokenCallback& on_text = nullptr, ThreadPool* pool = nullptr);

// Text prompt -> generation (BOS first when the tokenizer wants it and the session is empty).
// The generated text continues the prompt, so its leading space is kept.
Generation generate_text(Session& s, const std::string& prompt, GenerateOptions opt, const TokenCallback& on_text = nullptr,
                         ThreadPool* pool = nullptr);

}  // namespace loupe

#ifdef LOUPE_IMPLEMENTATION
namespace loupe {

void Generator::submit(Session& s, std::vector<int32_t> ids, std::vector<float> x, const GenerateOptions& opt,
                       TokenCallback on_text, std::function<void(Generation&&)> done) {
  if (ids.empty()) fail("generate: empty prompt");
  if (!x.empty() && x.size() != ids.size() * size_t(s.model().model.cfg.dim)) fail("generate: embeddings do not match the prompt's positions");
  if (s.n_past() + int64_t(ids.size()) > s.n_ctx())
    fail("prompt of ", ids.size(), " positions does not fit in the context (", s.n_ctx() - s.n_past(), " positions left of ",
         s.n_ctx(), ")");
  for (const Request& r : running_)
    if (r.s == &s) fail("generate: the session is already generating");
  running_.emplace_back(s, std::move(ids), std::move(x), opt, std::move(on_text), std::move(done));
}

void Generator::step(ThreadPool* pool) {
  int64_t budget = batch_->max_rows();
  std::vector<Request*>& fed = fed_;
  fed.clear();
  for (Request& r : running_)
    if (r.cancelled) r.end(FinishReason::Cancelled);
  for (int pass = 0; pass < 2; ++pass)  // decode steps first: a long prompt must not stall them
    for (Request& r : running_) {
      const bool decoding = r.fed == int64_t(r.ids.size());
      if (r.finished || (pass == 0) != decoding || budget == 0) continue;
      if (decoding) {
        batch_->add(*r.s, r.next);
        --budget;
      } else {
        const int64_t n = std::min<int64_t>(budget, int64_t(r.ids.size()) - r.fed);
        const std::vector<int32_t> part(r.ids.begin() + r.fed, r.ids.begin() + r.fed + n);
        const int64_t D = r.s->model().model.cfg.dim;
        if (r.x.empty()) batch_->add(*r.s, part);
        else batch_->add(*r.s, r.x.data() + r.fed * D, part);
        r.fed += n;
        budget -= n;
      }
      fed.push_back(&r);
    }
  if (!fed.empty()) batch_->run(pool);
  for (Request* r : fed)
    if (r->fed == int64_t(r->ids.size())) r->sample_next();
  for (auto it = running_.begin(); it != running_.end();) {
    if (!it->finished) {
      ++it;
      continue;
    }
    Request r = std::move(*it);
    it = running_.erase(it);
    if (r.done) r.done(std::move(r.g));
  }
}

void Generator::Request::sample_next() {
  const Tokenizer& tok = s->model().tokenizer;
  if (g.tokens.empty() && g.first_logits.empty()) {
    t1 = clock::now();
    g.stats.prefill_ms = std::chrono::duration<double, std::milli>(t1 - t0).count();
    g.first_logits = s->logits();
  }
  const int32_t id = s->sample(sampler);
  if (opt.stop_at_eos && id == tok.eos()) return end(FinishReason::Stop);
  g.tokens.push_back(id);
  const bool go = emit(stops.push(dec.push(id)));
  if (stops.stopped()) return end(FinishReason::Stop);
  if (!go) return end(FinishReason::Cancelled);
  if (int(g.tokens.size()) >= opt.max_tokens || s->n_past() >= s->n_ctx()) return end(FinishReason::Length);  // context full: stop cleanly
  next = id;
}

void Generator::Request::end(FinishReason why) {
  if (!stops.stopped()) emit(stops.push(dec.flush())), emit(stops.flush());
  if (g.first_logits.empty()) t1 = clock::now();  // ended before its first token
  g.finish = why;
  g.stats.generated = int64_t(g.tokens.size());
  g.stats.decode_ms = std::chrono::duration<double, std::milli>(clock::now() - t1).count();
  finished = true;
}

void Generator::cancel(const Session& s) {
  for (Request& r : running_)
    if (r.s == &s && !r.finished) r.cancelled = true;
}

Generation generate(Session& s, std::vector<int32_t> ids, std::vector<float> x, const GenerateOptions& opt,
                    const TokenCallback& on_text, ThreadPool* pool) {
  Generation out;
  Generator gen(s.batch());
  gen.submit(s, std::move(ids), std::move(x), opt, on_text, [&](Generation&& g) { out = std::move(g); });
  gen.run(pool);
  return out;
}

Generation generate_text(Session& s, const std::string& prompt, GenerateOptions opt, const TokenCallback& on_text,
                         ThreadPool* pool) {
  opt.answer_starts_text = false;
  const Tokenizer& tok = s.model().tokenizer;
  return generate(s, tok.encode(prompt, tok.settings().add_bos && s.n_past() == 0), {}, opt, on_text, pool);
}

}  // namespace loupe
#endif  // LOUPE_IMPLEMENTATION
