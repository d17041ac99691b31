// Shard indexes (model.safetensors.index.json, pytorch_model.bin.index.json):
// the weight_map, shard names (no path escapes), tensors listed but missing or
// present but unlisted, through Checkpoint::open_file as the converter opens
// them. The index sits beside two small real shards, a.safetensors (x, y) and
// b.safetensors (z), so inputs reach past the file lookups. Seeds:
// tests/fuzz/seeds/shard_index.
#include <loupe/io/checkpoint.hpp>

#include "fuzz.hpp"

namespace {
// A safetensors file of F32 tensors of 2 values each, written here so the
// harness needs nothing but itself.
void write_shard(const std::string& name, const std::vector<std::string>& tensors) {
  std::string header = "{";
  for (size_t i = 0; i < tensors.size(); ++i)
    header += (i ? "," : "") + std::string("\"") + tensors[i] + "\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[" +
              std::to_string(8 * i) + "," + std::to_string(8 * i + 8) + "]}";
  header += "}";
  std::string bytes(8, '\0');
  const uint64_t n = header.size();
  for (int b = 0; b < 8; ++b) bytes[size_t(b)] = char((n >> (8 * b)) & 0xff);
  bytes += header + std::string(8 * tensors.size(), '\0');
  loupe_fuzz::write_file(name, reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const bool shards = (write_shard("a.safetensors", {"x", "y"}), write_shard("b.safetensors", {"z"}), true);
  (void)shards;
  const std::string index = loupe_fuzz::write_file("model.safetensors.index.json", data, size);
  return loupe_fuzz::guarded([&] { loupe_fuzz::touch(loupe::Checkpoint::open_file(index).tensors); });
}
