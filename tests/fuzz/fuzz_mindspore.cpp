// MindSpore .ckpt: the protobuf records (varints, lengths bounded by their
// message, wire types), tags, dims, dtype names, chunks joined by tag, the CRC
// trailer, scalars and strings as metadata; then the port's names read back as
// Hugging Face's. Seeds: tests/fuzz/seeds/mindspore (reference/mindspore_ckpt.py).
#include <loupe/io/mindspore_checkpoint.hpp>
#include <loupe/models/tensors.hpp>

#include "fuzz.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return loupe_fuzz::guarded([&] {
    const loupe::Blob b = loupe_fuzz::blob(data, size, "fuzz.ckpt");
    if (!loupe::is_mindspore_checkpoint(b)) return;
    std::vector<std::pair<std::string, std::string>> metadata;
    const std::vector<loupe::SourceTensor> ts = loupe::read_mindspore_checkpoint(b, &metadata);
    loupe_fuzz::touch(ts);
    for (const loupe::SourceTensor& t : ts) (void)loupe::hf_name_from_mindspore(t.name);
  });
}
