"""torch.save fixtures for tests/test_torch_checkpoint.cpp (torch 1.13, numpy).

Usage: ckpt_torch_fixture.py OUTDIR
Writes, in OUTDIR:
  fixture.bin        torch.save of a state dict with views: a transpose, a row slice
                     (storage offset), a strided column slice, two views of one storage,
                     a permuted bf16 tensor, an expand (stride 0), f16/bf16/f32/f64/int64,
                     a 0-dim and an empty tensor
  <name>.npy         each tensor's values as numpy sees them (f32, or f64 / int64)
  manifest.json      [[name, dtype, shape], ...] in state-dict order
  zip64.bin          fixture.bin rewritten as a zip64 archive (prefix 'archive/'),
                     checked by torch.load and zipfile before the test reads it
  deflate.bin        fixture.bin with DEFLATE-compressed entries
  legacy.bin         the legacy (pre-1.6) torch.save format
  evil_system.bin    a torch-style zip whose pickle calls os.system (must be refused)
  evil_eval.bin      same with builtins.eval
  nested.bin         {'model': {'w': t}, 'epoch': 3, 'note': 'x'} and expected nested_w.npy
  param.bin          {'p': nn.Parameter} and p.npy
  bad_dup.bin        a pickle naming two tensors 'dup.a'
  bad_<tag>.bin      torch-style pickles whose tensors do not fit their storage (and two
                     that do: bad_ok / bad_strided, with .npy from torch.load)
"""
import json
import os
import pickle
import struct
import sys
import zipfile
import zlib

import numpy as np
import torch

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
torch.manual_seed(1234)

big = torch.randn(10, 8)
base = torch.randn(4, 6)
sd = {
    "plain_f32": torch.randn(5, 7),
    "transposed": torch.randn(6, 4).t(),
    "row_slice": big[3:7],
    "col_slice": big[2:5, 1:6],
    "shared_a": base[1],
    "shared_b": base[2:, ::2],
    "half": torch.randn(3, 5).half(),
    "bf16": torch.randn(2, 3, 4).bfloat16(),
    "bf16_perm": torch.randn(2, 3, 4).bfloat16().permute(2, 0, 1),
    "int64": torch.arange(-5, 7, dtype=torch.int64).reshape(3, 4),
    "expanded": torch.randn(1, 5).expand(3, 5),
    "scalar": torch.tensor(3.5),
    "empty": torch.zeros(0, 3),
    "f64": torch.randn(4).double(),
}
assert not sd["transposed"].is_contiguous() and sd["row_slice"].storage_offset() == 24
assert sd["shared_a"].storage().data_ptr() == sd["shared_b"].storage().data_ptr()
torch.save(sd, os.path.join(out, "fixture.bin"))

names = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64", torch.int64: "I64"}
manifest = []
for k, v in sd.items():
    manifest.append([k, names[v.dtype], list(v.shape)])
    if v.dtype in (torch.float64, torch.int64):
        a = v.numpy()
    else:
        a = v.float().numpy()
    np.save(os.path.join(out, k + ".npy"), a.copy(order="C"))  # (ascontiguousarray would make 0-d 1-d)
with open(os.path.join(out, "manifest.json"), "w") as f:
    json.dump(manifest, f)


def write_zip64(path, entries):
    """Stored entries with zip64 extra fields everywhere and zip64 EOCD records."""
    with open(path, "wb") as f:
        central = b""
        for name, data in entries:
            nb = name.encode()
            off = f.tell()
            crc = zlib.crc32(data)
            extra = struct.pack("<HHQQ", 1, 16, len(data), len(data))
            f.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 0, 0, 0, crc, 0xFFFFFFFF, 0xFFFFFFFF, len(nb), len(extra)))
            f.write(nb + extra + data)
            cextra = struct.pack("<HHQQQ", 1, 24, len(data), len(data), off)
            central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 0, 0, 0, crc, 0xFFFFFFFF, 0xFFFFFFFF,
                                   len(nb), len(cextra), 0, 0, 0, 0, 0xFFFFFFFF) + nb + cextra
        cd_off = f.tell()
        f.write(central)
        z64 = f.tell()
        f.write(struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, len(entries), len(entries), len(central), cd_off))
        f.write(struct.pack("<IIQI", 0x07064B50, 0, z64, 1))
        f.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0))


with zipfile.ZipFile(os.path.join(out, "fixture.bin")) as z:
    entries = [(i.filename, z.read(i.filename)) for i in z.infolist()]
prefix = entries[0][0].split("/")[0]
renamed = [("archive" + n[len(prefix):], d) for n, d in entries]
write_zip64(os.path.join(out, "zip64.bin"), renamed)
with zipfile.ZipFile(os.path.join(out, "zip64.bin")) as z:  # an independent zip reader accepts it
    assert z.testzip() is None and len(z.infolist()) == len(entries)
back = torch.load(os.path.join(out, "zip64.bin"))  # and so does torch
for k, v in sd.items():
    assert torch.equal(back[k], v), k

with zipfile.ZipFile(os.path.join(out, "deflate.bin"), "w", zipfile.ZIP_DEFLATED) as z:
    for n, d in entries:
        z.writestr(n, d)

torch.save({"w": torch.ones(2)}, os.path.join(out, "legacy.bin"), _use_new_zipfile_serialization=False)


class Evil:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return (self.fn, (self.arg,))


marker = os.path.join(out, "PWNED")
for tag, obj in (("system", Evil(os.system, "touch " + marker)),
                 ("eval", Evil(eval, "open(%r, 'w')" % marker))):
    with zipfile.ZipFile(os.path.join(out, "evil_%s.bin" % tag), "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"w": obj}, protocol=2))
        z.writestr("archive/version", "3\n")

w = torch.randn(3, 2)
torch.save({"model": {"w": w}, "epoch": 3, "note": "x"}, os.path.join(out, "nested.bin"))
np.save(os.path.join(out, "nested_w.npy"), w.numpy())
p = torch.nn.Parameter(torch.randn(2, 3))
torch.save({"p": p}, os.path.join(out, "param.bin"))
np.save(os.path.join(out, "p.npy"), p.detach().numpy())


# Malformed tensors: a pickle built like torch.save's (same globals, same persistent
# ids) but with sizes, strides or storages that do not fit. torch.load would fail too.
class StorageRef:
    def __init__(self, stype, key, numel):
        self.stype, self.key, self.numel = stype, key, numel


class FakeTensor:
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride)

    def __reduce__(self):
        import collections
        return (torch._utils._rebuild_tensor_v2, self.args + (False, collections.OrderedDict()))


class TorchLikePickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, StorageRef):
            return ("storage", obj.stype, obj.key, "cpu", obj.numel)
        return None


def write_bad(tag, tensor):
    import io
    buf = io.BytesIO()
    TorchLikePickler(buf, protocol=2).dump({"bad." + tag: tensor})
    with zipfile.ZipFile(os.path.join(out, "bad_%s.bin" % tag), "w") as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/data/0", np.arange(10, dtype=np.float32).tobytes())
        z.writestr("archive/version", "3\n")


f10 = StorageRef(torch.FloatStorage, "0", 10)  # 10 floats = the 40-byte entry
write_bad("ok", FakeTensor(f10, 2, (2, 4), (4, 1)))          # fits exactly: elements 2..9
write_bad("bounds", FakeTensor(f10, 3, (2, 4), (4, 1)))      # reaches element 10
write_bad("strided", FakeTensor(f10, 0, (3, 2), (4, 1)))     # reaches element 9: fine
write_bad("stride_bounds", FakeTensor(f10, 0, (3, 2), (5, 1)))  # reaches element 11
write_bad("numel", FakeTensor(StorageRef(torch.FloatStorage, "0", 11), 0, (2,), (1,)))
write_bad("missing", FakeTensor(StorageRef(torch.FloatStorage, "7", 10), 0, (2,), (1,)))
write_bad("byte", FakeTensor(StorageRef(torch.ByteStorage, "0", 40), 0, (2,), (1,)))
write_bad("huge", FakeTensor(f10, 0, (2 ** 62, 4), (4, 1)))
write_bad("huge_stride", FakeTensor(f10, 0, (3,), (2 ** 62,)))
write_bad("rank", FakeTensor(f10, 0, (2, 2), (2,)))
# A stride-0 view of one float as [32768, 16384]: 2 GiB if copied out.
write_bad("expand", FakeTensor(f10, 0, (32768, 16384), (0, 0)))
# Two entries under one name: no Python dict does that, but a pickle can say it.
buf = __import__("io").BytesIO()
TorchLikePickler(buf, protocol=2).dump({"dup.a": FakeTensor(f10, 0, (2,), (1,)), "dup.b": FakeTensor(f10, 2, (2,), (1,))})
dup = buf.getvalue()
assert dup.count(b"dup.b") == 1
with zipfile.ZipFile(os.path.join(out, "bad_dup.bin"), "w") as z:
    z.writestr("archive/data.pkl", dup.replace(b"dup.b", b"dup.a"))
    z.writestr("archive/data/0", np.arange(10, dtype=np.float32).tobytes())

for tag in ("ok", "strided"):  # the two that fit: expected values from torch.load
    np.save(os.path.join(out, "bad_%s.npy" % tag), torch.load(os.path.join(out, "bad_%s.bin" % tag))["bad." + tag].numpy())
