// PEFT adapter_config.json (issue #18): the input is the config of an adapter
// directory whose adapter_model.safetensors is a valid, small LoRA (rank 8 —
// PEFT's default r — on layer 0's q_proj, v_proj and down_proj) for the demo
// model's config. Covers the config checks (r, lora_alpha, rank_pattern /
// alpha_pattern values), the ModulePattern matcher on target_modules and on
// the pattern keys (compiled, then tried on every linear module of the base),
// and the loader that uses them. A hang here (a regex that backtracks) is a
// finding like a crash. Seeds: tests/fuzz/seeds/adapter_config.
#include <loupe/models/lora_adapter.hpp>
#include <loupe/pipeline/pipeline.hpp>

#include "fuzz.hpp"

namespace {

const loupe::LlamaConfig& base() {
  static const loupe::LlamaConfig c = loupe::LanguageModel::open(LOUPE_SOURCE_DIR "/demo/shapes-q4_0.gguf").model.cfg;
  return c;
}

// The adapter directory, its weights written once: zero F32 lora_A [8, in] and
// lora_B [out, 8] for each module.
std::string adapter_dir() {
  static const std::string dir = [] {
    const std::string d = loupe_fuzz::scratch_dir() + "/adapter";
    std::filesystem::create_directories(d);
    const char* const modules[] = {"model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
                                   "model.layers.0.mlp.down_proj"};
    const int64_t rank = 8;
    std::string header = "{";
    int64_t offset = 0;
    for (const char* m : modules) {
      std::vector<int64_t> shape;
      for (const loupe::LlamaTensor& t : loupe::llama_tensors(base()))
        if (t.hf == std::string(m) + ".weight") shape = t.shape;
      auto entry = [&](const char* ab, int64_t rows, int64_t cols) {
        const int64_t n = rows * cols * 4;
        header += std::string(header.size() > 1 ? "," : "") + "\"base_model.model." + m + ".lora_" + ab +
                  ".weight\":{\"dtype\":\"F32\",\"shape\":[" + std::to_string(rows) + "," + std::to_string(cols) +
                  "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + n) + "]}";
        offset += n;
      };
      entry("A", rank, shape.at(1));
      entry("B", shape.at(0), rank);
    }
    header += "}";
    std::string file(8, '\0');
    for (int i = 0; i < 8; ++i) file[size_t(i)] = char((uint64_t(header.size()) >> (8 * i)) & 0xFF);
    file += header + std::string(size_t(offset), '\0');
    std::ofstream(d + "/adapter_model.safetensors", std::ios::binary) << file;
    return d;
  }();
  return dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string dir = adapter_dir();
  const std::string path = dir + "/adapter_config.json";
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(reinterpret_cast<const char*>(data), std::streamsize(size));
  return loupe_fuzz::guarded([&] {
    // The config alone, its patterns tried on every module name the base has.
    loupe_fuzz::guarded([&] {
      const std::string text(reinterpret_cast<const char*>(data), size);
      const loupe::PeftLoraConfig c = loupe::PeftLoraConfig::parse(loupe::Json::parse(text, path), path, base());
      int64_t sum = 0;
      for (const loupe::LlamaTensor& t : loupe::llama_tensors(base())) {
        const std::string m = t.hf_module();
        sum += c.targets(m) + c.rank_for(m) + int64_t(c.alpha_for(m) != 0);
      }
      (void)sum;
    });
    // The whole directory.
    const loupe::LoraAdapter a = loupe::LoraAdapter::from_peft_dir(dir, base());
    (void)a.summary();
  });
}
