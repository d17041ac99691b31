// One loaded model, many sessions.
//
//   LanguageModel  the text model file, its (immutable) weights and tokenizer:
//                  loaded once, shared read-only by every session and thread.
//   Session        one conversation's state: its KV cache, its LoRA adapters,
//                  the ids of what it has seen, the last logits. The
//                  token-level API: feed(ids), feed(embeddings), logits(),
//                  sample().
//   Batch          advances several sessions in one forward pass: each weight
//                  is read once for all their rows. Inputs larger than the
//                  pass (a long prompt) run in chunks of max_rows rows.
//
// A session is used by one thread at a time; different sessions on the same
// model may run on different threads at once.
#pragma once
#include <algorithm>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "../models/llama.hpp"
#include "../text/gguf_vocab.hpp"
#include "../text/sampler.hpp"
#include "lora.hpp"

namespace loupe {

// A text model file: the mapping, the model views into it and its tokenizer.
struct LanguageModel {
  GgufFile file;
  LlamaModel model;
  Tokenizer tokenizer;

  static LanguageModel open(const std::string& path, const LlamaModel::LoadOptions& o = {}) { return from_file(GgufFile::open(path), o); }
  // From a parsed file (e.g. bytes already in memory: GgufFile::parse(Blob::from_bytes(...))).
  static LanguageModel from_file(GgufFile file, const LlamaModel::LoadOptions& o = {});
  // GgufFile owns the mapping through a shared_ptr, so moving keeps views valid.
};

// The chat template a model file names (kChatTemplateKey, written by
// loupe-convert for checkpoints with their own format), else vicuna_v1, what
// LLaVA-1.5's and ShareGPT4V's evaluation scripts use.
inline std::string default_chat_template(const LanguageModel& lm) { return lm.file.get_str(kChatTemplateKey, "vicuna_v1"); }

// LLaVA's IMAGE_TOKEN_INDEX: marks image positions in prompts and in a session's positions().
constexpr int32_t kImageTokenIndex = -200;

struct SessionOptions {
  int64_t n_ctx = 0;           // positions; 0: the model's context, at most 4096
  DType kv_type = DType::F16;  // llama.cpp's default; F32 on request
  int64_t n_batch = 512;       // rows per forward pass of the session's own feed(); longer inputs run in chunks
  Backend* backend = nullptr;  // where it runs (ops/backend.hpp); null: the CPU
};
inline Backend& backend_of(const SessionOptions& o) { return o.backend ? *o.backend : cpu_backend(); }

class Batch;

class Session {
 public:
  // `projector`: the vision model's, when adapters may replace it.
  explicit Session(const LanguageModel& lm, SessionOptions opt = {}, const Projector* projector = nullptr)
      : lm_(&lm), opt_(opt), loras_(lm.model, projector) {
    if (opt_.n_ctx <= 0) opt_.n_ctx = std::min<int64_t>(lm.model.cfg.n_ctx, 4096);
    if (opt_.n_batch <= 0) fail("n_batch must be positive, not ", opt_.n_batch);
    opt_.backend = &backend_of(opt_);
    kv_ = KVCache(lm.model.cfg, opt_.n_ctx, opt_.kv_type, *opt_.backend);
    positions_.reserve(size_t(opt_.n_ctx)), history_.reserve(size_t(opt_.n_ctx));  // a decode step allocates nothing
  }
  Session(Session&&) noexcept;
  Session& operator=(Session&&) noexcept;
  ~Session();

  const LanguageModel& model() const { return *lm_; }
  const SessionOptions& options() const { return opt_; }

  // ---- LoRA adapters of this session. Any change forgets what the cache holds
  // (its keys were computed with other weights).
  const LoraSet& loras() const { return loras_; }
  // All at once: a set built for this model and projector (LoraSet(lm.model, &vm.projector)), e.g. per request.
  void set_loras(LoraSet set) {
    if (!set.built_for(lm_->model, loras_.base_projector()))
      fail("set_loras: the adapters were set up for another model (or another vision projector)");
    loras_ = std::move(set), clear();
  }
  void add_lora(std::shared_ptr<const LoraAdapter> a, float scale = 1.0f) { loras_.add(std::move(a), scale), clear(); }
  void set_lora_scale(const std::string& name, float scale) {
    if (const LoraSet::Entry* e = loras_.find(name); e && e->scale == scale) return;
    loras_.set_scale(name, scale), clear();
  }
  void remove_lora(const std::string& name) { loras_.remove(name), clear(); }
  std::vector<std::string> take_lora_notes() { return std::exchange(loras_.notes, {}); }
  // The projector this session's images go through (an adapter may bring its own; null: text-only).
  const Projector* projector() const { return loras_.projector(); }
  const AdaptedWeights* adapted() const { return loras_.adapted(); }
  // The embedding table this session reads (an adapter may replace it).
  const TensorView& embeddings() const { return adapted() ? adapted()->weights.tok_embd : lm_->model.weights.tok_embd; }

  // ---- Token-level API.
  // Runs the model on `ids` after what the session holds; logits() then holds the last position's.
  void feed(const std::vector<int32_t>& ids, ThreadPool* pool = nullptr, bool all_logits = false);
  // The same with embeddings x [ids.size(), dim]; ids holds each position's token, or a
  // marker such as kImageTokenIndex for positions that have none (image features).
  void feed(const float* x, const std::vector<int32_t>& ids, ThreadPool* pool = nullptr, bool all_logits = false);
  // The last fed position's logits [vocab] (with all_logits: every position's of the last feed).
  const std::vector<float>& logits() const { return logits_; }
  // The next token from logits() (repetition penalty over the tokens the session holds).
  int32_t sample(Sampler& s) const {
    if (logits_.empty()) fail("sample: nothing has been fed to the session yet");
    const size_t V = size_t(lm_->model.cfg.n_vocab);
    return s.sample(logits_.data() + logits_.size() - V, int32_t(V), history_);
  }

  int64_t n_past() const { return kv_.n_past; }
  int64_t n_ctx() const { return kv_.n_ctx(); }
  // One entry per position held: the token id, or the marker it was fed with.
  const std::vector<int32_t>& positions() const { return positions_; }
  // The token ids among them (the repetition penalty's history).
  const std::vector<int32_t>& history() const { return history_; }
  // Keeps the first n positions (a prefix shared with the next prompt) and forgets the rest.
  void truncate(int64_t n) {
    if (n < 0 || n > n_past()) fail("truncate: ", n, " is not within the ", n_past(), " positions held");
    kv_.n_past = n;
    positions_.resize(size_t(n));
    history_.clear();
    for (int32_t id : positions_)
      if (id >= 0) history_.push_back(id);
  }
  void clear() { truncate(0); }
  const KVCache& kv() const { return kv_; }

  // The session's own batch (scratch for n_batch rows, made on first use): what feed() and generate() run on.
  Batch& batch();

 private:
  friend class Batch;
  const LanguageModel* lm_;
  SessionOptions opt_;
  LoraSet loras_;
  KVCache kv_;
  std::vector<int32_t> positions_, history_;
  std::vector<float> logits_;
  std::unique_ptr<Batch> batch_;
};

class Batch {
 public:
  // Runs on `be`, where the sessions it advances keep their caches.
  explicit Batch(const LanguageModel& lm, int64_t max_rows = 512, Backend& be = cpu_backend())
      : lm_(&lm), max_rows_(max_rows), scratch_(be) {
    if (max_rows <= 0) fail("a batch needs room for at least one row, not ", max_rows);
    scratch_.reserve(lm.model.cfg, max_rows, 1);
  }
  int64_t max_rows() const { return max_rows_; }

  // Queue input for a session (once per session per run): token ids, or embeddings
  // x [ids.size(), dim] with each position's id or marker (Session::feed).
  void add(Session& s, const std::vector<int32_t>& ids, bool all_logits = false) { queue(s, nullptr, ids.data(), ids.size(), all_logits); }
  void add(Session& s, int32_t id) { queue(s, nullptr, &id, 1, false); }  // one decode step
  void add(Session& s, const float* x, const std::vector<int32_t>& ids, bool all_logits = false) {
    if (!x) fail("batch: no embeddings");
    queue(s, x, ids.data(), ids.size(), all_logits);
  }
  size_t size() const { return items_.size(); }

  // Every queued input through the model, in passes of at most max_rows rows:
  // one-row inputs (decode steps) first, then the others in order, a long one
  // split in chunks that share passes with the rest. Empties the batch.
  void run(ThreadPool* pool = nullptr);

 private:
  void queue(Session& s, const float* x, const int32_t* ids, size_t n, bool all_logits);

  struct Item {
    Session* s;
    size_t at, id_at;  // its input's first float in inputs_, first id in ids_
    int64_t n, done;
    bool all_logits;
  };
  const LanguageModel* lm_;
  int64_t max_rows_;
  LlamaScratch scratch_;
  std::vector<float> inputs_;  // grown, never shrunk: a decode step allocates nothing
  std::vector<int32_t> ids_;
  size_t inputs_size_ = 0, ids_size_ = 0;
  std::vector<Item> items_;
  std::vector<LlamaSeq> seqs_;
};

}  // namespace loupe

#ifdef LOUPE_IMPLEMENTATION
namespace loupe {

LanguageModel LanguageModel::from_file(GgufFile file, const LlamaModel::LoadOptions& o) {
  LanguageModel lm;
  lm.file = std::move(file);
  lm.model = LlamaModel::from_gguf(lm.file, o);
  lm.tokenizer = read_vocab(lm.file);
  if (int64_t(lm.tokenizer.size()) != lm.model.cfg.n_vocab)
    fail(lm.file.name(), ": tokenizer has ", lm.tokenizer.size(), " tokens, the model ", lm.model.cfg.n_vocab);
  return lm;
}

void Batch::run(ThreadPool* pool) {
  struct Reset {  // empty afterwards, also when a pass fails
    Batch& b;
    ~Reset() { b.items_.clear(), b.inputs_size_ = b.ids_size_ = 0; }
  } reset{*this};
  const LlamaConfig& c = lm_->model.cfg;
  for (;;) {
    seqs_.clear();
    int64_t budget = max_rows_;
    for (int pass = 0; pass < 2; ++pass)  // decode steps, then the rest
      for (Item& it : items_) {
        const int64_t left = it.n - it.done;
        if (left == 0 || budget == 0 || (pass == 0) != (it.n == 1)) continue;
        LlamaSeq q;
        q.kv = &it.s->kv_;
        q.adapted = it.s->adapted();
        q.n = std::min(left, budget);
        q.x = inputs_.data() + it.at + size_t(it.done * c.dim);
        q.all_logits = it.all_logits;
        if (it.all_logits) q.logits = it.s->logits_.data() + it.done * c.n_vocab;
        else if (it.done + q.n == it.n) q.logits = it.s->logits_.data();
        budget -= q.n;
        seqs_.push_back(q);
      }
    if (seqs_.empty()) break;
    forward(lm_->model, seqs_.data(), seqs_.size(), scratch_, pool);
    for (const LlamaSeq& q : seqs_)
      for (Item& it : items_)
        if (&it.s->kv_ == q.kv) {
          for (int64_t i = it.done; i < it.done + q.n; ++i) {
            const int32_t id = ids_[it.id_at + size_t(i)];
            it.s->positions_.push_back(id);
            if (id >= 0) it.s->history_.push_back(id);
          }
          it.done += q.n;
        }
  }
}

void Batch::queue(Session& s, const float* x, const int32_t* ids, size_t n, bool all_logits) {
  if (&s.model() != lm_) fail("batch: the session runs on another model");
  if (s.options().backend != scratch_.be) fail("batch: the session runs on ", s.options().backend->describe(), ", the batch on ", scratch_.be->describe());
  if (n == 0) fail("feed: no positions");
  for (const Item& it : items_)
    if (it.s == &s) fail("batch: the session already has input in this batch");
  if (s.n_past() + int64_t(n) > s.n_ctx())
    fail("the input of ", n, " positions does not fit in the context (", s.n_ctx() - s.n_past(), " positions left of ", s.n_ctx(), ")");
  const LlamaConfig& c = lm_->model.cfg;
  const size_t at = inputs_size_;
  inputs_size_ += n * size_t(c.dim);
  if (inputs_.size() < inputs_size_) inputs_.resize(inputs_size_);
  if (x) std::copy(x, x + n * size_t(c.dim), inputs_.begin() + std::ptrdiff_t(at));
  else embed(c, s.embeddings(), ids, int64_t(n), inputs_.data() + at);
  s.logits_.resize(size_t(all_logits ? int64_t(n) * c.n_vocab : c.n_vocab));
  const size_t id_at = ids_size_;
  ids_size_ += n;
  if (ids_.size() < ids_size_) ids_.resize(ids_size_);
  std::copy(ids, ids + n, ids_.begin() + std::ptrdiff_t(id_at));
  items_.push_back({&s, at, id_at, int64_t(n), 0, all_logits});
}

Session::Session(Session&&) noexcept = default;
Session& Session::operator=(Session&&) noexcept = default;
Session::~Session() = default;

Batch& Session::batch() {
  if (!batch_) batch_ = std::make_unique<Batch>(*lm_, opt_.n_batch, *opt_.backend);
  return *batch_;
}

void Session::feed(const std::vector<int32_t>& ids, ThreadPool* pool, bool all_logits) {
  batch().add(*this, ids, all_logits);
  batch_->run(pool);
}

void Session::feed(const float* x, const std::vector<int32_t>& ids, ThreadPool* pool, bool all_logits) {
  batch().add(*this, x, ids, all_logits);
  batch_->run(pool);
}

}  // namespace loupe
#endif  // LOUPE_IMPLEMENTATION
