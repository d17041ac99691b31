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
#include <algorithm>
#include <array>
#include <chrono>
#include <string>
#include <vector>

#include "../text/chat.hpp"
#include "../models/clip.hpp"
#include "generate.hpp"
#include "session.hpp"
#include "../vision/image.hpp"
#include "../vision/preprocess.hpp"
#include "../models/projector.hpp"

namespace loupe {

// The vision half of an mmproj file.
struct VisionModel {
  GgufFile file;
  ClipModel clip;
  Projector projector;

  static VisionModel open(const std::string& path) { return from_file(GgufFile::open(path)); }
  // From a parsed file (e.g. bytes already in memory).
  static VisionModel from_file(GgufFile file);

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
std::vector<int32_t> tokenize_with_eos(const Tokenizer& tok, std::string_view text, bool add_bos);

// LLaVA's tokenizer_image_token: ids with kImageTokenIndex where "<image>" was.
std::vector<int32_t> tokenize_image_prompt(const Tokenizer& tok, std::string_view prompt);

struct DescribeOptions {
  std::string conv;  // chat template name; empty: the model's (default_chat_template)
  GenerateOptions gen;
  SessionOptions session;          // context, KV cache type (F16 by default), pass size
  Precision clip_precision = Precision::F32;  // Bf16: faster on CPUs with AVX512-BF16 (ops.hpp), F32 exact
};

// One image, one conversation, on a session of its own: the image's CLIP
// features are kept across turns (and across conversations about the same
// image), the KV cache keeps the conversation so far, and each turn prefills
// only what is new.
class VisionChat {
 public:
  VisionChat(const LanguageModel& lm, const VisionModel& vm, DescribeOptions opt = {}, ThreadPool* pool = nullptr);

  // The session the conversation runs on: its adapters (add_lora, set_lora_scale) and the token-level API.
  Session& session() { return session_; }
  // Generation options for the next turns (the template changes with the next image).
  DescribeOptions& options() { return opt_; }

  // Preprocess and encode an image and start a new conversation about it. The
  // same image again (equal pixels) keeps its encoding: only the conversation restarts.
  void set_image(const Image& img, const std::string& name = "image");  // name: for error messages (the file)

  // Already preprocessed pixel values [3, S, S].
  void set_pixels(Tensor pixels);

  // One user turn (the first carries the image); streams the reply.
  Generation ask(const std::string& prompt, const TokenCallback& on_text = nullptr);

  // ask() in two halves, for running many chats in one batch (Generator):
  // begin_turn() adds the user's turn, keeps what the session holds of the
  // conversation and returns what must still be fed (ids, and embeddings for
  // those positions) with the generation options; end_turn() records the reply.
  struct Turn {
    std::vector<int32_t> ids;
    std::vector<float> x;
    GenerateOptions gen;
  };
  Turn begin_turn(const std::string& prompt);
  void end_turn(const Generation& g) { conv_.set_reply(g.text); }

  const Conversation& conversation() const { return conv_; }

  // Intermediate results, for --dump and tests.
  Tensor pixel_values;
  std::vector<float> image_features;  // [n_patches, llm dim], after the projector
  std::vector<int32_t> prompt_ids;    // with kImageTokenIndex
  double encode_ms = 0;      // the last set_image's CLIP time (0: the encoding was reused)
  double project_ms = 0;     // projector time since the last set_image (0: the projected features were reused)
  bool image_cached = false;  // the last set_image reused the encoding

 private:
  static size_t count_tags(const std::string& s) {
    size_t n = 0;
    for (size_t p = s.find(kImageToken); p != std::string::npos; p = s.find(kImageToken, p + 1)) ++n;
    return n;
  }
  // options().conv, or the model's template when it is empty (it may be changed between conversations).
  std::string conv_name() const { return opt_.conv.empty() ? default_chat_template(lm_) : opt_.conv; }
  void new_conversation() {
    conv_ = Conversation(conv_name());
    session_.clear();
  }
  // The CLIP features through the projector the session uses now (an adapter may bring its own).
  void project();

  const LanguageModel& lm_;
  const VisionModel& vm_;
  DescribeOptions opt_;
  ThreadPool* pool_;
  Session session_;
  Conversation conv_;
  std::vector<float> clip_features_;        // the image before the projector
  std::array<const void*, 4> projected_with_{};  // the projector weights image_features came from
  uint64_t image_key_ = 0;
};

// One-shot: describe(image, prompt) with streaming.
Generation describe(const LanguageModel& lm, const VisionModel& vm, const Image& img, const std::string& prompt,
                    const DescribeOptions& opt, const TokenCallback& on_text = nullptr, ThreadPool* pool = nullptr);

}  // namespace loupe

#ifdef LOUPE_IMPLEMENTATION
namespace loupe {

VisionModel VisionModel::from_file(GgufFile file) {
  VisionModel v;
  v.file = std::move(file);
  v.clip = ClipModel::from_gguf(v.file);
  v.projector = Projector::from_gguf(v.file);
  if (v.projector.in_dim != v.clip.cfg.dim)
    fail(v.file.name(), ": projector input width ", v.projector.in_dim, " does not match the vision tower's ", v.clip.cfg.dim);
  return v;
}

VisionChat::VisionChat(const LanguageModel& lm, const VisionModel& vm, DescribeOptions opt, ThreadPool* pool)
    : lm_(lm), vm_(vm), opt_(std::move(opt)), pool_(pool), session_(lm, opt_.session, &vm.projector),
      conv_(conv_name()) {
  if (vm.projector.out_dim != lm.model.cfg.dim)
    fail(vm.file.name(), ": the projector outputs width ", vm.projector.out_dim, " but the language model's width is ",
         lm.model.cfg.dim, " (mmproj from a different model?)");
}

void VisionChat::set_image(const Image& img, const std::string& name) {
  const uint64_t key = image_hash(img);
  if (key == image_key_ && !clip_features_.empty()) {
    image_cached = true, encode_ms = project_ms = 0;
    project();
    new_conversation();
    return;
  }
  set_pixels(preprocess(img, vm_.preprocess_config(), name));
  image_key_ = key;
}

void VisionChat::set_pixels(Tensor pixels) {
  const int64_t S = vm_.clip.cfg.image_size;
  if (pixels.shape != std::vector<int64_t>{3, S, S})
    fail("pixel values have shape ", pixels.view().shape_str(), ", the vision tower expects [3, ", S, ", ", S, "]");
  auto t0 = std::chrono::steady_clock::now();
  pixel_values = std::move(pixels);
  clip_features_ = clip_encode(vm_.clip, pixel_values.f32(), pool_, nullptr, session_.options().backend, opt_.clip_precision);
  projected_with_ = {};
  image_key_ = 0;
  image_cached = false;
  encode_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  project_ms = 0;
  project();
  new_conversation();
}

Generation VisionChat::ask(const std::string& prompt, const TokenCallback& on_text) {
  Turn t = begin_turn(prompt);
  Generation g = generate(session_, std::move(t.ids), std::move(t.x), t.gen, on_text, pool_);
  end_turn(g);
  return g;
}

VisionChat::Turn VisionChat::begin_turn(const std::string& prompt) {
  if (clip_features_.empty()) fail("VisionChat: no image set");
  project();
  const bool first_turn = conv_.messages.empty();
  const size_t tags = count_tags(prompt);
  if (tags > (first_turn ? 1u : 0u))
    fail("the prompt contains ", tags, " <image> tags but one image was given", first_turn ? "" : " (and it is already in the conversation)");
  const size_t before = conv_.messages.size();
  conv_.add_user(first_turn && tags == 0 ? with_image(prompt) : prompt);
  conv_.add_assistant();
  prompt_ids = tokenize_image_prompt(lm_.tokenizer, conv_.prompt());

  // Positions: each id is one position, the image marker is n_patches positions.
  Turn t;
  std::vector<int32_t>& positions = t.ids;
  const int64_t dim = lm_.model.cfg.dim, n_img = int64_t(image_features.size()) / dim;
  for (int32_t id : prompt_ids)
    if (id == kImageTokenIndex) positions.insert(positions.end(), size_t(n_img), kImageTokenIndex);
    else positions.push_back(id);
  if (int64_t(positions.size()) >= session_.n_ctx()) {
    conv_.messages.resize(before);  // the turn is not taken: the conversation stays as it was
    fail("the prompt needs ", positions.size(), " positions (", n_img, " for the image) but the context holds ", session_.n_ctx());
  }
  // Reuse what the session holds of this conversation, prefill the rest (at
  // least one position, for fresh logits).
  const std::vector<int32_t>& held = session_.positions();
  size_t keep = 0;
  while (keep < held.size() && keep < positions.size() && held[keep] == positions[keep]) ++keep;
  if (keep == positions.size()) --keep;
  session_.truncate(int64_t(keep));
  t.x.resize((positions.size() - keep) * size_t(dim));
  const size_t first_image = size_t(std::find(positions.begin(), positions.end(), kImageTokenIndex) - positions.begin());
  for (size_t p = keep; p < positions.size(); ++p) {
    float* dst = t.x.data() + (p - keep) * size_t(dim);
    if (positions[p] == kImageTokenIndex) std::copy_n(image_features.data() + (p - first_image) * size_t(dim), dim, dst);
    else embed(lm_.model.cfg, session_.embeddings(), &positions[p], 1, dst);
  }
  positions.erase(positions.begin(), positions.begin() + std::ptrdiff_t(keep));
  t.gen = opt_.gen;
  if (t.gen.stop.empty() && !conv_.stop().empty()) t.gen.stop.push_back(conv_.stop());
  return t;
}

void VisionChat::project() {
  const Projector& p = *session_.projector();
  const std::array<const void*, 4> id{p.w0.data, p.b0.data, p.w2.data, p.b2.data};
  if (id == projected_with_) return;
  auto t0 = std::chrono::steady_clock::now();
  image_features = p(clip_features_, pool_, session_.options().backend);
  projected_with_ = id;
  project_ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

std::vector<int32_t> tokenize_with_eos(const Tokenizer& tok, std::string_view text, bool add_bos) {
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

std::vector<int32_t> tokenize_image_prompt(const Tokenizer& tok, std::string_view prompt) {
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

Generation describe(const LanguageModel& lm, const VisionModel& vm, const Image& img, const std::string& prompt,
                    const DescribeOptions& opt, const TokenCallback& on_text, ThreadPool* pool) {
  VisionChat chat(lm, vm, opt, pool);
  chat.set_image(img);
  return chat.ask(prompt, on_text);
}

}  // namespace loupe
#endif  // LOUPE_IMPLEMENTATION
