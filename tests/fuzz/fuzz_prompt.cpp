// Prompt templating and tokenisation: a conversation of fuzzed turns in one of
// the chat templates, with and without the image marker, through the LLaMA-2
// tokenizer (the demo model's vocabulary) as VisionChat and the server build it.
// Input: a template-choosing byte, then turns separated by NUL bytes.
#include <loupe/pipeline/pipeline.hpp>

#include "fuzz.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const loupe::Tokenizer tok = loupe::LanguageModel::open(LOUPE_SOURCE_DIR "/demo/shapes-q4_0.gguf").tokenizer;
  if (size == 0) return 0;
  const auto& templates = loupe::chat_templates();
  loupe::Conversation conv(templates[data[0] % templates.size()]);
  std::vector<std::string> turns(1);
  for (size_t i = 1; i < size; ++i)
    if (data[i] == 0) turns.emplace_back();
    else turns.back() += char(data[i]);
  for (size_t t = 0; t < turns.size() && t < 16; ++t) {
    if (t % 2 == 0) conv.add_user(t == 0 && (data[0] & 0x80) ? loupe::with_image(turns[t], data[0] & 0x40) : turns[t]);
    else conv.add_assistant(turns[t]);
  }
  if (turns.size() % 2 == 1) conv.add_assistant();
  return loupe_fuzz::guarded([&] {
    (void)loupe::tokenize_image_prompt(tok, conv.prompt());
    (void)loupe::tokenize_with_eos(tok, conv.prompt(), true);
  });
}
