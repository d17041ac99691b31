#include "test_util.hpp"

#include <loupe/text/sampler.hpp>

#include <cmath>
#include <cstdio>
#include <random>
#include <set>

using loupe::Sampler;
using loupe::SamplingParams;

namespace {

SamplingParams all_off(float temperature) {
  SamplingParams p;
  p.temperature = temperature;
  p.top_k = 0;
  p.top_p = 1.0f;
  p.min_p = 0.0f;
  p.repeat_penalty = 1.0f;
  return p;
}

std::string num(double x) {
  char b[64];
  std::snprintf(b, sizeof b, "%.17g", x);
  return b;
}

std::vector<std::string> lines(const std::string& text) {
  std::vector<std::string> out;
  size_t p = 0;
  while (p < text.size()) {
    size_t q = text.find('\n', p);
    if (q == std::string::npos) q = text.size();
    out.push_back(text.substr(p, q - p));
    p = q + 1;
  }
  return out;
}

// Pearson chi-square of observed counts against expected probabilities.
double chi_square(const std::vector<int>& counts, const std::vector<double>& probs, int draws) {
  double chi = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    const double e = probs[i] * draws;
    chi += (counts[i] - e) * (counts[i] - e) / e;
  }
  return chi;
}

}  // namespace

TEST_CASE("det_exp is exp to a few ulp and exact at 0") {
  CHECK(loupe::detail::det_exp(0.0) == 1.0);
  CHECK(loupe::detail::det_exp(-INFINITY) == 0.0);
  CHECK(loupe::detail::det_exp(-800.0) == 0.0);
  std::mt19937_64 g(7);
  std::uniform_real_distribution<double> d(-700.0, 0.0);
  double worst = 0;
  for (int i = 0; i < 100000; ++i) {
    const double x = i < 50000 ? d(g) : d(g) / 700.0;  // half of them in [-1, 0]
    const double ref = std::exp(x);
    worst = std::max(worst, std::abs(loupe::detail::det_exp(x) - ref) / ref);
  }
  MESSAGE("det_exp worst relative error: " << worst);
  CHECK(worst < 4e-16);
}

TEST_CASE("RNG stream is xoshiro256** seeded by splitmix64 (Python reference)") {
  auto dir = loupe_test::scratch("sampler_rng");
  for (uint64_t seed : {uint64_t(0), uint64_t(42), uint64_t(0xdeadbeefcafef00dull)}) {
    const std::string out = (dir / ("u" + std::to_string(seed) + ".txt")).string();
    loupe_test::run_python("sampler_ref.py", "rng " + std::to_string(seed) + " 64 " + out);
    auto ref = lines(loupe_test::slurp(out));
    REQUIRE(ref.size() == 64);
    loupe::SamplerRng rng(seed);
    for (const std::string& r : ref) {
      const double u = rng.uniform();
      CHECK(u == std::strtod(r.c_str(), nullptr));
      CHECK(u >= 0.0);
      CHECK(u < 1.0);
    }
  }
}

TEST_CASE("pick matches the Python reference chain exactly on random cases") {
  auto dir = loupe_test::scratch("sampler_chain");
  std::mt19937_64 g(12345);
  auto uni = [&](double a, double b) { return std::uniform_real_distribution<double>(a, b)(g); };
  auto choose = [&](auto const& v) { return v[std::uniform_int_distribution<size_t>(0, v.size() - 1)(g)]; };

  const std::vector<int> vocabs = {1, 2, 3, 5, 17, 100, 1000, 32000};
  const std::vector<float> temps = {0.0f, 0.1f, 0.7f, 1.0f, 1.5f};
  const std::vector<int> top_ks = {0, 1, 5, 40, 100000};
  const std::vector<float> top_ps = {1.0f, 0.95f, 0.9f, 0.5f, 0.0f};
  const std::vector<float> min_ps = {0.0f, 0.05f, 0.2f};
  const std::vector<float> penalties = {1.0f, 1.1f, 1.3f, 0.8f};
  const std::vector<int> last_ns = {64, 0, -1, 8};
  const std::vector<double> scales = {0.5, 2.0, 5.0, 20.0};

  struct Case {
    int32_t n;
    size_t off;
    std::vector<int32_t> history;
    SamplingParams sp;
    double u;
  };
  std::vector<Case> cases;
  std::vector<float> all_logits;
  const int n_cases = 400;
  for (int c = 0; c < n_cases; ++c) {
    Case k;
    k.n = choose(vocabs);
    k.off = all_logits.size();
    const double scale = choose(scales);
    const bool coarse = c % 5 == 0;  // many exact ties: tie-breaking by id matters
    const bool masked = c % 7 == 0;  // some -inf logits, as a logit mask would give
    std::normal_distribution<double> nd(0.0, scale);
    for (int i = 0; i < k.n; ++i) {
      double x = nd(g);
      if (coarse) x = std::round(x * 2) / 2;
      float f = float(x);
      if (masked && i % 3 == 1) f = -INFINITY;
      all_logits.push_back(f);
    }
    const int hlen = int(uni(0, 120));
    for (int i = 0; i < hlen; ++i) {
      int32_t t = int32_t(uni(0, std::min(k.n, 300)));
      if (i % 37 == 5) t = i % 2 ? -3 : k.n + 4;  // out of range: ignored
      k.history.push_back(t);
    }
    k.sp.temperature = choose(temps);
    k.sp.top_k = choose(top_ks);
    k.sp.top_p = choose(top_ps);
    k.sp.min_p = choose(min_ps);
    k.sp.repeat_penalty = choose(penalties);
    k.sp.repeat_last_n = choose(last_ns);
    k.u = c % 50 == 0 ? 0.0 : c % 50 == 1 ? 1.0 - 0x1.0p-53 : uni(0, 1);
    cases.push_back(std::move(k));
  }

  const auto logits_path = dir / "logits.f32";
  {
    std::FILE* f = std::fopen(logits_path.string().c_str(), "wb");
    REQUIRE(f);
    REQUIRE(std::fwrite(all_logits.data(), 4, all_logits.size(), f) == all_logits.size());
    std::fclose(f);
  }
  const auto cases_path = dir / "cases.json";
  {
    std::ofstream js(cases_path);
    js << "[\n";
    for (size_t c = 0; c < cases.size(); ++c) {
      const Case& k = cases[c];
      js << "{\"off\": " << k.off << ", \"n\": " << k.n << ", \"history\": [";
      for (size_t i = 0; i < k.history.size(); ++i) js << (i ? ", " : "") << k.history[i];
      js << "], \"temperature\": " << num(k.sp.temperature) << ", \"top_k\": " << k.sp.top_k
         << ", \"top_p\": " << num(k.sp.top_p) << ", \"min_p\": " << num(k.sp.min_p)
         << ", \"repeat_penalty\": " << num(k.sp.repeat_penalty)
         << ", \"repeat_last_n\": " << k.sp.repeat_last_n << ", \"u\": " << num(k.u) << "}"
         << (c + 1 < cases.size() ? ",\n" : "\n");
    }
    js << "]\n";
  }
  const auto out_path = dir / "picks.txt";
  loupe_test::run_python("sampler_ref.py",
                         "chain " + loupe_test::quote(cases_path.string()) + " " +
                             loupe_test::quote(logits_path.string()) + " " +
                             loupe_test::quote(out_path.string()));
  auto ref = lines(loupe_test::slurp(out_path));
  REQUIRE(ref.size() == cases.size());

  int mismatches = 0, sampled = 0, filtered = 0;
  std::set<int32_t> distinct_picks;
  for (size_t c = 0; c < cases.size(); ++c) {
    const Case& k = cases[c];
    const float* lg = all_logits.data() + k.off;
    const int32_t got = Sampler::pick(lg, k.n, k.history, k.sp, k.u);
    const auto dist = Sampler::distribution(lg, k.n, k.history, k.sp);
    int32_t want = -1;
    size_t want_n = 0;
    char p0s[64] = {0};
    REQUIRE(std::sscanf(ref[c].c_str(), "%d %zu %63s", &want, &want_n, p0s) == 3);
    const double want_p0 = std::strtod(p0s, nullptr);
    INFO("case " << c << ": n=" << k.n << " T=" << k.sp.temperature << " k=" << k.sp.top_k
                 << " p=" << k.sp.top_p << " min_p=" << k.sp.min_p << " pen=" << k.sp.repeat_penalty
                 << " last_n=" << k.sp.repeat_last_n << " u=" << k.u);
    CHECK(got == want);
    CHECK(dist.size() == want_n);
    CHECK(dist[0].p == want_p0);  // bit-exact: same recipe, same order of operations
    if (got != want || dist.size() != want_n || dist[0].p != want_p0) ++mismatches;
    if (k.sp.temperature > 0) ++sampled;
    if (k.sp.temperature > 0 && dist.size() > 1 && int(dist.size()) < k.n) ++filtered;
    distinct_picks.insert(got);
  }
  MESSAGE(cases.size() << " cases, " << sampled << " sampled, " << filtered
                       << " with a partially filtered candidate set, " << mismatches << " mismatches");
  CHECK(mismatches == 0);
  CHECK(sampled > 200);     // the cases really exercise sampling,
  CHECK(filtered > 50);     // the filters,
  CHECK(distinct_picks.size() > 50);  // and varied outcomes
}

TEST_CASE("greedy: argmax after the repetition penalty, lowest id on ties") {
  SamplingParams sp;  // temperature 0
  const std::vector<float> l = {1.0f, 3.0f, 3.0f, -2.0f, 2.9f};
  CHECK(Sampler::pick(l.data(), 5, {}, sp, 0.99) == 1);
  sp.repeat_penalty = 1.1f;  // 3/1.1 = 2.727 < 2.9
  CHECK(Sampler::pick(l.data(), 5, {1, 2, 1}, sp, 0.0) == 4);
  sp.repeat_last_n = 1;  // only token 1 penalised now: token 2 wins
  CHECK(Sampler::pick(l.data(), 5, {2, 1}, sp, 0.0) == 2);
  // Negative logits get more negative (multiplied), not less.
  const std::vector<float> neg = {-1.0f, -1.05f};
  sp.repeat_last_n = 64;
  CHECK(Sampler::pick(neg.data(), 2, {}, sp, 0.0) == 0);
  CHECK(Sampler::pick(neg.data(), 2, {0}, sp, 0.0) == 1);  // -1.1 < -1.05
  const std::vector<float> one = {0.0f};
  CHECK(Sampler::pick(one.data(), 1, {0, 0}, sp, 0.5) == 0);
  CHECK_THROWS_AS(Sampler::pick(one.data(), 0, {}, sp, 0.5), loupe::Error);
}

TEST_CASE("filters keep what llama.cpp keeps") {
  // probs at T=1 of {ln 4, ln 2, ln 1, ln 1} = {0.5, 0.25, 0.125, 0.125}
  const std::vector<float> l = {std::log(4.0f), std::log(2.0f), 0.0f, 0.0f};
  SamplingParams sp = all_off(1.0f);
  sp.top_k = 2;
  CHECK(Sampler::distribution(l.data(), 4, {}, sp).size() == 2);
  sp.top_k = 0;
  sp.top_p = 0.7f;  // 0.5 < 0.7 <= 0.75
  CHECK(Sampler::distribution(l.data(), 4, {}, sp).size() == 2);
  sp.top_p = 0.3f;
  CHECK(Sampler::distribution(l.data(), 4, {}, sp).size() == 1);
  sp.top_p = 1.0f;
  sp.min_p = 0.3f;  // keeps p >= 0.15
  CHECK(Sampler::distribution(l.data(), 4, {}, sp).size() == 2);
  sp.min_p = 0.2f;  // keeps p >= 0.1: all; ties 2 and 3 ordered by id
  auto d = Sampler::distribution(l.data(), 4, {}, sp);
  REQUIRE(d.size() == 4);
  CHECK(d[2].id == 2);
  CHECK(d[3].id == 3);
  CHECK(d[0].p == doctest::Approx(0.5));
  CHECK(d[3].p == doctest::Approx(0.125));
  // Inverse CDF: u in [0, .5) -> 0, [.5, .75) -> 1, [.75, .875) -> 2, else 3.
  CHECK(Sampler::pick(l.data(), 4, {}, sp, 0.49) == 0);
  CHECK(Sampler::pick(l.data(), 4, {}, sp, 0.51) == 1);
  CHECK(Sampler::pick(l.data(), 4, {}, sp, 0.8) == 2);
  CHECK(Sampler::pick(l.data(), 4, {}, sp, 0.9) == 3);
  CHECK(Sampler::pick(l.data(), 4, {}, sp, 1.0 - 0x1.0p-53) == 3);
  // Exact boundaries, with four equal logits (p = 0.25 each, sums exact):
  const std::vector<float> flat = {0.5f, 0.5f, 0.5f, 0.5f};
  SamplingParams fp = all_off(1.0f);
  fp.top_p = 0.5f;  // cumulative 0.5 reaches p at the second token: keep 2, not 3
  CHECK(Sampler::distribution(flat.data(), 4, {}, fp).size() == 2);
  fp.top_p = 1.0f;
  fp.min_p = 1.0f;  // p >= 1 * p_max keeps every tie (llama.cpp: logit >= max + log 1)
  CHECK(Sampler::distribution(flat.data(), 4, {}, fp).size() == 4);
  fp.min_p = 0.0f;  // u exactly on a cumulative boundary belongs to the next token
  CHECK(Sampler::pick(flat.data(), 4, {}, fp, 0.25) == 1);
  CHECK(Sampler::pick(flat.data(), 4, {}, fp, 0.0) == 0);
  CHECK(Sampler::pick(flat.data(), 4, {}, fp, 0.75) == 3);
  // Temperature applies after min-p: a high temperature flattens but keeps the set.
  sp.min_p = 0.3f;
  sp.temperature = 100.0f;
  d = Sampler::distribution(l.data(), 4, {}, sp);
  REQUIRE(d.size() == 2);
  CHECK(d[0].p == doctest::Approx(0.5).epsilon(0.01));
}

TEST_CASE("NaN and -inf logits never win and never poison the distribution") {
  const std::vector<float> l = {NAN, -INFINITY, 1.0f, 0.5f};
  SamplingParams sp = all_off(1.0f);
  auto d = Sampler::distribution(l.data(), 4, {}, sp);
  REQUIRE(d.size() == 4);
  CHECK(d[0].id == 2);
  CHECK(d[2].p == 0.0);
  CHECK(d[3].p == 0.0);
  for (double u : {0.0, 0.5, 0.999999}) CHECK(Sampler::pick(l.data(), 4, {}, sp, u) >= 2);
  const std::vector<float> masked = {-INFINITY, -INFINITY};
  CHECK(Sampler::pick(masked.data(), 2, {}, sp, 0.7) == 1);  // all equal: uniform
}

TEST_CASE("seeded sampling is reproducible and seed-dependent") {
  std::mt19937 g(3);
  std::normal_distribution<float> nd(0.0f, 2.0f);
  std::vector<float> l(1000);
  for (float& x : l) x = nd(g);
  SamplingParams sp;
  sp.temperature = 1.0f;
  sp.top_k = 0;
  sp.top_p = 1.0f;
  sp.min_p = 0.0f;
  auto run = [&](uint64_t seed) {
    sp.seed = seed;
    Sampler s(sp);
    std::vector<int32_t> out;
    for (int i = 0; i < 200; ++i) out.push_back(s.sample(l.data(), 1000, out));
    return out;
  };
  const auto a = run(7), b = run(7), c = run(8);
  CHECK(a == b);
  CHECK(a != c);
  CHECK(std::set<int32_t>(a.begin(), a.end()).size() > 20);  // it really samples
  // reseed() restarts the stream.
  sp.seed = 7;
  Sampler s(sp);
  const int32_t first = s.sample(l.data(), 1000, {});
  s.sample(l.data(), 1000, {});
  s.reseed(7);
  CHECK(s.sample(l.data(), 1000, {}) == first);
  // Greedy consumes no randomness and ignores the seed.
  sp.temperature = 0.0f;
  Sampler g1(sp);
  sp.seed = 99;
  Sampler g2(sp);
  CHECK(g1.sample(l.data(), 1000, {}) == g2.sample(l.data(), 1000, {}));
}

TEST_CASE("empirical distribution matches softmax (chi-square)") {
  const std::vector<float> l = {0.0f, 0.5f, 1.0f, -1.0f, 2.0f, 0.3f, -0.5f, 1.5f, 0.8f, -2.0f};
  const int n = int(l.size());
  const int draws = 200000;
  auto softmax = [](std::vector<double> x) {
    double m = *std::max_element(x.begin(), x.end()), s = 0;
    for (double& v : x) s += (v = std::exp(v - m));
    for (double& v : x) v /= s;
    return x;
  };

  SUBCASE("temperature 1, filters off: df 9, critical value 27.88 at p = 0.001") {
    Sampler s(all_off(1.0f));
    std::vector<int> counts(size_t(n), 0);
    for (int i = 0; i < draws; ++i) ++counts[size_t(s.sample(l.data(), n, {}))];
    const double chi = chi_square(counts, softmax(std::vector<double>(l.begin(), l.end())), draws);
    MESSAGE("chi-square (T=1): " << chi);
    CHECK(chi < 27.88);
  }
  SUBCASE("temperature 0.5 with top-k 3: only the 3 best, df 2, critical 13.82") {
    SamplingParams sp = all_off(0.5f);
    sp.top_k = 3;
    sp.seed = 2024;
    Sampler s(sp);
    std::vector<int> counts(size_t(n), 0);
    for (int i = 0; i < draws; ++i) ++counts[size_t(s.sample(l.data(), n, {}))];
    const std::vector<int> top = {4, 7, 2};  // logits 2.0, 1.5, 1.0
    int inside = 0;
    for (int t : top) inside += counts[size_t(t)];
    CHECK(inside == draws);
    const auto p = softmax({2.0 / 0.5, 1.5 / 0.5, 1.0 / 0.5});
    const double chi = chi_square({counts[4], counts[7], counts[2]}, p, draws);
    MESSAGE("chi-square (T=0.5, top-k 3): " << chi);
    CHECK(chi < 13.82);
  }
}
