// safetensors: the 8-byte header length, the JSON header (dtypes, shapes,
// data_offsets, __metadata__) and every tensor's bytes. Seeds:
// tests/fuzz/seeds/safetensors (written by PyTorch through reference/hf_layout.py).
#include <loupe/io/safetensors.hpp>

#include "fuzz.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return loupe_fuzz::guarded([&] {
    const loupe::SafetensorsFile f = loupe::read_safetensors(loupe_fuzz::blob(data, size, "fuzz.safetensors"));
    loupe_fuzz::touch(f.tensors);
  });
}
