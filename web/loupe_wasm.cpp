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
    chat_.reset();  // the sessions before the models they run on
    text_.reset();
    image_.clear();
    decoded_ = loupe::Image();
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
      lm_ = std::move(lm);
      vm_ = std::move(vm);
      loupe::DescribeOptions opt;
      opt.session = session_options();
      chat_ = std::make_unique<loupe::VisionChat>(*lm_, *vm_, opt, &pool_);  // checks that the two halves fit together
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
    o.set("kvType", std::string(loupe::dtype_name(loupe::SessionOptions().kv_type)));
    if (vm_) {
      o.set("visionLayers", double(vm_->clip.cfg.n_layers_run));
      o.set("imageSize", double(vm_->clip.cfg.image_size));
      o.set("patches", double(vm_->clip.cfg.n_features()));
    }
    const auto& w = lm_->model.weights;
    o.set("weightType", std::string(loupe::dtype_name(w.layers.empty() ? w.tok_embd.dtype : w.layers[0].w[loupe::kAttnQ].dtype)));
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
      if (!lm_) loupe::fail("load a model before an adapter");
      loupe::GgufFile f = loupe::GgufFile::parse(take(slot).blob());
      std::unique_ptr<loupe::GgufFile> r;
      if (!replace_slot.empty()) r = std::make_unique<loupe::GgufFile>(loupe::GgufFile::parse(take(replace_slot).blob()));
      loupe::LoraAdapter a = loupe::LoraAdapter::from_gguf(f, lm_->model.cfg, r.get());
      a.name = name;
      val notes = val::array();
      for (const std::string& n : a.notes) notes.call<void>("push", n);
      val o = val::object();
      o.set("summary", a.summary());
      session().add_lora(std::make_shared<const loupe::LoraAdapter>(std::move(a)), 0.0f);
      for (const std::string& n : session().take_lora_notes()) notes.call<void>("push", n);
      o.set("notes", notes);
      return o;
    });
  }
  val adapters() const {
    val a = val::array();
    const loupe::Session* s = chat_ ? &chat_->session() : text_.get();
    if (!s) return a;
    for (const auto& e : s->loras().entries()) {
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
      session().set_lora_scale(name, float(scale));
      return 0;
    });
  }

  // The image file's bytes (slot); decoded by loupe's own decoder, as the native CLI does.
  // Returns {cached, width, height}.
  val setImage(const std::string& slot) {
    return guarded([&] {
      if (!chat_) loupe::fail("no vision model loaded");
      Buffer b = take(slot);
      std::string bytes(reinterpret_cast<const char*>(b.bytes.get()), b.size);
      val o = val::object();
      const bool same = bytes == image_;
      if (!same) {
        decoded_ = loupe::decode_image(b.bytes.get(), b.size, b.name);
        image_ = std::move(bytes);
      }
      o.set("cached", same);
      o.set("width", decoded_.width);
      o.set("height", decoded_.height);
      return o;
    });
  }

  // One-shot description of the current image: streams UTF-8 pieces (Uint8Array)
  // to on_text (return false to stop). Returns {text, tokens, stats}.
  // The pipeline keeps the image's CLIP output and re-runs only the projector when
  // the adapters change (an adapter may bring its own projector).
  val describe(const std::string& prompt, int max_tokens, double temperature, double seed, const std::string& conv,
               val on_text) {
    return guarded([&] {
      if (!chat_) loupe::fail("no vision model loaded");
      if (image_.empty()) loupe::fail("no image set");
      chat_->options().conv = conv;  // empty: the model's template
      chat_->set_image(decoded_);  // a new conversation; the same image keeps its encoding
      return turn(prompt, max_tokens, temperature, seed, on_text);
    });
  }

  // A follow-up question in the conversation describe() started (the same image;
  // the KV cache keeps what was said, only the new turn is prefilled).
  val followUp(const std::string& prompt, int max_tokens, double temperature, double seed, val on_text) {
    return guarded([&] {
      if (!chat_ || chat_->conversation().messages.empty()) loupe::fail("no conversation yet: describe an image first");
      return turn(prompt, max_tokens, temperature, seed, on_text);
    });
  }

  // One user turn of the current conversation, streamed; {text, tokens, stats}.
  val turn(const std::string& prompt, int max_tokens, double temperature, double seed, val on_text) {
    loupe::DescribeOptions& opt = chat_->options();
    opt.gen.max_tokens = max_tokens;
    opt.gen.sampling.temperature = float(temperature);
    opt.gen.sampling.seed = uint64_t(seed);
    loupe::Generation g = chat_->ask(prompt, stream_to(on_text));
    val o = val::object();
    o.set("text", to_bytes(g.text));
    o.set("tokens", val::array(g.tokens.begin(), g.tokens.end()));
    val st = val::object();
    st.set("encodeMs", chat_->encode_ms + chat_->project_ms);
    st.set("projectMs", chat_->project_ms);
    st.set("imageCached", chat_->image_cached);
    set_timings(st, g.stats);
    st.set("threads", threads_);
    st.set("heapBytes", heapSize());
    o.set("stats", st);
    return o;
  }

  // Plain text generation (benchmarks): prompt -> text, same loop as `loupe generate`.
  val generate(const std::string& prompt, int max_tokens, double temperature, val on_text) {
    return guarded([&] {
      loupe::Session& s = session();
      s.clear();
      loupe::GenerateOptions opt;
      opt.max_tokens = max_tokens;
      opt.sampling.temperature = float(temperature);
      loupe::Generation g = loupe::generate_text(s, prompt, opt, stream_to(on_text), &pool_);
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
      text_ = std::make_unique<loupe::Session>(*lm_, session_options());
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
      if (n_prompt < 1 || n_gen < 0) loupe::fail("bench: need at least one prompt token");
      loupe::Session& s = session();
      s.clear();
      const int64_t V = lm_->model.cfg.n_vocab;
      std::vector<int32_t> ids(static_cast<size_t>(n_prompt));
      uint64_t r = 7;
      for (int i = 0; i < n_prompt; ++i) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        ids[size_t(i)] = i == 0 ? 1 : int32_t(3 + (r >> 33) % uint64_t(V - 3));
      }
      loupe::GenerateOptions opt;  // greedy
      opt.stop_at_eos = false;
      opt.max_tokens = n_gen + 1;  // n_gen decode passes after the prefill
      const loupe::Generation g = loupe::generate(s, ids, {}, opt, nullptr, &pool_);
      val o = val::object();
      o.set("promptTokens", n_prompt);
      o.set("genTokens", n_gen);
      o.set("prefillMs", g.stats.prefill_ms);
      o.set("decodeMs", g.stats.decode_ms);
      o.set("prefillTokS", 1000.0 * n_prompt / g.stats.prefill_ms);
      o.set("decodeTokS", n_gen ? 1000.0 * n_gen / g.stats.decode_ms : 0.0);
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

  // The session requests run on: the vision chat's, or the text model's.
  loupe::Session& session() {
    if (chat_) return chat_->session();
    if (text_) return *text_;
    loupe::fail("no model loaded");
  }

  // The model's context (at most 4096, as the CLI), shorter when even an F16
  // cache filled to it would not fit in what is left of the 4 GB (the cache
  // grows with the positions used, so this is a bound, not an allocation).
  loupe::SessionOptions session_options() {
    const auto& c = lm_->model.cfg;
    const double left = heapMax() - heapSize() - 256 * kMiB;  // activations, image features, slack
    int64_t ctx = std::min<int64_t>(c.n_ctx, 4096);
    auto kv_bytes = [&](int64_t n) { return 2.0 * double(c.n_layers) * double(n) * double(c.n_kv_heads * c.head_dim) * 2; };
    while (ctx > 1024 && kv_bytes(ctx) > left) ctx /= 2;
    if (kv_bytes(ctx) > left)
      loupe::fail("the model's weights fit, but not even a ", ctx, "-position KV cache (", int(kv_bytes(ctx) / kMiB),
                  " MiB) fits in what is left of WebAssembly's ", int(heapMax() / kMiB), " MiB: the model is too big for the browser's memory");
    n_ctx_ = ctx;
    loupe::SessionOptions o;
    o.n_ctx = ctx;
    return o;
  }

  int threads_;
  loupe::ThreadPool pool_;
  std::map<std::string, Buffer> buffers_;
  std::unique_ptr<loupe::LanguageModel> lm_;
  std::unique_ptr<loupe::VisionModel> vm_;
  std::unique_ptr<loupe::VisionChat> chat_;  // vision model: the conversation, its session and image cache
  std::unique_ptr<loupe::Session> text_;     // text-only model
  int64_t n_ctx_ = 0;
  std::string image_;      // the current image file's bytes
  loupe::Image decoded_;   // ... decoded
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
      .function("followUp", &Engine::followUp)
      .function("generate", &Engine::generate)
      .function("bench", &Engine::bench);
}
