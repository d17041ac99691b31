// torch.save files (pytorch_model.bin, adapter_model.bin, non_lora_trainables.bin):
// the zip reader (stored entries, zip64), the pickle machine (nothing executed,
// globals allow-listed) and every tensor's storage, offset, size and stride,
// strided views copied within their budget. Seeds: tests/fuzz/seeds/torch
// (torch.save: contiguous, transposed, sliced, expanded, f16/bf16, nested dicts).
#include <loupe/io/torch_checkpoint.hpp>

#include "fuzz.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return loupe_fuzz::guarded([&] {
    const loupe::Blob file = loupe_fuzz::blob(data, size, "fuzz.bin");
    loupe_fuzz::touch(loupe::read_torch_checkpoint(file));
  });
}
