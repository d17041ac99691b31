// loupe: the command line. Subcommands:
//   generate   text model, prompt in, streamed text out
//   describe   image + prompt in (LLaVA / ShareGPT4V), streamed text out
//   chat       several turns about one image, interactive
//   eval       caption a set of images, score against references (exact, BLEU, ROUGE-L)
//   tokenize   print a prompt's token ids as JSON
// Streamed text goes to stdout; diagnostics and timings to stderr.
#include <loupe/io/npy.hpp>
#include <loupe/pipeline/pipeline.hpp>
#include "../common/progress.hpp"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>

#include "../common/args.hpp"
#include "../common/peak_rss.hpp"
#include "caption.hpp"
#ifdef LOUPE_HAVE_SERVE
#include "serve.hpp"
#endif
#include "../common/eval_metrics.hpp"

namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

const char* kHelp = R"(loupe: LLaVA / ShareGPT4V vision-language models in C++

usage:
  loupe generate -m MODEL.gguf -p PROMPT [options]
  loupe describe -m MODEL.gguf --mmproj MMPROJ.gguf --image IMAGE -p PROMPT [options]
  loupe chat     -m MODEL.gguf --mmproj MMPROJ.gguf --image IMAGE [options]
  loupe eval     -m MODEL.gguf --mmproj MMPROJ.gguf --set DIR [--lora PATH] [options]
  loupe tokenize -m MODEL.gguf|tokenizer.model -p TEXT
  loupe serve    -m MODEL.gguf [--mmproj MMPROJ.gguf] [--lora NAME=PATH]... [options]
  loupe caption  -m MODEL.gguf --mmproj MMPROJ.gguf --input IN --output OUTDIR [options]

caption options (a whole image collection; greedy, -n defaults to 128):
  --input IN              a folder (walked recursively, sorted), a .txt list of image paths, a .jsonl
                          manifest ({"id": ..., "image": PATH, "prompt": ...} a line; paths relative to
                          it), or WebDataset .tar shards: 'shard-{00000..00099}.tar' (KEY.jpg|png|...,
                          KEY.json with an optional "prompt"), one output file per shard
  --output OUTDIR         JSONL rows {"id", "image", "caption", "prompt", "model", "adapter", "tokens",
                          "ms", "error"}; each file written to NAME.jsonl.tmp, renamed when complete
  -p PROMPT               the question when an item has none (default "Describe this image.")
  --batch B               images captioned together (default 8)
  --shard i/n             this slice of the input (default: Slurm's SLURM_ARRAY_TASK_ID/_COUNT when
                          set, else all of it); the slices cover the input, no item twice
  --shards N              under Slurm: N slices, SLURM_ARRAY_TASK_ID the slice (for re-submitting
                          some tasks of an array: sbatch --array=1,3 ... --shards 4)
  --resume                skip complete outputs, finish partial ones (also after a SIGKILL)
  A bad image (unreadable, missing, an unsupported format) is a row with "error" set.

serve options (an OpenAI-compatible server: POST /v1/chat/completions, GET /v1/models, /health, /metrics):
  --host ADDR             address to listen on (default 127.0.0.1: this machine only)
  --port N                port (default 8080)
  --parallel N            sequences decoding together, each in its own slot (default 4)
  --queue N               requests waiting for a slot before new ones get 503 (default 16)
  --lora NAME=PATH        an adapter requests select with "model": "NAME" (repeatable; PATH alone:
                          named by the adapter); the base model is the file's name (or --alias)
  --alias NAME            the base model's name in the API (default: the GGUF file's name)
  --api-key KEY           require "Authorization: Bearer KEY" (all but /health)
  --media-path DIR        image_url may name files under DIR (file:// or a plain path); else only
                          data: URLs are read (http(s) URLs never: the server makes no connections)
  --max-body BYTES        largest request body (default 33554432); larger: 413
  -n N                    tokens a reply may have when the request sets no max_tokens (default 512)
  -c, --kv-type, -t, --conv as below; the context (-c) is each slot's

eval options (greedy; -n defaults to 64):
  --set DIR               DIR/captions.json: {"image.png": {"prompt": "...", "en": "...", "lt": "..."}, ...}
                          (tools/demo_model/scenes.py --out DIR writes one); every string field
                          but "prompt" is a reference caption in the language it is named for
  --limit N               only the first N images
  --jsonl FILE            every output: condition, image, prompt, token ids, text
  With --lora the set runs twice, adapters off (scale 0) and on; the table gives per
  condition and reference language the exact-match rate, corpus BLEU-4 and mean ROUGE-L
  F1 over word/punctuation tokens, and how many outputs are in each language (words
  only that language's references use).

vision options:
  --mmproj FILE           vision tower + projector GGUF (from loupe-convert or llama.cpp)
  --image FILE            JPEG, PNG, BMP or GIF (EXIF orientation is not applied, as in LLaVA)
  --conv NAME             chat template: vicuna_v1, share4v_v1, share4v_v0, llava_v1, llava_v0, llava_hf
                          (default: the one the model file names, else vicuna_v1)
  --clip-precision P      bf16 (default) or f32: the vision tower's products in bf16 where the CPU
                          has AVX512-BF16 (F16/F32 towers encode ~2x faster; features ~1e-3 from
                          f32), else f32 anyway; f32 to compare with a reference
  --dump DIR              write pixel_values.npy, image_features.npy, prompt_ids.json and
                          logits.npy (first generated position) into DIR

LoRA adapters (generate, describe, chat; repeatable, several active at once):
  --lora PATH             PEFT or LLaVA / ShareGPT4V LoRA directory (adapter_config.json,
                          adapter_model.safetensors|.bin, non_lora_trainables.bin), or a LoRA
                          GGUF (llama.cpp's, or loupe-convert --lora's), at scale 1. Applied
                          unmerged on top of any base type, Q4_0 included; a LLaVA adapter's
                          trained projector replaces the mmproj's while it is active
  --lora-scaled PATH S    the same at scale S (llama.cpp's meaning: S·alpha/r)
  chat: "/lora NAME S" between turns rescales an adapter (0 = off), "/lora" lists them

generation options (names as in llama.cpp):
  -m, --model FILE        text model GGUF (from loupe-convert or llama.cpp)
  -p, --prompt TEXT       prompt text (describe: the question; "<image>" may place the image)
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
  --device DEV            where the models run: cpu, cuda (an NVIDIA GPU, in a build with
                          -DLOUPE_CUDA=ON; without a driver or GPU it says so and uses the
                          CPU) or auto (default: the GPU when there is one)
  --kv-type TYPE          KV cache element type: f16 (default, as llama.cpp) or f32; the cache
                          grows with the positions used, up to -c
  -h, --help              this text
)";

const std::vector<std::string> kValueFlags = {"-m", "--model", "-p", "--prompt", "-n", "--n-predict", "-c", "--ctx-size",
                                              "-t", "--threads", "--temp", "--top-k", "--top-p", "--min-p",
                                              "--repeat-penalty", "--repeat-last-n", "-s", "--seed", "-r",
                                              "--reverse-prompt", "--mmproj", "--image", "--conv", "--dump", "--lora",
                                              "--set", "--limit", "--jsonl", "--kv-type", "--host", "--port", "--parallel", "--queue",
                                              "--alias", "--api-key", "--media-path", "--max-body", "--input",
                                              "--output", "--batch", "--shard", "--shards", "--device", "--clip-precision"};
const std::vector<std::string> kTwoValueFlags = {"--lora-scaled"};
const std::vector<std::string> kBoolFlags = {"-h", "--help", "--resume"};

// --device: the backend every session of this run uses, opened once (it says on
// stderr which device it is, and why it fell back to the CPU).
loupe::Backend* device_backend(const loupe_cli::Args& a) {
  static loupe::BackendHandle h;
  if (!h.get())
    h = loupe::open_backend(loupe::parse_device(a.get({"--device"}, "auto")),
                            [](const std::string& line) { std::fprintf(stderr, "%s\n", line.c_str()); });
  return h.get();
}

// A model for the --device backend: packed for the CPU's kernels only where it runs on the CPU.
loupe::LlamaModel::LoadOptions model_options(const loupe_cli::Args& a) {
  loupe::LlamaModel::LoadOptions o;
  o.pack_for_cpu = device_backend(a) == &loupe::cpu_backend();
  return o;
}

// --clip-precision: bf16 (default; used where the CPU multiplies bf16 natively) or f32.
loupe::Precision clip_precision(const loupe_cli::Args& a) {
  const std::string p = a.get({"--clip-precision"}, "bf16");
  if (p != "bf16" && p != "f32") loupe::fail("--clip-precision ", p, ": expected bf16 or f32");
  return p == "bf16" ? loupe::Precision::Bf16 : loupe::Precision::F32;
}

// --kv-type, -c, --device and the model's context -> the session's options.
loupe::SessionOptions session_options(const loupe_cli::Args& a) {
  loupe::SessionOptions o;
  o.backend = device_backend(a);
  o.n_ctx = a.integer({"-c", "--ctx-size"}, 0);
  const std::string t = a.get({"--kv-type"}, "f16");
  if (t != "f16" && t != "f32") loupe::fail("--kv-type ", t, ": expected f16 or f32");
  o.kv_type = t == "f32" ? loupe::DType::F32 : loupe::DType::F16;
  return o;
}

loupe::GenerateOptions generate_options(const loupe_cli::Args& a) {
  loupe::GenerateOptions o;
  o.max_tokens = a.integer({"-n", "--n-predict"}, 128);
  o.sampling.temperature = a.real({"--temp"}, 0.0f);
  o.sampling.top_k = a.integer({"--top-k"}, 40);
  o.sampling.top_p = a.real({"--top-p"}, 0.95f);
  o.sampling.min_p = a.real({"--min-p"}, 0.05f);
  o.sampling.repeat_penalty = a.real({"--repeat-penalty"}, 1.0f);
  o.sampling.repeat_last_n = a.integer({"--repeat-last-n"}, 64);
  o.sampling.seed = a.unsigned64({"-s", "--seed"}, 42);
  o.stop = a.all("-r");
  for (auto& s : a.all("--reverse-prompt")) o.stop.push_back(s);
  return o;
}

// --lora PATH (scale 1) and --lora-scaled PATH SCALE.
std::vector<std::pair<std::string, float>> lora_flags(const loupe_cli::Args& a) {
  std::vector<std::pair<std::string, float>> out;
  for (const std::string& p : a.all("--lora")) out.emplace_back(p, 1.0f);
  const std::vector<std::string> two = a.all("--lora-scaled");
  for (size_t i = 0; i + 1 < two.size(); i += 2) {
    char* end = nullptr;
    const double s = std::strtod(two[i + 1].c_str(), &end);
    if (!end || *end || two[i + 1].empty() || !(std::fabs(s) <= 1e6))
      loupe::fail("--lora-scaled ", two[i], " ", two[i + 1], ": the scale is not a number (of at most 1e6 in magnitude)");
    out.emplace_back(two[i], float(s));
  }
  return out;
}

// Loads the adapters into the session and says what they are on stderr.
void load_loras(loupe::Session& session, const std::vector<std::pair<std::string, float>>& flags) {
  for (const auto& [path, scale] : flags) {
    auto ad = std::make_shared<const loupe::LoraAdapter>(loupe::LoraAdapter::load(path, session.model().model.cfg));
    for (const std::string& n : ad->notes) std::fprintf(stderr, "%s\n", n.c_str());
    session.add_lora(ad, scale);
    std::fprintf(stderr, "lora %s at scale %g\n", ad->summary().c_str(), double(scale));
  }
  for (const std::string& n : session.take_lora_notes()) std::fprintf(stderr, "note: %s\n", n.c_str());
}

int cmd_generate(const loupe_cli::Args& a, const std::vector<std::pair<std::string, float>>& loras) {
  const std::string path = a.get({"-m", "--model"});
  if (path.empty()) loupe::fail("generate: -m MODEL.gguf is required");
  if (!a.has("-p") && !a.has("--prompt")) loupe::fail("generate: -p PROMPT is required");
  auto t0 = std::chrono::steady_clock::now();
  loupe::LanguageModel lm = loupe::LanguageModel::open(path, model_options(a));
  loupe::Session session(lm, session_options(a));
  load_loras(session, loras);
  const double load_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  const int threads = a.integer({"-t", "--threads"}, 2);
  loupe::ThreadPool pool(threads);
  const std::string prompt = a.get({"-p", "--prompt"});
  std::fputs(prompt.c_str(), stdout);
  std::fflush(stdout);
  loupe::Generation g = loupe::generate_text(session, prompt, generate_options(a), [](std::string_view s) {
    std::fwrite(s.data(), 1, s.size(), stdout);
    std::fflush(stdout);
    return true;
  }, &pool);
  std::fputc('\n', stdout);
  std::fflush(stdout);
  std::fprintf(stderr, "load %.1f ms | prefill %lld tokens %.1f ms (%.1f tok/s) | decode %lld tokens %.1f ms (%.1f tok/s) | %d threads | peak RSS %.2f GiB\n",
               load_ms, (long long)g.stats.prompt_tokens, g.stats.prefill_ms, g.stats.prefill_tok_s(),
               (long long)g.stats.generated, g.stats.decode_ms, g.stats.decode_tok_s(), threads, loupe_cli::peak_rss_bytes() / kGiB);
  return 0;
}

struct VisionSession {
  loupe::LanguageModel lm;
  loupe::VisionModel vm;
  std::unique_ptr<loupe::ThreadPool> pool;
  std::unique_ptr<loupe::VisionChat> chat;
  double load_ms = 0;
};

// with_image: --image is required and set (describe, chat); eval sets one per item.
std::unique_ptr<VisionSession> open_vision(const loupe_cli::Args& a, const std::vector<std::pair<std::string, float>>& loras,
                                           bool with_image = true) {
  const std::string model = a.get({"-m", "--model"}), mmproj = a.get({"--mmproj"}), image = a.get({"--image"});
  if (model.empty()) loupe::fail("-m MODEL.gguf is required");
  if (mmproj.empty()) loupe::fail("--mmproj MMPROJ.gguf is required");
  if (with_image && image.empty()) loupe::fail("--image FILE is required");
  auto s = std::make_unique<VisionSession>();
  auto t0 = std::chrono::steady_clock::now();
  s->lm = loupe::LanguageModel::open(model, model_options(a));
  s->vm = loupe::VisionModel::open(mmproj);
  s->pool = std::make_unique<loupe::ThreadPool>(a.integer({"-t", "--threads"}, 2));
  loupe::DescribeOptions opt;
  opt.conv = a.get({"--conv"}, "");
  opt.gen = generate_options(a);
  opt.session = session_options(a);
  opt.clip_precision = clip_precision(a);
  s->chat = std::make_unique<loupe::VisionChat>(s->lm, s->vm, opt, s->pool.get());
  load_loras(s->chat->session(), loras);
  s->load_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  if (with_image) s->chat->set_image(loupe::load_image(image), image);
  return s;
}

bool print_text(std::string_view t) {
  std::fwrite(t.data(), 1, t.size(), stdout);
  std::fflush(stdout);
  return true;
}

void print_timings(const VisionSession& s, const loupe::Generation& g) {
  std::fprintf(stderr, "load %.1f ms | image encode %.1f ms | prefill %lld positions %.1f ms (%.1f tok/s) | decode %lld tokens %.1f ms (%.1f tok/s) | %d threads | peak RSS %.2f GiB\n",
               s.load_ms, s.chat->encode_ms, (long long)g.stats.prompt_tokens, g.stats.prefill_ms, g.stats.prefill_tok_s(),
               (long long)g.stats.generated, g.stats.decode_ms, g.stats.decode_tok_s(), s.pool->size(), loupe_cli::peak_rss_bytes() / kGiB);
}

// --dump DIR: the intermediate tensors, for comparing with a Python reference.
void dump(const std::string& dir, const VisionSession& s, const loupe::Generation& g) {
  namespace fs = std::filesystem;
  fs::create_directories(dir);
  const loupe::VisionChat& c = *s.chat;
  loupe::write_npy((fs::path(dir) / "pixel_values.npy").string(), c.pixel_values.f32(), c.pixel_values.shape);
  const int64_t dim = s.lm.model.cfg.dim;
  loupe::write_npy((fs::path(dir) / "image_features.npy").string(), c.image_features.data(),
                   {int64_t(c.image_features.size()) / dim, dim});
  loupe::write_npy((fs::path(dir) / "logits.npy").string(), g.first_logits.data(), {int64_t(g.first_logits.size())});
  std::ofstream ids(fs::path(dir) / "prompt_ids.json");
  ids << "[";
  for (size_t i = 0; i < c.prompt_ids.size(); ++i) ids << (i ? ", " : "") << c.prompt_ids[i];
  ids << "]\n";
  if (!ids) loupe::fail(dir, ": cannot write prompt_ids.json");
}

int cmd_describe(const loupe_cli::Args& a, const std::vector<std::pair<std::string, float>>& loras) {
  if (!a.has("-p") && !a.has("--prompt")) loupe::fail("describe: -p PROMPT is required");
  auto s = open_vision(a, loras);
  loupe::Generation g = s->chat->ask(a.get({"-p", "--prompt"}), print_text);
  std::fputc('\n', stdout);
  std::fflush(stdout);
  print_timings(*s, g);
  if (a.has("--dump")) dump(a.get({"--dump"}), *s, g);
  return 0;
}

// "/lora" lists the adapters, "/lora NAME SCALE" rescales one (0 = off) between turns.
void lora_command(VisionSession& s, const std::string& line) {
  std::istringstream in(line.substr(5));
  std::string name, scale;
  in >> name >> scale;
  if (!name.empty()) {
    char* end = nullptr;
    const double v = std::strtod(scale.c_str(), &end);
    if (scale.empty() || !end || *end) loupe::fail("usage: /lora NAME SCALE");
    s.chat->session().set_lora_scale(name, float(v));
  }
  const loupe::LoraSet& set = s.chat->session().loras();
  for (const auto& e : set.entries()) std::fprintf(stderr, "lora %s: scale %g\n", e.adapter->name.c_str(), double(e.scale));
  if (set.entries().empty()) std::fprintf(stderr, "no adapters loaded (--lora PATH)\n");
}

int cmd_chat(const loupe_cli::Args& a, const std::vector<std::pair<std::string, float>>& loras) {
  auto s = open_vision(a, loras);
  std::fprintf(stderr, "chat about %s — empty line or Ctrl-D to quit\n", a.get({"--image"}).c_str());
  std::string line;
  for (int turn = 0;; ++turn) {
    std::fputs("USER: ", stderr);
    if (!std::getline(std::cin, line) || line.empty()) break;
    if (line == "/lora" || line.rfind("/lora ", 0) == 0) {
      try {
        lora_command(*s, line);
      } catch (const loupe::Error& e) {
        std::fprintf(stderr, "%s\n", e.what());
      }
      --turn;
      continue;
    }
    std::fputs("ASSISTANT: ", stdout);
    loupe::Generation g;
    try {
      g = s->chat->ask(line, print_text);
    } catch (const loupe::Error& e) {  // e.g. the context is full: this turn fails, the chat goes on
      std::fflush(stdout);
      std::fprintf(stderr, "\nloupe: %s (this turn was not answered; -c raises the context)\n", e.what());
      --turn;
      continue;
    }
    std::fputc('\n', stdout);
    std::fflush(stdout);
    print_timings(*s, g);
    if (turn == 0 && a.has("--dump")) dump(a.get({"--dump"}), *s, g);
  }
  return 0;
}

int cmd_eval(const loupe_cli::Args& a, const std::vector<std::pair<std::string, float>>& loras) {
  namespace fs = std::filesystem;
  const std::string dir = a.get({"--set"});
  if (dir.empty()) loupe::fail("eval: --set DIR is required");
  const std::string caps_path = (fs::path(dir) / "captions.json").string();
  const loupe::Json caps = loupe::Json::load(caps_path);
  struct Item {
    std::string image, prompt;
    std::map<std::string, std::string> refs;  // language -> caption
  };
  std::vector<Item> items;
  std::vector<std::string> langs;
  for (size_t i = 0; i < caps.keys().size(); ++i) {
    Item it{caps.keys()[i], "", {}};
    const loupe::Json& e = caps.values()[i];
    for (size_t k = 0; k < e.keys().size(); ++k) {
      if (!e.values()[k].is_string()) continue;
      if (e.keys()[k] == "prompt") it.prompt = e.values()[k].str();
      else it.refs[e.keys()[k]] = e.values()[k].str();
    }
    if (it.prompt.empty()) loupe::fail(caps_path, ": ", it.image, " has no \"prompt\"");
    if (items.empty())
      for (auto& [l, _] : it.refs) langs.push_back(l);
    for (auto& l : langs)
      if (!it.refs.count(l)) loupe::fail(caps_path, ": ", it.image, " has no \"", l, "\" caption");
    items.push_back(std::move(it));
  }
  const int64_t limit = a.integer({"--limit"}, int64_t(items.size()));
  if (limit < int64_t(items.size())) items.resize(size_t(std::max<int64_t>(0, limit)));
  if (items.empty() || langs.empty()) loupe::fail(caps_path, ": no images with reference captions");

  std::map<std::string, loupe_cli::LanguageDetector> detect;
  for (auto& l : langs) {
    std::vector<std::string> own, other;
    for (auto& it : items)
      for (auto& [m, ref] : it.refs) (m == l ? own : other).push_back(ref);
    detect.emplace(l, loupe_cli::LanguageDetector(own, other));
  }

  loupe_cli::Args b = a;  // greedy, 64 tokens unless -n says otherwise
  if (!a.has("-n") && !a.has("--n-predict")) b.values["-n"] = {"64"};
  b.values["--temp"] = {"0"};
  auto s = open_vision(b, loras, /*with_image=*/false);
  auto q = [](const std::string& t) { return "\"" + loupe::json_escape(t) + "\""; };
  // --jsonl goes to FILE.tmp, renamed at the end: a failed run leaves no half-written output.
  struct TmpFile {
    std::string path, tmp;
    std::ofstream out;
    ~TmpFile() {
      if (!tmp.empty()) std::remove(tmp.c_str());
    }
  } jsonl_file;
  if (a.has("--jsonl")) {
    jsonl_file.path = a.get({"--jsonl"});
    jsonl_file.tmp = jsonl_file.path + ".tmp";
    jsonl_file.out.open(jsonl_file.tmp, std::ios::binary);
    if (!jsonl_file.out) loupe::fail(jsonl_file.tmp, ": cannot write");
  }
  std::ostream& jsonl = jsonl_file.out;  // a closed stream ignores what it is given
  std::vector<std::pair<std::string, float>> conditions = {{"base", 0.0f}};
  if (!loras.empty()) conditions.push_back({"adapter", 1.0f});
  std::printf("| %s | images |", loras.empty() ? "model" : "condition");
  for (auto& l : langs) std::printf(" exact (%s) | BLEU-4 (%s) | ROUGE-L (%s) |", l.c_str(), l.c_str(), l.c_str());
  for (auto& l : langs) std::printf(" outputs in %s |", l.c_str());
  std::printf("\n|---|---|");
  for (size_t i = 0; i < 4 * langs.size(); ++i) std::printf("---|");
  std::printf("\n");
  std::fflush(stdout);
  for (const auto& [cond, on] : conditions) {
    loupe::Session& session = s->chat->session();
    for (size_t k = 0; k < loras.size(); ++k) {  // off: every adapter at 0; on: as asked
      const std::string name = session.loras().entries()[k].adapter->name;
      session.set_lora_scale(name, on * loras[k].second);
    }
    std::vector<std::string> hyps;
    loupe::ProgressBar bar("eval " + cond, items.size(), 0);
    bar.unit("images");
    for (size_t i = 0; i < items.size(); ++i) {
      const std::string path = (fs::path(dir) / items[i].image).string();
      s->chat->set_image(loupe::load_image(path), path);
      loupe::Generation g = s->chat->ask(items[i].prompt);
      const char* ws = " \t\n\r\f\v";  // the text without surrounding whitespace, as Python's strip()
      const size_t b0 = g.text.find_first_not_of(ws);
      const std::string text = b0 == std::string::npos ? "" : g.text.substr(b0, g.text.find_last_not_of(ws) + 1 - b0);
      hyps.push_back(text);
      jsonl << "{\"condition\": " << q(cond) << ", \"image\": " << q(items[i].image)
            << ", \"prompt\": " << q(items[i].prompt) << ", \"greedy_ids\": [";
      for (size_t t = 0; t < g.tokens.size(); ++t) jsonl << (t ? ", " : "") << g.tokens[t];
      jsonl << "], \"text\": " << q(text) << "}\n";
      bar.update(i + 1, 0);
    }
    bar.finish();
    std::printf("| %s | %zu |", cond.c_str(), items.size());
    for (auto& l : langs) {
      std::vector<std::string> refs;
      size_t exact = 0;
      double rouge = 0;
      for (size_t i = 0; i < items.size(); ++i) {
        refs.push_back(items[i].refs[l]);
        exact += hyps[i] == refs.back();
        rouge += loupe_cli::rouge_l(hyps[i], refs.back());
      }
      std::printf(" %.1f %% | %.3f | %.3f |", 100.0 * double(exact) / double(items.size()),
                  loupe_cli::corpus_bleu(hyps, refs), rouge / double(items.size()));
    }
    for (auto& l : langs) {
      size_t n = 0;
      for (auto& h : hyps) n += detect.at(l)(h);
      std::printf(" %.1f %% |", 100.0 * double(n) / double(items.size()));
    }
    std::printf("\n");
    std::fflush(stdout);
  }
  if (a.has("--jsonl")) {
    jsonl_file.out.close();
    if (!jsonl_file.out || std::rename(jsonl_file.tmp.c_str(), jsonl_file.path.c_str()) != 0)
      loupe::fail(jsonl_file.path, ": cannot write");
    jsonl_file.tmp.clear();  // renamed: nothing to remove
  }
  return 0;
}

int cmd_serve(const loupe_cli::Args& a, const std::vector<std::pair<std::string, float>>& loras) {
#ifdef LOUPE_HAVE_SERVE
  loupe::DescribeOptions opt;
  opt.conv = a.get({"--conv"}, "");
  opt.gen.max_tokens = a.integer({"-n", "--n-predict"}, 512);
  opt.session = session_options(a);
  opt.clip_precision = clip_precision(a);
  return loupe_cli::serve(a, loras, opt, a.integer({"-t", "--threads"}, 2));
#else
  (void)a, (void)loras;
  loupe::fail("serve: this loupe was built without cpp-httplib (Debian: apt install libcpp-httplib-dev, then rebuild)");
#endif
}

int cmd_caption(const loupe_cli::Args& a, const std::vector<std::pair<std::string, float>>& loras) {
  loupe::DescribeOptions opt;
  opt.conv = a.get({"--conv"}, "");
  opt.gen = generate_options(a);
  opt.session = session_options(a);
  opt.clip_precision = clip_precision(a);
  return loupe_cli::caption(a, loras, opt, a.integer({"-t", "--threads"}, 2));
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
    auto a = loupe_cli::Args::parse(argc, argv, 2, kValueFlags, kBoolFlags, kTwoValueFlags);
    const auto loras = lora_flags(a);
    if (!loras.empty() && cmd != "generate" && cmd != "describe" && cmd != "chat" && cmd != "eval" && cmd != "serve" && cmd != "caption")
      loupe::fail(cmd, ": --lora is for generate, describe, chat, eval, serve and caption");
    if (a.has("-h") || a.has("--help")) {
      std::fputs(kHelp, stdout);
      return 0;
    }
    if (!a.positional.empty()) loupe::fail("unexpected argument '", a.positional[0], "' (see --help)");
    if (cmd == "generate") return cmd_generate(a, loras);
    if (cmd == "tokenize") return cmd_tokenize(a);
    if (cmd == "describe") return cmd_describe(a, loras);
    if (cmd == "chat") return cmd_chat(a, loras);
    if (cmd == "eval") return cmd_eval(a, loras);
    if (cmd == "serve") return cmd_serve(a, loras);
    if (cmd == "caption") return cmd_caption(a, loras);
    loupe::fail("unknown command '", cmd, "' (see --help)");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "loupe: error: %s\n", e.what());
    return 1;
  }
}
