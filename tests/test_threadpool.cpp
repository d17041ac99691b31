// The thread pool: every task runs exactly once, back-to-back jobs and jobs
// after the workers went to sleep, exceptions reach the caller, any size,
// back-off to the caller alone when a worker keeps arriving late.
#include "test_util.hpp"

#include <loupe/core/threadpool.hpp>

#include <stdexcept>

using namespace loupe;

TEST_CASE("threadpool: every index runs exactly once, for any pool size and job size") {
  for (int threads : {1, 2, 3, 5}) {
    ThreadPool pool(threads);
    CHECK(pool.size() == threads);
    for (int64_t n : {0, 1, 2, 7, 64, 1000}) {
      for (int rep = 0; rep < 50; ++rep) {  // back to back: workers still spinning
        std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
        pool.parallel_for(n, [&](int64_t i) { hits[size_t(i)].fetch_add(1); });
        int bad = 0;
        for (auto& h : hits) bad += h.load() != 1;
        REQUIRE(bad == 0);
      }
    }
  }
}

TEST_CASE("threadpool: workers wake from sleep, and parallel_chunks covers the range") {
  ThreadPool pool(3);
  for (int rep = 0; rep < 3; ++rep) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // past the spin: workers sleep
    std::vector<int> seen(1003, 0);
    parallel_chunks(&pool, 1003, 10, [&](int64_t a, int64_t b) {
      for (int64_t i = a; i < b; ++i) seen[size_t(i)] += 1;
    });
    CHECK(std::count(seen.begin(), seen.end(), 1) == 1003);
  }
}

TEST_CASE("threadpool: an exception in a task reaches the caller and the pool stays usable") {
  ThreadPool pool(2);
  std::atomic<int> ran{0};
  CHECK_THROWS_AS(pool.parallel_for(100, [&](int64_t i) {
    ran.fetch_add(1);
    if (i == 0) throw std::runtime_error("task failed");
  }), std::runtime_error);
  std::atomic<int> after{0};
  pool.parallel_for(10, [&](int64_t) { after.fetch_add(1); });
  CHECK(after.load() == 10);
}

TEST_CASE("threadpool: a worker that keeps arriving late makes the pool back off to the caller alone") {
  // A task run on the worker sleeps 20 ms: what a worker descheduled by another
  // busy process looks like to the caller. After a few late jobs the caller
  // runs jobs alone (every index still exactly once), and jobs get fast again.
  ThreadPool pool(2);
  const auto caller = std::this_thread::get_id();
  int worker_jobs = 0;
  for (int job = 0; job < 40; ++job) {
    std::vector<std::atomic<int>> hits(16);
    std::atomic<int> on_worker{0};
    const int64_t serial_before = pool.serial_jobs();
    pool.parallel_for(16, [&](int64_t i) {
      if (std::this_thread::get_id() != caller) {
        on_worker.fetch_add(1);
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      } else if (pool.serial_jobs() == serial_before) {
        // A parallel job: let the worker take a task first (it may wake slowly on a busy machine).
        const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(500);
        while (on_worker.load() == 0 && std::chrono::steady_clock::now() < end) std::this_thread::yield();
      }
      hits[size_t(i)].fetch_add(1);
    });
    int bad = 0;
    for (auto& h : hits) bad += h.load() != 1;
    REQUIRE(bad == 0);
    worker_jobs += on_worker.load() > 0;
  }
  // Three late jobs in a row trigger the back-off; then every job runs on the caller.
  CHECK(worker_jobs == 3);
  CHECK(pool.serial_jobs() == 37);
  // Prompt on-time jobs never trigger it.
  ThreadPool fresh(2);
  for (int job = 0; job < 200; ++job) {
    std::atomic<int64_t> sum{0};
    fresh.parallel_for(64, [&](int64_t i) {
      volatile double x = 0;
      for (int k = 0; k < 2000; ++k) x = x + double(k) * 1e-9;
      sum.fetch_add(i);
    });
    REQUIRE(sum.load() == 64 * 63 / 2);
  }
  // (A loaded CI machine may still back off now and then; only correctness is required here.)
}

// A pool the system refuses threads to fails with a message; before, the joinable
// handles of the threads already started terminated the process, or their waits
// deadlocked the destruction of the condition variables. The address space is
// limited in a child process, so that 300 threads' stacks cannot all be mapped.
// (Not under AddressSanitizer: its shadow memory needs the address space.)
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define LOUPE_TEST_ASAN 1
#endif
#endif
#if !defined(__SANITIZE_ADDRESS__) && !defined(LOUPE_TEST_ASAN)
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>

TEST_CASE("threadpool: when the system refuses threads, construction fails with a message, no crash or hang") {
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    alarm(20);  // a deadlock ends as SIGALRM, not a hung test
    rlimit lim{};
    getrlimit(RLIMIT_AS, &lim);
    lim.rlim_cur = rlim_t(512) << 20;  // 512 MiB: far below 300 stacks of 8 MiB
    if (setrlimit(RLIMIT_AS, &lim) != 0) _exit(4);
    try {
      ThreadPool pool(300);
      _exit(2);  // all started: the limit did not bite
    } catch (const std::exception& e) {
      _exit(std::strstr(e.what(), "cannot start 300 threads") ? 0 : 3);
    }
  }
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  INFO("child status " << status);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}
#endif

// End to end: a real model's greedy continuation is the same with 1 and 2
// threads, for quantised and float weights and an f16 KV cache (prefill goes
// through the gemm and blocked attention, decode through the gemv paths).
#include <loupe/convert/convert.hpp>
#include <loupe/pipeline/generate.hpp>

TEST_CASE("threadpool: greedy generation is identical with 1 and 2 threads") {
  LOUPE_REQUIRE_SHARED();
  const auto dir = loupe_test::scratch("threadpool_greedy");
  ThreadPool two(2);
  for (DType t : {DType::Q4_0, DType::Q8_0, DType::F16}) {
    ConvertOptions o;
    o.outtype = t;
    o.name = std::string("stories-") + dtype_name(t);
      LanguageModel lm = LanguageModel::open(convert_model((loupe_test::shared_dir() / "models/stories260K-hf").string(), dir.string(), o).text_path);
    GenerateOptions g;
    g.max_tokens = 40;
    g.stop_at_eos = false;
    std::vector<int32_t> out[2];
    for (int k = 0; k < 2; ++k) {
      SessionOptions so;
      so.n_ctx = 64;
      Session s(lm, so);
      out[k] = generate_text(s, "Once upon a time, there was a little girl named", g, nullptr, k ? &two : nullptr).tokens;
    }
    INFO(dtype_name(t));
    CHECK(out[0].size() == 40);
    CHECK(out[0] == out[1]);
  }
}
