// The LLaVA / ShareGPT4V pipeline: image + prompt in, streamed text out.
//
//   image ─ preprocess ─ CLIP ─ projector ─┐
//   prompt ─ chat template ─ tokens ───────┴─ embeddings ─ LLaMA ─ sampler ─ text
//
// The prompt is tokenised as LLaVA's tokenizer_image_token does: the text
// around "<image>" is tokenised chunk by chunk, only the first BOS is kept, and
// the image's features take the place of the IMAGE_TOKEN_INDEX (−200) marker.
// A VisionChat keeps the image features and the KV cache across turns: each
// turn re-renders the whole conversation, reuses the cached prefix, and only
// prefills what is new.
#pragma once
#include <string>
#include <vector>

#include "../text/chat.hpp"
#include "../models/clip.hpp"
#include "generate.hpp"
#include "../vision/image.hpp"
#include "../vision/preprocess.hpp"
#include "../models/projector.hpp"

namespace loupe {

constexpr int32_t kImageTokenIndex = -200;  // LLaVA's IMAGE_TOKEN_INDEX

// The vision half of an mmproj file.
struct VisionModel {
  GgufFile file;
  ClipModel clip;
  Projector projector;

  static VisionModel open(const std::string& path) { return from_file(GgufFile::open(path)); }
  // From a parsed file (e.g. bytes already in memory).
  static VisionModel from_file(GgufFile file) {
    VisionModel v;
    v.file = std::move(file);
    v.clip = ClipModel::from_gguf(v.file);
    v.projector = Projector::from_gguf(v.file);
    if (v.projector.in_dim != v.clip.cfg.dim)
      fail(v.file.name(), ": projector input width ", v.projector.in_dim, " does not match the vision tower's ", v.clip.cfg.dim);
    return v;
  }

  PreprocessConfig preprocess_config() const {
    PreprocessConfig p;
    p.pad_to_square = clip.cfg.aspect_ratio == "pad";
    p.shortest_edge = p.crop_height = p.crop_width = int(clip.cfg.image_size);
    for (size_t i = 0; i < 3; ++i) p.mean[i] = clip.cfg.mean[i], p.std[i] = clip.cfg.std[i];
    return p;
  }
};

// Text with LLaMA's "</s>" written out (multi-turn vicuna prompts) -> ids:
// HF's tokenizer splits on the special token and encodes the pieces around it.
inline std::vector<int32_t> tokenize_with_eos(const Tokenizer& tok, std::string_view text, bool add_bos) {
  std::vector<int32_t> ids;
  if (add_bos) ids.push_back(tok.bos());
  const std::string eos = tok.eos() >= 0 ? tok.piece(tok.eos()) : std::string();
  for (;;) {
    const size_t p = eos.empty() ? std::string_view::npos : text.find(eos);
    const std::string_view part = text.substr(0, p);
    if (!part.empty()) {
      std::vector<int32_t> t = tok.encode(part, false);
      ids.insert(ids.end(), t.begin(), t.end());
    }
    if (p == std::string_view::npos) break;
    ids.push_back(tok.eos());
    text.remove_prefix(p + eos.size());
  }
  return ids;
}

// LLaVA's tokenizer_image_token: ids with kImageTokenIndex where "<image>" was.
inline std::vector<int32_t> tokenize_image_prompt(const Tokenizer& tok, std::string_view prompt) {
  std::vector<int32_t> ids;
  bool first = true;
  for (;;) {
    const size_t p = prompt.find(kImageToken);
    // Every chunk is tokenised with BOS, then all but the first chunk's BOS dropped.
    std::vector<int32_t> chunk = tokenize_with_eos(tok, prompt.substr(0, p), true);
    ids.insert(ids.end(), chunk.begin() + (first ? 0 : 1), chunk.end());
    first = false;
    if (p == std::string_view::npos) break;
    ids.push_back(kImageTokenIndex);
    prompt.remove_prefix(p + kImageToken.size());
  }
  return ids;
}

struct DescribeOptions {
  std::string conv = "vicuna_v1";  // chat template name
  GenerateOptions gen;
  int64_t n_ctx = 0;               // 0: model's context, at most 4096
  DType kv_type = DType::F32;
};

// One image, one conversation.
class VisionChat {
 public:
  VisionChat(const LanguageModel& lm, const VisionModel& vm, DescribeOptions opt, ThreadPool* pool = nullptr)
      : lm_(lm), vm_(vm), opt_(std::move(opt)), conv_(opt_.conv), pool_(pool) {
    if (vm.projector.out_dim != lm.model.cfg.dim)
      fail(vm.file.name(), ": the projector outputs width ", vm.projector.out_dim, " but the language model's width is ",
           lm.model.cfg.dim, " (mmproj from a different model?)");
    const int64_t ctx = opt_.n_ctx > 0 ? opt_.n_ctx : std::min<int64_t>(lm.model.cfg.n_ctx, 4096);
    kv_ = KVCache(lm.model.cfg, ctx, opt_.kv_type);
    if (opt_.gen.stop.empty()) opt_.gen.stop.push_back(conv_.stop());
    revision_ = lm.model.adapter_revision;
  }

  // Preprocess and encode an image and start a new conversation about it; its
  // features are reused for every turn.
  void set_image(const Image& img) { set_pixels(preprocess(img, vm_.preprocess_config())); }

  // Already preprocessed pixel values [3, S, S].
  void set_pixels(Tensor pixels) {
    const int64_t S = vm_.clip.cfg.image_size;
    if (pixels.shape != std::vector<int64_t>{3, S, S})
      fail("pixel values have shape ", pixels.view().shape_str(), ", the vision tower expects [3, ", S, ", ", S, "]");
    auto t0 = std::chrono::steady_clock::now();
    pixel_values = std::move(pixels);
    clip_features_ = clip_encode(vm_.clip, pixel_values.f32(), pool_);
    image_features = vm_.projector(clip_features_, pool_);
    revision_ = lm_.model.adapter_revision;
    encode_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    cached_.clear();
    kv_.n_past = 0;
    conv_.messages.clear();
  }

  // One user turn (the first carries the image); streams the reply.
  Generation ask(const std::string& prompt, const TokenCallback& on_text = nullptr) {
    if (image_features.empty()) fail("VisionChat: no image set");
    // Adapters switched since the image was projected or the cache was filled
    // (lora.hpp): the projector may be another one and every cached key is stale.
    if (lm_.model.adapter_revision != revision_) {
      if (clip_features_.empty()) fail("VisionChat: the adapters changed after image_features were set; set the image again");
      image_features = vm_.projector(clip_features_, pool_);
      cached_.clear();
      revision_ = lm_.model.adapter_revision;
    }
    const bool first_turn = conv_.messages.empty();
    const size_t tags = count_tags(prompt);
    if (tags > (first_turn ? 1u : 0u))
      fail("the prompt contains ", tags, " <image> tags but one image was given", first_turn ? "" : " (and it is already in the conversation)");
    conv_.add_user(first_turn && tags == 0 ? with_image(prompt) : prompt);
    conv_.add_assistant();
    prompt_ids = tokenize_image_prompt(lm_.tokenizer, conv_.prompt());

    // Positions: each id is one position, the image marker is n_patches positions.
    std::vector<int32_t> positions;  // token id per position, kImageTokenIndex for image positions
    const int64_t n_img = int64_t(image_features.size()) / lm_.model.cfg.dim;
    for (int32_t id : prompt_ids)
      if (id == kImageTokenIndex) positions.insert(positions.end(), size_t(n_img), kImageTokenIndex);
      else positions.push_back(id);
    if (int64_t(positions.size()) >= kv_.n_ctx)
      fail("the prompt needs ", positions.size(), " positions (", n_img, " for the image) but the context holds ", kv_.n_ctx);
    // Reuse the cached prefix, prefill the rest.
    size_t keep = 0;
    while (keep < cached_.size() && keep < positions.size() && cached_[keep] == positions[keep]) ++keep;
    if (keep == positions.size()) --keep;  // always prefill at least one position for fresh logits
    kv_.n_past = int64_t(keep);
    const int64_t dim = lm_.model.cfg.dim;
    std::vector<float> x((positions.size() - keep) * size_t(dim));
    for (size_t p = keep, img = 0; p < positions.size(); ++p) {
      float* dst = x.data() + (p - keep) * size_t(dim);
      if (positions[p] == kImageTokenIndex) {
        img = p - first_image_position(positions);
        std::copy_n(image_features.data() + img * size_t(dim), dim, dst);
      } else {
        embed(lm_.model, &positions[p], 1, dst);
      }
    }
    std::vector<int32_t> history;
    for (int32_t id : prompt_ids)
      if (id != kImageTokenIndex) history.push_back(id);
    Generation g = generate_from_embeddings(lm_.model, lm_.tokenizer, kv_, x, history, opt_.gen, on_text, pool_);
    cached_ = positions;
    cached_.insert(cached_.end(), g.tokens.begin(), g.tokens.end());
    cached_.resize(size_t(kv_.n_past));  // the last sampled token was not run through the model
    conv_.set_reply(g.text);
    return g;
  }

  const Conversation& conversation() const { return conv_; }

  // Intermediate results, for --dump and tests.
  Tensor pixel_values;
  std::vector<float> image_features;  // [n_patches, llm dim], after the projector
  std::vector<int32_t> prompt_ids;    // with kImageTokenIndex
  double encode_ms = 0;

 private:
  static size_t count_tags(const std::string& s) {
    size_t n = 0;
    for (size_t p = s.find(kImageToken); p != std::string::npos; p = s.find(kImageToken, p + 1)) ++n;
    return n;
  }
  static size_t first_image_position(const std::vector<int32_t>& pos) {
    for (size_t i = 0; i < pos.size(); ++i)
      if (pos[i] == kImageTokenIndex) return i;
    return 0;
  }

  const LanguageModel& lm_;
  const VisionModel& vm_;
  DescribeOptions opt_;
  Conversation conv_;
  ThreadPool* pool_;
  KVCache kv_;
  std::vector<int32_t> cached_;  // what the KV cache holds, per position
  std::vector<float> clip_features_;  // the image before the projector (kept for adapter switches)
  uint64_t revision_ = 0;             // lm_.model.adapter_revision that image_features and the cache belong to
};

// One-shot: describe(image, prompt) with streaming.
inline Generation describe(const LanguageModel& lm, const VisionModel& vm, const Image& img, const std::string& prompt,
                           const DescribeOptions& opt, const TokenCallback& on_text = nullptr, ThreadPool* pool = nullptr) {
  VisionChat chat(lm, vm, opt, pool);
  chat.set_image(img);
  return chat.ask(prompt, on_text);
}

}  // namespace loupe
