// A Hugging Face model's configs as the converter reads them: config.json as a
// model config (LLaMA / LLaVA flat, or transformers' LlavaConfig with
// text_config, vision_config and its defaults) and as a CLIP tower config
// (vision_config or top level), with preprocessor_config.json (mean, std, crop
// and resize sizes, do_pad). The input is config.json, then optionally a NUL and
// preprocessor_config.json. Seeds: tests/fuzz/seeds/config (stories260K's,
// the ShareGPT4V, LLaVA-1.5 and llava-hf fixtures').
#include <loupe/convert/convert.hpp>

#include <cstring>

#include "fuzz.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const uint8_t* nul = static_cast<const uint8_t*>(std::memchr(data, 0, size));
  const size_t n_config = nul ? size_t(nul - data) : size;
  const std::string config = loupe_fuzz::write_file("config.json", data, n_config);
  const std::string pre = loupe_fuzz::scratch_dir() + "/preprocessor_config.json";
  if (nul) loupe_fuzz::write_file("preprocessor_config.json", nul + 1, size - n_config - 1);
  else std::remove(pre.c_str());
  return loupe_fuzz::guarded([&] {
    loupe_fuzz::guarded([&] {
      const loupe::LlamaConfig c = loupe::llama_config(loupe::HfModelConfig::read(config).text);
      (void)loupe::llama_tensors(c, true);  // what the converter plans from the sizes
    });
    (void)loupe::read_vision_config(loupe_fuzz::scratch_dir());
  });
}
