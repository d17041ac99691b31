// A small fixed thread pool: parallel_for(n, fn) runs fn(0..n-1) across the
// workers and the calling thread, and returns when all are done. Workers are
// created once and sleep on a condition variable between calls (no spinning),
// so a busy core slows us down gracefully instead of stalling everyone.
// Results never depend on the thread count: callers split work into tasks of
// a fixed size, and each task is computed the same way whoever runs it.
#pragma once
#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace loupe {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads = 1) {
    if (n_threads < 1) n_threads = 1;
    for (int i = 1; i < n_threads; ++i) workers_.emplace_back([this] { worker(); });
  }
  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      quit_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return int(workers_.size()) + 1; }

  void parallel_for(int64_t n, const std::function<void(int64_t)>& fn) {
    if (n <= 0) return;
    if (workers_.empty() || n == 1) {
      for (int64_t i = 0; i < n; ++i) fn(i);
      return;
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      fn_ = &fn;
      n_ = n;
      next_.store(0);
      active_ = int(workers_.size());
      ++generation_;
    }
    cv_.notify_all();
    run_tasks();
    std::unique_lock<std::mutex> lk(mu_);
    done_cv_.wait(lk, [&] { return active_ == 0; });
    fn_ = nullptr;
  }

 private:
  void run_tasks() {
    for (int64_t i; (i = next_.fetch_add(1)) < n_;) (*fn_)(i);
  }
  void worker() {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return quit_ || generation_ != seen; });
        if (quit_) return;
        seen = generation_;
      }
      run_tasks();
      {
        std::lock_guard<std::mutex> lk(mu_);
        if (--active_ == 0) done_cv_.notify_one();
      }
    }
  }

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(int64_t)>* fn_ = nullptr;
  std::atomic<int64_t> next_{0};
  int64_t n_ = 0;
  int active_ = 0;
  uint64_t generation_ = 0;
  bool quit_ = false;
};

// Run fn over [0, n) in tasks of `grain` items; serial when pool is null.
inline void parallel_chunks(ThreadPool* pool, int64_t n, int64_t grain,
                            const std::function<void(int64_t, int64_t)>& fn) {
  const int64_t tasks = (n + grain - 1) / grain;
  auto task = [&](int64_t t) { fn(t * grain, std::min(n, (t + 1) * grain)); };
  if (pool) pool->parallel_for(tasks, task);
  else for (int64_t t = 0; t < tasks; ++t) task(t);
}

}  // namespace loupe
