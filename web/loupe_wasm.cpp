// loupe in the browser: the same include/loupe headers as the native CLI,
// compiled with Emscripten and bound to JavaScript with embind.
//
// The JS side (web/loupe-worker.js) owns the bytes' journey: it asks for a
// buffer of the file's size (allocFile), streams the file into the returned
// address of WASM memory chunk by chunk (fetch body or File.stream()), then
// hands the buffers over (loadModel, loadAdapter, setImage). No file is ever
// held twice and no JS ArrayBuffer holds a whole model.
//
// Every call catches C++ exceptions and rethrows them as JS Errors with the
// message, so the page can show what went wrong.
#include <emscripten.h>
#include <emscripten/bind.h>
#include <emscripten/heap.h>
#include <emscripten/val.h>

#include <loupe/pipeline/lora.hpp>
#include <loupe/pipeline/pipeline.hpp>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <map>
#include <memory>

using emscripten::val;

namespace {

constexpr double kMiB = 1024.0 * 1024.0;

[[noreturn]] void throw_js(const std::string& msg) { val::global("Error").new_(val(msg)).throw_(); }

// The JS error is thrown after the C++ handler has finished, so the exception is released.
template <class F>
auto guarded(F&& f) -> decltype(f()) {
  std::string message;
  try {
    return f();
  } catch (const std::bad_alloc&) {
    message = "out of WebAssembly memory (" + std::to_string(int(double(emscripten_get_heap_size()) / kMiB)) +
              " MiB in use, at most " + std::to_string(int(double(emscripten_get_heap_max()) / kMiB)) +
              " MiB): the model is too big for the browser";
  } catch (const std::exception& e) {
    message = e.what();
  }
  throw_js(message);
}

// A file's bytes in WASM memory, filled by JS.
struct Buffer {
  std::shared_ptr<uint8_t> bytes;
  size_t size = 0;
  std::string name;
  loupe::Blob blob() const {
    loupe::Blob b;
    b.data = bytes.get();
    b.size = size;
    b.name = name;
    b.owner = bytes;
    return b;
  }
};

val to_bytes(std::string_view s) {
  val a = val::global("Uint8Array").new_(s.size());
  a.call<void>("set", val(emscripten::typed_memory_view(s.size(), reinterpret_cast<const uint8_t*>(s.data()))));
  return a;
}

// A TokenCallback that streams each piece to the JS function `on_text` (none: no
// streaming); the function returning false stops generation.
loupe::TokenCallback stream_to(val on_text) {
  return [on_text](std::string_view s) {
    if (on_text.isUndefined() || on_text.isNull()) return true;
    val r = on_text(to_bytes(s));
    return r.isUndefined() || r.as<bool>();
  };
}

// The timings of a generation, set on `o` (the names web/loupe.js documents).
void set_timings(val& o, const loupe::GenerateStats& st) {
  o.set("promptTokens", double(st.prompt_tokens));
  o.set("generated", double(st.generated));
  o.set("prefillMs", st.prefill_ms);
  o.set("decodeMs", st.decode_ms);
  o.set("prefillTokS", st.prefill_tok_s());
  o.set("decodeTokS", st.decode_tok_s());
}

class Engine {
 public:
  explicit Engine(int threads) : threads_(threads < 1 ? 1 : threads), pool_(threads_) {}

  int threads() const { return threads_; }
  static double heapMax() { return double(emscripten_get_heap_max()); }
  static double heapSize() { return double(emscripten_get_heap_size()); }

  // A buffer of `size` bytes for file `slot`; JS writes into it at the returned address.
  double allocFile(const std::string& slot, double size, const std::string& name) {
    return guarded([&] {
      dropFile(slot);
      if (!(size >= 0) || size > heapMax())
        loupe::fail(name, ": ", size / kMiB, " MiB does not fit in WebAssembly's ", heapMax() / kMiB, " MiB address space");
      const size_t n = size_t(size);
      void* p = std::malloc(n ? n : 1);
      if (!p)
        loupe::fail(name, ": cannot allocate ", int(size / kMiB), " MiB of WebAssembly memory (", int(heapSize() / kMiB),
                    " MiB in use, at most ", int(heapMax() / kMiB), " MiB): the model is too big for the browser's memory",
                    " (if another model was loaded before, reload the page to start from empty memory)");
      Buffer b;
      b.bytes = std::shared_ptr<uint8_t>(static_cast<uint8_t*>(p), [](uint8_t* q) { std::free(q); });
      b.size = n;
      b.name = name;
      buffers_[slot] = b;
      // pthreads + memory growth: a worker thread may have grown the memory, leaving this
      // thread's Module.HEAPU8 short. Touching HEAPU8 from JS here refreshes it (the build
      // routes every HEAP access through GROWABLE_HEAP_U8()), before JS writes the file into p.
      EM_ASM({ HEAPU8[$0] = 0; }, p);
      return double(reinterpret_cast<uintptr_t>(p));
    });
  }
  void dropFile(const std::string& slot) { buffers_.erase(slot); }

  // Free the current model (before loading another: both need not fit at once).
  void unload() {
    loras_.reset();  // puts the base weights back; must go before the models
    clip_.clear();
    features_.clear();
    image_.clear();
    pixels_ = loupe::Tensor();
    vm_.reset();
    lm_.reset();
  }

  // Parse the text model and the mmproj from their slots; the buffers now belong to the models.
  val loadModel(const std::string& text_slot, const std::string& mmproj_slot) {
    return guarded([&] {
      unload();
      auto lm = std::make_unique<loupe::LanguageModel>(
          loupe::LanguageModel::from_file(loupe::GgufFile::parse(take(text_slot).blob())));
      auto vm = std::make_unique<loupe::VisionModel>(loupe::VisionModel::from_file(loupe::GgufFile::parse(take(mmproj_slot).blob())));
      if (vm->projector.out_dim != lm->model.cfg.dim)
        loupe::fail(vm->file.name(), ": the projector outputs width ", vm->projector.out_dim,
                    " but the language model's width is ", lm->model.cfg.dim, " (mmproj from a different model?)");
      lm_ = std::move(lm);
      vm_ = std::move(vm);
      loras_ = std::make_unique<loupe::LoraSet>(lm_->model, &vm_->projector);
      choose_context();
      return info();
    });
  }

  // Model facts for the page.
  val info() const {
    val o = val::object();
    if (!lm_) return o;
    const auto& c = lm_->model.cfg;
    o.set("textName", lm_->file.name());
    o.set("visionName", vm_ ? vm_->file.name() : std::string());
    o.set("dim", double(c.dim));
    o.set("layers", double(c.n_layers));
    o.set("vocab", double(c.n_vocab));
    o.set("contextLength", double(c.n_ctx));
    o.set("context", double(n_ctx_));
    o.set("kvType", std::string(loupe::dtype_name(kv_type_)));
    if (vm_) {
      o.set("visionLayers", double(vm_->clip.cfg.n_layers_run));
      o.set("imageSize", double(vm_->clip.cfg.image_size));
      o.set("patches", double(vm_->clip.cfg.n_patches()));
    }
    o.set("weightType", std::string(loupe::dtype_name(lm_->model.layers.empty() ? lm_->model.tok_embd.dtype
                                                                                  : lm_->model.layers[0].wq.dtype)));
    o.set("threads", threads_);
    o.set("heapBytes", heapSize());
    o.set("heapMaxBytes", heapMax());
    o.set("loraSupported", true);
    return o;
  }

  // The name of the companion file a LoRA GGUF needs for the tensors it replaces
  // outright (loupe.adapter.replace_file, e.g. the LLaVA projector), or "".
  std::string adapterReplaceFile(const std::string& slot) {
    return guarded([&] {
      auto it = buffers_.find(slot);
      if (it == buffers_.end()) loupe::fail("internal: no file was loaded into slot '", slot, "'");
      return loupe::GgufFile::parse(it->second.blob()).get_str("loupe.adapter.replace_file", "");
    });
  }

  // A llama.cpp LoRA GGUF (+ loupe's replacement GGUF when it names one), loaded switched off (scale 0).
  val loadAdapter(const std::string& name, const std::string& slot, const std::string& replace_slot) {
    return guarded([&] {
      if (!lm_ || !loras_) loupe::fail("load a model before an adapter");
      loupe::GgufFile f = loupe::GgufFile::parse(take(slot).blob());
      std::unique_ptr<loupe::GgufFile> r;
      if (!replace_slot.empty()) r = std::make_unique<loupe::GgufFile>(loupe::GgufFile::parse(take(replace_slot).blob()));
      loupe::LoraAdapter a = loupe::LoraAdapter::from_gguf(f, lm_->model.cfg, r.get());
      a.name = name;
      val notes = val::array();
      for (const std::string& n : a.notes) notes.call<void>("push", n);
      val o = val::object();
      o.set("summary", a.summary());
      loras_->add(std::move(a), 0.0f);
      for (const std::string& n : loras_->notes) notes.call<void>("push", n);
      loras_->notes.clear();
      o.set("notes", notes);
      return o;
    });
  }
  val adapters() const {
    val a = val::array();
    if (!loras_) return a;
    for (const auto& e : loras_->entries()) {
      val o = val::object();
      o.set("name", e.adapter->name);
      o.set("scale", e.scale);
      o.set("replacesProjector", e.adapter->replaces_projector());
      a.call<void>("push", o);
    }
    return a;
  }
  // Scale an adapter between requests (0 switches it off, its projector replacement too).
  void setLora(const std::string& name, double scale) {
    guarded([&] {
      if (!loras_) loupe::fail("no model loaded");
      const auto* e = loras_->find(name);
      if (!e) loupe::fail("no adapter named '", name, "' is loaded");
      if (e->scale != float(scale)) loras_->set_scale(name, float(scale));  // bumps adapter_revision
      return 0;
    });
  }

  // The image file's bytes (slot); decoded by loupe's own decoder, as the native CLI does.
  // Returns {cached, width, height}.
  val setImage(const std::string& slot) {
    return guarded([&] {
      if (!lm_ || !vm_) loupe::fail("no vision model loaded");
      Buffer b = take(slot);
      std::string bytes(reinterpret_cast<const char*>(b.bytes.get()), b.size);
      val o = val::object();
      const bool same = bytes == image_ && !clip_.empty();
      if (!same) {
        loupe::Image img = loupe::decode_image(b.bytes.get(), b.size, b.name);
        image_ = std::move(bytes);
        width_ = img.width, height_ = img.height;
        clip_.clear();
        features_.clear();
        pixels_ = loupe::preprocess(img, vm_->preprocess_config());
      }
      o.set("cached", same);
      o.set("width", width_);
      o.set("height", height_);
      return o;
    });
  }

  // One-shot description of the current image: streams UTF-8 pieces (Uint8Array)
  // to on_text (return false to stop). Returns {text, tokens, stats}.
  // The CLIP output is kept per image and re-projected when the adapters change
  // (an adapter may bring its own projector), as VisionChat does across turns.
  val describe(const std::string& prompt, int max_tokens, double temperature, double seed, const std::string& conv,
               val on_text) {
    return guarded([&] {
      if (!lm_ || !vm_) loupe::fail("no vision model loaded");
      if (image_.empty()) loupe::fail("no image set");
      loupe::DescribeOptions opt;
      if (!conv.empty()) opt.conv = conv;
      opt.gen.max_tokens = max_tokens;
      opt.gen.sampling.temperature = float(temperature);
      opt.gen.sampling.seed = uint64_t(seed);
      opt.n_ctx = n_ctx_;
      opt.kv_type = kv_type_;
      loupe::VisionChat chat(*lm_, *vm_, opt, &pool_);
      using clock = std::chrono::steady_clock;
      const bool cached = !clip_.empty();
      double encode_ms = 0, project_ms = 0;
      if (!cached) {
        auto t0 = clock::now();
        clip_ = loupe::clip_encode(vm_->clip, pixels_.f32(), &pool_);
        encode_ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();
      }
      if (features_.empty() || features_rev_ != lm_->model.adapter_revision) {
        auto t0 = clock::now();
        features_ = vm_->projector(clip_, &pool_);
        features_rev_ = lm_->model.adapter_revision;
        project_ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();
      }
      chat.image_features = features_;
      loupe::Generation g = chat.ask(prompt, stream_to(on_text));
      val o = val::object();
      o.set("text", to_bytes(g.text));
      o.set("tokens", val::array(g.tokens.begin(), g.tokens.end()));
      val st = val::object();
      st.set("encodeMs", encode_ms + project_ms);
      st.set("projectMs", project_ms);
      st.set("imageCached", cached);
      set_timings(st, g.stats);
      st.set("threads", threads_);
      st.set("heapBytes", heapSize());
      o.set("stats", st);
      return o;
    });
  }

  // Plain text generation (benchmarks): prompt -> text, same loop as `loupe generate`.
  val generate(const std::string& prompt, int max_tokens, double temperature, val on_text) {
    return guarded([&] {
      if (!lm_) loupe::fail("no model loaded");
      loupe::GenerateOptions opt;
      opt.max_tokens = max_tokens;
      opt.sampling.temperature = float(temperature);
      loupe::KVCache kv(lm_->model.cfg, n_ctx_, kv_type_);
      loupe::Generation g = loupe::generate_text(*lm_, kv, prompt, opt, stream_to(on_text), &pool_);
      val o = val::object();
      o.set("text", to_bytes(g.text));
      set_timings(o, g.stats);
      return o;
    });
  }

  // Text-only model (benchmarks): a GGUF with no vision half.
  val loadTextModel(const std::string& text_slot) {
    return guarded([&] {
      unload();
      lm_ = std::make_unique<loupe::LanguageModel>(
          loupe::LanguageModel::from_file(loupe::GgufFile::parse(take(text_slot).blob())));
      loras_ = std::make_unique<loupe::LoraSet>(lm_->model);
      choose_context();
      val o = val::object();
      o.set("dim", double(lm_->model.cfg.dim));
      o.set("layers", double(lm_->model.cfg.n_layers));
      o.set("context", double(n_ctx_));
      o.set("heapBytes", heapSize());
      return o;
    });
  }

  // Benchmark (bench/browser): prefill n_prompt tokens, then decode n_gen tokens
  // greedily with EOS ignored, F16 KV cache — the procedure of bench/loupe_bench.cpp's
  // `llm` (and llama-bench's pp/tg), so WASM and native figures compare directly.
  val bench(int n_prompt, int n_gen) {
    return guarded([&] {
      if (!lm_) loupe::fail("no model loaded");
      if (n_prompt < 1 || n_gen < 0) loupe::fail("bench: need at least one prompt token");
      const auto& m = lm_->model;
      const int64_t V = m.cfg.n_vocab, D = m.cfg.dim;
      loupe::KVCache kv(m.cfg, n_prompt + n_gen + 1, loupe::DType::F16);
      std::vector<int32_t> ids(static_cast<size_t>(n_prompt));
      uint64_t r = 7;
      for (int i = 0; i < n_prompt; ++i) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        ids[size_t(i)] = i == 0 ? 1 : int32_t(3 + (r >> 33) % uint64_t(V - 3));
      }
      std::vector<float> x(static_cast<size_t>(n_prompt * D)), logits(static_cast<size_t>(V));
      loupe::embed(m, ids.data(), n_prompt, x.data());
      using clock = std::chrono::steady_clock;
      auto t0 = clock::now();
      loupe::forward(m, kv, x.data(), n_prompt, logits.data(), false, &pool_);
      auto t1 = clock::now();
      for (int i = 0; i < n_gen; ++i) {
        const int32_t id = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
        loupe::embed(m, &id, 1, x.data());
        loupe::forward(m, kv, x.data(), 1, logits.data(), false, &pool_);
      }
      auto t2 = clock::now();
      val o = val::object();
      const double pms = std::chrono::duration<double, std::milli>(t1 - t0).count();
      const double dms = std::chrono::duration<double, std::milli>(t2 - t1).count();
      o.set("promptTokens", n_prompt);
      o.set("genTokens", n_gen);
      o.set("prefillMs", pms);
      o.set("decodeMs", dms);
      o.set("prefillTokS", 1000.0 * n_prompt / pms);
      o.set("decodeTokS", n_gen ? 1000.0 * n_gen / dms : 0.0);
      o.set("threads", threads_);
      return o;
    });
  }

 private:
  Buffer take(const std::string& slot) {
    auto it = buffers_.find(slot);
    if (it == buffers_.end()) loupe::fail("internal: no file was loaded into slot '", slot, "'");
    Buffer b = it->second;
    buffers_.erase(it);
    return b;
  }

  // Context and KV cache type: the model's context (at most 4096, as the CLI)
  // with an F32 cache (as the CLI) when that fits in what is left of the 4 GB;
  // otherwise an F16 cache, then a shorter context.
  void choose_context() {
    const auto& c = lm_->model.cfg;
    const double left = heapMax() - heapSize() - 256 * kMiB;  // activations, image features, slack
    int64_t ctx = std::min<int64_t>(c.n_ctx, 4096);
    auto kv_bytes = [&](int64_t n, int bytes) { return 2.0 * double(c.n_layers) * double(n) * double(c.n_kv_heads * c.head_dim) * bytes; };
    kv_type_ = loupe::DType::F32;
    if (kv_bytes(ctx, 4) > left) kv_type_ = loupe::DType::F16;
    while (kv_type_ == loupe::DType::F16 && ctx > 1024 && kv_bytes(ctx, 2) > left) ctx /= 2;
    if (kv_bytes(ctx, kv_type_ == loupe::DType::F32 ? 4 : 2) > left)
      loupe::fail("the model's weights fit, but not even a ", ctx, "-position KV cache (",
                  int(kv_bytes(ctx, 2) / kMiB), " MiB) fits in what is left of WebAssembly's ", int(heapMax() / kMiB),
                  " MiB: the model is too big for the browser's memory");
    n_ctx_ = ctx;
  }

  int threads_;
  loupe::ThreadPool pool_;
  std::map<std::string, Buffer> buffers_;
  std::unique_ptr<loupe::LanguageModel> lm_;
  std::unique_ptr<loupe::VisionModel> vm_;
  std::unique_ptr<loupe::LoraSet> loras_;
  int64_t n_ctx_ = 0;
  loupe::DType kv_type_ = loupe::DType::F32;
  std::string image_;
  int width_ = 0, height_ = 0;
  loupe::Tensor pixels_;
  std::vector<float> clip_;       // the current image through CLIP (before the projector)
  std::vector<float> features_;   // ... and through the projector, for adapter revision features_rev_
  uint64_t features_rev_ = 0;
};

}  // namespace

EMSCRIPTEN_BINDINGS(loupe) {
  emscripten::class_<Engine>("Engine")
      .constructor<int>()
      .function("threads", &Engine::threads)
      .class_function("heapMax", &Engine::heapMax)
      .class_function("heapSize", &Engine::heapSize)
      .function("allocFile", &Engine::allocFile)
      .function("dropFile", &Engine::dropFile)
      .function("unload", &Engine::unload)
      .function("loadModel", &Engine::loadModel)
      .function("loadTextModel", &Engine::loadTextModel)
      .function("info", &Engine::info)
      .function("adapterReplaceFile", &Engine::adapterReplaceFile)
      .function("loadAdapter", &Engine::loadAdapter)
      .function("adapters", &Engine::adapters)
      .function("setLora", &Engine::setLora)
      .function("setImage", &Engine::setImage)
      .function("describe", &Engine::describe)
      .function("generate", &Engine::generate)
      .function("bench", &Engine::bench);
}
