// A SentencePiece tokenizer.model (protobuf ModelProto): the parser, the
// tokenizer built from it, and encoding / decoding a fixed text with it.
// Seeds: ../shared/tokenizers/llama2.model, ../shared/models/*/tokenizer.model.
#include <loupe/text/tokenizer.hpp>

#include "fuzz.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return loupe_fuzz::guarded([&] {
    const loupe::Tokenizer tok = loupe::Tokenizer::from_model(loupe_fuzz::blob(data, size, "fuzz.model"));
    const std::vector<int32_t> ids = tok.encode("Labas rytas! Visi žmonės gimsta laisvi 123 <0x0A>\n\t", true);
    (void)tok.decode(ids);
  });
}
