// loupe: the command line. Subcommands:
//   generate   text model, prompt in, streamed text out
//   tokenize   print a prompt's token ids as JSON
// Streamed text goes to stdout; diagnostics and timings to stderr.
#include <loupe/generate.hpp>

#include <cstdio>
#include <memory>

#include "args.hpp"

namespace {

const char* kHelp = R"(loupe: LLaVA / ShareGPT4V vision-language models in C++

usage:
  loupe generate -m MODEL.gguf -p PROMPT [options]
  loupe tokenize -m MODEL.gguf|tokenizer.model -p TEXT

generation options (names as in llama.cpp):
  -m, --model FILE        text model GGUF (from loupe-convert or llama.cpp)
  -p, --prompt TEXT       prompt text
  -n, --n-predict N       tokens to generate (default 128)
  -c, --ctx-size N        context length (default: the model's, at most 4096)
  -t, --threads N         worker threads (default 2)
  --temp T                temperature; 0 = greedy (default 0)
  --top-k N               top-k (default 40; 0 = off)
  --top-p P               nucleus sampling (default 0.95; 1 = off)
  --min-p P               min-p (default 0.05; 0 = off)
  --repeat-penalty X      repetition penalty (default 1.0 = off)
  --repeat-last-n N       tokens the penalty looks back (default 64)
  -s, --seed N            sampling seed (default 42)
  -r, --reverse-prompt S  stop when S is generated (repeatable)
  --kv-f16                keep the KV cache in f16 (default f32)
  -h, --help              this text
)";

const std::vector<std::string> kValueFlags = {"-m", "--model", "-p", "--prompt", "-n", "--n-predict", "-c", "--ctx-size",
                                              "-t", "--threads", "--temp", "--top-k", "--top-p", "--min-p",
                                              "--repeat-penalty", "--repeat-last-n", "-s", "--seed", "-r",
                                              "--reverse-prompt"};
const std::vector<std::string> kBoolFlags = {"-h", "--help", "--kv-f16"};

loupe::GenerateOptions generate_options(const loupe_cli::Args& a) {
  loupe::GenerateOptions o;
  o.max_tokens = a.integer({"-n", "--n-predict"}, 128);
  o.sampling.temperature = float(a.number({"--temp"}, 0.0));
  o.sampling.top_k = a.integer({"--top-k"}, 40);
  o.sampling.top_p = float(a.number({"--top-p"}, 0.95));
  o.sampling.min_p = float(a.number({"--min-p"}, 0.05));
  o.sampling.repeat_penalty = float(a.number({"--repeat-penalty"}, 1.0));
  o.sampling.repeat_last_n = a.integer({"--repeat-last-n"}, 64);
  o.sampling.seed = uint64_t(a.number({"-s", "--seed"}, 42));
  o.stop = a.all("-r");
  for (auto& s : a.all("--reverse-prompt")) o.stop.push_back(s);
  return o;
}

int cmd_generate(const loupe_cli::Args& a) {
  const std::string path = a.get({"-m", "--model"});
  if (path.empty()) loupe::fail("generate: -m MODEL.gguf is required");
  if (!a.has("-p") && !a.has("--prompt")) loupe::fail("generate: -p PROMPT is required");
  auto t0 = std::chrono::steady_clock::now();
  loupe::LanguageModel lm = loupe::LanguageModel::open(path);
  const double load_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  const int threads = a.integer({"-t", "--threads"}, 2);
  loupe::ThreadPool pool(threads);
  const int64_t ctx = a.integer({"-c", "--ctx-size"}, int(std::min<int64_t>(lm.model.cfg.n_ctx, 4096)));
  loupe::KVCache kv(lm.model.cfg, ctx, a.has("--kv-f16") ? loupe::DType::F16 : loupe::DType::F32);
  const std::string prompt = a.get({"-p", "--prompt"});
  std::fputs(prompt.c_str(), stdout);
  std::fflush(stdout);
  loupe::Generation g = loupe::generate_text(lm, kv, prompt, generate_options(a), [](std::string_view s) {
    std::fwrite(s.data(), 1, s.size(), stdout);
    std::fflush(stdout);
    return true;
  }, &pool);
  std::fputc('\n', stdout);
  std::fprintf(stderr, "load %.1f ms | prefill %lld tokens %.1f ms (%.1f tok/s) | decode %lld tokens %.1f ms (%.1f tok/s) | %d threads\n",
               load_ms, (long long)g.stats.prompt_tokens, g.stats.prefill_ms, g.stats.prefill_tok_s(),
               (long long)g.stats.generated, g.stats.decode_ms, g.stats.decode_tok_s(), threads);
  return 0;
}

int cmd_tokenize(const loupe_cli::Args& a) {
  const std::string path = a.get({"-m", "--model"});
  if (path.empty()) loupe::fail("tokenize: -m MODEL.gguf or tokenizer.model is required");
  loupe::Blob b = loupe::Blob::open(path);
  loupe::Tokenizer tok = b.size >= 4 && std::memcmp(b.data, "GGUF", 4) == 0 ? loupe::read_vocab(loupe::GgufFile::parse(b))
                                                                            : loupe::Tokenizer::from_model(b);
  std::vector<int32_t> ids = tok.encode(a.get({"-p", "--prompt"}), tok.settings().add_bos);
  std::string s = "[";
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? ", " : "") + std::to_string(ids[i]);
  std::printf("%s]\n", s.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc < 2 || std::string(argv[1]) == "-h" || std::string(argv[1]) == "--help") {
      std::fputs(kHelp, argc < 2 ? stderr : stdout);
      return argc < 2 ? 2 : 0;
    }
    const std::string cmd = argv[1];
    auto a = loupe_cli::Args::parse(argc, argv, 2, kValueFlags, kBoolFlags);
    if (a.has("-h") || a.has("--help")) {
      std::fputs(kHelp, stdout);
      return 0;
    }
    if (!a.positional.empty()) loupe::fail("unexpected argument '", a.positional[0], "' (see --help)");
    if (cmd == "generate") return cmd_generate(a);
    if (cmd == "tokenize") return cmd_tokenize(a);
    loupe::fail("unknown command '", cmd, "' (see --help)");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "loupe: error: %s\n", e.what());
    return 1;
  }
}
