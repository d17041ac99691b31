// The committed demo model (demo/: text model, mmproj, Lithuanian adapter and the
// bundled scenes with their reference captions), for tests that run it on
// several paths and compare them.
#pragma once
#include <loupe/pipeline/pipeline.hpp>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "test_util.hpp"

namespace loupe_test {

struct DemoModel {
  loupe::LanguageModel lm;
  loupe::VisionModel vm;
  std::shared_ptr<const loupe::LoraAdapter> lt;
  loupe::Json caps;  // {"scene.png": {"prompt": ..., "en": ..., "lt": ...}, ...}

  static DemoModel load() {
    const std::filesystem::path demo = source_dir() / "demo";
    DemoModel d{loupe::LanguageModel::open((demo / "shapes-q4_0.gguf").string()),
                loupe::VisionModel::open((demo / "mmproj-shapes-q4_0.gguf").string()), nullptr,
                loupe::Json::load((demo / "scenes" / "captions.json").string())};
    d.lt = std::make_shared<const loupe::LoraAdapter>(loupe::LoraAdapter::load((demo / "shapes-lt-lora.gguf").string(), d.lm.model.cfg));
    return d;
  }
  size_t scenes() const { return caps.size(); }
  const std::string& name(size_t i) const { return caps.keys()[i]; }
  loupe::Image image(size_t i) const { return loupe::load_image((source_dir() / "demo" / "scenes" / name(i)).string()); }
  std::string prompt(size_t i) const { return caps.values()[i].at("prompt").str(); }
  std::string caption(size_t i, bool lithuanian) const { return caps.values()[i].at(lithuanian ? "lt" : "en").str(); }

  // A chat about scene i on backend `be` (null: the CPU) with the adapter at
  // `scale`: the answers to its prompt and then to `more` turns, and the image features.
  struct Chat {
    std::vector<std::string> answers;
    std::vector<float> features;
  };
  Chat chat(size_t i, float scale, loupe::Backend* be, loupe::ThreadPool* pool, const std::vector<std::string>& more = {}) const {
    loupe::DescribeOptions opt;
    opt.gen.max_tokens = 64;
    opt.session.backend = be;
    loupe::VisionChat c(lm, vm, opt, pool);
    c.session().add_lora(lt, scale);
    c.set_image(image(i));
    Chat r;
    r.answers.push_back(c.ask(prompt(i)).text);
    for (const std::string& p : more) r.answers.push_back(c.ask(p).text);
    r.features = c.image_features;
    return r;
  }

  // Every scene (the first n) twice (adapter off, on), each on its own chat, all in
  // one Generator batch on `be`: the texts, in that order.
  std::vector<std::string> batched(loupe::Backend& be, loupe::ThreadPool* pool, size_t n = SIZE_MAX) const {
    loupe::DescribeOptions opt;
    opt.gen.max_tokens = 64;
    opt.session.backend = &be;
    loupe::Batch batch(lm, 512, be);
    loupe::Generator gen(batch);
    std::vector<std::unique_ptr<loupe::VisionChat>> chats;
    std::vector<std::string> out(2 * std::min(n, scenes()));
    for (size_t k = 0; k < out.size(); ++k) {
      chats.push_back(std::make_unique<loupe::VisionChat>(lm, vm, opt, pool));
      chats.back()->session().add_lora(lt, float(k % 2));
      chats.back()->set_image(image(k / 2));
      loupe::VisionChat::Turn t = chats.back()->begin_turn(prompt(k / 2));
      gen.submit(chats.back()->session(), std::move(t.ids), std::move(t.x), t.gen, nullptr,
                 [&out, k](loupe::Generation&& g) { out[k] = g.text; });
    }
    gen.run(pool);
    return out;
  }
};

}  // namespace loupe_test
