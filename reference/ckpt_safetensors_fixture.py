"""A .safetensors file written by a hand-written writer (no safetensors package here),
following the format spec: u64 LE header length, JSON header, data section.

Usage: ckpt_safetensors_fixture.py OUTDIR
Writes OUTDIR/fixture.safetensors, <i>.npy per tensor (f32 values, or f64 / int64),
and manifest.json: [[name, dtype, shape, npy file], ...] in data-section order;
OUTDIR/sharded/ holds the same tensors as two shards plus model.safetensors.index.json.
The header lists tensors in a different order than their bytes, JSON-escapes
non-ASCII names (\\uXXXX, with a surrogate pair), and carries __metadata__.
"""
import json
import os
import struct
import sys

import numpy as np

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(99)


class BF16:
    """numpy has no bfloat16: keep the 16-bit patterns; the value is bits << 16 as f32."""

    def __init__(self, shape):
        f = rng.standard_normal(shape).astype(np.float32)
        self.bits = (f.view(np.uint32) >> 16).astype(np.uint16)
        self.shape = shape

    def tobytes(self):
        return self.bits.tobytes()

    def values(self):
        return (self.bits.astype(np.uint32) << 16).view(np.float32)


tensors = [  # in data-section order
    ("w.f32", "F32", rng.standard_normal((4, 5)).astype(np.float32)),
    ("w.f16", "F16", rng.standard_normal((3, 6)).astype(np.float16)),
    ("w.bf16", "BF16", BF16((2, 3, 2))),
    ("ids.i64", "I64", np.arange(-3, 9, dtype=np.int64).reshape(2, 6)),
    ("ids.i32", "I32", np.arange(0, 5, dtype=np.int32)),
    ("small.i8", "I8", np.array([-128, -1, 0, 1, 127], dtype=np.int8)),
    ("d.f64", "F64", rng.standard_normal(3)),
    ("scalar", "F32", np.array(2.25, dtype=np.float32)),
    ("empty", "F32", np.zeros((0, 4), dtype=np.float32)),
    ("caf\u00e9.\u4e2d.\U0001F600", "F32", rng.standard_normal((2, 2)).astype(np.float32)),
]


def raw(t):
    return t.tobytes()  # C order, little-endian on this machine


def write_safetensors(path, items, metadata, reverse_header):
    data = b""
    entries = {}
    for name, dt, t in items:
        b = raw(t)
        entries[name] = {"dtype": dt, "shape": list(t.shape), "data_offsets": [len(data), len(data) + len(b)]}
        data += b
    header = {"__metadata__": metadata} if metadata else {}
    for name in (reversed(list(entries)) if reverse_header else entries):
        header[name] = entries[name]
    hb = json.dumps(header).encode()  # ensure_ascii: non-ASCII names become \u escapes
    hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)) + hb + data)


# header order differs from data order
write_safetensors(os.path.join(out, "fixture.safetensors"), tensors,
                  {"format": "pt", "note": "tab\there \"quoted\""}, True)

# The same tensors as two shards with a model.safetensors.index.json.
shard_dir = os.path.join(out, "sharded")
os.makedirs(shard_dir, exist_ok=True)
shards = [("model-00001-of-00002.safetensors", tensors[:5]), ("model-00002-of-00002.safetensors", tensors[5:])]
weight_map = {}
for fname, items in shards:
    write_safetensors(os.path.join(shard_dir, fname), items, {"format": "pt"}, False)
    for name, _, _ in items:
        weight_map[name] = fname
with open(os.path.join(shard_dir, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f, indent=2)

manifest = []
for i, (name, dt, t) in enumerate(tensors):
    if dt == "BF16":
        a = t.values()
    elif dt in ("F64", "I64", "I32"):
        a = t
    elif dt == "I8":
        a = t.astype(np.int32)  # loupe's read_npy takes <i4, not |i1
    else:
        a = t.astype(np.float32)
    np.save(os.path.join(out, "%d.npy" % i), a)
    manifest.append([name, dt, list(t.shape), "%d.npy" % i])
with open(os.path.join(out, "manifest.json"), "w") as f:
    json.dump(manifest, f)
