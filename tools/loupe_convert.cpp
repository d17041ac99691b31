// loupe-convert: Hugging Face LLaMA / LLaVA / ShareGPT4V checkpoints -> GGUF
// files llama.cpp reads too; --inspect prints what a checkpoint or GGUF holds.
#include <loupe/convert.hpp>
#include <loupe/inspect.hpp>

#include <cstdio>

#include "../native/args.hpp"

static const char* kHelp = R"(loupe-convert: Hugging Face checkpoints -> llama.cpp-compatible GGUF

usage:
  loupe-convert --model DIR [--vision-tower DIR] [--outtype TYPE] [-o OUT_DIR] [--name NAME]
  loupe-convert --inspect FILE_OR_DIR

  --model DIR|GGUF    Hugging Face model directory: config.json, tokenizer.model and
                      model.safetensors / pytorch_model.bin (single or sharded with an index);
                      or a GGUF file (llama.cpp's or loupe's) to re-quantise to --outtype
  --vision-tower DIR  the CLIPVisionModel directory when the checkpoint does not hold the tower
                      (ShareGPT4V); default: looked up beside the model directory
  --outtype TYPE      f32, f16 (default), bf16, q8_0 or q4_0 for the weight matrices
                      (norms and biases stay f32; rows not a multiple of 32 fall back to f16)
  -o, --outdir DIR    output directory (default: .); writes NAME.gguf and mmproj-NAME.gguf
  --name NAME         output base name (default: the model directory's name)
  --inspect PATH      list tensors (name, dtype, shape) and metadata of a GGUF, safetensors,
                      PyTorch .bin file or model directory
  -q, --quiet         no progress bar
  -h, --help          this text

example (ShareGPT4V-7B, int4):
  loupe-convert --model ShareGPT4V-7B --vision-tower ShareGPT4V-7B_Pretrained_vit-large336-l12 \
                --outtype q4_0 -o models/
)";

int main(int argc, char** argv) {
  try {
    auto a = loupe_cli::Args::parse(argc, argv, 1, {"--model", "--vision-tower", "--outtype", "-o", "--outdir", "--name", "--inspect"},
                                    {"-h", "--help", "-q", "--quiet"});
    if (a.has("-h") || a.has("--help") || argc == 1) {
      std::fputs(kHelp, argc == 1 ? stderr : stdout);
      return argc == 1 ? 2 : 0;
    }
    if (!a.positional.empty()) loupe::fail("unexpected argument '", a.positional[0], "' (see --help)");
    if (a.has("--inspect")) {
      loupe::inspect(a.get({"--inspect"}), stdout);
      return 0;
    }
    if (!a.has("--model")) loupe::fail("--model DIR is required (see --help)");
    loupe::ConvertOptions opt;
    opt.outtype = loupe::dtype_from_name(a.get({"--outtype"}, "f16"));
    opt.vision_tower = a.get({"--vision-tower"});
    opt.name = a.get({"--name"});
    opt.progress = !a.has("-q") && !a.has("--quiet");
    loupe::ConvertResult r = loupe::convert_model(a.get({"--model"}), a.get({"-o", "--outdir"}, "."), opt);
    if (!r.text_path.empty()) std::fprintf(stderr, "wrote %s\n", r.text_path.c_str());
    if (!r.mmproj_path.empty()) std::fprintf(stderr, "wrote %s\n", r.mmproj_path.c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "loupe-convert: error: %s\n", e.what());
    return 1;
  }
}
