// Several LoRA adapters on one loaded model at once, unmerged: every adapted
// weight computes W·x + Σᵢ sᵢ·scalingᵢ·Bᵢ·(Aᵢ·x) (llama.hpp's LowRankDelta) on
// top of any base dtype, Q4_0 included (QLoRA inference), with each adapter's
// own scale sᵢ (llama.cpp's LoRA scale; PEFT's scale_layer(s): scaling *= s).
//
// Adding, rescaling or removing an adapter rebuilds the model's lists of views
// from a snapshot of the base taken at construction; the base weights are never
// written, so with no adapter active the model computes exactly what it did
// before (bit for bit). Tensors an adapter replaces outright (the LLaVA
// projector from non_lora_trainables.bin, PEFT's modules_to_save) are swapped in
// while it is active and back when it is not. Scale 0 switches an adapter off,
// replacements included, and keeps it loaded. Every change bumps
// LlamaModel::adapter_revision, which VisionChat watches (re-projects the image,
// drops its KV cache).
//
//   LanguageModel lm = LanguageModel::open("model.gguf");
//   VisionModel vm = VisionModel::open("mmproj.gguf");
//   LoraSet loras(lm.model, &vm.projector);
//   loras.add(LoraAdapter::load("lora-dir", lm.model.cfg), 0.8f);
//   loras.set_scale("lora-dir", 0);       // off, between two requests
//
// The set must not outlive the model (and projector) it was made for; its
// destructor puts the base back.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "../models/lora_adapter.hpp"
#include "../models/projector.hpp"

namespace loupe {

class LoraSet {
 public:
  // `projector`: the vision model's, when adapters may replace it (nullptr: a text-only model).
  explicit LoraSet(LlamaModel& model, Projector* projector = nullptr)
      : model_(model), projector_(projector), base_(model), base_projector_(projector ? *projector : Projector()) {}
  ~LoraSet() {
    if (entries_.empty()) return;
    const uint64_t rev = model_.adapter_revision + 1;
    model_ = base_;
    model_.adapter_revision = rev;
    if (projector_) *projector_ = base_projector_;
  }
  LoraSet(const LoraSet&) = delete;
  LoraSet& operator=(const LoraSet&) = delete;

  struct Entry {
    std::shared_ptr<const LoraAdapter> adapter;
    float scale = 1.0f;
  };

  // Adds an adapter (under adapter.name, which must be new) with `scale`; checks
  // every tensor against the base first. Notes for the user go to `notes`.
  const LoraAdapter& add(LoraAdapter adapter, float scale = 1.0f) {
    if (find(adapter.name)) fail("an adapter named '", adapter.name, "' is already loaded");
    check(adapter);
    std::vector<Entry> next = entries_;
    next.push_back({std::make_shared<const LoraAdapter>(std::move(adapter)), scale});
    apply(next);
    return *entries_.back().adapter;
  }
  void set_scale(const std::string& name, float scale) {
    std::vector<Entry> next = entries_;
    get(next, name).scale = scale;
    apply(next);
  }
  void remove(const std::string& name) {
    std::vector<Entry> next = entries_;
    next.erase(next.begin() + (&get(next, name) - next.data()));
    apply(next);
  }
  void clear() { apply({}); }

  const std::vector<Entry>& entries() const { return entries_; }
  const Entry* find(const std::string& name) const {
    for (const Entry& e : entries_)
      if (e.adapter->name == name) return &e;
    return nullptr;
  }
  // Messages for the user about what was added (e.g. a projector with no vision model to replace).
  std::vector<std::string> notes;

 private:
  static Entry& get(std::vector<Entry>& es, const std::string& name) {
    for (Entry& e : es)
      if (e.adapter->name == name) return e;
    std::string have;
    for (const Entry& e : es) have += (have.empty() ? "" : ", ") + e.adapter->name;
    fail("no adapter named '", name, "' is loaded", have.empty() ? "" : " (loaded: " + have + ")");
  }

  // The view of `m` called `name` (llama.cpp's name) and, for a linear weight, its list of updates.
  static TensorView* slot(LlamaModel& m, const std::string& name, std::vector<LowRankDelta>** deltas) {
    *deltas = nullptr;
    if (name == "token_embd.weight") return &m.tok_embd;
    if (name == "output_norm.weight") return &m.output_norm;
    if (name == "output.weight") return *deltas = &m.output_lora, &m.output;
    size_t l = 0, p = 0;
    if (name.rfind("blk.", 0) != 0 || (p = name.find('.', 4)) == std::string::npos) return nullptr;
    try {
      l = std::stoul(name.substr(4, p - 4));
    } catch (...) {
      return nullptr;
    }
    if (l >= m.layers.size()) return nullptr;
    LlamaLayer& L = m.layers[l];
    const std::string w = name.substr(p + 1);
    struct Named {
      const char* name;
      TensorView* view;
      int linear;
    };
    const Named all[] = {{"attn_norm.weight", &L.attn_norm, -1}, {"ffn_norm.weight", &L.ffn_norm, -1},
                         {"attn_q.weight", &L.wq, kAttnQ},       {"attn_k.weight", &L.wk, kAttnK},
                         {"attn_v.weight", &L.wv, kAttnV},       {"attn_output.weight", &L.wo, kAttnOut},
                         {"ffn_gate.weight", &L.w_gate, kFfnGate}, {"ffn_up.weight", &L.w_up, kFfnUp},
                         {"ffn_down.weight", &L.w_down, kFfnDown}};
    for (const Named& n : all)
      if (w == n.name) {
        if (n.linear >= 0) *deltas = &L.lora[size_t(n.linear)];
        return n.view;
      }
    return nullptr;
  }
  static TensorView* projector_slot(Projector& p, const std::string& name) {
    if (name == "mm.0.weight") return &p.w0;
    if (name == "mm.0.bias") return &p.b0;
    if (name == "mm.2.weight") return &p.w2;
    if (name == "mm.2.bias") return &p.b2;
    return nullptr;
  }

  // Every tensor of `a` against the base's (the adapter readers checked the
  // config's shapes; this checks the loaded model's actual tensors).
  void check(const LoraAdapter& a) {
    LlamaModel probe = base_;
    Projector base_projector = base_projector_;
    for (const LoraWeight& w : a.weights) {
      std::vector<LowRankDelta>* d = nullptr;
      const TensorView* v = slot(probe, w.target, &d);
      if (!v || !d) fail(a.source, ": LoRA weight for '", w.target, "', which the base model does not have");
      if (w.a.shape.size() != 2 || w.b.shape.size() != 2 || w.a.shape[1] != v->cols() || w.b.shape[0] != v->rows() ||
          w.b.shape[1] != w.a.shape[0])
        fail(a.source, ": LoRA for '", w.target, "' (A ", w.a.view().shape_str(), ", B ", w.b.view().shape_str(),
             ") does not fit the base model's ", v->shape_str(), " (adapter for a different base model?)");
    }
    for (const auto& [name, t] : a.replaces) {
      if (lora_detail::is_projector_name(name)) {
        if (!projector_) {
          notes.push_back(a.name + ": no vision model is loaded, so its replacement projector is not used");
          continue;
        }
        const TensorView* v = projector_slot(base_projector, name);
        if (!v) fail(a.source, ": replacement tensor '", name, "' is not part of the mlp2x_gelu projector");
        if (t.shape != lora_detail::shape_of(*v))
          fail(a.source, ": replacement projector tensor '", name, "' has shape ", t.view().shape_str(),
               " but the loaded projector's is ", v->shape_str(), " (adapter for a different model?)");
        continue;
      }
      std::vector<LowRankDelta>* d = nullptr;
      const TensorView* v = slot(probe, name, &d);
      if (!v) fail(a.source, ": replacement tensor '", name, "' is not a tensor of the base model");
      if (t.shape != lora_detail::shape_of(*v))
        fail(a.source, ": replacement tensor '", name, "' has shape ", t.view().shape_str(), " but the base model's is ",
             v->shape_str(), " (adapter for a different base model?)");
    }
  }

  // Base + every adapter with a non-zero scale; commits only when all went well.
  void apply(std::vector<Entry> next) {
    LlamaModel m = base_;
    Projector p = base_projector_;
    std::map<std::string, std::string> replaced_by;
    for (const Entry& e : next) {
      if (e.scale == 0.0f) continue;
      const LoraAdapter& a = *e.adapter;
      for (const auto& [name, t] : a.replaces) {
        const bool proj = lora_detail::is_projector_name(name);
        if (proj && !projector_) continue;
        auto [it, fresh] = replaced_by.emplace(name, a.name);
        if (!fresh) fail("adapters '", it->second, "' and '", a.name, "' both replace '", name, "': activate one of them");
        std::vector<LowRankDelta>* d = nullptr;
        *(proj ? projector_slot(p, name) : slot(m, name, &d)) = t.view();
      }
      for (const LoraWeight& w : a.weights) {
        std::vector<LowRankDelta>* d = nullptr;
        slot(m, w.target, &d);
        d->push_back({w.a.view(), w.b.view(), e.scale * w.scaling});
      }
    }
    m.adapter_revision = model_.adapter_revision + 1;
    model_ = std::move(m);
    if (projector_) *projector_ = p;
    entries_ = std::move(next);
  }

  LlamaModel& model_;
  Projector* projector_;
  const LlamaModel base_;
  const Projector base_projector_;
  std::vector<Entry> entries_;
};

}  // namespace loupe
