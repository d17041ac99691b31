// loupe caption: captions for a whole image collection, on the serving engine
// (pipeline/serving.hpp: --batch sequences decoding together). Images are
// read, decoded and preprocessed on a thread of their own while the model
// runs. Output: JSONL rows, one file per input shard (or per slice), written to
// NAME.jsonl.tmp and renamed when complete; --resume skips complete files and
// finishes partial ones (rows are whole lines: a partial last line from a
// SIGKILL is cut off and its item done again). --shard i/n, or Slurm's
// SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT, picks a deterministic slice.
#include "caption.hpp"

#include <loupe/io/json.hpp>
#include <loupe/io/tar.hpp>
#include <loupe/pipeline/serving.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <thread>

#include "../common/progress.hpp"

namespace loupe_cli {
namespace {

namespace fs = std::filesystem;
using loupe::fail;

const std::set<std::string> kImageExtensions = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"};

std::string lower_ext(const fs::path& p) {
  std::string e = p.extension().string();
  for (char& c : e) c = char(std::tolower(static_cast<unsigned char>(c)));
  return e;
}

// One image to caption: where its bytes come from and how it is named.
struct Item {
  std::string id, image, prompt;  // prompt empty: -p
  std::shared_ptr<const loupe::TarFile> tar;  // set: the bytes are a member of this archive
  const loupe::TarMember* member = nullptr;
};

// The items that go to one output file.
struct Output {
  std::string path;  // OUTDIR/NAME.jsonl
  std::vector<Item> items;
};

// "shard-{00000..00099}.tar" -> every name, zero-padded like the bounds (bash brace ranges).
std::vector<std::string> expand_braces(const std::string& s) {
  const size_t open = s.find('{'), dots = s.find("..", open), close = s.find('}', open);
  if (open == std::string::npos || dots == std::string::npos || close == std::string::npos || dots > close) return {s};
  const std::string lo = s.substr(open + 1, dots - open - 1), hi = s.substr(dots + 2, close - dots - 2);
  auto digits = [](const std::string& x) { return !x.empty() && x.size() <= 9 && std::all_of(x.begin(), x.end(), ::isdigit); };
  if (!digits(lo) || !digits(hi) || std::stol(lo) > std::stol(hi)) fail("--input ", s, ": a brace range is {FIRST..LAST} with FIRST <= LAST");
  const size_t width = lo.size() == hi.size() ? lo.size() : 0;
  std::vector<std::string> out;
  for (long i = std::stol(lo); i <= std::stol(hi); ++i) {
    std::string n = std::to_string(i);
    if (n.size() < width) n = std::string(width - n.size(), '0') + n;
    for (const std::string& rest : expand_braces(s.substr(close + 1))) out.push_back(s.substr(0, open) + n + rest);
  }
  return out;
}

// WebDataset members grouped by key (the name up to the first dot of its last component): the image, and a
// prompt from KEY.json's "prompt" when there is one.
std::vector<Item> tar_items(const std::shared_ptr<const loupe::TarFile>& tar) {
  std::map<std::string, Item> by_key;
  std::vector<std::string> order;
  for (const loupe::TarMember& m : tar->members) {
    const size_t slash = m.name.rfind('/'), dot = m.name.find('.', slash == std::string::npos ? 0 : slash + 1);
    if (dot == std::string::npos) continue;
    const std::string key = m.name.substr(0, dot), ext = m.name.substr(dot);
    std::string e = ext;
    for (char& c : e) c = char(std::tolower(static_cast<unsigned char>(c)));
    if (!by_key.count(key)) order.push_back(key);
    Item& it = by_key[key];
    it.id = key;
    if (kImageExtensions.count(e) && !it.member) {
      it.tar = tar, it.member = &m, it.image = tar->name() + ":" + m.name;
    } else if (e == ".json") {
      try {
        const loupe::Json j = loupe::Json::parse(tar->data(m), tar->name() + ":" + m.name);
        if (const loupe::Json* p = j.is_object() ? j.find("prompt") : nullptr; p && p->is_string()) it.prompt = p->str();
      } catch (const loupe::Error&) {
        // metadata we cannot read does not stop the caption; the default prompt is used
      }
    }
  }
  std::vector<Item> items;
  for (const std::string& k : order)
    if (by_key[k].member) items.push_back(by_key[k]);
  return items;
}

// --input: a folder, a .txt list, a .jsonl manifest or .tar shards -> the outputs of slice `shard` of `shards`.
std::vector<Output> plan(const std::string& input, const std::string& outdir, int64_t shard, int64_t shards) {
  std::vector<std::string> paths = expand_braces(input);
  std::sort(paths.begin(), paths.end());
  const auto slice_name = [&](const std::string& stem) {
    return (fs::path(outdir) / (shards > 1 ? stem + "-" + std::to_string(shard) + "-of-" + std::to_string(shards) : stem)).string() + ".jsonl";
  };
  std::vector<Output> outs;
  if (lower_ext(paths[0]) == ".tar") {  // WebDataset shards: the slice is a set of whole shards
    for (size_t i = 0; i < paths.size(); ++i) {
      if (int64_t(i % size_t(shards)) != shard) continue;
      if (lower_ext(paths[i]) != ".tar") fail("--input: ", paths[i], " is not a .tar among .tar shards");
      auto tar = std::make_shared<const loupe::TarFile>(loupe::TarFile::open(paths[i]));
      outs.push_back({(fs::path(outdir) / fs::path(paths[i]).stem()).string() + ".jsonl", tar_items(tar)});
    }
    return outs;
  }
  if (paths.size() != 1) fail("--input: brace ranges are for .tar shards");
  const fs::path in = paths[0];
  std::vector<Item> all;
  std::string stem = in.stem().string();
  if (fs::is_directory(in)) {
    std::vector<fs::path> files;
    for (const auto& e : fs::recursive_directory_iterator(in, fs::directory_options::skip_permission_denied))
      if (e.is_regular_file() && kImageExtensions.count(lower_ext(e.path()))) files.push_back(e.path());
    std::sort(files.begin(), files.end());
    for (const fs::path& f : files) {
      const std::string rel = fs::relative(f, in).generic_string();
      all.push_back({rel, f.string(), "", nullptr, nullptr});
    }
    stem = "captions";
  } else if (lower_ext(in) == ".txt") {  // one path a line, relative to the list's folder
    std::ifstream f(in);
    if (!f) fail("--input ", in.string(), ": cannot open");
    for (std::string line; std::getline(f, line);) {
      while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
      if (line.empty() || line[0] == '#') continue;
      const fs::path p = fs::path(line).is_absolute() ? fs::path(line) : in.parent_path() / line;
      all.push_back({line, p.string(), "", nullptr, nullptr});
    }
  } else if (lower_ext(in) == ".jsonl") {  // {"id", "image", "prompt"?} a line
    std::ifstream f(in);
    if (!f) fail("--input ", in.string(), ": cannot open");
    size_t n = 0;
    for (std::string line; std::getline(f, line);) {
      ++n;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      const loupe::Json j = loupe::Json::parse(line, in.string() + " line " + std::to_string(n));
      const loupe::Json* id = j.is_object() ? j.find("id") : nullptr;
      const loupe::Json* image = j.is_object() ? j.find("image") : nullptr;
      if (!image || !image->is_string()) fail(in.string(), " line ", n, ": \"image\" (a path) is required");
      Item it;
      it.image = image->str();
      it.id = !id ? it.image : id->is_string() ? id->str() : std::to_string(id->integer());
      if (const loupe::Json* p = j.find("prompt"); p && p->is_string()) it.prompt = p->str();
      if (!fs::path(it.image).is_absolute()) it.image = (in.parent_path() / it.image).string();
      all.push_back(std::move(it));
    }
  } else {
    fail("--input ", in.string(), ": expected a folder, a .txt list of images, a .jsonl manifest or .tar shards");
  }
  Output o{slice_name(stem), {}};
  for (size_t i = 0; i < all.size(); ++i)
    if (int64_t(i % size_t(shards)) == shard) o.items.push_back(std::move(all[i]));
  outs.push_back(std::move(o));
  return outs;
}

// Rows already in a partial output: the ids of complete lines; the file is cut after the last of them.
std::set<std::string> resume_partial(const std::string& tmp) {
  std::set<std::string> done;
  std::ifstream f(tmp, std::ios::binary);
  std::string all((std::istreambuf_iterator<char>(f)), {});
  size_t keep = 0, at = 0;
  while (true) {
    const size_t nl = all.find('\n', at);
    if (nl == std::string::npos) break;
    try {
      const loupe::Json row = loupe::Json::parse(std::string_view(all).substr(at, nl - at), tmp);
      done.insert(row.at("id").str());
      keep = nl + 1;
    } catch (const loupe::Error&) {
      break;  // a damaged line: it and what follows are done again
    }
    at = nl + 1;
  }
  if (keep != all.size()) fs::resize_file(tmp, keep);
  return done;
}

std::string q(const std::string& s) { return "\"" + loupe::json_escape(s) + "\""; }

// An image read, decoded and preprocessed (or why not), on the reader thread.
struct Prepared {
  size_t index = 0;  // in the output's list of items to do
  std::shared_ptr<const loupe::Tensor> pixels;
  std::string error;
};

// A bounded queue between the reader thread and the main thread.
class Pipe {
 public:
  explicit Pipe(size_t cap) : cap_(cap) {}
  // False once closed (the consumer gave up): the producer stops.
  bool push(Prepared p) {
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait(lk, [&] { return closed_ || q_.size() < cap_; });
    if (closed_) return false;
    q_.push_back(std::move(p));
    cv_.notify_all();
    return true;
  }
  void close() {
    std::lock_guard<std::mutex> lk(mu_);
    closed_ = true;
    cv_.notify_all();
  }
  Prepared pop() {
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait(lk, [&] { return !q_.empty(); });
    Prepared p = std::move(q_.front());
    q_.pop_front();
    cv_.notify_all();
    return p;
  }

 private:
  size_t cap_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Prepared> q_;
  bool closed_ = false;
};

}  // namespace

int caption(const Args& a, const std::vector<std::pair<std::string, float>>& loras, const loupe::DescribeOptions& describe,
            int threads) {
  using clock = std::chrono::steady_clock;
  const std::string model = a.get({"-m", "--model"}), mmproj = a.get({"--mmproj"});
  const std::string input = a.get({"--input"}), outdir = a.get({"--output"});
  if (model.empty() || mmproj.empty()) fail("caption: -m MODEL.gguf and --mmproj MMPROJ.gguf are required");
  if (input.empty() || outdir.empty()) fail("caption: --input IN and --output OUTDIR are required");
  const bool resume = a.has("--resume");
  const std::string prompt = a.get({"-p", "--prompt"}, "Describe this image.");
  const int batch = a.integer({"--batch"}, 8);
  if (batch < 1) fail("--batch must be at least 1");

  // The slice: --shard i/n, else Slurm's job array, else everything.
  int64_t shard = 0, shards = 1;
  if (a.has("--shard")) {
    const std::string s = a.get({"--shard"});
    const size_t slash = s.find('/');
    char* end = nullptr;
    if (slash != std::string::npos) shard = std::strtol(s.c_str(), &end, 10), shards = std::strtol(s.c_str() + slash + 1, &end, 10);
    if (slash == std::string::npos || !end || *end || shards < 1 || shard < 0 || shard >= shards)
      fail("--shard ", s, ": expected i/n with 0 <= i < n");
  } else if (const char* id = std::getenv("SLURM_ARRAY_TASK_ID")) {
    // A whole array (--array=0-N): its task id less its first, of its task count. Some tasks
    // again (--array=1,3): --shards N says how many slices there are, the task id is the slice.
    const char* count = std::getenv("SLURM_ARRAY_TASK_COUNT");
    const char* min = std::getenv("SLURM_ARRAY_TASK_MIN");
    if (a.has("--shards")) {
      shard = std::atol(id), shards = a.integer({"--shards"}, 1);
    } else {
      if (!count) fail("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not (or give --shards N)");
      shard = std::atol(id) - (min ? std::atol(min) : 0), shards = std::atol(count);
    }
    if (shards < 1 || shard < 0 || shard >= shards)
      fail("Slurm job array task ", id, ": not a slice of ", shards,
           " (a whole array is --array=0-N; re-submitting some of its tasks needs --shards N)");
  }

  fs::create_directories(outdir);
  std::vector<Output> outputs = plan(input, outdir, shard, shards);

  const loupe::LanguageModel lm = loupe::LanguageModel::open(model);
  const loupe::VisionModel vm = loupe::VisionModel::open(mmproj);
  loupe::ThreadPool pool(threads);
  loupe::ServeOptions so;
  so.parallel = batch;
  so.queue = size_t(batch);
  so.session = describe.session;
  so.clip_precision = describe.clip_precision;
  so.conv = describe.conv;
  so.image_cache = 4;
  loupe::ServeEngine engine(lm, &vm, so, &pool);
  std::string adapter_name;
  if (!loras.empty()) {
    std::vector<std::pair<std::shared_ptr<const loupe::LoraAdapter>, float>> set;
    for (const auto& [path, scale] : loras) {
      auto ad = std::make_shared<const loupe::LoraAdapter>(loupe::LoraAdapter::load(path, lm.model.cfg));
      for (const std::string& n : ad->notes) std::fprintf(stderr, "%s\n", n.c_str());
      adapter_name += (adapter_name.empty() ? "" : "+") + ad->name;
      set.emplace_back(ad, scale);
    }
    engine.add_adapter(adapter_name, set);
  }
  const std::string model_name = fs::path(model).stem().string();
  std::thread engine_thread([&] { engine.run(); });
  // Stopping it (and waiting) is the first thing on every way out: its callbacks write into this function's state.
  auto stop_engine = [&] {
    engine.stop();
    if (engine_thread.joinable()) engine_thread.join();
  };
  struct AtExit {
    std::function<void()> f;
    ~AtExit() { f(); }
  } at_exit{stop_engine};

  // Work out what is left, for the progress line.
  size_t total = 0, skipped_files = 0;
  std::vector<std::set<std::string>> done_ids(outputs.size());
  for (size_t o = 0; o < outputs.size(); ++o) {
    const std::string& out = outputs[o].path;
    if (fs::exists(out)) {
      if (!resume) fail(out, " exists: --resume to skip what is done, or another --output");
      ++skipped_files;
      outputs[o].items.clear();
      continue;
    }
    if (fs::exists(out + ".tmp")) {
      if (!resume) fail(out, ".tmp is a partial output: --resume to finish it, or remove it");
      done_ids[o] = resume_partial(out + ".tmp");
    }
    for (const Item& it : outputs[o].items) total += !done_ids[o].count(it.id);
  }
  std::fprintf(stderr, "caption: %zu images to caption in %zu output file(s) (slice %lld of %lld, batch %d, %d threads)%s\n",
               total, outputs.size() - skipped_files, (long long)shard, (long long)shards, batch, threads,
               skipped_files ? (", " + std::to_string(skipped_files) + " already complete").c_str() : "");

  loupe::ProgressBar bar("caption", total, 0);
  bar.unit("images");
  const bool tty = loupe::ProgressBar::stderr_is_tty();
  const auto t0 = clock::now();
  auto last_line = t0;
  size_t finished = 0, errors = 0;
  std::mutex progress_mu;
  auto progress = [&](bool error) {  // after each row (any thread)
    std::lock_guard<std::mutex> lk(progress_mu);
    ++finished, errors += error;
    if (tty) return bar.update(finished, 0);
    const auto now = clock::now();
    if (now - last_line < std::chrono::seconds(10) && finished != total) return;
    last_line = now;
    const double s = std::chrono::duration<double>(now - t0).count(), rate = finished / std::max(s, 1e-9);
    std::fprintf(stderr, "caption: %zu/%zu images (%zu errors), %.3g images/s, %.0f s left\n", finished, total, errors, rate,
                 rate > 0 ? double(total - finished) / rate : 0.0);
  };

  for (size_t o = 0; o < outputs.size(); ++o) {
    const std::string out = outputs[o].path, tmp = out + ".tmp";
    if (outputs[o].items.empty() && fs::exists(out)) continue;
    std::vector<const Item*> todo;
    for (const Item& it : outputs[o].items)
      if (!done_ids[o].count(it.id)) todo.push_back(&it);
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd < 0) fail(tmp, ": cannot write (", std::strerror(errno), ")");
    struct Close {
      int fd;
      ~Close() { ::close(fd); }
    } close_fd{fd};

    // Rows go out in input order: finished ones wait here for their predecessors.
    std::mutex out_mu;
    std::condition_variable out_cv;
    std::map<size_t, std::string> ready;
    size_t next_row = 0;
    std::string write_error;
    auto row = [&](size_t i, const std::string& caption, size_t tokens, double ms, const std::string& error) {
      const Item& it = *todo[i];
      const std::string line = "{\"id\":" + q(it.id) + ",\"image\":" + q(it.image) + ",\"caption\":" +
                               (error.empty() ? q(caption) : "null") + ",\"prompt\":" + q(it.prompt.empty() ? prompt : it.prompt) +
                               ",\"model\":" + q(model_name) + ",\"adapter\":" + (adapter_name.empty() ? "null" : q(adapter_name)) +
                               ",\"tokens\":" + std::to_string(tokens) + ",\"ms\":" + std::to_string(int64_t(ms)) +
                               ",\"error\":" + (error.empty() ? "null" : q(error)) + "}\n";
      std::lock_guard<std::mutex> lk(out_mu);
      ready.emplace(i, line);
      while (!ready.empty() && ready.begin()->first == next_row) {
        const std::string& l = ready.begin()->second;
        if (::write(fd, l.data(), l.size()) != ssize_t(l.size()) && write_error.empty())
          write_error = tmp + ": cannot write (" + std::strerror(errno) + ")";
        ready.erase(ready.begin());
        ++next_row;
      }
      out_cv.notify_all();
      progress(!error.empty());
    };

    // The reader: bytes, decoding, preprocessing, on its own thread.
    Pipe pipe(size_t(2 * batch));
    const loupe::PreprocessConfig pre = vm.preprocess_config();
    std::thread reader([&] {
      for (size_t i = 0; i < todo.size(); ++i) {
        Prepared p;
        p.index = i;
        const Item& it = *todo[i];
        try {
          const loupe::Image img = it.tar ? loupe::decode_image(reinterpret_cast<const uint8_t*>(it.tar->data(*it.member).data()),
                                                                it.member->size, it.image)
                                          : loupe::load_image(it.image);
          p.pixels = std::make_shared<const loupe::Tensor>(loupe::preprocess(img, pre, it.image));
        } catch (const std::exception& e) {
          p.error = e.what();
        }
        if (!pipe.push(std::move(p))) return;
      }
    });
    bool all_written = false;
    struct Join {  // on the way out; after an error the engine stops first (its callbacks write into this scope)
      bool& all_written;
      std::function<void()> stop_engine;
      Pipe& pipe;
      std::thread& t;
      ~Join() {
        if (!all_written) stop_engine();
        pipe.close();
        if (t.joinable()) t.join();
      }
    } join_reader{all_written, stop_engine, pipe, reader};

    for (size_t n = 0; n < todo.size(); ++n) {
      Prepared p = pipe.pop();
      if (!p.error.empty()) {
        row(p.index, "", 0, 0, p.error);
        continue;
      }
      const Item& it = *todo[p.index];
      loupe::ServeRequest r;
      r.adapter = adapter_name;
      r.turns.emplace_back(0, loupe::with_image(it.prompt.empty() ? prompt : it.prompt));
      r.pixels = p.pixels;
      r.gen = describe.gen;
      const size_t index = p.index;
      r.done = [&row, index](loupe::ServeResult&& res) {
        const double ms = res.gen.stats.prefill_ms + res.gen.stats.decode_ms;
        const char* ws = " \t\n\r";  // the caption without surrounding whitespace
        const size_t b = res.gen.text.find_first_not_of(ws);
        const std::string text = b == std::string::npos ? "" : res.gen.text.substr(b, res.gen.text.find_last_not_of(ws) + 1 - b);
        row(index, text, res.gen.tokens.size(), ms, res.error);
      };
      if (!engine.submit(std::move(r), /*wait=*/true)) fail("caption: the engine stopped");
    }
    {
      std::unique_lock<std::mutex> lk(out_mu);
      out_cv.wait(lk, [&] { return next_row == todo.size(); });
    }
    all_written = true;
    if (!write_error.empty()) fail(write_error);
    if (::fsync(fd) != 0) fail(tmp, ": cannot write (", std::strerror(errno), ")");
    if (std::rename(tmp.c_str(), out.c_str()) != 0) fail(out, ": cannot rename the finished output into place");
  }
  bar.finish();
  const double s = std::chrono::duration<double>(clock::now() - t0).count();
  const double rate = finished / std::max(s, 1e-9);
  std::fprintf(stderr, "caption: %zu images in %.2f s (%.3g images/s, %.0f an hour, %zu errors)\n", finished, s, rate, rate * 3600,
               errors);
  return 0;
}

}  // namespace loupe_cli
