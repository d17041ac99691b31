#!/usr/bin/python3
"""Caption metrics of the PyTorch evaluation (tools/demo_model/eval.py: words,
corpus_bleu, rouge_l) on pairs from a JSON file, for tests/test_eval_metrics.cpp.

  caption_metrics_ref.py IN.json OUT.json
IN:  {"hyps": [...], "refs": [...]}
OUT: {"words": [[...] per hyp], "bleu": x, "bleu_each": [...], "rouge": [...]}
"""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools", "demo_model"))
import eval as E  # noqa: E402

d = json.load(open(sys.argv[1], encoding="utf-8"))
h, r = d["hyps"], d["refs"]
out = {"words": [E.words(x) for x in h],
       "bleu": E.corpus_bleu(h, r),
       "bleu_each": [E.corpus_bleu([a], [b]) for a, b in zip(h, r)],
       "rouge": [E.rouge_l(a, b) for a, b in zip(h, r)]}
json.dump(out, open(sys.argv[2], "w", encoding="utf-8"), ensure_ascii=False)
