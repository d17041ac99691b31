// loupe serve: OpenAI's chat completions API over HTTP, on the serving engine
// (pipeline/serving.hpp: slots decoding together, per-request adapters, image
// cache). HTTP is cpp-httplib (Debian's libcpp-httplib-dev): a well-kept
// library, not a hand-written parser. Request and response shapes follow
// OpenAI's API reference for /v1/chat/completions and /v1/models; errors are
// {"error": {"message", "type", "param", "code"}}.
#include "serve.hpp"

#include <httplib.h>
#include <loupe/pipeline/serving.hpp>

#include <signal.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <ctime>
#include <deque>
#include <filesystem>
#include <memory>
#include <mutex>
#include <sstream>
#include <thread>

namespace loupe_cli {
namespace {

using loupe::Json;
using loupe::json_escape;

std::string q(const std::string& s) { return "\"" + json_escape(s) + "\""; }

// A request the client got wrong (or the server cannot take now): an HTTP status and OpenAI's error fields.
struct ApiError {
  int status;
  std::string message, type, param, code;
  ApiError(int s, std::string m, std::string t = "invalid_request_error", std::string p = "", std::string c = "")
      : status(s), message(std::move(m)), type(std::move(t)), param(std::move(p)), code(std::move(c)) {}
};

std::string error_body(const ApiError& e) {
  return "{\"error\":{\"message\":" + q(e.message) + ",\"type\":" + q(e.type) + ",\"param\":" +
         (e.param.empty() ? "null" : q(e.param)) + ",\"code\":" + (e.code.empty() ? "null" : q(e.code)) + "}}";
}

// RFC 4648 base64 (data: URLs); whitespace is skipped, anything else wrong is an error.
std::string base64_decode(std::string_view in, const std::string& where) {
  static const auto table = [] {
    std::array<int8_t, 256> t{};
    t.fill(-1);
    const char* a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (int i = 0; i < 64; ++i) t[uint8_t(a[i])] = int8_t(i);
    return t;
  }();
  std::string out;
  out.reserve(in.size() / 4 * 3);
  uint32_t acc = 0;
  int bits = 0;
  size_t pad = 0;
  for (char c : in) {
    if (c == ' ' || c == '\n' || c == '\r' || c == '\t') continue;
    if (c == '=') {
      ++pad;
      continue;
    }
    const int v = table[uint8_t(c)];
    if (v < 0 || pad) throw ApiError{400, where + ": the data URL is not valid base64", "invalid_request_error", "messages"};
    acc = (acc << 6) | uint32_t(v), bits += 6;
    if (bits >= 8) bits -= 8, out.push_back(char((acc >> bits) & 0xff));
  }
  if (pad > 2) throw ApiError{400, where + ": the data URL is not valid base64", "invalid_request_error", "messages"};
  return out;
}

struct ServeConfig {
  std::string model_name;  // what /v1/models calls the base model
  std::string api_key, media_path;
  size_t max_body = 32u << 20;
  int max_tokens = 256;  // when the request gives none
};

// Decodes an image_url: a data: URL, or a file under --media-path; http(s) is refused.
std::shared_ptr<const loupe::Image> load_image_url(const std::string& url, const std::string& where, const ServeConfig& cfg) {
  namespace fs = std::filesystem;
  auto bad = [&](const std::string& m) { return ApiError{400, where + ": " + m, "invalid_request_error", "messages"}; };
  try {
    if (url.rfind("data:", 0) == 0) {
      const size_t comma = url.find(',');
      if (comma == std::string::npos || url.substr(0, comma).find(";base64") == std::string::npos)
        throw bad("a data URL must be data:<type>;base64,<data>");
      const std::string bytes = base64_decode(std::string_view(url).substr(comma + 1), where);
      return std::make_shared<const loupe::Image>(
          loupe::decode_image(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), where));
    }
    if (url.rfind("http://", 0) == 0 || url.rfind("https://", 0) == 0)
      throw bad("remote image URLs are not fetched (the server makes no outbound connections): send the image as a data: URL");
    std::string path = url.rfind("file://", 0) == 0 ? url.substr(7) : url;
    if (cfg.media_path.empty()) throw bad("local image paths are only read under --media-path, which this server was not given");
    std::error_code ec;
    const fs::path root = fs::canonical(cfg.media_path, ec), file = fs::weakly_canonical(fs::path(cfg.media_path) / path, ec);
    const std::string r = root.string(), f = file.string();
    if (ec || f.size() <= r.size() || f.compare(0, r.size(), r) != 0 || f[r.size()] != '/')
      throw bad("'" + path + "' is not a file under --media-path");
    return std::make_shared<const loupe::Image>(loupe::load_image(f));
  } catch (const loupe::Error& e) {
    throw bad(e.what());
  }
}

// What a /v1/chat/completions body asks for.
struct Chat {
  loupe::ServeRequest req;
  std::string model;
  bool stream = false, include_usage = false;
};

// The request body -> a serving request; ApiError for anything OpenAI would refuse or we cannot do.
Chat parse_chat(const std::string& body, const ServeConfig& cfg, const loupe::ServeEngine& engine) {
  Json j;
  try {
    j = Json::parse(body, "request body");
  } catch (const loupe::Error& e) {
    throw ApiError{400, e.what()};
  }
  auto bad = [](const std::string& param, const std::string& m) { return ApiError{400, m, "invalid_request_error", param}; };
  if (!j.is_object()) throw bad("", "the request body must be a JSON object");
  Chat c;
  auto field = [&](const char* name, Json::Type t) -> const Json* {
    const Json* v = j.find(name);
    if (!v || v->is_null()) return nullptr;
    if (v->type != t) throw bad(name, std::string("'") + name + "' must be a " + Json::type_name(t) + ", not a " + Json::type_name(v->type));
    return v;
  };
  if (const Json* m = field("model", Json::Type::String)) c.model = m->str();
  if (c.model.empty() || c.model == cfg.model_name) c.req.adapter.clear();
  else if (engine.has_adapter(c.model)) c.req.adapter = c.model;
  else throw ApiError{404, "the model '" + c.model + "' does not exist (GET /v1/models lists them)", "invalid_request_error", "model", "model_not_found"};
  if (c.model.empty()) c.model = cfg.model_name;
  if (const Json* n = field("n", Json::Type::Number); n && n->number() != 1) throw bad("n", "only n = 1 is supported");
  if (const Json* s = field("stream", Json::Type::Bool)) c.stream = s->boolean();
  if (const Json* so = field("stream_options", Json::Type::Object))
    if (const Json* u = so->find("include_usage"); u && u->is_bool()) c.include_usage = u->boolean();
  loupe::GenerateOptions& g = c.req.gen;
  g.max_tokens = cfg.max_tokens;
  for (const char* name : {"max_tokens", "max_completion_tokens"})
    if (const Json* v = field(name, Json::Type::Number)) {
      if (!v->is_integer_literal() || v->integer() < 1 || v->integer() > 1000000) throw bad(name, std::string("'") + name + "' must be a positive integer");
      g.max_tokens = int(v->integer());
    }
  g.sampling.temperature = 1.0f;  // OpenAI's default
  if (const Json* v = field("temperature", Json::Type::Number)) {
    if (v->number() < 0 || v->number() > 2) throw bad("temperature", "'temperature' must be between 0 and 2");
    g.sampling.temperature = float(v->number());
  }
  g.sampling.top_p = 1.0f, g.sampling.top_k = 0, g.sampling.min_p = 0.0f;  // OpenAI's sampling: temperature and top_p only
  if (const Json* v = field("top_p", Json::Type::Number)) {
    if (!(v->number() > 0 && v->number() <= 1)) throw bad("top_p", "'top_p' must be in (0, 1]");
    g.sampling.top_p = float(v->number());
  }
  if (const Json* v = field("seed", Json::Type::Number)) {
    if (!v->is_integer_literal()) throw bad("seed", "'seed' must be an integer");
    g.sampling.seed = uint64_t(v->integer());
  } else {
    g.sampling.seed = uint64_t(std::chrono::steady_clock::now().time_since_epoch().count());
  }
  if (const Json* v = j.find("stop"); v && !v->is_null()) {
    if (v->is_string()) g.stop.push_back(v->str());
    else if (v->is_array() && v->size() <= 4) {
      for (const Json& s : v->array()) {
        if (!s.is_string()) throw bad("stop", "'stop' must be a string or an array of up to 4 strings");
        g.stop.push_back(s.str());
      }
    } else throw bad("stop", "'stop' must be a string or an array of up to 4 strings");
  }

  const Json* messages = field("messages", Json::Type::Array);
  if (!messages || messages->array().empty()) throw bad("messages", "'messages' must be a non-empty array");
  for (size_t i = 0; i < messages->array().size(); ++i) {
    const Json& m = messages->array()[i];
    const std::string at = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) throw bad("messages", at + " must be an object");
    const Json* role = m.find("role");
    if (!role || !role->is_string()) throw bad("messages", at + ".role must be a string");
    const Json* content = m.find("content");
    std::string text;
    if (content && content->is_string()) {
      text = content->str();
    } else if (content && content->is_array()) {
      for (size_t k = 0; k < content->array().size(); ++k) {
        const Json& part = content->array()[k];
        const std::string pat = at + ".content[" + std::to_string(k) + "]";
        const Json* type = part.is_object() ? part.find("type") : nullptr;
        if (!type || !type->is_string()) throw bad("messages", pat + ".type must be a string");
        if (type->str() == "text") {
          const Json* t = part.find("text");
          if (!t || !t->is_string()) throw bad("messages", pat + ".text must be a string");
          text += (text.empty() ? "" : "\n") + t->str();
        } else if (type->str() == "image_url") {
          const Json* iu = part.find("image_url");
          const Json* url = iu && iu->is_object() ? iu->find("url") : iu;
          if (!url || !url->is_string()) throw bad("messages", pat + ".image_url.url must be a string");
          if (role->str() != "user") throw bad("messages", pat + ": images go in user messages");
          if (c.req.image) throw bad("messages", pat + ": one image per conversation (LLaVA-1.5 models are trained with one)");
          c.req.image = load_image_url(url->str(), pat + ".image_url", cfg);
          text = std::string(loupe::kImageToken) + "\n" + text;  // where LLaVA puts it: before the text
        } else {
          throw bad("messages", pat + ".type '" + type->str() + "' is not supported (text, image_url)");
        }
      }
    } else if (!(role->str() == "assistant" && (!content || content->is_null()))) {
      throw bad("messages", at + ".content must be a string or an array of parts");
    }
    if (role->str() == "system" || role->str() == "developer") {
      if (!c.req.turns.empty()) throw bad("messages", at + ": a system message must come first");
      c.req.system = text;
    } else if (role->str() == "user" || role->str() == "assistant") {
      const int r = role->str() == "user" ? 0 : 1;
      if ((c.req.turns.empty() && r != 0) || (!c.req.turns.empty() && c.req.turns.back().first == r))
        throw bad("messages", at + ": user and assistant messages must alternate, starting with the user");
      c.req.turns.emplace_back(r, text);
    } else {
      throw bad("messages", at + ".role '" + role->str() + "' is not supported (system, user, assistant)");
    }
  }
  if (c.req.turns.empty() || c.req.turns.back().first != 0) throw bad("messages", "the last message must be the user's");
  return c;
}

// One request's stream of events from the engine thread to the HTTP thread.
struct Channel {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::string> pieces;
  bool finished = false;
  loupe::ServeResult result;
  std::shared_ptr<std::atomic<bool>> cancel = std::make_shared<std::atomic<bool>>(false);
};

const char* finish_name(loupe::FinishReason f) { return f == loupe::FinishReason::Length ? "length" : "stop"; }

std::string usage_json(const loupe::ServeResult& r) {
  const int64_t p = r.prompt_positions, c = int64_t(r.gen.tokens.size());
  return "{\"prompt_tokens\":" + std::to_string(p) + ",\"completion_tokens\":" + std::to_string(c) +
         ",\"total_tokens\":" + std::to_string(p + c) + "}";
}

class HttpServer {
 public:
  HttpServer(loupe::ServeEngine& engine, ServeConfig cfg) : engine_(engine), cfg_(std::move(cfg)) {}

  void route(httplib::Server& svr) {
    svr.set_payload_max_length(cfg_.max_body);
    // Errors httplib answers itself (413 for a body over --max-body, 404 for an unknown path), in OpenAI's shape.
    svr.set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return;
      if (res.status == 413)
        reply_error(res, ApiError{413, "the request body is larger than the server's limit (--max-body " + std::to_string(cfg_.max_body) + " bytes)",
                                  "invalid_request_error", "", "request_too_large"});
      else if (res.status == 404)
        reply_error(res, ApiError{404, "no such endpoint: " + req.method + " " + req.path, "invalid_request_error", "", "not_found"});
      else
        reply_error(res, ApiError{res.status, "HTTP " + std::to_string(res.status), "invalid_request_error"});
    });
    svr.set_exception_handler([this](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
      std::string what = "internal error";
      try {
        std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        what = e.what();
      } catch (...) {
      }
      reply_error(res, ApiError{500, what, "server_error"});
    });
    svr.Get("/health", [](const httplib::Request&, httplib::Response& res) { res.set_content("{\"status\":\"ok\"}", "application/json"); });
    // Checked in the handlers, once the body is read (rejected before, it would stay in a kept-alive
    // connection and be taken for the next request).
    svr.Get("/v1/models", [this](const httplib::Request& req, httplib::Response& res) {
      if (authorized(req, res)) models(res);
    });
    svr.Get("/metrics", [this](const httplib::Request& req, httplib::Response& res) {
      if (authorized(req, res)) metrics(res);
    });
    svr.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
      if (authorized(req, res)) chat(req, res);
    });
    svr.set_logger([this](const httplib::Request&, const httplib::Response& res) {
      std::lock_guard<std::mutex> lk(mu_);
      ++status_counts_[res.status];
    });
  }

 private:
  // --api-key: "Authorization: Bearer KEY" on everything but /health.
  bool authorized(const httplib::Request& req, httplib::Response& res) {
    if (cfg_.api_key.empty()) return true;
    const std::string auth = req.get_header_value("Authorization");
    if (auth == "Bearer " + cfg_.api_key) return true;
    reply_error(res, ApiError{401, auth.empty() ? "no API key given (Authorization: Bearer KEY)" : "the API key is not valid",
                              "authentication_error", "", "invalid_api_key"});
    return false;
  }

  void reply_error(httplib::Response& res, const ApiError& e) {
    res.status = e.status;
    if (e.status == 503) res.set_header("Retry-After", "1");
    res.set_content(error_body(e), "application/json");
  }

  void models(httplib::Response& res) {
    const std::string created = std::to_string(std::time(nullptr));
    std::string data = "{\"id\":" + q(cfg_.model_name) + ",\"object\":\"model\",\"created\":" + created + ",\"owned_by\":\"loupe\"}";
    for (const std::string& a : engine_.adapters())
      data += ",{\"id\":" + q(a) + ",\"object\":\"model\",\"created\":" + created + ",\"owned_by\":\"loupe\",\"parent\":" +
              q(cfg_.model_name) + "}";
    res.set_content("{\"object\":\"list\",\"data\":[" + data + "]}", "application/json");
  }

  // Prometheus text format 0.0.4.
  void metrics(httplib::Response& res) {
    const loupe::ServeMetrics m = engine_.metrics();
    std::ostringstream o;
    auto metric = [&](const char* name, const char* type, const char* help, uint64_t v) {
      o << "# HELP " << name << " " << help << "\n# TYPE " << name << " " << type << "\n" << name << " " << v << "\n";
    };
    o << "# HELP loupe_http_requests_total HTTP requests answered, by status code\n# TYPE loupe_http_requests_total counter\n";
    {
      std::lock_guard<std::mutex> lk(mu_);
      for (const auto& [code, n] : status_counts_) o << "loupe_http_requests_total{code=\"" << code << "\"} " << n << "\n";
    }
    metric("loupe_queue_length", "gauge", "requests waiting for a slot", m.queued);
    metric("loupe_active_sequences", "gauge", "sequences being generated", m.active);
    metric("loupe_requests_completed_total", "counter", "generations that ran to the end", m.completed);
    metric("loupe_requests_cancelled_total", "counter", "generations cancelled (the client went away)", m.cancelled);
    metric("loupe_requests_failed_total", "counter", "requests that failed after they were queued", m.failed);
    metric("loupe_prompt_tokens_total", "counter", "prompt positions (an image counts its patches)", m.prompt_tokens);
    metric("loupe_prompt_tokens_reused_total", "counter", "prompt positions a slot's cache already held", m.reused_tokens);
    metric("loupe_generated_tokens_total", "counter", "tokens generated", m.generated_tokens);
    metric("loupe_image_encodes_total", "counter", "images encoded by the vision tower", m.image_encodes);
    metric("loupe_image_cache_hits_total", "counter", "images whose encoding was cached", m.image_cache_hits);
    res.set_content(o.str(), "text/plain; version=0.0.4");
  }

  void chat(const httplib::Request& http, httplib::Response& res) {
    Chat c;
    try {
      c = parse_chat(http.body, cfg_, engine_);
    } catch (const ApiError& e) {
      return reply_error(res, e);
    }
    auto ch = std::make_shared<Channel>();
    c.req.cancel = ch->cancel;
    c.req.on_text = [ch](std::string_view piece) {
      std::lock_guard<std::mutex> lk(ch->mu);
      ch->pieces.emplace_back(piece);
      ch->cv.notify_all();
      return !ch->cancel->load();
    };
    c.req.done = [ch](loupe::ServeResult&& r) {
      std::lock_guard<std::mutex> lk(ch->mu);
      ch->result = std::move(r);
      ch->finished = true;
      ch->cv.notify_all();
    };
    try {
      if (!engine_.submit(std::move(c.req)))
        return reply_error(res, ApiError{503, "the server is busy (the queue is full): retry later", "server_error", "", "overloaded"});
    } catch (const loupe::Error& e) {
      return reply_error(res, ApiError{400, e.what()});
    }
    const std::string id = "chatcmpl-" + std::to_string(next_id_.fetch_add(1));
    const std::string created = std::to_string(std::time(nullptr));
    if (!c.stream) {
      std::unique_lock<std::mutex> lk(ch->mu);
      ch->cv.wait(lk, [&] { return ch->finished; });
      const loupe::ServeResult& r = ch->result;
      if (!r.error.empty()) return reply_error(res, ApiError{500, r.error, "server_error"});
      res.set_content("{\"id\":" + q(id) + ",\"object\":\"chat.completion\",\"created\":" + created + ",\"model\":" + q(c.model) +
                          ",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":" + q(r.gen.text) +
                          "},\"finish_reason\":\"" + finish_name(r.gen.finish) + "\"}],\"usage\":" + usage_json(r) + "}",
                      "application/json");
      return;
    }
    // Server-sent events: a role chunk, a chunk per piece, the finish chunk, [usage], [DONE].
    const std::string head = "{\"id\":" + q(id) + ",\"object\":\"chat.completion.chunk\",\"created\":" + created +
                             ",\"model\":" + q(c.model) + ",\"choices\":[";
    auto event = [head](const std::string& delta, const char* finish) {
      return "data: " + head + "{\"index\":0,\"delta\":" + delta + ",\"finish_reason\":" +
             (finish ? "\"" + std::string(finish) + "\"" : std::string("null")) + "}]}\n\n";
    };
    res.set_header("Cache-Control", "no-cache");
    auto sent_role = std::make_shared<bool>(false);
    const bool include_usage = c.include_usage;
    res.set_chunked_content_provider(
        "text/event-stream",
        [ch, event, head, sent_role, include_usage](size_t, httplib::DataSink& sink) {
          auto send = [&](const std::string& s) {
            if (!sink.write(s.data(), s.size())) {
              ch->cancel->store(true);  // the client went away: free its slot
              return false;
            }
            return true;
          };
          if (!*sent_role) {
            *sent_role = true;
            return send(event("{\"role\":\"assistant\",\"content\":\"\"}", nullptr));
          }
          std::deque<std::string> pieces;
          bool finished = false;
          {
            std::unique_lock<std::mutex> lk(ch->mu);
            // Wake up now and then to notice a client that left while nothing was sent.
            ch->cv.wait_for(lk, std::chrono::milliseconds(200), [&] { return !ch->pieces.empty() || ch->finished; });
            pieces.swap(ch->pieces);
            finished = ch->finished;
          }
          if (pieces.empty() && !finished && !sink.is_writable()) {
            ch->cancel->store(true);
            return false;
          }
          for (const std::string& p : pieces)
            if (!send(event("{\"content\":" + q(p) + "}", nullptr))) return false;
          if (!finished) return true;
          const loupe::ServeResult& r = ch->result;
          if (!r.error.empty()) {
            send("data: " + error_body(ApiError{500, r.error, "server_error"}) + "\n\n");
          } else {
            if (!send(event("{}", finish_name(r.gen.finish)))) return false;
            if (include_usage && !send("data: " + head + "],\"usage\":" + usage_json(r) + "}\n\n")) return false;
          }
          send("data: [DONE]\n\n");
          sink.done();
          return true;
        },
        [ch](bool success) {
          if (!success) ch->cancel->store(true);
        });
  }

  loupe::ServeEngine& engine_;
  ServeConfig cfg_;
  std::atomic<uint64_t> next_id_{1};
  std::mutex mu_;
  std::map<int, uint64_t> status_counts_;
};

}  // namespace

int serve(const Args& a, const std::vector<std::pair<std::string, float>>& loras, const loupe::DescribeOptions& describe,
          int threads) {
  namespace fs = std::filesystem;
  const std::string model = a.get({"-m", "--model"}), mmproj = a.get({"--mmproj"});
  if (model.empty()) loupe::fail("serve: -m MODEL.gguf is required");
  // SIGINT / SIGTERM are taken by a thread of ours (sigwait), so they must be blocked in every thread: block them first.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  const loupe::LanguageModel lm = loupe::LanguageModel::open(model);
  std::unique_ptr<loupe::VisionModel> vm;
  if (!mmproj.empty()) vm = std::make_unique<loupe::VisionModel>(loupe::VisionModel::open(mmproj));
  loupe::ThreadPool pool(threads);
  loupe::ServeOptions so;
  so.parallel = a.integer({"--parallel"}, 4);
  so.queue = size_t(std::max(0, a.integer({"--queue"}, 16)));
  so.session = describe.session;
  so.clip_precision = describe.clip_precision;
  so.conv = describe.conv;
  loupe::ServeEngine engine(lm, vm.get(), so, &pool);
  for (const auto& [spec, scale] : loras) {  // NAME=PATH, or PATH (named by the adapter)
    const size_t eq = spec.find('=');
    const std::string path = eq == std::string::npos ? spec : spec.substr(eq + 1);
    auto adapter = std::make_shared<loupe::LoraAdapter>(loupe::LoraAdapter::load(path, lm.model.cfg));
    if (eq != std::string::npos) adapter->name = spec.substr(0, eq);
    for (const std::string& n : adapter->notes) std::fprintf(stderr, "%s\n", n.c_str());
    engine.add_adapter(adapter->name, adapter, scale);
    std::fprintf(stderr, "lora %s at scale %g\n", adapter->summary().c_str(), double(scale));
  }

  ServeConfig cfg;
  cfg.model_name = a.get({"--alias"}, fs::path(model).stem().string());
  cfg.api_key = a.get({"--api-key"});
  cfg.media_path = a.get({"--media-path"});
  cfg.max_body = size_t(a.unsigned64({"--max-body"}, cfg.max_body));
  cfg.max_tokens = describe.gen.max_tokens;
  if (!cfg.media_path.empty() && !fs::is_directory(cfg.media_path)) loupe::fail("--media-path ", cfg.media_path, ": not a directory");
  if (engine.has_adapter(cfg.model_name) && !cfg.model_name.empty())
    for (const std::string& n : engine.adapters())
      if (n == cfg.model_name) loupe::fail("--lora ", n, ": the name is the base model's; give the adapter another one (NAME=PATH)");

  httplib::Server svr;
  // Every request in a slot or the queue holds an HTTP thread; a few more answer 503s, /health and /metrics.
  const size_t http_threads = size_t(so.parallel) + so.queue + 4;
  svr.new_task_queue = [http_threads] { return new httplib::ThreadPool(http_threads); };
  HttpServer http(engine, cfg);
  http.route(svr);
  const std::string host = a.get({"--host"}, "127.0.0.1");
  const int port = a.integer({"--port"}, 8080);
  if (!svr.bind_to_port(host, port)) loupe::fail("serve: cannot listen on ", host, ":", port, " (in use, or not an address of this machine)");

  std::thread engine_thread([&] { engine.run(); });
  std::atomic<bool> quit{false};
  std::thread signal_thread([&] {  // SIGINT / SIGTERM: stop accepting, end what is in flight, exit 0
    const timespec tick{0, 200 * 1000 * 1000};
    while (!quit.load()) {
      const int sig = sigtimedwait(&stop_signals, nullptr, &tick);
      if (sig != SIGINT && sig != SIGTERM) continue;
      std::fprintf(stderr, "serve: %s: stopping\n", sig == SIGTERM ? "SIGTERM" : "SIGINT");
      engine.stop();  // running requests end (cancelled), queued ones are refused
      svr.stop();
      return;
    }
  });
  std::fprintf(stderr, "serve: %s on http://%s:%d (%d slots, queue %zu, %d threads)%s\n", cfg.model_name.c_str(), host.c_str(),
               port, so.parallel, so.queue, threads, cfg.api_key.empty() ? "" : ", API key required");
  const bool ok = svr.listen_after_bind();
  quit = true;
  engine.stop();
  engine_thread.join();
  signal_thread.join();
  return ok ? 0 : 1;
}

}  // namespace loupe_cli
