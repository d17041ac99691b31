#!/usr/bin/env python3
"""Reference for include/loupe/sampler.hpp, written from llama.cpp's documented
sampler semantics (src/llama-sampling.cpp, default chain order) with numpy.

  sampler_ref.py chain CASES.json LOGITS.f32 OUT.txt
      CASES.json: list of {"off", "n", "history", "temperature", "top_k", "top_p",
      "min_p", "repeat_penalty", "repeat_last_n", "u"}; logits of case i are
      float32 little-endian values [off, off+n) of LOGITS.f32.
      OUT.txt: one line per case: "<picked id> <number of candidates> <p of the top candidate>".
  sampler_ref.py rng SEED COUNT OUT.txt
      the first COUNT uniforms of xoshiro256** seeded by splitmix64(SEED).

Conventions shared with the C++ (they make the comparison exact, not approximate):
  * logits stay float32; penalty and temperature are float32 division/multiplication;
  * softmax weights are double, exp(l - l_max) computed by det_exp() below (a
    fixed recipe of IEEE operations instead of the platform's exp); weights of
    values equal to the maximum are exactly 1;
  * sums are sequential (np.cumsum) in candidate order;
  * candidates are ordered by value descending, ties by token id ascending.
"""
import json
import math
import sys

import numpy as np

INV_LN2 = 1.4426950408889634
LN2_HI = 6.93147180369123816490e-01
LN2_LO = 1.90821492927058770002e-10
INV_FACT = [1.0 / math.factorial(n) for n in range(14)]


def det_exp(x):
    """exp(x) for float64 arrays: x = k ln2 + r, Taylor to r^13, times 2^k; 0 below -708."""
    x = np.asarray(x, dtype=np.float64)
    out = np.zeros_like(x)
    ok = x >= -708.0
    xs = x[ok]
    k = np.floor(xs * INV_LN2 + 0.5)
    r = (xs - k * LN2_HI) - k * LN2_LO
    p = np.full_like(r, INV_FACT[13])
    for n in range(12, -1, -1):
        p = p * r
        p = p + INV_FACT[n]
    out[ok] = np.ldexp(p, k.astype(np.int32))
    # Sanity: the recipe must really be exp (a few ulp).
    with np.errstate(over="ignore", under="ignore"):
        ref = np.exp(xs)
    if xs.size:
        assert np.all(np.abs(out[ok] - ref) <= 4e-16 * ref), "det_exp is not exp"
    return out


def weights(v):
    """exp(v - v[0]) in double for a float32 vector sorted descending."""
    v = v.astype(np.float64)
    with np.errstate(invalid="ignore"):
        d = v - v[0]
    return np.where(v == v[0], 1.0, det_exp(np.where(v == v[0], 0.0, d)))


def by_value_then_id(values, ids):
    return np.lexsort((ids, -values))


def chain(logits, history, prm, u):
    l = logits.astype(np.float32).copy()
    n = l.shape[0]
    l[np.isnan(l)] = -np.inf

    # Repetition penalty over the distinct tokens among the last repeat_last_n.
    pen = np.float32(prm["repeat_penalty"])
    last_n = prm["repeat_last_n"]
    if pen != np.float32(1.0) and last_n != 0 and history:
        recent = history if last_n < 0 else history[-last_n:]
        for t in sorted({t for t in recent if 0 <= t < n}):
            l[t] = l[t] / pen if l[t] > 0 else l[t] * pen

    if np.float32(prm["temperature"]) <= 0:
        best = int(np.argmax(l))  # first maximum
        return best, 1, 1.0

    cand = by_value_then_id(l, np.arange(n))
    k = prm["top_k"]
    if k > 0:
        cand = cand[: min(k, n)]

    top_p = np.float32(prm["top_p"])
    if top_p < 1:
        e = weights(l[cand])
        p = e / np.cumsum(e)[-1]
        hit = np.nonzero(np.cumsum(p) >= float(top_p))[0]
        if hit.size:
            cand = cand[: hit[0] + 1]

    min_p = np.float32(prm["min_p"])
    if min_p > 0:
        e = weights(l[cand])
        keep = e >= float(min_p)
        keep[0] = True
        cand = cand[keep]

    lt = l[cand] / np.float32(prm["temperature"])
    assert lt.dtype == np.float32
    order = by_value_then_id(lt, cand)
    cand, lt = cand[order], lt[order]
    e = weights(lt)
    p = e / np.cumsum(e)[-1]
    i = int(np.searchsorted(np.cumsum(p), u, side="right"))  # first cumulative > u
    i = min(i, cand.size - 1)
    return int(cand[i]), int(cand.size), float(p[0])


MASK = (1 << 64) - 1


def uniforms(seed, count):
    s = []
    x = seed & MASK
    for _ in range(4):  # splitmix64
        x = (x + 0x9E3779B97F4A7C15) & MASK
        z = x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        s.append(z ^ (z >> 31))

    def rotl(v, k):
        return ((v << k) | (v >> (64 - k))) & MASK

    out = []
    for _ in range(count):  # xoshiro256**
        result = (rotl((s[1] * 5) & MASK, 7) * 9) & MASK
        t = (s[1] << 17) & MASK
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = rotl(s[3], 45)
        out.append((result >> 11) / float(1 << 53))
    return out


def main():
    if sys.argv[1] == "chain":
        cases = json.load(open(sys.argv[2]))
        all_logits = np.fromfile(sys.argv[3], dtype="<f4")
        with open(sys.argv[4], "w") as f:
            for c in cases:
                logits = all_logits[c["off"] : c["off"] + c["n"]]
                pick, ncand, p0 = chain(logits, c["history"], c, c["u"])
                f.write(f"{pick} {ncand} {p0!r}\n")
    elif sys.argv[1] == "rng":
        with open(sys.argv[4], "w") as f:
            for u in uniforms(int(sys.argv[2]), int(sys.argv[3])):
                f.write(f"{u!r}\n")
    else:
        sys.exit(f"unknown mode {sys.argv[1]}")


if __name__ == "__main__":
    main()
