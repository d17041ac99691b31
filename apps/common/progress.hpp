// A one-line progress bar on stderr for long work (conversion, evaluation):
// items and bytes done, rate and ETA. Silent when stderr is not a terminal.
// progress_bars() turns the library's Progress callbacks (core/log.hpp) into bars.
#pragma once
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>

#include <loupe/core/log.hpp>

#if !defined(_WIN32)
#include <unistd.h>
#endif

namespace loupe {

class ProgressBar {
 public:
  ProgressBar(std::string label, size_t total_items, size_t total_bytes, bool enabled = stderr_is_tty())
      : label_(std::move(label)), items_(total_items), bytes_(total_bytes), on_(enabled),
        t0_(std::chrono::steady_clock::now()) {}
  ~ProgressBar() { finish(); }

  static bool stderr_is_tty() {
#if !defined(_WIN32) && !defined(__EMSCRIPTEN__)
    return isatty(2);
#else
    return false;
#endif
  }

  void update(size_t items_done, size_t bytes_done) {
    if (!on_) return;
    const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
    const double frac = bytes_ ? double(bytes_done) / double(bytes_) : items_ ? double(items_done) / double(items_) : 1.0;
    const int width = 30, fill = int(frac * width + 0.5);
    std::string bar(size_t(fill), '#');
    bar.resize(size_t(width), '.');
    const double eta = frac > 0 ? t / frac - t : 0;
    if (bytes_)
      std::fprintf(stderr, "\r%s [%s] %zu/%zu %s, %.1f/%.1f MiB, %.0f s left   ", label_.c_str(), bar.c_str(),
                   items_done, items_, unit_, double(bytes_done) / 1048576.0, double(bytes_) / 1048576.0, eta);
    else
      std::fprintf(stderr, "\r%s [%s] %zu/%zu %s, %.0f s left   ", label_.c_str(), bar.c_str(), items_done, items_,
                   unit_, eta);
    std::fflush(stderr);
    dirty_ = true;
  }
  // What the items are ("tensors" unless set).
  ProgressBar& unit(const char* name) {
    unit_ = name;
    return *this;
  }
  void finish() {
    if (dirty_) std::fputc('\n', stderr);
    dirty_ = false;
  }

 private:
  std::string label_;
  size_t items_, bytes_;
  const char* unit_ = "tensors";
  bool on_, dirty_ = false;
  std::chrono::steady_clock::time_point t0_;
};

// A ProgressFn drawing one bar per task (a new task name starts a new bar).
inline ProgressFn progress_bars(bool enabled = ProgressBar::stderr_is_tty()) {
  struct State {
    std::string task;
    std::unique_ptr<ProgressBar> bar;
  };
  auto st = std::make_shared<State>();
  return [st, enabled](const Progress& p) {
    if (!enabled) return;
    if (!st->bar || st->task != p.task) st->bar = std::make_unique<ProgressBar>(p.task, p.total, p.bytes_total, true), st->task = p.task;
    st->bar->update(p.done, p.bytes_done);
    if (p.done >= p.total) st->bar.reset();
  };
}

}  // namespace loupe
