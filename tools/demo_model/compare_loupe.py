#!/usr/bin/python3
"""Compare greedy outputs of the PyTorch evaluation (eval.py --quant f16) with
`loupe eval --jsonl` on the same held-out set (scenes.py --out DIR --seed 1000):
the fraction of images where both produce the same token ids, per condition.

  compare_loupe.py EVAL_OUT_DIR LOUPE.jsonl [--quant f16]
"""
import argparse
import json
import os
import sys

EOS = 2
PAIRS = {"base": "base-en", "adapter": "adapter-lt"}  # loupe condition -> eval.py condition


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("eval_dir")
    ap.add_argument("loupe_jsonl")
    ap.add_argument("--quant", default="f16")
    a = ap.parse_args(argv)
    ours = {}
    for line in open(a.loupe_jsonl, encoding="utf-8"):
        r = json.loads(line)
        idx = int(os.path.splitext(r["image"])[0].rsplit("-", 1)[1])
        ours[(r["condition"], idx)] = r["greedy_ids"]
    ok_all = True
    for cond, theirs_name in PAIRS.items():
        path = os.path.join(a.eval_dir, "%s-%s.jsonl" % (theirs_name, a.quant))
        if not os.path.exists(path):
            continue
        same = n = 0
        first_diff = None
        for line in open(path, encoding="utf-8"):
            r = json.loads(line)
            ids = [t for t in r["greedy_ids"] if t != EOS]
            mine = ours.get((cond, r["index"]))
            if mine is None:
                continue
            n += 1
            if mine == ids:
                same += 1
            elif first_diff is None:
                first_diff = (r["index"], r["text"], min(r["margins"]) if r["margins"] else None)
        print("%-8s identical greedy ids on %d / %d images%s" % (
            cond, same, n, "" if first_diff is None else
            "; first difference at image %d (PyTorch: %r, smallest top-2 logit margin %.4f)" % first_diff))
        ok_all &= same == n
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
