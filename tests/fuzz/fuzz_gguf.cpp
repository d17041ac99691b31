// GGUF: the reader (header, metadata of every type, tensor infos, alignment),
// then what a model file goes through when loupe opens it: the text model and
// its vocabulary, the vision tower and projector, a LoRA adapter against the
// demo model's config. Seeds: demo/*.gguf, ../shared/tokenizers/*.gguf.
#include <loupe/models/lora_adapter.hpp>
#include <loupe/pipeline/pipeline.hpp>

#include "fuzz.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // The demo model's config: what the demo's adapter (a seed) targets.
  static const loupe::LlamaConfig base = loupe::LanguageModel::open(LOUPE_SOURCE_DIR "/demo/shapes-q4_0.gguf").model.cfg;
  return loupe_fuzz::guarded([&] {
    const loupe::GgufFile f = loupe::GgufFile::parse(loupe_fuzz::blob(data, size, "fuzz.gguf"));
    loupe_fuzz::guarded([&] { loupe::LanguageModel::from_file(f); });
    loupe_fuzz::guarded([&] { loupe::VisionModel::from_file(f); });
    loupe_fuzz::guarded([&] { loupe::LoraAdapter::from_gguf(f, base); });
  });
}
