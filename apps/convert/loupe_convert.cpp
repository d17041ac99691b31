// loupe-convert: Hugging Face LLaMA / LLaVA / ShareGPT4V checkpoints -> GGUF
// files llama.cpp reads too; --inspect prints what a checkpoint or GGUF holds.
#include <loupe/convert/convert.hpp>
#include <loupe/convert/inspect.hpp>

#include <cmath>
#include <csignal>
#include <cstdio>

#include "../common/args.hpp"
#include "../common/progress.hpp"

static const char* kHelp = R"(loupe-convert: Hugging Face checkpoints -> llama.cpp-compatible GGUF

usage:
  loupe-convert --model DIR [--vision-tower DIR] [--lora DIR[:SCALE]]... [--outtype TYPE] [-o OUT_DIR] [--name NAME]
  loupe-convert --lora DIR [--base-config DIR] [--outtype f32|f16|bf16] [-o OUT_DIR] [--name NAME]
  loupe-convert --inspect FILE_OR_DIR

  --model DIR|GGUF    Hugging Face model directory: config.json, tokenizer.model and
                      model.safetensors / pytorch_model.bin (single or sharded with an index), in
                      LLaVA's / ShareGPT4V's layout or in transformers' own LlavaForConditionalGeneration
                      layout (llava-hf/*: the tower inside; chats with --conv llava_hf by default);
                      or the MindSpore ShareGPT4V port's directory (the LLM's .ckpt, tokenizer.model,
                      config.json or configs/config.json naming the ViT .ckpt);
                      or a GGUF file (llama.cpp's or loupe's) to re-quantise to --outtype
  --vision-tower DIR  the CLIPVisionModel directory when the checkpoint does not hold the tower
                      (ShareGPT4V; for a MindSpore directory the ViT .ckpt); default: looked up
                      beside the model directory
  --outtype TYPE      f32, f16 (default), bf16, q8_0 or q4_0 for the weight matrices
                      (norms and biases stay f32; rows not a multiple of 32 fall back to f16)
  -o, --outdir DIR    output directory (default: .); writes NAME.gguf and mmproj-NAME.gguf
  --name NAME         output base name (default: the model directory's name)
  --lora PATH[:SCALE] with --model: merge this LoRA adapter (PEFT or LLaVA / ShareGPT4V LoRA
                      directory, or a LoRA GGUF) into the weights at SCALE (default 1); repeatable.
                      W + SCALE·s·B·A is computed in f32 from the checkpoint's weights, then
                      rounded / quantised to --outtype. A LLaVA adapter's trained projector
                      (non_lora_trainables.bin) replaces the projector in mmproj-NAME.gguf.
                      Without --model: write the adapter as OUT_DIR/NAME.gguf, llama.cpp's LoRA
                      GGUF (A and B in f32 unless --outtype f16|bf16); tensors the adapter
                      replaces outright (LLaVA projector, modules_to_save), which llama.cpp's
                      format cannot hold, go to NAME.replace.gguf beside it, which loupe loads
                      with the adapter (llama.cpp ignores it)
  --base-config DIR   the base model's directory or config.json, for --lora without --model when
                      the adapter directory has no config.json (needed for the q/k row order)
  --inspect PATH      list tensors (name, dtype, shape) and metadata of a GGUF, safetensors,
                      PyTorch .bin file or model directory
  -q, --quiet         no progress bar
  -h, --help          this text

example (ShareGPT4V-7B, int4):
  loupe-convert --model ShareGPT4V-7B --vision-tower ShareGPT4V-7B_Pretrained_vit-large336-l12 \
                --outtype q4_0 -o models/
example (transformers' layout, tower and projector inside the checkpoint):
  loupe-convert --model llava-1.5-7b-hf --outtype q4_0 -o models/
example (a LoRA of it, for loupe --lora and llama.cpp --lora):
  loupe-convert --lora GalleryGPT-lora -o models/
)";

// "DIR:0.5" -> (DIR, 0.5); "DIR" -> (DIR, 1).
static std::pair<std::string, float> path_and_scale(const std::string& s) {
  const size_t c = s.rfind(':');
  if (c != std::string::npos && c + 1 < s.size()) {
    char* end = nullptr;
    const double v = std::strtod(s.c_str() + c + 1, &end);
    if (end && *end == 0) {
      if (!std::isfinite(v) || std::fabs(v) > 1e6) loupe::fail("--lora ", s, ": the scale must be a finite number within +-1e6");
      return {s.substr(0, c), float(v)};
    }
  }
  return {s, 1.0f};
}

// Notes to stderr; a progress bar per file on a terminal unless -q.
static loupe::ConvertOptions cli_options(const loupe_cli::Args& a) {
  loupe::ConvertOptions opt;
  opt.log = [](const std::string& s) { std::fprintf(stderr, "%s\n", s.c_str()); };
  if (!a.has("-q") && !a.has("--quiet")) opt.progress = loupe::progress_bars();
  return opt;
}

// Ctrl-C, kill or a closed terminal mid-conversion: remove the temporary
// files (async-signal-safe), then die of the signal as the default would.
static void on_signal(int sig) {
  loupe::remove_temp_outputs();
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

int main(int argc, char** argv) {
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) std::signal(sig, on_signal);
  try {
    auto a = loupe_cli::Args::parse(argc, argv, 1,
                                    {"--model", "--vision-tower", "--outtype", "-o", "--outdir", "--name", "--inspect", "--lora",
                                     "--base-config"},
                                    {"-h", "--help", "-q", "--quiet"});
    if (a.has("-h") || a.has("--help") || argc == 1) {
      std::fputs(kHelp, argc == 1 ? stderr : stdout);
      return argc == 1 ? 2 : 0;
    }
    if (!a.positional.empty()) loupe::fail("unexpected argument '", a.positional[0], "' (see --help)");
    if (a.has("--inspect")) {
      std::fputs(loupe::inspect(a.get({"--inspect"})).c_str(), stdout);
      return 0;
    }
    if (!a.has("--model") && a.has("--lora")) {
      // Adapters only: each to a llama.cpp LoRA GGUF.
      const std::vector<std::string> loras = a.all("--lora");
      if (a.has("--name") && loras.size() > 1) loupe::fail("--name names one adapter, but ", loras.size(), " --lora were given");
      if (a.has("--vision-tower")) loupe::fail("--vision-tower needs --model (a LoRA GGUF holds no vision tower)");
      loupe::ConvertOptions opt = cli_options(a);
      opt.outtype = loupe::dtype_from_name(a.get({"--outtype"}, "f32"));
      opt.name = a.get({"--name"});
      for (const std::string& l : loras) {
        auto [path, scale] = path_and_scale(l);
        if (scale != 1.0f) loupe::fail("--lora ", l, ": a scale is for merging (with --model); llama.cpp and loupe take it at run time");
        loupe::LoraConvertResult r = loupe::convert_lora(path, a.get({"-o", "--outdir"}, "."), opt, a.get({"--base-config"}));
        std::fprintf(stderr, "wrote %s\n", r.lora_path.c_str());
        if (!r.replace_path.empty()) std::fprintf(stderr, "wrote %s (tensors the adapter replaces; loupe loads it with the adapter)\n", r.replace_path.c_str());
      }
      return 0;
    }
    if (!a.has("--model")) loupe::fail("--model DIR is required (see --help)");
    if (a.has("--base-config")) loupe::fail("--base-config is for --lora without --model (the model's own config is used)");
    loupe::ConvertOptions opt = cli_options(a);
    opt.outtype = loupe::dtype_from_name(a.get({"--outtype"}, "f16"));
    opt.vision_tower = a.get({"--vision-tower"});
    opt.name = a.get({"--name"});
    for (const std::string& l : a.all("--lora")) opt.loras.push_back(path_and_scale(l));
    loupe::ConvertResult r = loupe::convert_model(a.get({"--model"}), a.get({"-o", "--outdir"}, "."), opt);
    if (!r.text_path.empty()) std::fprintf(stderr, "wrote %s\n", r.text_path.c_str());
    if (!r.mmproj_path.empty()) std::fprintf(stderr, "wrote %s\n", r.mmproj_path.c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "loupe-convert: error: %s\n", e.what());
    return 1;
  }
}
