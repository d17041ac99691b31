// Next-token sampling: llama.cpp's default chain — repetition penalty, top-k,
// top-p, min-p, temperature, then one draw — written so that the same logits,
// history, parameters and seed pick the same token on every platform (native
// and WASM alike).
//
// Why the results are bit-reproducible:
//  * logit arithmetic (penalty, temperature) is plain float32 IEEE division and
//    multiplication;
//  * softmax weights are computed in double with det_exp() below, which uses
//    only + - * / floor and exact power-of-two scaling, so it does not depend
//    on the platform's libm (glibc, musl and numpy's SIMD exp differ in the last
//    bit);
//  * sums run sequentially in the candidates' order;
//  * every sort uses a total order (value descending, then token id ascending);
//  * the random numbers come from our own xoshiro256** generator.
// This needs the compiler not to fuse a*b+c into an FMA: loupe builds with
// -ffp-contract=off (and WASM has no FMA).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "../core/error.hpp"

namespace loupe {

struct SamplingParams {
  float temperature = 0.0f;     // <= 0: greedy (argmax after the repetition penalty)
  int top_k = 40;               // <= 0: off
  float top_p = 0.95f;          // >= 1: off
  float min_p = 0.05f;          // <= 0: off
  float repeat_penalty = 1.0f;  // 1: off
  int repeat_last_n = 64;       // trailing history tokens penalised; 0: none, < 0: the whole history
  uint64_t seed = 42;           // fixed by default so runs are reproducible; pick another for variety
};

// One surviving candidate of the chain, in draw order.
struct TokenProb {
  int32_t id;
  float logit;  // after penalty and temperature
  double p;     // final probability (sums to 1 over the candidates)
};

namespace detail {

// exp(x) in double, built only from correctly rounded IEEE operations so it is
// identical everywhere (reference/sampler_ref.py implements the same
// recipe with numpy). Relative error is within a few ulp of the true exp.
// Results below ~1e-307 are flushed to 0 (irrelevant as sampling weights, and
// it keeps the final scaling exact, never subnormal).
inline double det_exp(double x) {
  if (!(x >= -708.0)) return 0.0;  // also -inf and NaN
  if (x > 709.0) return std::numeric_limits<double>::infinity();
  // x = k*ln2 + r, |r| <= ln2/2; ln2_hi has trailing zero bits so k*ln2_hi is exact.
  const double inv_ln2 = 1.4426950408889634;
  const double ln2_hi = 6.93147180369123816490e-01;
  const double ln2_lo = 1.90821492927058770002e-10;
  const double k = std::floor(x * inv_ln2 + 0.5);
  const double r = (x - k * ln2_hi) - k * ln2_lo;
  // Taylor series to r^13 / 13! (truncation < 1e-17 relative), Horner form.
  static const double inv_fact[14] = {
      1.0,         1.0,          1.0 / 2.0,         1.0 / 6.0,          1.0 / 24.0,
      1.0 / 120.0, 1.0 / 720.0,  1.0 / 5040.0,      1.0 / 40320.0,      1.0 / 362880.0,
      1.0 / 3628800.0, 1.0 / 39916800.0, 1.0 / 479001600.0, 1.0 / 6227020800.0};
  double p = inv_fact[13];
  for (int n = 12; n >= 0; --n) {
    p = p * r;
    p = p + inv_fact[n];
  }
  return std::ldexp(p, int(k));  // exact: the result stays a normal number
}

// Unnormalised softmax weights relative to the first (largest) value. Equal
// values (including a block of +-inf) weigh 1, so masked logits never give NaN.
inline void softmax_weights(const std::vector<float>& v, std::vector<double>& e) {
  e.resize(v.size());
  for (size_t i = 0; i < v.size(); ++i)
    e[i] = v[i] == v[0] ? 1.0 : det_exp(double(v[i]) - double(v[0]));
}

}  // namespace detail

// xoshiro256** (Blackman & Vigna), state seeded by splitmix64. Integer-only,
// so the stream is the same on every platform.
struct SamplerRng {
  uint64_t s[4];

  explicit SamplerRng(uint64_t seed) { reseed(seed); }

  void reseed(uint64_t seed) {
    for (uint64_t& w : s) {
      seed += 0x9e3779b97f4a7c15ull;  // splitmix64
      uint64_t z = seed;
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
      w = z ^ (z >> 31);
    }
  }

  uint64_t next() {
    const uint64_t result = rotl(s[1] * 5, 7) * 9;
    const uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
  }

  // Uniform in [0, 1): the top 53 bits, so every value is an exact multiple of 2^-53.
  double uniform() { return double(next() >> 11) * 0x1.0p-53; }

 private:
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
};

struct Sampler {
  SamplingParams params;

  explicit Sampler(SamplingParams p) : params(p), rng_(p.seed) {}

  // Picks the next token. Greedy (temperature <= 0) consumes no random number;
  // otherwise exactly one uniform is drawn per call, whatever the filters keep.
  int32_t sample(const float* logits, int32_t n_vocab, const std::vector<int32_t>& history) {
    if (params.temperature <= 0.0f && n_vocab > 0 &&
        (params.repeat_penalty == 1.0f || params.repeat_last_n == 0 || history.empty())) {
      // Plain greedy, without distribution()'s copy of the logits (a decode
      // step allocates nothing): the first maximum, NaN as -inf.
      auto val = [&](int32_t i) { return std::isnan(logits[i]) ? -std::numeric_limits<float>::infinity() : logits[i]; };
      int32_t best = 0;
      for (int32_t i = 1; i < n_vocab; ++i)
        if (val(i) > val(best)) best = i;
      return best;
    }
    const double u = params.temperature > 0.0f ? rng_.uniform() : 0.0;
    return pick(logits, n_vocab, history, params, u);
  }

  void reseed(uint64_t seed) {
    params.seed = seed;
    rng_.reseed(seed);
  }

  // The candidates that survive the chain, sorted by descending probability
  // (ties: lower id first), with their probabilities. Greedy gives one
  // candidate with p = 1. NaN logits are treated as -inf.
  static std::vector<TokenProb> distribution(const float* logits, int32_t n_vocab,
                                             const std::vector<int32_t>& history,
                                             const SamplingParams& sp) {
    if (n_vocab <= 0) fail("sampler: n_vocab must be positive, got ", n_vocab);
    const size_t n = size_t(n_vocab);
    std::vector<float> l(logits, logits + n);
    for (float& x : l)
      if (std::isnan(x)) x = -std::numeric_limits<float>::infinity();

    // Repetition penalty (CTRL, with llama.cpp's sign fix): each distinct recent
    // token once; positive logits shrink by division, the rest grow more negative.
    if (sp.repeat_penalty != 1.0f && sp.repeat_last_n != 0 && !history.empty()) {
      size_t from = 0;
      if (sp.repeat_last_n > 0 && history.size() > size_t(sp.repeat_last_n))
        from = history.size() - size_t(sp.repeat_last_n);
      std::vector<int32_t> recent;
      for (size_t i = from; i < history.size(); ++i)
        if (history[i] >= 0 && history[i] < n_vocab) recent.push_back(history[i]);
      std::sort(recent.begin(), recent.end());
      recent.erase(std::unique(recent.begin(), recent.end()), recent.end());
      for (int32_t t : recent) {
        float& x = l[size_t(t)];
        x = x > 0.0f ? x / sp.repeat_penalty : x * sp.repeat_penalty;
      }
    }

    if (sp.temperature <= 0.0f) {  // greedy: first maximum = lowest id on ties
      size_t best = 0;
      for (size_t i = 1; i < n; ++i)
        if (l[i] > l[best]) best = i;
      return {TokenProb{int32_t(best), l[best], 1.0}};
    }

    // Candidates sorted by logit descending, ties by id ascending.
    std::vector<int32_t> ids(n);
    for (size_t i = 0; i < n; ++i) ids[i] = int32_t(i);
    auto by_logit = [&l](int32_t a, int32_t b) {
      const float la = l[size_t(a)], lb = l[size_t(b)];
      return la > lb || (la == lb && a < b);
    };
    const size_t k = sp.top_k > 0 ? std::min(size_t(sp.top_k), n) : n;
    std::partial_sort(ids.begin(), ids.begin() + std::ptrdiff_t(k), ids.end(), by_logit);
    ids.resize(k);

    std::vector<float> v;
    std::vector<double> e;
    auto gather = [&] {
      v.resize(ids.size());
      for (size_t i = 0; i < ids.size(); ++i) v[i] = l[size_t(ids[i])];
    };

    // Top-p: the smallest prefix whose probability mass reaches p (at least one).
    if (sp.top_p < 1.0f) {
      gather();
      detail::softmax_weights(v, e);
      double total = 0.0;
      for (double w : e) total += w;
      double cum = 0.0;
      for (size_t i = 0; i < e.size(); ++i) {
        cum += e[i] / total;
        if (cum >= double(sp.top_p)) {
          ids.resize(i + 1);
          break;
        }
      }
    }

    // Min-p: keep tokens whose probability is at least min_p times the largest
    // (the ratio is exp(l - l_max), normalisation cancels); the top one always stays.
    if (sp.min_p > 0.0f) {
      gather();
      detail::softmax_weights(v, e);
      size_t m = 1;
      for (size_t i = 1; i < ids.size(); ++i)
        if (e[i] >= double(sp.min_p)) ids[m++] = ids[i];
      ids.resize(m);
    }

    // Temperature (after the filters, as in llama.cpp, so top-p / min-p see the
    // untempered distribution), then re-sort: rounding can make distinct logits
    // equal, and equal values order by id.
    std::vector<TokenProb> out(ids.size());
    for (size_t i = 0; i < ids.size(); ++i)
      out[i] = TokenProb{ids[i], l[size_t(ids[i])] / sp.temperature, 0.0};
    std::sort(out.begin(), out.end(), [](const TokenProb& a, const TokenProb& b) {
      return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
    });

    v.resize(out.size());
    for (size_t i = 0; i < out.size(); ++i) v[i] = out[i].logit;
    detail::softmax_weights(v, e);
    double total = 0.0;
    for (double w : e) total += w;
    for (size_t i = 0; i < out.size(); ++i) out[i].p = e[i] / total;
    return out;
  }

  // The chain as a pure function of a uniform u in [0, 1): inverse CDF over the
  // candidates in distribution() order, i.e. the first whose cumulative
  // probability exceeds u (the last one if rounding leaves u beyond the total).
  static int32_t pick(const float* logits, int32_t n_vocab, const std::vector<int32_t>& history,
                      const SamplingParams& sp, double u) {
    const std::vector<TokenProb> c = distribution(logits, n_vocab, history, sp);
    double cum = 0.0;
    for (const TokenProb& t : c) {
      cum += t.p;
      if (u < cum) return t.id;
    }
    return c.back().id;
  }

 private:
  SamplerRng rng_;
};

}  // namespace loupe
