// A consumer's translation unit that uses the whole pipeline API: two sessions
// on one model with different adapters. It must build from declarations only:
// check.cmake verifies that it pulls in none of the heavy headers (Eigen, the
// SIMD intrinsics, stb_image, <regex>), which live in the implementation
// (src/loupe.cpp); bench/build_cost.sh times it.
#include <loupe/pipeline/pipeline.hpp>

#include <cstdio>
#include <memory>

int describe_twice(const char* model, const char* mmproj, const char* lora, const char* image) {
  auto lm = loupe::LanguageModel::open(model);
  auto vm = loupe::VisionModel::open(mmproj);
  auto lt = std::make_shared<const loupe::LoraAdapter>(loupe::LoraAdapter::load(lora, lm.model.cfg));
  loupe::ThreadPool pool(2);
  loupe::VisionChat en(lm, vm, {}, &pool), lt_chat(lm, vm, {}, &pool);
  lt_chat.session().add_lora(lt);
  const loupe::Image img = loupe::load_image(image);
  for (loupe::VisionChat* chat : {&en, &lt_chat}) {
    chat->set_image(img);
    chat->ask("Describe this image.", [](std::string_view piece) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      return true;
    });
  }
  return 0;
}
