// loupe_bench: the C++ half of bench/run.sh. Each subcommand runs one
// measurement in a fresh process and prints one JSON line on stdout, so peak
// RSS (getrusage) belongs to that measurement alone.
//
//   loupe_bench make-llama OUT.gguf --type q4_0|q8_0 --vocab tokenizer.model [--layers N]
//   loupe_bench make-mmproj OUT.gguf
//   loupe_bench bandwidth -t N                 STREAM-style read probe (GB/s)
//   loupe_bench kernels -t N [--n 1,128] [--gen REPS] [--rows R --cols C --mats M] [--level avx512] [--type q4_0]
//                                              quantised matmul kernels, every level
//   loupe_bench llm MODEL.gguf -t N [--prompt 128] [--gen 32]
//   loupe_bench batch MODEL.gguf -t N [--n 1,2,4,8,16] [--prompt 32] [--gen 32]
//                                              aggregate decode tok/s of B sessions in one batch
//   loupe_bench clip MMPROJ.gguf -t N          one ViT encode of a random image
//   loupe_bench ttft MODEL.gguf MMPROJ.gguf -t N [--prompt 32]
//
// Synthetic models have LLaMA-7B / ViT-L/14-336 shapes and random weights:
// speed does not depend on the values, only on the shapes and types. Quantised
// blocks are written directly (random nibbles/bytes, a fixed-range scale), in
// a stream, so making a 3.8 GB file needs little memory.
#include <loupe/ops/kernels.hpp>
#include <loupe/pipeline/pipeline.hpp>

#include "../apps/common/peak_rss.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

using namespace loupe;
using Clock = std::chrono::steady_clock;

namespace {

double ms_since(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

double peak_rss_mb() { return loupe_cli::peak_rss_bytes() / (1024.0 * 1024.0); }

// splitmix64: fast, good enough for random weights.
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed) {}
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  float uniform() { return float(next() >> 40) * (1.0f / 16777216.0f) * 2.0f - 1.0f; }  // [-1, 1)
};

// Random tensor bytes of type t with values of magnitude about `scale`.
GgufWriter::Producer random_tensor(DType t, std::vector<int64_t> shape, float scale, uint64_t seed) {
  return [t, shape, scale, seed](std::vector<uint8_t>& out) {
    const TensorView v = make_view(t, shape, nullptr);
    out.resize(v.nbytes());
    Rng r(seed);
    if (t == DType::Q4_0 || t == DType::Q8_0) {
      const size_t bb = size_t(dtype_info(t).block_bytes), nblocks = out.size() / bb;
      const uint16_t d = f32_to_fp16(t == DType::Q4_0 ? scale / 4.6f : scale / 73.0f);  // uniform q: std 4.6 / 73
      for (size_t b = 0; b < nblocks; ++b) {
        uint8_t* p = out.data() + b * bb;
        std::memcpy(p, &d, 2);
        for (size_t j = 2; j < bb; j += 8) {
          uint64_t x = r.next();
          const size_t n = std::min<size_t>(8, bb - j);
          std::memcpy(p + j, &x, n);
        }
        if (t == DType::Q8_0)
          for (size_t j = 2; j < bb; ++j)
            if (p[j] == 0x80) p[j] = 0x81;  // the quantiser never makes -128
      }
    } else {
      const int64_t n = v.numel();
      std::vector<float> row(size_t(v.cols()));
      for (int64_t i = 0; i < n; i += v.cols()) {
        for (float& x : row) x = r.uniform() * scale * 1.7f;  // uniform(-a, a) has std a/1.7
        from_f32(t, row.data(), out.data() + size_t(i / v.cols()) * row_bytes(t, v.cols()), v.cols());
      }
    }
  };
}

GgufWriter::Producer constant_f32(int64_t n, float value) {
  return [n, value](std::vector<uint8_t>& out) {
    std::vector<float> v(size_t(n), value);
    out.assign(reinterpret_cast<const uint8_t*>(v.data()), reinterpret_cast<const uint8_t*>(v.data() + n));
  };
}

void write_with_progress(const GgufWriter& w, const std::string& path) {
  size_t total = 0;
  for (auto& t : w.tensors) total += t.nbytes();
  auto t0 = Clock::now();
  w.write_file(path, [&](size_t, size_t done) {
    static int last = -1;
    const int pct = int(100.0 * double(done) / double(total));
    if (pct / 10 != last / 10) std::fprintf(stderr, "\r%s: %d%%", path.c_str(), pct), last = pct;
  });
  std::fprintf(stderr, "\r%s: %.1f GB in %.0f s\n", path.c_str(), double(total) / 1e9, ms_since(t0) / 1000);
}

// LLaMA-7B (Vicuna-7B v1.5 / ShareGPT4V-7B) shapes, every matrix in `type`,
// the LLaMA tokenizer (tokenizer.model) in its metadata so llama.cpp loads it too.
void make_llama(const std::string& out, DType type, const std::string& vocab_path, int64_t layers) {
  // A tokenizer.model, or a GGUF that embeds the LLaMA vocabulary (demo/shapes-q4_0.gguf does: the
  // GPU machine has the repository but not ../shared).
  const bool gguf = vocab_path.size() > 5 && vocab_path.compare(vocab_path.size() - 5, 5, ".gguf") == 0;
  const Tokenizer tok = gguf ? read_vocab(GgufFile::open(vocab_path)) : Tokenizer::load(vocab_path);
  LlamaConfig c;
  c.n_vocab = 32000, c.dim = 4096, c.n_layers = layers, c.n_heads = c.n_kv_heads = 32, c.head_dim = 128;
  c.ffn_dim = 11008, c.n_ctx = 4096, c.rms_eps = 1e-5f, c.rope_base = 10000.0f;
  GgufWriter w;
  write_llama_config(w, c);
  w.set("general.name", GgufValue::str("synthetic-llama-7b"));
  w.set("general.file_type", GgufValue::u32(gguf_file_type(type)));
  w.set("general.quantization_version", GgufValue::u32(2));
  write_vocab(w, tok, c.n_vocab);
  uint64_t seed = 1;
  for (const LlamaTensor& t : llama_tensors(c)) {
    if (t.shape.size() == 1) w.add_tensor(t.gguf, DType::F32, t.shape, constant_f32(t.shape[0], 1.0f));  // norms
    else w.add_tensor(t.gguf, type, t.shape, random_tensor(type, t.shape, 0.02f, seed++));
  }
  write_with_progress(w, out);
}

// CLIP ViT-L/14-336 (23 blocks: LLaVA's feature layer -2) + mlp2x_gelu 1024 -> 4096 -> 4096,
// matrices in F16 like llama.cpp's mmproj-model-f16.gguf.
void make_mmproj(const std::string& out) {
  ClipConfig c;
  c.image_size = 336, c.patch_size = 14, c.dim = 1024, c.ffn_dim = 4096, c.n_heads = 16, c.n_layers_run = 23;
  c.projection_dim = 768, c.aspect_ratio = "pad";
  GgufWriter w;
  write_clip_config(w, c);
  w.set("general.name", GgufValue::str("synthetic-clip-vit-large-patch14-336"));
  w.set("general.file_type", GgufValue::u32(gguf_file_type(DType::F16)));
  uint64_t seed = 1000;
  for (const ClipTensor& t : clip_tensors(c, 4096)) {
    const bool ln = t.gguf.find("ln") != std::string::npos;  // LayerNorms: weight 1, bias 0
    if (t.storage != Storage::F32) w.add_tensor(t.gguf, DType::F16, t.shape, random_tensor(DType::F16, t.shape, 0.02f, seed++));
    else if (ln) w.add_tensor(t.gguf, DType::F32, t.shape, constant_f32(t.shape[0], t.gguf.find("weight") != std::string::npos ? 1.0f : 0.0f));
    else w.add_tensor(t.gguf, DType::F32, t.shape, random_tensor(DType::F32, t.shape, 0.01f, seed++));
  }
  write_with_progress(w, out);
}

// STREAM-style read probe: each thread sums its own slice of a buffer far larger
// than the caches (touched first, so no page faults are timed); best of 5.
double read_bandwidth(int threads, size_t mb) {
  const size_t n = mb * (size_t(1) << 20) / sizeof(float);
  std::vector<float> buf(n, 1.0f);
  ThreadPool pool(threads);
  const int64_t parts = 64;
  std::vector<float> sink(size_t(parts) * 16);
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    auto t0 = Clock::now();
    pool.parallel_for(parts, [&](int64_t part) {
      const size_t len = n / size_t(parts);
      const float* p = buf.data() + size_t(part) * len;
      float s[16] = {};
      for (size_t i = 0; i + 16 <= len; i += 16)
        for (int k = 0; k < 16; ++k) s[k] += p[i + k];
      std::copy(s, s + 16, sink.begin() + part * 16);
    });
    const double gbs = double(n) * sizeof(float) / (ms_since(t0) / 1000) / 1e9;
    best = std::max(best, gbs);
  }
  return best;
}

std::vector<int32_t> random_tokens(int64_t n, int64_t vocab, uint64_t seed) {
  Rng r(seed);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  ids[0] = 1;  // BOS
  for (int64_t i = 1; i < n; ++i) ids[size_t(i)] = int32_t(3 + r.next() % uint64_t(vocab - 3));
  return ids;
}

// Touch every page of a mapped file so the timed parts run on resident memory,
// as llama.cpp's do (it reads every weight while loading to repack them). On
// this machine the host pages out memory left idle for ~30 s (DAMON), so an
// interleaved run would otherwise time disk reads. Returns milliseconds.
// The file in the page cache, through a mapping of its own (dropped after): a
// model that packed its weights released its pages of them, and touching them
// through the model's mapping would map them into this process again.
double warm(const std::string& path) {
  auto t0 = Clock::now();
  const Blob f = Blob::open(path);
  volatile uint8_t sink = 0;
  uint8_t acc = 0;
  for (size_t o = 0; o < f.size; o += 4096) acc ^= f.data[o];
  sink = acc;
  (void)sink;
  return ms_since(t0);
}

bool g_pack = true;  // --no-pack: leave Q4_0 in ggml's layout (LlamaModel::LoadOptions)
LlamaModel::LoadOptions load_options(Backend* be) {
  LlamaModel::LoadOptions o;
  o.pack_for_cpu = g_pack && !be;  // a device reads the file's layout
  return o;
}

// Greedy with EOS ignored: `gen` decode passes after the prefill (llama-bench's tg).
GenerateOptions decode_only(int64_t gen) {
  GenerateOptions o;
  o.stop_at_eos = false;
  o.max_tokens = int(gen) + 1;  // the last sampled token is not fed
  return o;
}

// Bytes a decode step must read: every weight but the embedding table (one row of it).
double decode_bytes(const LanguageModel& lm) {
  double b = 0;
  for (const GgufTensor& t : lm.file.tensors)
    if (t.name != "token_embd.weight" || !lm.file.tensor("output.weight")) b += double(t.view.nbytes());
  return b;
}

// The device a run used, for its JSON line.
std::string device_name(Backend* be) { return be ? be->describe() : "cpu"; }

// A device backend gets every weight before the clock starts (the first use would upload it).
void upload_weights(const LanguageModel& lm, Backend* be) {
  if (!be) return;
  for (const GgufTensor& t : lm.file.tensors) be->prepare(t.view);
}

// Prefill `prompt` tokens, then decode `gen` tokens greedily (EOS ignored).
void bench_llm(const std::string& path, int threads, int64_t prompt, int64_t gen, int64_t ctx, Backend* be) {
  const double warm_ms = warm(path);
  auto t0 = Clock::now();
  LanguageModel lm = LanguageModel::open(path, load_options(be));
  const double load_ms = ms_since(t0);
  ThreadPool pool(threads);
  SessionOptions so;
  so.n_ctx = ctx, so.backend = be;
  upload_weights(lm, be);
  Session s(lm, so);
  const Generation g = generate(s, random_tokens(prompt, lm.model.cfg.n_vocab, 7), {}, decode_only(gen), nullptr, &pool);
  uint64_t h = 0;
  for (size_t i = 0; i < size_t(gen); ++i) h = h * 1000003u + uint64_t(g.tokens[i]);
  std::printf("{\"engine\":\"loupe\",\"threads\":%d,\"load_ms\":%.1f,\"warm_ms\":%.1f,\"prefill_tokens\":%lld,\"prefill_tok_s\":%.3f,"
              "\"decode_tokens\":%lld,\"decode_tok_s\":%.3f,\"decode_bytes_per_token\":%.0f,\"peak_rss_mb\":%.0f,"
              "\"kernels\":\"%s%s\",\"tokens_hash\":%llu,\"pool_serial_jobs\":%lld,\"device\":\"%s\"}\n",
              threads, load_ms, warm_ms, (long long)prompt, 1000.0 * double(prompt) / g.stats.prefill_ms, (long long)gen,
              1000.0 * double(gen) / g.stats.decode_ms, decode_bytes(lm), peak_rss_mb(), kernels().name, lm.model.packed ? "+q4_0x16" : "",
              (unsigned long long)h,
              (long long)pool.serial_jobs(), device_name(be).c_str());
}

// Aggregate decode speed of B sessions decoding together (one forward pass per
// step for all of them, Generator's continuous batching): B prompts of `prompt`
// random tokens are read in the first steps, then `gen` decode steps are timed.
void bench_batch(const std::string& path, int threads, const std::vector<int64_t>& sizes, int64_t prompt, int64_t gen, Backend* be) {
  warm(path);
  LanguageModel lm = LanguageModel::open(path, load_options(be));
  ThreadPool pool(threads);
  upload_weights(lm, be);
  for (int64_t B : sizes) {
    SessionOptions so;
    so.n_ctx = prompt + gen + 8, so.backend = be;
    std::vector<Session> sessions;
    for (int64_t b = 0; b < B; ++b) sessions.emplace_back(lm, so);
    Batch batch(lm, 512, backend_of(so));
    Generator gen_all(batch);
    for (int64_t b = 0; b < B; ++b)
      gen_all.submit(sessions[size_t(b)], random_tokens(prompt, lm.model.cfg.n_vocab, 100 + uint64_t(b)), {}, decode_only(gen));
    while (gen_all.busy()) {  // the prompts (and each first token)
      bool prompts_read = true;
      for (const Session& s : sessions) prompts_read &= s.n_past() >= prompt;
      if (prompts_read) break;
      gen_all.step(&pool);
    }
    const auto t0 = Clock::now();
    int64_t steps = 0;
    for (; gen_all.busy(); ++steps) gen_all.step(&pool);
    const double ms = ms_since(t0);
    std::printf("{\"engine\":\"loupe\",\"threads\":%d,\"batch\":%lld,\"prompt\":%lld,\"steps\":%lld,\"step_ms\":%.1f,"
                "\"aggregate_tok_s\":%.3f,\"per_sequence_tok_s\":%.3f,\"peak_rss_mb\":%.0f,\"kernels\":\"%s\",\"device\":\"%s\"}\n",
                threads, (long long)B, (long long)prompt, (long long)steps, ms / double(steps), 1000.0 * double(B * steps) / ms,
                1000.0 * double(steps) / ms, peak_rss_mb(), kernels().name, device_name(be).c_str());
    std::fflush(stdout);
  }
}

Tensor random_pixels(int64_t S) {
  Tensor p(DType::F32, {3, S, S});
  Rng r(99);
  for (int64_t i = 0; i < 3 * S * S; ++i) p.f32()[i] = r.uniform() * 2.0f;
  return p;
}

void bench_clip(const std::string& path, int threads, Backend* be, Precision precision) {
  warm(path);
  VisionModel vm = VisionModel::open(path);
  ThreadPool pool(threads);
  Tensor px = random_pixels(vm.clip.cfg.image_size);
  if (be) vm.projector(clip_encode(vm.clip, px.f32(), &pool, nullptr, be), &pool, be);  // a device: weights uploaded, kernels warm
  auto t0 = Clock::now();
  std::vector<float> f = clip_encode(vm.clip, px.f32(), &pool, nullptr, be, precision);
  const double clip_ms = ms_since(t0);
  t0 = Clock::now();
  std::vector<float> e = vm.projector(f, &pool, be);
  const double proj_ms = ms_since(t0);
  double err = 0;  // bf16 products: the features' distance from the f32 encode, max |a − b| / max |b|
  if (precision == Precision::Bf16) {
    const std::vector<float> exact = clip_encode(vm.clip, px.f32(), &pool, nullptr, be, Precision::F32);
    double d = 0, m = 0;
    for (size_t i = 0; i < f.size(); ++i) d = std::max(d, double(std::fabs(f[i] - exact[i]))), m = std::max(m, double(std::fabs(exact[i])));
    err = m > 0 ? d / m : 0;
  }
  std::printf("{\"engine\":\"loupe\",\"threads\":%d,\"clip_ms\":%.1f,\"projector_ms\":%.1f,\"peak_rss_mb\":%.0f,\"device\":\"%s\","
              "\"precision\":\"%s\",\"features_rel_err_vs_f32\":%.2e}\n",
              threads, clip_ms, proj_ms, peak_rss_mb(), device_name(be).c_str(), precision == Precision::Bf16 ? "bf16" : "f32", err);
}

// Image + text prompt to the first generated token: CLIP, projector, prefill of
// BOS + image positions + `prompt` text tokens, first token.
void bench_ttft(const std::string& llm_path, const std::string& mmproj_path, int threads, int64_t prompt, Backend* be) {
  warm(llm_path), warm(mmproj_path);
  LanguageModel lm = LanguageModel::open(llm_path, load_options(be));
  VisionModel vm = VisionModel::open(mmproj_path);
  ThreadPool pool(threads);
  const LlamaConfig& c = lm.model.cfg;
  Tensor px = random_pixels(vm.clip.cfg.image_size);
  if (be) vm.projector(clip_encode(vm.clip, px.f32(), &pool, nullptr, be), &pool, be), upload_weights(lm, be);
  auto t0 = Clock::now();
  std::vector<float> img = vm.projector(clip_encode(vm.clip, px.f32(), &pool, nullptr, be), &pool, be);
  const double vision_ms = ms_since(t0);
  const int64_t n_img = int64_t(img.size()) / c.dim, n = 1 + n_img + prompt;
  const std::vector<int32_t> text = random_tokens(1 + prompt, c.n_vocab, 11);
  std::vector<int32_t> ids(size_t(n), kImageTokenIndex);  // BOS, the image's positions, the prompt
  ids[0] = text[0];
  std::copy(text.begin() + 1, text.end(), ids.begin() + 1 + n_img);
  std::vector<float> x(size_t(n * c.dim));
  embed(lm.model, ids.data(), 1, x.data());
  std::copy(img.begin(), img.end(), x.begin() + c.dim);
  embed(lm.model, ids.data() + 1 + n_img, prompt, x.data() + (1 + n_img) * c.dim);
  SessionOptions so;
  so.n_ctx = n + 64, so.backend = be;
  Session s(lm, so);
  GenerateOptions o;
  o.max_tokens = 1;
  const Generation g = generate(s, ids, std::move(x), o, nullptr, &pool);
  std::printf("{\"engine\":\"loupe\",\"threads\":%d,\"ttft_ms\":%.1f,\"vision_ms\":%.1f,\"prefill_ms\":%.1f,"
              "\"positions\":%lld,\"first_token\":%d,\"peak_rss_mb\":%.0f,\"device\":\"%s\"}\n",
              threads, vision_ms + g.stats.prefill_ms, vision_ms, g.stats.prefill_ms, (long long)n,
              g.tokens.empty() ? -1 : g.tokens[0], peak_rss_mb(), device_name(be).c_str());
}

// Kernel throughput on LLaMA-7B-sized matrices (random bytes in the blocks):
// gemv (decode) in GB/s of weights read, gemm (prefill) in GOP/s, per level.
// Weights: 8 matrices of 11008 × 4096 (> L3), used in turn, so gemv reads DRAM.
// Prints the best and the median of `reps` runs (the best is the kernel's
// capability; the median shows the noise of a shared machine).
// --rows/--cols/--mats change the matrices (a few small ones stay in cache: the
// kernel's compute ceiling); --level and --type pick one kernel table / dtype.
void bench_kernels(int threads, const std::vector<int64_t>& ns, int reps, int64_t rows, int64_t cols, int64_t mats,
                   const std::string& level, const std::string& type) {
  const int64_t n_gemm = *std::max_element(ns.begin(), ns.end());
  ThreadPool pool(threads);
  for (DType t : {DType::Q4_0, DType::Q8_0}) {
    if (!type.empty() && dtype_from_name(type) != t) continue;
    const size_t bytes = size_t(rows) * row_bytes(t, cols);
    std::vector<uint8_t> w(bytes * size_t(mats));
    Rng r(3);
    for (size_t i = 0; i < w.size(); i += 8) {
      uint64_t v = r.next();
      std::memcpy(w.data() + i, &v, std::min<size_t>(8, w.size() - i));
    }
    const size_t bb = size_t(dtype_info(t).block_bytes);
    for (size_t b = 0; b < w.size() / bb; ++b) {
      const uint16_t d = f32_to_fp16(0.001f);
      std::memcpy(w.data() + b * bb, &d, 2);
    }
    std::vector<float> x(size_t(n_gemm * cols)), y(size_t(n_gemm * rows));
    for (float& v : x) v = r.uniform();
    for (CpuLevel l : kAllCpuLevels) {
      const KernelTable* kt = kernels_for(l);
      if (!kt || (!level.empty() && level != kt->name)) continue;
      // The level's Q4_0x16 kernel too, on packed copies (a model's layout when it runs on this level).
      AlignedBuffer<uint8_t> packed;
      const bool x16 = t == DType::Q4_0 && kt->pack_q4_0_x16 && scalar::x16_packable(rows, cols);
      if (x16) {
        packed.resize(w.size());
        for (int64_t m = 0; m < mats; ++m)
          kt->pack_q4_0_x16(w.data() + size_t(m) * bytes, row_bytes(t, cols), rows, cols / QK, packed.data() + size_t(m) * bytes);
      }
      for (int layout = 0; layout < (x16 ? 2 : 1); ++layout)
        for (int64_t n : ns) {
          if (l == CpuLevel::Scalar && n > 1) continue;  // minutes
          std::vector<double> v;
          for (int rep = 0; rep < reps; ++rep) {
            TensorView wv = make_view(t, {rows, cols}, w.data() + size_t(rep % mats) * bytes);
            if (layout) wv.packed = packed.data() + size_t(rep % mats) * bytes;
            auto t0 = Clock::now();
            matmul(*kt, wv, x.data(), n, y.data(), &pool);
            v.push_back(ms_since(t0));
          }
          std::sort(v.begin(), v.end());
          const double best = v[0], med = v[v.size() / 2];
          const double ops = 2.0 * double(n) * double(rows) * double(cols);
          std::printf("{\"kernel\":\"%s%s\",\"type\":\"%s\",\"threads\":%d,\"n\":%lld,\"best_ms\":%.3f,\"median_ms\":%.3f,"
                      "\"best_gb_s\":%.2f,\"median_gb_s\":%.2f,\"best_gop_s\":%.1f,\"median_gop_s\":%.1f}\n",
                      kt->name, layout ? "+q4_0x16" : "", dtype_name(t), threads, (long long)n, best, med, double(bytes) / best / 1e6,
                      double(bytes) / med / 1e6, ops / best / 1e6, ops / med / 1e6);
          std::fflush(stdout);
        }
    }
  }
}

struct Opts {
  std::vector<std::string> pos;
  int threads = 1;
  int64_t prompt = -1, gen = 32, ctx = 512, layers = 32, mb = 1024;
  int64_t rows = 11008, cols = 4096, mats = 8;
  std::string type = "q4_0", vocab, level, ktype, device = "cpu", precision = "f32";
  std::vector<int64_t> ns;  // kernels: activation row counts
};

Opts parse(int argc, char** argv) {
  Opts o;
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) fail(a, " needs a value");
      return argv[++i];
    };
    if (a == "-t" || a == "--threads") o.threads = std::stoi(val());
    else if (a == "--prompt") o.prompt = std::stoll(val());
    else if (a == "--gen") o.gen = std::stoll(val());
    else if (a == "--ctx") o.ctx = std::stoll(val());
    else if (a == "--layers") o.layers = std::stoll(val());
    else if (a == "--mb") o.mb = std::stoll(val());
    else if (a == "--type") o.type = o.ktype = val();
    else if (a == "--level") o.level = val();
    else if (a == "--rows") o.rows = std::stoll(val());
    else if (a == "--cols") o.cols = std::stoll(val());
    else if (a == "--mats") o.mats = std::stoll(val());
    else if (a == "--n") {
      const std::string v = val();
      for (size_t p = 0; p < v.size();) {
        const size_t q = v.find(',', p);
        o.ns.push_back(std::stoll(v.substr(p, q == std::string::npos ? std::string::npos : q - p)));
        p = q == std::string::npos ? v.size() : q + 1;
      }
    }
    else if (a == "--vocab") o.vocab = val();
    else if (a == "--device") o.device = val();
    else if (a == "--clip-precision") o.precision = val();
    else if (a == "--no-pack") g_pack = false;
    else if (!a.empty() && a[0] == '-') fail("unknown option ", a);
    else o.pos.push_back(a);
  }
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc < 2) {
      std::fputs("usage: loupe_bench make-llama|make-mmproj|bandwidth|kernels|llm|batch|clip|ttft ... (see bench/README.md)\n", stderr);
      return 2;
    }
    const std::string cmd = argv[1];
    Opts o = parse(argc, argv);
    // --device cuda|auto: the llm, batch, clip and ttft runs on that backend (null: the CPU, as before).
    const BackendHandle device = open_backend(parse_device(o.device), [](const std::string& l) { std::fprintf(stderr, "%s\n", l.c_str()); });
    Backend* be = device.get() == &cpu_backend() ? nullptr : device.get();
    auto need = [&](size_t n) {
      if (o.pos.size() != n) fail(cmd, ": expected ", n, " file argument(s)");
    };
    if (cmd == "make-llama") {
      need(1);
      if (o.vocab.empty()) fail("make-llama: --vocab tokenizer.model is required");
      make_llama(o.pos[0], dtype_from_name(o.type), o.vocab, o.layers);
    } else if (cmd == "make-mmproj") {
      need(1);
      make_mmproj(o.pos[0]);
    } else if (cmd == "bandwidth") {
      std::printf("{\"threads\":%d,\"read_gb_s\":%.2f}\n", o.threads, read_bandwidth(o.threads, size_t(o.mb)));
    } else if (cmd == "kernels") {
      bench_kernels(o.threads, o.ns.empty() ? std::vector<int64_t>{1, 128} : o.ns, int(o.gen == 32 ? 9 : o.gen), o.rows, o.cols,
                    o.mats, o.level, o.ktype);
    } else if (cmd == "llm") {
      need(1);
      bench_llm(o.pos[0], o.threads, o.prompt < 0 ? 128 : o.prompt, o.gen, o.ctx, be);
    } else if (cmd == "batch") {
      need(1);
      bench_batch(o.pos[0], o.threads, o.ns.empty() ? std::vector<int64_t>{1, 2, 4, 8, 16} : o.ns, o.prompt < 0 ? 32 : o.prompt, o.gen, be);
    } else if (cmd == "clip") {
      need(1);
      bench_clip(o.pos[0], o.threads, be, o.precision == "bf16" ? Precision::Bf16 : Precision::F32);
    } else if (cmd == "ttft") {
      need(2);
      bench_ttft(o.pos[0], o.pos[1], o.threads, o.prompt < 0 ? 32 : o.prompt, be);
    } else {
      fail("unknown command '", cmd, "'");
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "loupe_bench: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
