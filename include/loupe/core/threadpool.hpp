// A small fixed thread pool: parallel_for(n, fn) runs fn(0..n-1) across the
// workers and the calling thread, and returns when all are done.
//
// * Workers are created once. Between jobs they spin briefly (a decode step
//   issues hundreds of back-to-back matmuls a few microseconds apart, and a
//   futex wake-up costs more than that), then sleep on a condition variable, so
//   an idle pool costs nothing.
// * Tasks are claimed dynamically from a shared counter and the caller works
//   too. A worker that is descheduled (another process busy on its core) simply
//   claims fewer tasks; nobody ever spins waiting for a thread that is not
//   running, beyond a short bounded spin.
// * But a worker descheduled in the middle of a task holds the whole job until
//   the scheduler runs it again (milliseconds, for jobs of ~0.1-1 ms): measured
//   on the 7B decode with one core busy elsewhere, 2 threads ran at half the
//   1-thread speed. So the caller times how long it waits for stragglers; when
//   that is repeatedly a large part of the job, the pool runs jobs on the
//   caller alone for a while (kBackoffJobs), then tries the workers again.
//   Under load 2 threads are then no worse than 1; results are unchanged.
// * Results never depend on the thread count: callers split work into tasks of
//   a fixed size, and each task is computed the same way whoever runs it.
#pragma once
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <utility>
#include <mutex>
#include <thread>
#include <vector>

#include "error.hpp"

namespace loupe {

// A non-owning reference to a callable (C++26's std::function_ref): what the
// pool runs. Unlike std::function it never allocates, so a decode step's
// hundreds of parallel jobs cost no heap traffic. The callable must outlive it.
template <class Sig>
class FunctionRef;
template <class R, class... A>
class FunctionRef<R(A...)> {
 public:
  template <class F, class = std::enable_if_t<!std::is_same_v<std::decay_t<F>, FunctionRef>>>
  FunctionRef(F&& f)  // NOLINT: implicit, like std::function
      : obj_(const_cast<void*>(static_cast<const void*>(std::addressof(f)))),
        call_([](void* o, A... a) -> R { return (*static_cast<std::remove_reference_t<F>*>(o))(std::forward<A>(a)...); }) {}
  R operator()(A... a) const { return call_(obj_, std::forward<A>(a)...); }

 private:
  void* obj_;
  R (*call_)(void*, A...);
};

namespace detail {
inline void cpu_relax() {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
  __builtin_ia32_pause();  // _mm_pause without <immintrin.h>
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}
// Spin until pred() or `us` microseconds have passed; returns pred().
template <class Pred>
inline bool spin_until(Pred pred, int us) {
  if (pred()) return true;
  const auto end = std::chrono::steady_clock::now() + std::chrono::microseconds(us);
  for (int i = 0;; ++i) {
    for (int k = 0; k < 16; ++k) cpu_relax();
    if (pred()) return true;
    if ((i & 15) == 15 && std::chrono::steady_clock::now() > end) return pred();
  }
}
}  // namespace detail

class ThreadPool {
 public:
  // How long idle workers (and a caller waiting for the last tasks) spin before sleeping.
  static constexpr int kSpinMicros = 100;
  // Back-off under contention: late-score threshold, and jobs run serially
  // before the workers are tried again (a 7B decode step issues ~230 jobs).
  static constexpr int kLateTrigger = 6;
  static constexpr int kBackoffJobs = 500;

  explicit ThreadPool(int n_threads = 1) {
    if (n_threads < 1) n_threads = 1;
    try {
      for (int i = 1; i < n_threads; ++i) workers_.emplace_back([this] { worker(); });
    } catch (const std::exception& e) {
      // The system refused a thread (limits, memory): stop the ones started, or their
      // joinable handles would terminate the process and their waits deadlock the
      // condition variables' destruction.
      const size_t started = workers_.size() + 1;
      shutdown();
      fail("cannot start ", n_threads, " threads (", started, " started): ", e.what());
    }
  }
  ~ThreadPool() { shutdown(); }
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return int(workers_.size()) + 1; }

  void parallel_for(int64_t n, FunctionRef<void(int64_t)> fn) {
    if (n <= 0) return;
    if (workers_.empty() || n == 1) {
      for (int64_t i = 0; i < n; ++i) fn(i);
      return;
    }
    if (serial_left_ > 0) {  // backing off: the other cores are busy
      --serial_left_;
      ++serial_jobs_;
      for (int64_t i = 0; i < n; ++i) fn(i);
      return;
    }
    using Clock = std::chrono::steady_clock;
    const auto t0 = Clock::now();
    Job job;
    job.fn = &fn;  // fn lives on this frame until every worker has left the job
    job.n = n;
    job_.store(&job);
    gen_.fetch_add(1);  // publish
    if (sleepers_.load() > 0) {
      { std::lock_guard<std::mutex> lk(mu_); }
      cv_.notify_all();
    }
    try {
      run(job);
    } catch (...) {
      job.next.store(n);  // no new tasks; let the workers leave, then rethrow
      finish();
      throw;
    }
    const auto t1 = Clock::now();
    finish();
    const auto t2 = Clock::now();
    // Late: the caller waited for stragglers a quarter of the job or more (and
    // over 30 µs). A late job scores 2, an on-time one takes 1 off: isolated
    // hiccups on an idle machine do not trigger the back-off, steady contention does.
    const double wait_us = std::chrono::duration<double, std::micro>(t2 - t1).count();
    const double job_us = std::chrono::duration<double, std::micro>(t2 - t0).count();
    if (wait_us > 30.0 && wait_us > 0.25 * job_us) {
      if ((late_score_ += 2) >= kLateTrigger) {
        serial_left_ = kBackoffJobs;
        late_score_ = kLateTrigger - 2;  // one more late job right after the back-off: back off again
      }
    } else if (late_score_ > 0) {
      --late_score_;
    }
  }

  // Jobs run on the caller alone because the workers were late (for tests, benchmarks).
  int64_t serial_jobs() const { return serial_jobs_; }

 private:
  struct Job {
    const FunctionRef<void(int64_t)>* fn = nullptr;
    int64_t n = 0;
    std::atomic<int64_t> next{0};
  };

  // Unpublish the job, then wait for workers still inside it (running their last task).
  void finish() {
    job_.store(nullptr);
    if (!detail::spin_until([&] { return inside_.load() == 0; }, kSpinMicros)) {
      std::unique_lock<std::mutex> lk(mu_);
      caller_waiting_.store(true);
      done_cv_.wait(lk, [&] { return inside_.load() == 0; });
      caller_waiting_.store(false);
    }
  }

  static void run(Job& job) {
    for (int64_t i; (i = job.next.fetch_add(1)) < job.n;) (*job.fn)(i);
  }

  void worker() {
    uint64_t seen = 0;  // the constructor's generation: a late-starting thread still sees every later one
    for (;;) {
      if (!detail::spin_until([&] { return gen_.load() != seen; }, kSpinMicros)) {
        std::unique_lock<std::mutex> lk(mu_);
        sleepers_.fetch_add(1);
        cv_.wait(lk, [&] { return gen_.load() != seen; });
        sleepers_.fetch_sub(1);
      }
      seen = gen_.load();
      if (quit_.load()) return;
      // Enter before looking at the job: the caller does not return while we are inside.
      inside_.fetch_add(1);
      if (Job* job = job_.load()) run(*job);
      if (inside_.fetch_sub(1) == 1 && caller_waiting_.load()) {
        { std::lock_guard<std::mutex> lk(mu_); }
        done_cv_.notify_all();
      }
    }
  }

  void shutdown() {
    quit_.store(true);
    gen_.fetch_add(1);
    {
      std::lock_guard<std::mutex> lk(mu_);
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  std::atomic<Job*> job_{nullptr};
  std::atomic<uint64_t> gen_{0};
  std::atomic<int> inside_{0}, sleepers_{0};
  std::atomic<bool> caller_waiting_{false}, quit_{false};
  // Caller-side state (parallel_for is called by one thread at a time).
  int late_score_ = 0, serial_left_ = 0;
  int64_t serial_jobs_ = 0;
};

// Run fn over [0, n) in tasks of `grain` items; serial when pool is null.
inline void parallel_chunks(ThreadPool* pool, int64_t n, int64_t grain, FunctionRef<void(int64_t, int64_t)> fn) {
  const int64_t tasks = (n + grain - 1) / grain;
  auto task = [&](int64_t t) { fn(t * grain, std::min(n, (t + 1) * grain)); };
  if (pool) pool->parallel_for(tasks, task);
  else for (int64_t t = 0; t < tasks; ++t) task(t);
}

}  // namespace loupe
