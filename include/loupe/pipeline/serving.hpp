// Serving many requests on one loaded model, with no transport in it (the HTTP
// server in apps/cli/serve.cpp is one frontend):
//
//   - a bounded queue of requests (submit() from any thread);
//   - `parallel` slots, each a Session with its own KV cache, decoding together
//     in one forward pass a step (Generator: continuous batching — a request
//     joins at the next step, a finished one leaves);
//   - per-request adapters: a request names an adapter set (or the base), and
//     its slot runs with that set; sets of different requests share passes;
//   - a new request goes to the idle slot whose cache holds the longest prefix
//     of its prompt (the next turn of a conversation reuses the last turn's
//     keys and values, as llama.cpp's server picks slots by prompt similarity);
//   - image encodings cached by the image's content (bounded LRU): the same
//     image again — a conversation's next turn — is not encoded again;
//   - counters for /metrics.
//
// run() is the engine loop, on a thread of its own; callbacks are called on it.
#pragma once
#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "generate.hpp"
#include "pipeline.hpp"

namespace loupe {

struct ServeOptions {
  int parallel = 4;          // slots: sequences decoding together
  size_t queue = 16;         // requests waiting for a slot; beyond that submit() says no (HTTP 503)
  SessionOptions session;    // each slot's context and KV cache
  int64_t max_rows = 512;    // rows of one forward pass (prompts are read in chunks of what is left)
  size_t image_cache = 32;   // encoded images kept
  std::string conv;          // chat template; empty: the model's (default_chat_template)
  Precision clip_precision = Precision::F32;  // as DescribeOptions'
};

struct ServeResult {
  Generation gen;                // text, tokens, stats, finish reason
  int64_t prompt_positions = 0;  // the prompt in positions (an image counts its patches)
  int64_t reused_positions = 0;  // of which the slot's cache already held
  bool image_encoded = false;    // the image went through CLIP (false: cached, or none)
  std::string error;             // set when the request failed after it was queued
};

struct ServeRequest {
  std::string adapter;  // "" = the base model, else a name given to add_adapter()
  std::string system;   // "" = the chat template's system prompt
  // The conversation: (0 user | 1 assistant, text), ending with a user turn.
  // "<image>" in a user turn's text marks where the image goes.
  std::vector<std::pair<int, std::string>> turns;
  std::shared_ptr<const Image> image;  // at most one per conversation, as LLaVA-1.5 is trained
  std::shared_ptr<const Tensor> pixels;  // or the image already preprocessed, [3, S, S] (prepared on another thread)
  GenerateOptions gen;
  TokenCallback on_text;                    // each piece of the reply (engine thread); false cancels
  std::function<void(ServeResult&&)> done;  // once, at the end (engine thread)
  std::shared_ptr<std::atomic<bool>> cancel;  // set from any thread: end the request at the next step
};

struct ServeMetrics {
  size_t queued = 0, active = 0;  // now
  uint64_t completed = 0, cancelled = 0, failed = 0;
  uint64_t prompt_tokens = 0, reused_tokens = 0, generated_tokens = 0;
  uint64_t image_encodes = 0, image_cache_hits = 0;
};

class ServeEngine {
 public:
  // `vm`: the vision model, or null for a text-only server. `pool`: used by run() only.
  ServeEngine(const LanguageModel& lm, const VisionModel* vm, ServeOptions opt, ThreadPool* pool = nullptr);
  ~ServeEngine();

  // An adapter set a request may name (before run()): one adapter, or several at once.
  void add_adapter(const std::string& name, std::shared_ptr<const LoraAdapter> adapter, float scale = 1.0f) {
    add_adapter(name, {{std::move(adapter), scale}});
  }
  void add_adapter(const std::string& name, const std::vector<std::pair<std::shared_ptr<const LoraAdapter>, float>>& adapters);
  bool has_adapter(const std::string& name) const { return name.empty() || sets_.count(name) > 0; }
  std::vector<std::string> adapters() const;
  const ServeOptions& options() const { return opt_; }

  // Checks the request (fails with a message for a bad one: unknown adapter, an
  // image without a vision model, a prompt longer than the context) and queues
  // it. False: the queue is full (with `wait`: waits for room instead; false
  // only when the engine stops). Any thread.
  bool submit(ServeRequest r, bool wait = false);

  // The engine loop on the calling thread, until stop().
  void run();
  // Cancels what runs, fails what waits ("the server is shutting down"); run() returns.
  void stop();

  ServeMetrics metrics() const;

 private:
  struct Queued {
    ServeRequest req;
    std::vector<int32_t> ids;  // the prompt's token ids, kImageTokenIndex where the image goes
  };
  struct Slot {
    std::unique_ptr<Session> session;
    std::string adapter;  // the set its session runs with
    bool busy = false;
    std::shared_ptr<std::atomic<bool>> cancel;
    std::string error;  // why its request ended, when a pass failed
  };
  struct Encoded {  // an image through CLIP, and through the projectors it has met
    std::vector<float> clip;
    std::map<std::array<const void*, 4>, std::vector<float>> projected;
  };

  std::vector<int32_t> tokenize(const ServeRequest& r) const;
  void start(Queued q);  // engine thread: picks a slot, builds the prompt, submits to the generator
  const std::vector<float>& image_features(const ServeRequest& r, uint64_t key, const Projector& p, bool* encoded);

  const LanguageModel& lm_;
  const VisionModel* vm_;
  ServeOptions opt_;
  ThreadPool* pool_;
  std::map<std::string, LoraSet> sets_;  // by name; "" = no adapters
  std::vector<Slot> slots_;
  Batch batch_;
  Generator gen_;
  std::list<std::pair<uint64_t, Encoded>> images_;  // most recently used first

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Queued> queue_;
  bool stopping_ = false;
  ServeMetrics m_;  // guarded by mu_
};

}  // namespace loupe

#ifdef LOUPE_IMPLEMENTATION
namespace loupe {

ServeEngine::ServeEngine(const LanguageModel& lm, const VisionModel* vm, ServeOptions opt, ThreadPool* pool)
    : lm_(lm), vm_(vm), opt_(std::move(opt)), pool_(pool), batch_(lm, opt_.max_rows, backend_of(opt_.session)), gen_(batch_) {
  if (opt_.parallel < 1) fail("--parallel must be at least 1, not ", opt_.parallel);
  const Projector* projector = vm ? &vm->projector : nullptr;
  if (vm && vm->projector.out_dim != lm.model.cfg.dim)
    fail(vm->file.name(), ": the projector outputs width ", vm->projector.out_dim, " but the language model's width is ",
         lm.model.cfg.dim, " (mmproj from a different model?)");
  if (opt_.conv.empty()) opt_.conv = default_chat_template(lm);
  chat_template(opt_.conv);  // a known template, or a clear error now
  sets_.emplace("", LoraSet(lm.model, projector));
  for (int i = 0; i < opt_.parallel; ++i) {
    Slot s;
    s.session = std::make_unique<Session>(lm, opt_.session, projector);
    slots_.push_back(std::move(s));
  }
}

ServeEngine::~ServeEngine() = default;

void ServeEngine::add_adapter(const std::string& name, const std::vector<std::pair<std::shared_ptr<const LoraAdapter>, float>>& adapters) {
  if (name.empty() || sets_.count(name)) fail("adapter name '", name, "' is empty or taken");
  LoraSet set(lm_.model, vm_ ? &vm_->projector : nullptr);
  for (const auto& [adapter, scale] : adapters) set.add(adapter, scale);
  sets_.emplace(name, std::move(set));
}

std::vector<std::string> ServeEngine::adapters() const {
  std::vector<std::string> names;
  for (const auto& [name, set] : sets_)
    if (!name.empty()) names.push_back(name);
  return names;
}

std::vector<int32_t> ServeEngine::tokenize(const ServeRequest& r) const {
  Conversation conv(opt_.conv);
  if (!r.system.empty()) conv.tmpl.system = r.system;
  for (const auto& [role, text] : r.turns) {
    if (role == 0) conv.add_user(text);
    else conv.add_assistant(text);
  }
  conv.add_assistant();
  return tokenize_image_prompt(lm_.tokenizer, conv.prompt());
}

bool ServeEngine::submit(ServeRequest r, bool wait) {
  if (!has_adapter(r.adapter)) fail("no model or adapter named '", r.adapter, "'");
  if (r.turns.empty() || r.turns.back().first != 0) fail("the conversation must end with a user message");
  size_t tags = 0;
  for (const auto& [role, text] : r.turns)
    for (size_t p = text.find(kImageToken); p != std::string::npos; p = text.find(kImageToken, p + 1)) ++tags;
  const bool has_image = r.image || r.pixels;
  if (has_image && !vm_) fail("this server has no vision model (--mmproj): it cannot take images");
  if (r.pixels) {
    const int64_t S = vm_->clip.cfg.image_size;
    if (r.pixels->shape != std::vector<int64_t>{3, S, S} || r.pixels->dtype != DType::F32)
      fail("pixel values have shape ", r.pixels->view().shape_str(), ", the vision tower expects F32 [3, ", S, ", ", S, "]");
  }
  if (tags != (has_image ? 1u : 0u))
    fail(has_image ? "the image must be marked once in the conversation" : "\"<image>\" in a message, but no image was given");
  Queued q{std::move(r), {}};
  q.ids = tokenize(q.req);
  const int64_t n_img = has_image ? vm_->clip.cfg.n_features() : 0;
  const int64_t positions = int64_t(q.ids.size()) - (n_img ? 1 : 0) + n_img;
  if (positions >= slots_[0].session->n_ctx())
    fail("the prompt needs ", positions, " positions", n_img ? " (" + std::to_string(n_img) + " for the image)" : std::string(),
         " but the context holds ", slots_[0].session->n_ctx());
  if (q.req.gen.stop.empty() && !chat_template(opt_.conv).stop().empty()) q.req.gen.stop.push_back(chat_template(opt_.conv).stop());
  std::unique_lock<std::mutex> lk(mu_);
  if (wait) cv_.wait(lk, [&] { return stopping_ || queue_.size() < std::max<size_t>(1, opt_.queue); });
  if (stopping_) {
    if (wait) return false;
    fail("the server is shutting down");
  }
  if (queue_.size() >= opt_.queue) return false;
  queue_.push_back(std::move(q));
  cv_.notify_all();
  return true;
}

const std::vector<float>& ServeEngine::image_features(const ServeRequest& r, uint64_t key, const Projector& p, bool* encoded) {
  auto it = images_.begin();
  while (it != images_.end() && it->first != key) ++it;
  *encoded = it == images_.end();
  if (*encoded) {
    Encoded e;
    const Tensor pixels = r.pixels ? Tensor() : preprocess(*r.image, vm_->preprocess_config());
    e.clip = clip_encode(vm_->clip, r.pixels ? r.pixels->f32() : pixels.f32(), pool_, nullptr, opt_.session.backend, opt_.clip_precision);
    images_.emplace_front(key, std::move(e));
    if (images_.size() > std::max<size_t>(1, opt_.image_cache)) images_.pop_back();
  } else {
    images_.splice(images_.begin(), images_, it);  // most recently used
  }
  Encoded& e = images_.front().second;
  const std::array<const void*, 4> id{p.w0.data, p.b0.data, p.w2.data, p.b2.data};
  auto pit = e.projected.find(id);
  if (pit == e.projected.end()) pit = e.projected.emplace(id, p(e.clip, pool_, opt_.session.backend)).first;
  return pit->second;
}

void ServeEngine::start(Queued q) {
  ServeRequest& r = q.req;
  // Positions: one per token; the image's patches, marked by a value derived
  // from the image so that a cached prefix only matches the same image.
  std::vector<int32_t> positions;
  const bool has_image = r.image || r.pixels;
  const int64_t n_img = has_image ? vm_->clip.cfg.n_features() : 0;
  const uint64_t key = r.pixels ? bytes_hash(r.pixels->bytes.data(), r.pixels->bytes.size()) : r.image ? image_hash(*r.image) : 0;
  const int32_t marker = has_image ? -1 - int32_t(key & 0x3fffffff) : 0;
  for (int32_t id : q.ids)
    if (id == kImageTokenIndex) positions.insert(positions.end(), size_t(n_img), marker);
    else positions.push_back(id);
  ServeResult result;
  if (r.cancel && r.cancel->load()) {  // the client left while it waited
    result.gen.finish = FinishReason::Cancelled;
    {
      std::lock_guard<std::mutex> lk(mu_);
      ++m_.cancelled;
    }
    if (r.done) r.done(std::move(result));
    return;
  }
  // The idle slot whose cache shares the longest prefix, with the same adapters
  // (switching them forgets the cache); otherwise one with the same adapters, then
  // the one whose cache holds least (the least to lose).
  auto shared = [&](const Slot& s) {
    if (s.adapter != r.adapter) return int64_t(0);
    const std::vector<int32_t>& held = s.session->positions();
    int64_t k = 0;
    while (size_t(k) < held.size() && size_t(k) < positions.size() && held[size_t(k)] == positions[size_t(k)]) ++k;
    return k;
  };
  Slot* slot = nullptr;
  int64_t best = -1;
  std::tuple<int64_t, bool, int64_t> best_score{-1, false, 0};
  for (Slot& s : slots_) {
    if (s.busy) continue;
    const int64_t k = shared(s);
    const std::tuple<int64_t, bool, int64_t> score{k, s.adapter == r.adapter, -s.session->n_past()};
    if (score > best_score) slot = &s, best = k, best_score = score;
  }
  Session& session = *slot->session;
  if (slot->adapter != r.adapter) session.set_loras(sets_.at(r.adapter)), slot->adapter = r.adapter;
  const int64_t keep = std::min<int64_t>(best, int64_t(positions.size()) - 1);  // feed one at least: fresh logits
  session.truncate(keep);
  result.prompt_positions = int64_t(positions.size());
  result.reused_positions = keep;
  const std::vector<float>* features = nullptr;
  const int64_t dim = lm_.model.cfg.dim;
  std::vector<float> x((positions.size() - size_t(keep)) * size_t(dim));
  try {
    if (has_image) features = &image_features(r, key, *session.projector(), &result.image_encoded);
    const size_t first_image = size_t(std::find(positions.begin(), positions.end(), marker) - positions.begin());
    for (size_t p = size_t(keep); p < positions.size(); ++p) {
      float* dst = x.data() + (p - size_t(keep)) * size_t(dim);
      if (has_image && positions[p] == marker) std::copy_n(features->data() + (p - first_image) * size_t(dim), dim, dst);
      else embed(lm_.model.cfg, session.embeddings(), &positions[p], 1, dst);
    }
  } catch (const std::exception& e) {
    result.error = e.what();
    {
      std::lock_guard<std::mutex> lk(mu_);
      ++m_.failed;
    }
    if (r.done) r.done(std::move(result));
    return;
  }
  positions.erase(positions.begin(), positions.begin() + keep);
  auto done = std::move(r.done);
  gen_.submit(session, std::move(positions), std::move(x), r.gen, std::move(r.on_text),
              [this, slot, done, result](Generation&& g) mutable {
                slot->busy = false;
                slot->cancel.reset();
                {
                  std::lock_guard<std::mutex> lk(mu_);
                  --m_.active;
                  m_.generated_tokens += uint64_t(g.tokens.size());
                  ++(g.finish == FinishReason::Cancelled ? m_.cancelled : m_.completed);
                }
                result.gen = std::move(g);
                result.error = std::exchange(slot->error, {});
                if (done) done(std::move(result));
              });
  slot->busy = true;
  slot->cancel = r.cancel;
  std::lock_guard<std::mutex> lk(mu_);
  ++m_.active;
  m_.prompt_tokens += uint64_t(result.prompt_positions);
  m_.reused_tokens += uint64_t(keep);
  if (has_image) ++(result.image_encoded ? m_.image_encodes : m_.image_cache_hits);
}

void ServeEngine::run() {
  for (;;) {
    std::vector<Queued> starting;
    bool stopping;
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return stopping_ || !queue_.empty() || gen_.busy(); });
      stopping = stopping_;
      size_t idle = 0;
      for (const Slot& s : slots_) idle += !s.busy;
      while (!stopping && idle > 0 && !queue_.empty()) starting.push_back(std::move(queue_.front())), queue_.pop_front(), --idle;
      m_.queued = queue_.size();
      if (!starting.empty()) cv_.notify_all();  // room in the queue for waiting submitters
    }
    for (Queued& q : starting) start(std::move(q));
    for (Slot& s : slots_)
      if (s.busy && (stopping || (s.cancel && s.cancel->load()))) gen_.cancel(*s.session);
    if (!gen_.busy()) {
      if (stopping) break;
      continue;
    }
    try {
      gen_.step(pool_);
    } catch (const std::exception& e) {
      // A pass failed (out of memory, say): end what runs (the next step only
      // hands the requests back, with the error) rather than the server.
      for (Slot& s : slots_)
        if (s.busy) gen_.cancel(*s.session), s.error = e.what();
    }
  }
  // Whatever still waits: refused.
  std::deque<Queued> left;
  {
    std::lock_guard<std::mutex> lk(mu_);
    left.swap(queue_);
    m_.queued = 0;
    m_.failed += left.size();
  }
  for (Queued& q : left) {
    ServeResult r;
    r.error = "the server is shutting down";
    if (q.req.done) q.req.done(std::move(r));
  }
}

void ServeEngine::stop() {
  std::lock_guard<std::mutex> lk(mu_);
  stopping_ = true;
  cv_.notify_all();
}

ServeMetrics ServeEngine::metrics() const {
  std::lock_guard<std::mutex> lk(mu_);
  ServeMetrics m = m_;
  m.queued = queue_.size();
  return m;
}

}  // namespace loupe
#endif  // LOUPE_IMPLEMENTATION
