#!/usr/bin/python3
"""Evaluate the exported demo model (PyTorch, float32) on a held-out seeded set.

Loads the published-layout directories written by export.py (so what is evaluated is
what loupe-convert reads), optionally simulates a conversion (--quant):
  bf16  the stored weights as they are (bf16, upcast)
  f16   what the F16 GGUFs hold: 2-D weights f16, norms/biases/position/class
        embeddings f32, patch embedding f16
  q4_0  what the Q4_0 GGUFs hold (loupe-convert's choose_type: Q4_0, lm_head Q8_0,
        patch embedding f16, 1-D f32), dequantised with reference/quant_ref.py,
        and the inputs of every quantised matrix product quantised to Q8_0 per 32 values
        (as loupe and llama.cpp do).
The adapter (LoRA A/B and its projector) is applied unquantised from its bf16 files.

Greedy decoding (KV cache, up to --max-new tokens or EOS) with the vicuna_v1 prompt,
grouped by prompt so a batch shares one prompt length.

Metrics per condition: exact match (generated text == reference caption), corpus BLEU-4
(uniform weights, brevity penalty, no smoothing; words and punctuation as tokens),
ROUGE-L F1 (LCS over the same tokens, averaged per caption), and the fraction of outputs
detected as Lithuanian (scenes.is_lithuanian: Lithuanian letters or grammar words).

Writes OUT/<condition>-<quant>.jsonl (index, image, prompt, prompt_ids with -200,
greedy_ids, margins = top1-top2 logit gap at each step, text, reference, exact) and
OUT/summary-<quant>.json; with --save-images the held-out PNGs go to OUT/images/.

  eval.py --export /work/demo-cache/export --quant f16 --out /work/demo-cache/eval --save-images
"""

import argparse
import json
import math
import os
import re
import sys
import time
from collections import Counter, OrderedDict

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import model as M  # noqa: E402
import scenes  # noqa: E402
import export as E  # noqa: E402

sys.path.insert(0, os.path.join(M.REPO, "reference"))
import preprocess_ref  # noqa: E402


# ------------------------------------------------------------------ metrics

def words(s):
    return re.findall(r"\w+|[^\w\s]", s.lower())


def ngrams(t, n):
    return Counter(tuple(t[i:i + n]) for i in range(len(t) - n + 1))


def corpus_bleu(hyps, refs, N=4):
    """Papineni et al. corpus BLEU: clipped n-gram precisions summed over the corpus,
    geometric mean over n = 1..N, brevity penalty exp(1 - r/c) when c < r."""
    match, total = [0] * N, [0] * N
    c = r = 0
    for h, ref in zip(hyps, refs):
        h, ref = words(h), words(ref)
        c += len(h)
        r += len(ref)
        for n in range(1, N + 1):
            hn, rn = ngrams(h, n), ngrams(ref, n)
            match[n - 1] += sum(min(v, rn[g]) for g, v in hn.items())
            total[n - 1] += max(0, len(h) - n + 1)
    if c == 0 or min(match) == 0:
        return 0.0
    logp = sum(math.log(m / t) for m, t in zip(match, total)) / N
    bp = 1.0 if c > r else math.exp(1 - r / c)
    return bp * math.exp(logp)


def lcs(a, b):
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(h, ref):
    h, ref = words(h), words(ref)
    if not h or not ref:
        return 0.0
    l = lcs(h, ref)
    if l == 0:
        return 0.0
    p, r = l / len(h), l / len(ref)
    return 2 * p * r / (p + r)


def _self_test():
    assert abs(corpus_bleu(["a b c d e"], ["a b c d e"]) - 1.0) < 1e-12
    assert corpus_bleu(["x y z w"], ["a b c d"]) == 0.0
    # hand-computed: hyp "a b c d x" vs ref "a b c d e": p1 4/5 p2 3/4 p3 2/3 p4 1/2, bp 1
    v = corpus_bleu(["a b c d x"], ["a b c d e"])
    assert abs(v - (0.8 * 0.75 * (2 / 3) * 0.5) ** 0.25) < 1e-12, v
    # brevity: hyp "a b c d" vs ref "a b c d e": precisions 1, bp exp(1 - 5/4)
    assert abs(corpus_bleu(["a b c d"], ["a b c d e"]) - math.exp(-0.25)) < 1e-12
    assert lcs("abcbdab", "bdcaba") == 4
    assert abs(rouge_l("a b c", "a c") - 2 * (2 / 3) * 1 / (2 / 3 + 1)) < 1e-12


# ------------------------------------------------------------------ conversion simulation

def q8_0_act(x):
    """ggml quantize_row_q8_0 on the last dim (blocks of 32), dequantised:
    d = amax/127, q = roundf(x/d) (half away from zero), y = q * f16(d)."""
    shp = x.shape
    b = x.reshape(-1, 32)
    amax = b.abs().amax(dim=1, keepdim=True)
    d = amax / 127.0
    idv = torch.where(d != 0, 1.0 / torch.where(d != 0, d, torch.ones_like(d)), torch.zeros_like(d))
    v = b * idv
    q = torch.sign(v) * torch.floor(v.abs() + 0.5)
    return (q * d.half().float()).reshape(shp)


def apply_quant(vlm, quant):
    """Replace the base weights (not LoRA) with the simulated converted values; return
    the activation hook for the quantised matrices (or None)."""
    sd = vlm.state_dict()
    base = OrderedDict()
    for k, v in sd.items():
        if "lora_" in k:
            continue
        if k.startswith("llm."):
            base[k[4:]] = v
        elif k.startswith("vision_tower."):
            base[k[len("vision_tower."):]] = v
    sim = M.simulate_converted(base, quant)
    qnames = set()
    with torch.no_grad():
        for k, v in sd.items():
            if "lora_" in k:
                continue
            name = k[4:] if k.startswith("llm.") else k[len("vision_tower."):]
            v.copy_(sim[name])
            if quant == "q4_0" and M.converted_type(name, tuple(v.shape), quant) in ("q4_0", "q8_0"):
                qnames.add(name)
    return make_hook(qnames)


def make_hook(qnames):
    if not qnames:
        return None

    def hook(name, x):
        return q8_0_act(x) if name in qnames else x
    hook.qnames = qnames
    return hook


def apply_adapter_projector_sim(vlm, adapter_proj_sd):
    with torch.no_grad():
        vlm.llm.model.mm_projector.load_state_dict(adapter_proj_sd)


# ------------------------------------------------------------------ decoding

@torch.no_grad()
def greedy_batch(vlm, feats, question, max_new):
    """feats [B, N, H] projected image features; one question for the batch.
    -> list of (ids, margins) per row (ids end with EOS when it was produced)."""
    ids = M.prompt_ids(question)
    B = feats.shape[0]
    emb = vlm.splice([ids] * B, feats)
    T0 = emb.shape[1]
    L = vlm.llm.config["num_hidden_layers"]
    cache = [None] * L
    hn = vlm.llm.decoder(emb, torch.arange(T0), cache=cache)
    logits = vlm.llm.logits(hn[:, -1])
    out = [[] for _ in range(B)]
    margins = [[] for _ in range(B)]
    done = [False] * B
    for t in range(max_new):
        top = torch.topk(logits, 2, dim=-1)
        nxt = top.indices[:, 0]
        for b in range(B):
            if not done[b]:
                out[b].append(int(nxt[b]))
                margins[b].append(float(top.values[b, 0] - top.values[b, 1]))
                if int(nxt[b]) == M.EOS:
                    done[b] = True
        if all(done):
            break
        e = vlm.llm.embed(nxt[:, None])
        hn = vlm.llm.decoder(e, torch.tensor([T0 + t]), cache=cache)
        logits = vlm.llm.logits(hn[:, -1])
    return list(zip(out, margins))


def heldout(seed, n):
    return [scenes.example(seed, i) for i in range(n)]


def run_condition(vlm, examples, vfeats, lang, ask, max_new, batch, log):
    """vfeats: tower features [n, 576, Dv] (shared by all conditions of a quant)."""
    groups = OrderedDict()
    for i, ex in enumerate(examples):
        q = ex["prompt_en"] if ask == "en" else ex["prompt_lt"]
        groups.setdefault(q, []).append(i)
    res = [None] * len(examples)
    with torch.no_grad():
        for q, idx in groups.items():
            for s in range(0, len(idx), batch):
                part = idx[s:s + batch]
                f = vlm.llm.project(vfeats[part])
                for i, (ids, mg) in zip(part, greedy_batch(vlm, f, q, max_new)):
                    res[i] = (q, ids, mg)
    rows = []
    for i, ex in enumerate(examples):
        q, ids, mg = res[i]
        text = M.decode(ids).strip()
        ref = ex[lang]
        rows.append(OrderedDict([("index", i), ("prompt", q), ("prompt_ids", M.prompt_ids(q)),
                                 ("greedy_ids", ids), ("margins", [round(m, 4) for m in mg]),
                                 ("text", text), ("reference", ref), ("exact", text == ref),
                                 ("lithuanian", scenes.is_lithuanian(text))]))
    hyps, refs = [r["text"] for r in rows], [r["reference"] for r in rows]
    summ = OrderedDict([
        ("n", len(rows)), ("exact", sum(r["exact"] for r in rows) / len(rows)),
        ("bleu4", corpus_bleu(hyps, refs)),
        ("rougeL", sum(rouge_l(h, r) for h, r in zip(hyps, refs)) / len(rows)),
        ("lithuanian", sum(r["lithuanian"] for r in rows) / len(rows)),
        ("ended_with_eos", sum(1 for r in rows if r["greedy_ids"] and r["greedy_ids"][-1] == M.EOS) / len(rows)),
        ("min_margin", min(min(r["margins"]) for r in rows if r["margins"])),
    ])
    return rows, summ


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", required=True, help="dir written by export.py")
    ap.add_argument("--quant", choices=["bf16", "f16", "q4_0"], default="f16")
    ap.add_argument("--seed", type=int, default=1000, help="held-out scene seed [1000]")
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--max-new", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-adapter", action="store_true")
    ap.add_argument("--lt-prompts", action="store_true",
                    help="also run the base with the Lithuanian prompts (its training cue)")
    ap.add_argument("--out", default="/work/demo-cache/eval")
    ap.add_argument("--save-images", action="store_true")
    a = ap.parse_args(argv)
    _self_test()
    torch.set_num_threads(a.threads)
    os.makedirs(a.out, exist_ok=True)
    t0 = time.time()
    llm_dir, vit_dir = os.path.join(a.export, E.LLM_NAME), os.path.join(a.export, E.VIT_NAME)
    lora_dir = os.path.join(a.export, E.LORA_NAME)
    has_lora = os.path.isdir(lora_dir) and not a.no_adapter
    vlm, cfg, _ = E.load_exported(llm_dir, vit_dir)
    hook = apply_quant(vlm, a.quant)
    M.ACT_HOOK = hook
    examples = heldout(a.seed, a.n)
    if a.save_images:
        idir = os.path.join(a.out, "images")
        os.makedirs(idir, exist_ok=True)
    px = []
    for i, ex in enumerate(examples):
        img = scenes.render(ex["scene"])
        if a.save_images:
            p = os.path.join(idir, "heldout-%04d.png" % i)
            img.save(p)
        px.append(torch.from_numpy(preprocess_ref.preprocess(img)))
    with torch.no_grad():
        vf = torch.cat([vlm.vision_tower.features(torch.stack(px[s:s + 8]))
                        for s in range(0, len(px), 8)])
    print("tower features for %d images: %.1fs" % (len(px), time.time() - t0), flush=True)

    table = OrderedDict()

    def do(name, model, lang, ask):
        t = time.time()
        rows, summ = run_condition(model, examples, vf, lang, ask, a.max_new, a.batch, print)
        for r in rows:
            r["image"] = "images/heldout-%04d.png" % r["index"]
        with open(os.path.join(a.out, "%s-%s.jsonl" % (name, a.quant)), "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        summ["seconds"] = round(time.time() - t, 1)
        table[name] = summ
        print("%-22s %s" % (name, json.dumps(summ)), flush=True)
        bad = [r for r in rows if not r["exact"]][:3]
        for r in bad:
            print("   miss: %r\n   want: %r" % (r["text"], r["reference"]))

    do("base-en", vlm, "en", "en")
    if a.lt_prompts:
        do("base-ltprompt", vlm, "lt", "lt")
    if has_lora:
        vl, _, _ = E.load_exported(llm_dir, vit_dir, lora_dir)
        h2 = apply_quant(vl, a.quant)  # base weights only; LoRA + adapter projector as stored
        M.ACT_HOOK = make_hook(set(n for n in (h2.qnames if h2 else ()) if "mm_projector" not in n))
        nw = torch.load(os.path.join(lora_dir, "non_lora_trainables.bin"), map_location="cpu")
        apply_adapter_projector_sim(vl, OrderedDict(
            (k.split("mm_projector.")[1], v.float()) for k, v in nw.items()))
        do("adapter-lt", vl, "lt", "en")
    M.ACT_HOOK = None
    summary = OrderedDict([("quant", a.quant), ("seed", a.seed), ("n", a.n),
                           ("conditions", table), ("seconds", round(time.time() - t0, 1))])
    with open(os.path.join(a.out, "summary-%s.json" % a.quant), "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    print("\n| %s | exact | BLEU-4 | ROUGE-L | Lithuanian outputs |" % a.quant)
    print("|---|---|---|---|---|")
    for k, s in table.items():
        print("| %s | %.1f %% | %.3f | %.3f | %.1f %% |" % (k, 100 * s["exact"], s["bleu4"], s["rougeL"],
                                                         100 * s["lithuanian"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
