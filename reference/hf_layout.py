#!/usr/bin/python3
"""Helpers to write and read Hugging Face-layout checkpoints (test fixtures).

Run with Debian's /usr/bin/python3 (torch + numpy). No transformers/safetensors
packages are needed: the safetensors format is written and read by hand.

Public API
----------
write_config(dir, cfg)                      -> path of config.json
save_state_dict(dir, state_dict, fmt="bin", shards=1, dtype=None,
                order="contiguous", bin_container="ordereddict")
                                            -> dict name -> tensor AS STORED
load_state_dict(dir)                        -> dict name -> tensor (stored dtype)
write_safetensors(path, tensors, metadata=None)
read_safetensors(path)                      -> dict name -> tensor
parse_dtype(name)                           -> torch.dtype  ("f32", "bf16", "float16", ...)
dtype_config_name(torch_dtype)              -> "float32" | "float16" | "bfloat16"

File layout produced by save_state_dict (the names transformers' save_pretrained uses):
  fmt="bin",         shards=1: pytorch_model.bin  (torch.save zip pickle of an
                               ordered dict name -> tensor)
  fmt="bin",         shards=K: pytorch_model-0000k-of-0000K.bin (k = 1..K) and
                               pytorch_model.bin.index.json
  fmt="safetensors", shards=1: model.safetensors
  fmt="safetensors", shards=K: model-0000k-of-0000K.safetensors and
                               model.safetensors.index.json
Index files: {"metadata": {"total_size": <sum of tensor byte sizes>},
              "weight_map": {name: shard file name}}

safetensors file: u64 little-endian header length N, then N bytes of JSON
({"__metadata__": {"format": "pt"}, name: {"dtype": "F32"|"F16"|"BF16"|...,
"shape": [...], "data_offsets": [begin, end]}}; offsets relative to the byte
after the header) padded with spaces so N % 8 == 0, then the raw little-endian
tensor data, tensors packed back to back in header-key order (sorted by
element size descending, then name, like the safetensors library: keeps alignment).
"""

import json
import os
import struct
from collections import OrderedDict

import numpy as np
import torch

__all__ = [
    "write_config", "save_state_dict", "load_state_dict",
    "write_safetensors", "read_safetensors", "parse_dtype", "dtype_config_name",
    "shard_file_names",
]

_DTYPE_ALIASES = {
    "f32": torch.float32, "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "f16": torch.float16, "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}

# safetensors dtype tag <-> torch dtype
_ST_TO_TORCH = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
_TORCH_TO_ST = {v: k for k, v in _ST_TO_TORCH.items()}


def parse_dtype(name):
    """'f32'/'float32'/'f16'/'bf16'/... or a torch.dtype -> torch.dtype."""
    if isinstance(name, torch.dtype):
        return name
    key = str(name).lower().replace("torch.", "")
    if key not in _DTYPE_ALIASES:
        raise ValueError("unknown dtype %r (use f32, f16 or bf16)" % (name,))
    return _DTYPE_ALIASES[key]


def dtype_config_name(dtype):
    """torch dtype -> the string HF puts in config.json's torch_dtype."""
    return {torch.float32: "float32", torch.float16: "float16",
            torch.bfloat16: "bfloat16"}[parse_dtype(dtype)]


def write_config(directory, cfg):
    """Write cfg (a dict) as DIR/config.json (indent 2, key order kept)."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "config.json")
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    return path


# ---------------------------------------------------------------- safetensors

def _tensor_bytes(t):
    """Raw little-endian bytes of a contiguous CPU tensor (any dtype incl. bf16)."""
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        arr = t.view(torch.int16).numpy()
    elif t.dtype == torch.bool:
        arr = t.numpy().astype(np.uint8)
    else:
        arr = t.numpy()
    return arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def write_safetensors(path, tensors, metadata=None):
    """Write {name: tensor} as a safetensors file. metadata defaults to {"format": "pt"}."""
    if metadata is None:
        metadata = {"format": "pt"}
    # like the safetensors library: larger dtypes first, then by name, so every
    # tensor's data is naturally aligned (data starts at 8 + N, N % 8 == 0)
    names = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))
    header = OrderedDict()
    header["__metadata__"] = OrderedDict((str(k), str(v)) for k, v in metadata.items())
    blobs = []
    offset = 0
    for name in names:
        t = tensors[name]
        if t.dtype not in _TORCH_TO_ST:
            raise ValueError("safetensors: unsupported dtype %s for %s" % (t.dtype, name))
        b = _tensor_bytes(t)
        header[name] = OrderedDict([("dtype", _TORCH_TO_ST[t.dtype]),
                                    ("shape", list(t.shape)),
                                    ("data_offsets", [offset, offset + len(b)])])
        blobs.append(b)
        offset += len(b)
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * ((8 - len(hjson) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for b in blobs:
            f.write(b)
    return path


def read_safetensors(path):
    """Read a safetensors file -> OrderedDict name -> torch tensor (stored dtype)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode("utf-8"))
    base = 8 + n
    out = OrderedDict()
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = _ST_TO_TORCH[info["dtype"]]
        b, e = info["data_offsets"]
        raw = data[base + b: base + e]
        shape = list(info["shape"])
        if dt == torch.bfloat16:
            arr = np.frombuffer(raw, dtype="<i2").copy()
            t = torch.from_numpy(arr).view(torch.bfloat16)
        elif dt == torch.bool:
            t = torch.from_numpy(np.frombuffer(raw, dtype=np.uint8).copy()).to(torch.bool)
        else:
            npdt = torch.empty(0, dtype=dt).numpy().dtype.newbyteorder("<")
            t = torch.from_numpy(np.frombuffer(raw, dtype=npdt).astype(npdt.newbyteorder("=")))
        out[name] = t.reshape(shape)
    return out


# ---------------------------------------------------------------- sharding

def shard_file_names(fmt, shards):
    """File names save_pretrained uses for `shards` shards of format fmt."""
    if fmt == "bin":
        if shards == 1:
            return ["pytorch_model.bin"]
        return ["pytorch_model-%05d-of-%05d.bin" % (i + 1, shards) for i in range(shards)]
    if fmt == "safetensors":
        if shards == 1:
            return ["model.safetensors"]
        return ["model-%05d-of-%05d.safetensors" % (i + 1, shards) for i in range(shards)]
    raise ValueError("fmt must be 'bin' or 'safetensors'")


def _assign_shards(names, sizes, shards, order):
    """Return list of shard indices, one per name (every shard non-empty)."""
    n = len(names)
    if shards < 1 or shards > n:
        raise ValueError("shards must be in 1..%d" % n)
    if order == "roundrobin":
        return [i % shards for i in range(n)]
    if order != "contiguous":
        raise ValueError("order must be 'contiguous' or 'roundrobin'")
    total = float(sum(sizes))
    out, cum, cur, used = [], 0, 0, False
    for i, s in enumerate(sizes):
        if cur < shards - 1 and used:
            share_full = cum >= total * (cur + 1) / shards
            must_move = (n - i) == (shards - 1 - cur)  # just enough names left for the rest
            if share_full or must_move:
                cur += 1
                used = False
        out.append(cur)
        used = True
        cum += s
    assert sorted(set(out)) == list(range(shards)), out
    return out


def save_state_dict(directory, state_dict, fmt="bin", shards=1, dtype=None, order="contiguous",
                    bin_container="ordereddict"):
    """Save state_dict in HF layout into directory.

    dtype: None keeps each tensor's dtype; otherwise floating tensors are cast
           (round-to-nearest-even) to dtype ("f32"/"f16"/"bf16" or torch dtype).
    order: "contiguous" (tensors in the given order, split into shards of ~equal
           bytes) or "roundrobin" (tensor i goes to shard i % shards; exercises
           loaders that must not assume a name's shard from its neighbours).
    bin_container: (fmt="bin") pickle each shard as a collections.OrderedDict
           ("ordereddict", like model.state_dict()) or a plain dict ("dict").
    The same tensor object under two names (e.g. tied lm_head) stays one shared
    storage in .bin files (pickle references it twice); safetensors gets two copies.
    Returns OrderedDict name -> tensor exactly as stored (cast, contiguous copy),
    so a reference can be computed from the rounded weights.
    """
    os.makedirs(directory, exist_ok=True)
    dt = parse_dtype(dtype) if dtype is not None else None
    stored = OrderedDict()
    memo = {}
    for name, t in state_dict.items():
        if id(t) not in memo:
            c = t.detach().cpu()
            if dt is not None and c.is_floating_point():
                c = c.to(dt)
            memo[id(t)] = c.contiguous().clone()  # own storage: torch.save writes only it
        stored[name] = memo[id(t)]
    names = list(stored)
    sizes = [stored[k].numel() * stored[k].element_size() for k in names]
    files = shard_file_names(fmt, shards)
    assign = _assign_shards(names, sizes, shards, order)
    if bin_container not in ("ordereddict", "dict"):
        raise ValueError("bin_container must be 'ordereddict' or 'dict'")
    per_shard = [OrderedDict() if bin_container == "ordereddict" else {} for _ in range(shards)]
    for name, s in zip(names, assign):
        per_shard[s][name] = stored[name]
    for fname, sd in zip(files, per_shard):
        path = os.path.join(directory, fname)
        if fmt == "bin":
            torch.save(sd, path)
        else:
            write_safetensors(path, sd, {"format": "pt"})
    if shards > 1:
        index = OrderedDict()
        index["metadata"] = {"total_size": int(sum(sizes))}
        index["weight_map"] = OrderedDict((name, files[s]) for name, s in zip(names, assign))
        iname = "pytorch_model.bin.index.json" if fmt == "bin" else "model.safetensors.index.json"
        with open(os.path.join(directory, iname), "w") as f:
            json.dump(index, f, indent=2)
            f.write("\n")
    return stored


def load_state_dict(directory):
    """Load an HF-layout directory (safetensors preferred, then .bin; single or
    sharded via the index json) -> OrderedDict name -> tensor in stored dtype."""
    def p(x):
        return os.path.join(directory, x)

    def from_index(iname, loader):
        with open(p(iname)) as f:
            wm = json.load(f)["weight_map"]
        out = OrderedDict()
        for shard in sorted(set(wm.values())):
            sd = loader(p(shard))
            for k, v in sd.items():
                out[k] = v
        missing = [k for k in wm if k not in out]
        if missing:
            raise RuntimeError("index lists tensors not found in shards: %s" % missing[:5])
        return out

    def tload(path):
        return torch.load(path, map_location="cpu")

    if os.path.exists(p("model.safetensors")):
        return read_safetensors(p("model.safetensors"))
    if os.path.exists(p("model.safetensors.index.json")):
        return from_index("model.safetensors.index.json", read_safetensors)
    if os.path.exists(p("pytorch_model.bin")):
        return OrderedDict(tload(p("pytorch_model.bin")))
    if os.path.exists(p("pytorch_model.bin.index.json")):
        return from_index("pytorch_model.bin.index.json", tload)
    raise FileNotFoundError("no model.safetensors / pytorch_model.bin (or index) in %s" % directory)


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description="Library of HF-layout writers/readers. "
                                 "CLI: list the tensors of an HF directory or a .safetensors/.bin file.")
    ap.add_argument("path", help="HF directory, .safetensors or .bin file")
    a = ap.parse_args()
    if os.path.isdir(a.path):
        sd = load_state_dict(a.path)
    elif a.path.endswith(".safetensors"):
        sd = read_safetensors(a.path)
    else:
        sd = torch.load(a.path, map_location="cpu")
    for k, v in sd.items():
        print("%-60s %-15s %s" % (k, str(v.dtype).replace("torch.", ""), list(v.shape)))
