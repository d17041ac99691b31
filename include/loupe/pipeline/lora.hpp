// The LoRA adapters one session runs with, unmerged: every adapted weight
// computes W·x + Σᵢ sᵢ·scalingᵢ·Bᵢ·(Aᵢ·x) (llama.hpp's LowRankDelta) on top of
// any base dtype, Q4_0 included (QLoRA inference), with each adapter's own
// scale sᵢ (llama.cpp's LoRA scale; PEFT's scale_layer(s): scaling *= s).
//
// A LoraSet belongs to a session (llama.cpp's llama_set_adapter_lora on a
// context), never to the model: the loaded model is shared read-only, so two
// sessions with different adapters run on it at the same time. The set builds
// the AdaptedWeights its session computes with — the model's views with the
// tensors an adapter replaces outright (the LLaVA projector from
// non_lora_trainables.bin, PEFT's modules_to_save) swapped in, plus the
// low-rank updates — and the projector its images go through. Scale 0
// switches an adapter off (replacements included) and keeps it loaded; with
// nothing active the session computes exactly what the base model does.
// Adapters are shared between sets (std::shared_ptr): load once, attach to
// as many sessions as needed.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "../models/llama.hpp"
#include "../models/lora_adapter.hpp"
#include "../models/projector.hpp"

namespace loupe {

class LoraSet {
 public:
  LoraSet() = default;
  // `projector`: the vision model's, when adapters may replace it (nullptr: a text-only model).
  explicit LoraSet(const LlamaModel& model, const Projector* projector = nullptr) : model_(&model), base_projector_(projector) {}

  struct Entry {
    std::shared_ptr<const LoraAdapter> adapter;
    float scale = 1.0f;
  };

  // Adds an adapter (its name must be new) at `scale`, after checking every
  // tensor against the model's.
  void add(std::shared_ptr<const LoraAdapter> adapter, float scale = 1.0f);
  const LoraAdapter& add(LoraAdapter adapter, float scale = 1.0f);
  void set_scale(const std::string& name, float scale);
  void remove(const std::string& name);
  void clear() { apply({}); }

  const std::vector<Entry>& entries() const { return entries_; }
  bool built_for(const LlamaModel& m, const Projector* projector) const { return model_ == &m && base_projector_ == projector; }
  const Projector* base_projector() const { return base_projector_; }
  const Entry* find(const std::string& name) const {
    for (const Entry& e : entries_)
      if (e.adapter->name == name) return &e;
    return nullptr;
  }
  // What the session computes with: null when no adapter is active (the model's own weights).
  const AdaptedWeights* adapted() const { return active_ ? &adapted_ : nullptr; }
  // The projector images go through: an active adapter's replacement, or the base's (null for a text model).
  const Projector* projector() const { return projector_replaced_ ? &projector_ : base_projector_; }
  // Messages for the user about what was added (e.g. a projector with no vision model to replace).
  std::vector<std::string> notes;

 private:
  static Entry& get(std::vector<Entry>& es, const std::string& name);

  // The registry entries of the model, by llama.cpp name.
  std::map<std::string, LlamaTensor> tensors() const;
  static TensorView* projector_slot(Projector& p, const std::string& name);

  // Every tensor of `a` against the model's (the adapter readers checked the
  // config's shapes; this checks the loaded model's actual tensors).
  void check(const LoraAdapter& a);

  // Base + every adapter with a non-zero scale; commits only when all went well.
  void apply(std::vector<Entry> next);

  const LlamaModel* model_ = nullptr;
  const Projector* base_projector_ = nullptr;
  std::vector<Entry> entries_;
  AdaptedWeights adapted_;
  Projector projector_;
  bool active_ = false, projector_replaced_ = false;
};

}  // namespace loupe

#ifdef LOUPE_IMPLEMENTATION
namespace loupe {

void LoraSet::add(std::shared_ptr<const LoraAdapter> adapter, float scale) {
  if (!model_) fail("LoraSet: no model");
  if (find(adapter->name)) fail("an adapter named '", adapter->name, "' is already loaded");
  check(*adapter);
  std::vector<Entry> next = entries_;
  next.push_back({std::move(adapter), scale});
  apply(std::move(next));
}

const LoraAdapter& LoraSet::add(LoraAdapter adapter, float scale) {
  add(std::make_shared<const LoraAdapter>(std::move(adapter)), scale);
  return *entries_.back().adapter;
}

void LoraSet::set_scale(const std::string& name, float scale) {
  std::vector<Entry> next = entries_;
  get(next, name).scale = scale;
  apply(std::move(next));
}

void LoraSet::remove(const std::string& name) {
  std::vector<Entry> next = entries_;
  next.erase(next.begin() + (&get(next, name) - next.data()));
  apply(std::move(next));
}

LoraSet::Entry& LoraSet::get(std::vector<Entry>& es, const std::string& name) {
  for (Entry& e : es)
    if (e.adapter->name == name) return e;
  std::string have;
  for (const Entry& e : es) have += (have.empty() ? "" : ", ") + e.adapter->name;
  fail("no adapter named '", name, "' is loaded", have.empty() ? "" : " (loaded: " + have + ")");
}

std::map<std::string, LlamaTensor> LoraSet::tensors() const {
  std::map<std::string, LlamaTensor> m;
  for (LlamaTensor& t : llama_tensors(model_->cfg)) m.emplace(t.gguf, std::move(t));
  return m;
}

TensorView* LoraSet::projector_slot(Projector& p, const std::string& name) {
  for (const ClipTensor& t : projector_tensors(0, 0))
    if (t.gguf == name) return &p.at(t.field);
  return nullptr;
}

void LoraSet::check(const LoraAdapter& a) {
  LlamaWeights probe = model_->weights;
  const std::map<std::string, LlamaTensor> named = tensors();
  for (const LoraWeight& w : a.weights) {
    auto it = named.find(w.target);
    if (it == named.end() || (it->second.slot != LlamaSlot::Linear && it->second.slot != LlamaSlot::Output))
      fail(a.source, ": LoRA weight for '", w.target, "', which the base model does not have");
    const TensorView& v = probe.at(it->second);
    if (w.a.shape.size() != 2 || w.b.shape.size() != 2 || w.a.shape[1] != v.cols() || w.b.shape[0] != v.rows() ||
        w.b.shape[1] != w.a.shape[0])
      fail(a.source, ": LoRA for '", w.target, "' (A ", w.a.view().shape_str(), ", B ", w.b.view().shape_str(),
           ") does not fit the base model's ", v.shape_str(), " (adapter for a different base model?)");
  }
  Projector base_projector = base_projector_ ? *base_projector_ : Projector();
  for (const auto& [name, t] : a.replaces) {
    const TensorView* v = nullptr;
    if (lora_detail::is_projector_name(name)) {
      if (!base_projector_) {
        notes.push_back(a.name + ": no vision model is loaded, so its replacement projector is not used");
        continue;
      }
      v = projector_slot(base_projector, name);
      if (!v) fail(a.source, ": replacement tensor '", name, "' is not part of the mlp2x_gelu projector");
    } else {
      auto it = named.find(name);
      if (it == named.end()) fail(a.source, ": replacement tensor '", name, "' is not a tensor of the base model");
      v = &probe.at(it->second);
    }
    if (t.shape != lora_detail::shape_of(*v))
      fail(a.source, ": replacement tensor '", name, "' has shape ", t.view().shape_str(), " but the base model's is ",
           v->shape_str(), " (adapter for a different model?)");
  }
}

void LoraSet::apply(std::vector<Entry> next) {
  AdaptedWeights w;
  w.weights = model_->weights;
  w.deltas.resize(size_t(model_->cfg.n_layers));
  Projector p = base_projector_ ? *base_projector_ : Projector();
  bool active = false, projector_replaced = false;
  const std::map<std::string, LlamaTensor> named = tensors();
  std::map<std::string, std::string> replaced_by;
  for (const Entry& e : next) {
    if (e.scale == 0.0f) continue;
    const LoraAdapter& a = *e.adapter;
    for (const auto& [name, t] : a.replaces) {
      const bool proj = lora_detail::is_projector_name(name);
      if (proj && !base_projector_) continue;
      auto [it, fresh] = replaced_by.emplace(name, a.name);
      if (!fresh) fail("adapters '", it->second, "' and '", a.name, "' both replace '", name, "': activate one of them");
      if (proj) *projector_slot(p, name) = t.view(), projector_replaced = true;
      else w.weights.at(named.at(name)) = t.view();
      active = true;
    }
    for (const LoraWeight& lw : a.weights) {
      const LlamaTensor& t = named.at(lw.target);
      const LowRankDelta d{lw.a.view(), lw.b.view(), e.scale * lw.scaling};
      if (t.slot == LlamaSlot::Output) w.output_deltas.push_back(d);
      else w.deltas[size_t(t.layer)][size_t(t.linear)].push_back(d);
      active = true;
    }
  }
  adapted_ = std::move(w);
  projector_ = p;
  active_ = active;
  projector_replaced_ = projector_replaced;
  entries_ = std::move(next);
}

}  // namespace loupe
#endif  // LOUPE_IMPLEMENTATION
