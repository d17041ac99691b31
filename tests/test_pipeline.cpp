// The LLaVA / ShareGPT4V pipeline against reference/vlm_fixture.py: tiny
// random checkpoints in the published layouts (separate ShareGPT4V tower dir,
// LLaVA-1.5 tower inside, safetensors), converted by loupe-convert's library
// and compared with the PyTorch reference: pixel values, CLIP hidden states,
// projected features, prompt ids with the image marker, first-token logits.
#include "test_util.hpp"

#include <loupe/convert/convert.hpp>
#include <loupe/io/npy.hpp>
#include <loupe/ops/kernels.hpp>
#include <loupe/pipeline/pipeline.hpp>

using namespace loupe;
using loupe_test::rel_err;
namespace fs = std::filesystem;

namespace {

struct Fixture {
  fs::path dir;
  std::string text, mmproj;
};

Fixture make(const std::string& layout, const std::string& extra, DType t = DType::F32, const std::string& tower = "vit") {
  Fixture f;
  f.dir = loupe_test::scratch("pipeline_" + layout + (t == DType::F32 ? "" : std::string("_") + dtype_name(t)));
  loupe_test::run_python("vlm_fixture.py", "--layout " + layout + " --out " + f.dir.string() + " --seed 3 " + extra + " > /dev/null");
  ConvertOptions o;
  o.outtype = t;
  o.name = layout;
  if (!tower.empty()) o.vision_tower = (f.dir / tower).string();
  ConvertResult r = convert_model((f.dir / "llm").string(), (f.dir / "gguf").string(), o);
  f.text = r.text_path;
  f.mmproj = r.mmproj_path;
  return f;
}

std::vector<int32_t> ref_ids(const fs::path& dir) {
  Json j = Json::parse(loupe_test::slurp(dir / "ref/prompt_ids.json"), "prompt_ids.json");
  std::vector<int32_t> v;
  for (const Json& x : j.at("ids").array()) v.push_back(int32_t(x.integer()));
  return v;
}

Tensor npy(const Fixture& f, const char* name) { return read_npy((f.dir / "ref" / name).string()); }

// Runs loupe on the reference's own pixel values (so JPEG decoder differences
// cannot hide a model error) and checks every intermediate.
void check_against_reference(const Fixture& f, double tol) {
  LanguageModel lm = LanguageModel::open(f.text);
  VisionModel vm = VisionModel::open(f.mmproj);
  Tensor px = npy(f, "pixel_values.npy");

  std::vector<std::vector<float>> hidden;
  std::vector<float> feats = clip_encode(vm.clip, px.f32(), nullptr, &hidden);
  Tensor ref_hidden = npy(f, "vision_hidden_states.npy");  // [L+1, N+1, D]
  const size_t per = hidden[0].size();
  for (size_t l = 0; l < hidden.size(); ++l) {
    INFO("hidden state " << l);
    CHECK(rel_err(hidden[l].data(), ref_hidden.f32() + l * per, per) < tol);
  }
  Tensor ref_feat = npy(f, "image_features.npy");
  std::vector<float> proj = vm.projector(feats);
  REQUIRE(int64_t(proj.size()) == ref_feat.numel());
  CHECK(rel_err(proj.data(), ref_feat.f32(), proj.size()) < tol);

  DescribeOptions opt;
  opt.gen.max_tokens = 1;
  opt.session.kv_type = DType::F32;  // compared at 1e-4 (an F16 cache is ~1e-3 away)
  VisionChat chat(lm, vm, opt);
  chat.set_pixels(std::move(px));
  Generation g = chat.ask("Describe the image in detail.");
  CHECK(chat.prompt_ids == ref_ids(f.dir));
  Tensor ref_logits = npy(f, "logits.npy");
  REQUIRE(int64_t(g.first_logits.size()) == ref_logits.numel());
  const double e = rel_err(g.first_logits.data(), ref_logits.f32(), g.first_logits.size());
  MESSAGE("first-token logits rel. error ", e);
  CHECK(e < tol);
}

}  // namespace

TEST_CASE("pipeline: ShareGPT4V layout (sharded bf16 pickles, separate CLIPVisionModel dir)") {
  LOUPE_REQUIRE_SHARED();
  check_against_reference(make("sharegpt4v", ""), 1e-4);
}

TEST_CASE("pipeline: LLaVA-1.5 layout, tower inside the checkpoint, odd widths") {
  LOUPE_REQUIRE_SHARED();
  // Tower weights come from inside the LLM checkpoint; the vit/ dir only gives the config.
  check_against_reference(make("llava15", "--tower embedded"), 1e-4);
}

TEST_CASE("pipeline: safetensors, full 336/14 geometry (577 positions)") {
  LOUPE_REQUIRE_SHARED();
  check_against_reference(make("sharegpt4v-safetensors", ""), 1e-4);
}

TEST_CASE("pipeline: pixel values from our decoder + preprocessing equal PIL's for a PNG") {
  LOUPE_REQUIRE_SHARED();
  const std::string img = (loupe_test::shared_dir() / "images/skimage_chelsea.png").string();
  Fixture f = make("llava15-safetensors", "--image " + img, DType::F32, "vit");
  LanguageModel lm = LanguageModel::open(f.text);
  VisionModel vm = VisionModel::open(f.mmproj);
  VisionChat chat(lm, vm, DescribeOptions{});
  chat.set_image(load_image(img));
  Tensor ref = npy(f, "pixel_values.npy");
  REQUIRE(chat.pixel_values.numel() == ref.numel());
  double worst = 0;
  for (int64_t i = 0; i < ref.numel(); ++i) worst = std::max(worst, double(std::fabs(chat.pixel_values.f32()[i] - ref.f32()[i])));
  MESSAGE("pixel_values worst abs difference ", worst);
  CHECK(worst <= 1e-5);
  Tensor ref_feat = npy(f, "image_features.npy");
  CHECK(rel_err(chat.image_features.data(), ref_feat.f32(), chat.image_features.size()) < 1e-4);
}

TEST_CASE("pipeline: image_aspect_ratio other than pad skips the padding, as the reference does") {
  LOUPE_REQUIRE_SHARED();
  const std::string img = (loupe_test::shared_dir() / "images/skimage_chelsea.png").string();
  Fixture f = make("llava15-safetensors", "--image " + img + " --config-overrides '{\"image_aspect_ratio\": \"square\"}'");
  VisionModel vm = VisionModel::open(f.mmproj);
  CHECK_FALSE(vm.preprocess_config().pad_to_square);
  LanguageModel lm = LanguageModel::open(f.text);
  VisionChat chat(lm, vm, DescribeOptions{});
  chat.set_image(load_image(img));
  Tensor ref = npy(f, "pixel_values.npy");
  REQUIRE(chat.pixel_values.numel() == ref.numel());
  CHECK(std::memcmp(chat.pixel_values.f32(), ref.f32(), size_t(ref.numel()) * 4) == 0);
}

TEST_CASE("pipeline: multi-turn chat reuses the image and the cached prefix") {
  LOUPE_REQUIRE_SHARED();
  Fixture f = make("sharegpt4v", "");
  LanguageModel lm = LanguageModel::open(f.text);
  VisionModel vm = VisionModel::open(f.mmproj);
  Tensor px = npy(f, "pixel_values.npy");
  DescribeOptions opt;
  opt.gen.max_tokens = 4;
  VisionChat chat(lm, vm, opt);
  chat.set_pixels(px);
  Generation a = chat.ask("Describe the image in detail.");
  Generation b = chat.ask("And the colours?");
  // A fresh chat fed the same two turns in one go must produce the same second answer.
  VisionChat fresh(lm, vm, opt);
  fresh.set_pixels(px);
  fresh.ask("Describe the image in detail.");
  Generation b2 = fresh.ask("And the colours?");
  CHECK(b.tokens == b2.tokens);
  CHECK(chat.conversation().prompt().find("ASSISTANT: " + a.text) != std::string::npos);
  CHECK(b.stats.prompt_tokens < int64_t(chat.prompt_ids.size()));  // only the new turn was prefilled
  // A new image starts a new conversation: the same as a fresh chat's first turn.
  const std::vector<int32_t> first_ids = fresh.prompt_ids;
  VisionChat one(lm, vm, opt);
  one.set_pixels(px);
  Generation a2 = one.ask("Describe the image in detail.");
  chat.set_pixels(px);
  Generation a3 = chat.ask("Describe the image in detail.");
  CHECK(chat.prompt_ids == one.prompt_ids);
  CHECK(a3.tokens == a2.tokens);
  CHECK(a2.tokens == a.tokens);
}

TEST_CASE("pipeline: clear errors") {
  LOUPE_REQUIRE_SHARED();
  Fixture f = make("sharegpt4v", "");
  LanguageModel lm = LanguageModel::open(f.text);
  VisionModel vm = VisionModel::open(f.mmproj);
  VisionChat chat(lm, vm, DescribeOptions{});
  chat.set_pixels(npy(f, "pixel_values.npy"));
  std::string msg;
  try {
    chat.ask("<image>\nCompare with <image>");
  } catch (const Error& e) {
    msg = e.what();
  }
  CHECK(msg == "the prompt contains 2 <image> tags but one image was given");
  // An mmproj from a model of another width.
  Fixture g = make("llava15", "--tower embedded --config-overrides '{\"hidden_size\": 96, \"intermediate_size\": 160}'");
  VisionModel other = VisionModel::open(g.mmproj);
  msg.clear();
  try {
    VisionChat bad(lm, other, DescribeOptions{});
  } catch (const Error& e) {
    msg = e.what();
  }
  CHECK(msg.find("the projector outputs width") != std::string::npos);
  CHECK(msg.find("mmproj from a different model?") != std::string::npos);
}

TEST_CASE("clip: bf16 products keep the image features within 1e-2 of f32 (F16 and F32 towers); F32 where the CPU lacks them") {
  for (DType t : {DType::F16, DType::F32}) {
    INFO(dtype_name(t));
    Fixture f = make("sharegpt4v-safetensors", "", t);
    VisionModel vm = VisionModel::open(f.mmproj);
    Tensor px = npy(f, "pixel_values.npy");
    ThreadPool pool(2);
    const std::vector<float> exact = clip_encode(vm.clip, px.f32(), &pool, nullptr, nullptr, Precision::F32);
    const std::vector<float> fast = clip_encode(vm.clip, px.f32(), &pool, nullptr, nullptr, Precision::Bf16);
    const double err = rel_err(fast, exact.data(), exact.size());
    MESSAGE("features, bf16 products vs f32: rel. error " << err);
    if (kernels().gemm_bf16) CHECK((err > 0 && err < 1e-2));
    else CHECK(err == 0);
  }
}

TEST_CASE("cli: loupe describe runs the full 336/14 geometry on every image in ../shared/images") {
  LOUPE_REQUIRE_SHARED();
  Fixture f = make("sharegpt4v-safetensors", "", DType::Q4_0);
  const std::string loupe = (fs::path(LOUPE_BINARY_DIR) / "bin/loupe").string();
  const std::vector<int32_t> want_ids = ref_ids(f.dir);
  int images = 0;
  for (auto& e : fs::directory_iterator(loupe_test::shared_dir() / "images")) {
    INFO(e.path());
    const fs::path dump = f.dir / ("dump-" + e.path().stem().string());
    const std::string cmd = loupe + " describe -m " + f.text + " --mmproj " + f.mmproj + " --image " + e.path().string() +
                            " -p 'Describe the image in detail.' -n 4 -t 2 --dump " + dump.string() + " > /dev/null 2>&1";
    REQUIRE(std::system(cmd.c_str()) == 0);
    Tensor px = read_npy((dump / "pixel_values.npy").string()), feats = read_npy((dump / "image_features.npy").string());
    CHECK(px.shape == std::vector<int64_t>{3, 336, 336});
    CHECK(feats.shape[0] == 576);
    Json ids = Json::parse(loupe_test::slurp(dump / "prompt_ids.json"), "prompt_ids.json");
    std::vector<int32_t> got;
    for (const Json& x : ids.array()) got.push_back(int32_t(x.integer()));
    CHECK(got == want_ids);
    ++images;
  }
  CHECK(images == 5);
  // Errors: a missing image, an undecodable one.
  const std::string base = loupe + " describe -m " + f.text + " --mmproj " + f.mmproj + " -p hi --image ";
  CHECK(WEXITSTATUS(std::system((base + "/nonexistent.png 2>/dev/null").c_str())) == 1);
  CHECK(WEXITSTATUS(std::system((base + f.text + " 2>/dev/null").c_str())) == 1);
}

TEST_CASE("pipeline: mmproj files with llama.cpp's legacy quirks give the same features") {
  LOUPE_REQUIRE_SHARED();
  // llama.cpp's legacy converter names fc1 "ffn_down" and fc2 "ffn_up", writes
  // block_count = layers − 1 for LLaVA while keeping every layer's tensors, and
  // has no clip.vision.feature_layer key. Rewrite our mmproj that way.
  Fixture f = make("llava15", "--tower embedded");
  GgufFile g = GgufFile::open(f.mmproj);
  VisionModel ours = VisionModel::open(f.mmproj);
  const int64_t run = ours.clip.cfg.n_layers_run;
  GgufWriter w;
  for (auto& [k, v] : g.kv)
    if (k != "clip.vision.feature_layer") w.set(k, v);
  w.set("clip.vision.block_count", GgufValue::u32(uint32_t(run)));
  auto copy = [&](const GgufTensor& t, const std::string& name) {
    Tensor c(t.dtype, t.shape);
    std::memcpy(c.bytes.data(), t.view.data, c.bytes.size());
    w.add_tensor(name, c);
  };
  for (auto& t : g.tensors) {
    std::string n = t.name;
    if (n.find(".ffn_up.") != std::string::npos) n.replace(n.find(".ffn_up."), 8, ".ffn_down.");
    else if (n.find(".ffn_down.") != std::string::npos) n.replace(n.find(".ffn_down."), 10, ".ffn_up.");
    copy(t, n);
  }
  // The unused last block is still in the file (a copy of block 0 stands in for it).
  for (auto& t : g.tensors)
    if (t.name.rfind("v.blk.0.", 0) == 0) copy(t, "v.blk." + std::to_string(run) + t.name.substr(7));
  const std::string legacy = (f.dir / "mmproj-legacy.gguf").string();
  w.write_file(legacy);
  VisionModel old = VisionModel::open(legacy);
  CHECK(old.clip.cfg.n_layers_run == run);
  Tensor px = npy(f, "pixel_values.npy");
  std::vector<float> a = clip_encode(ours.clip, px.f32()), b = clip_encode(old.clip, px.f32());
  CHECK(a == b);
}

// transformers' own LLaVA layout (LlavaForConditionalGeneration, as llava-hf
// publishes it): nested text_config / vision_config with transformers' defaults,
// the tower and projector inside the checkpoint, both generations of tensor
// names, both feature-selection strategies, <image> and <pad> added to the
// vocabulary, and the "USER: <image>\n... ASSISTANT:" prompt.
TEST_CASE("pipeline: transformers' LLaVA layout, both tensor namings and both feature strategies, equal the reference") {
  LOUPE_REQUIRE_SHARED();
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"llava-hf", "default"}, {"llava-hf", "full"}, {"llava-hf-new", "default"}, {"llava-hf-new", "full"}};
  for (const auto& c : cases) {
    const std::string layout = c.first, strategy = c.second;
    INFO(layout << ", vision_feature_select_strategy " << strategy);
    const Fixture f = make(layout, "--feature-strategy " + strategy, DType::F32, "");
    const LanguageModel lm = LanguageModel::open(f.text);
    const VisionModel vm = VisionModel::open(f.mmproj);
    CHECK(default_chat_template(lm) == "llava_hf");
    CHECK(vm.clip.cfg.keep_cls == (strategy == "full"));
    CHECK(vm.clip.cfg.n_features() == vm.clip.cfg.n_patches() + (strategy == "full" ? 1 : 0));
    CHECK(lm.tokenizer.pieces().at(32000) == "<image>");
    CHECK(lm.tokenizer.pieces().at(32001) == "<pad>");
    CHECK(lm.file.get_int("tokenizer.ggml.padding_token_id") == 32001);
    const Json ids = Json::parse(loupe_test::slurp(f.dir / "ref/prompt_ids.json"), "prompt_ids.json");
    CHECK(ids.at("prompt").str().rfind("USER: <image>\n", 0) == 0);
    check_against_reference(f, 1e-4);
    // The template may be left empty, also between conversations (the browser engine does).
    DescribeOptions opt;
    opt.gen.max_tokens = 1;
    VisionChat chat(lm, vm, opt);
    chat.options().conv = "";
    chat.set_pixels(npy(f, "pixel_values.npy"));
    chat.ask("Describe the image in detail.");
    CHECK(chat.conversation().prompt().rfind("USER: <image>\n", 0) == 0);
  }
}

TEST_CASE("pipeline: transformers' LLaVA with do_pad pads as the reference does") {
  LOUPE_REQUIRE_SHARED();
  const std::string img = (loupe_test::shared_dir() / "images/skimage_chelsea.png").string();
  const Fixture f = make("llava-hf", "--image " + img + " --config-overrides '{\"preprocessor\": {\"do_pad\": true}}'",
                         DType::F32, "");
  const VisionModel vm = VisionModel::open(f.mmproj);
  CHECK(vm.preprocess_config().pad_to_square);
  const LanguageModel lm = LanguageModel::open(f.text);
  VisionChat chat(lm, vm, DescribeOptions{});
  chat.set_image(load_image(img));
  const Tensor ref = npy(f, "pixel_values.npy");
  REQUIRE(chat.pixel_values.numel() == ref.numel());
  double worst = 0;
  for (int64_t i = 0; i < ref.numel(); ++i) worst = std::max(worst, double(std::fabs(chat.pixel_values.f32()[i] - ref.f32()[i])));
  MESSAGE("pixel_values worst abs difference ", worst);
  CHECK(worst <= 1e-5);
}

TEST_CASE("convert: the same weights in transformers' and LLaVA's own layout give the same GGUF tensors") {
  LOUPE_REQUIRE_SHARED();
  const fs::path dir = loupe_test::scratch("pipeline_llava_hf_same"), orig = dir / "original";
  loupe_test::run_python("vlm_fixture.py", "--layout llava-hf --out " + dir.string() + " --seed 3 --also-original " +
                                               orig.string() + " --original-vocab padded > /dev/null");
  ConvertOptions o;
  o.outtype = DType::F32;
  const ConvertResult hf = convert_model((dir / "llm").string(), (dir / "gguf-hf").string(), o);
  o.vision_tower = (orig / "vit").string();
  const ConvertResult ll = convert_model((orig / "llm").string(), (dir / "gguf-llava").string(), o);
  loupe_test::check_same_tensors(hf.text_path, ll.text_path);
  loupe_test::check_same_tensors(hf.mmproj_path, ll.mmproj_path);
}
