"""Load checkpoint files with torch.load and dump every tensor for comparison.

Usage: ckpt_dump_torch.py OUTDIR FILE...
Writes OUTDIR/<i>.npy (values as f32) and OUTDIR/manifest.json:
[[name, dtype, shape, npy file], ...] over all files, in state-dict order.
"""
import json
import os
import sys

import numpy as np
import torch

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
names = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
manifest = []
for path in sys.argv[2:]:
    for k, v in torch.load(path, map_location="cpu").items():
        f = "%d.npy" % len(manifest)
        np.save(os.path.join(out, f), v.float().numpy())
        manifest.append([k, names[v.dtype], list(v.shape), f])
with open(os.path.join(out, "manifest.json"), "w") as fh:
    json.dump(manifest, fh)
