"""Python's pickle module as the reference for loupe's unpickler.

Usage: ckpt_pickle_cases.py OUTDIR
Writes OUTDIR/<i>.pkl (pickle.dumps of plain values with protocols 2..5) and
OUTDIR/<i>.expect, flattened as in ckpt_json_cases.py (kinds: dict, list, tuple, str,
bytes, int, float, bool, none), and OUTDIR/bad_<tag>.pkl pickles that must be refused.
"""
import os
import pickle
import struct
import sys


def flatten(v, path, out):
    if isinstance(v, dict):
        out.append("%s\tdict\t%d" % (path, len(v)))
        for i, (k, x) in enumerate(v.items()):
            flatten(k, "%s/k%d" % (path, i), out)
            flatten(x, "%s/v%d" % (path, i), out)
    elif isinstance(v, (list, tuple)):
        out.append("%s\t%s\t%d" % (path, "list" if isinstance(v, list) else "tuple", len(v)))
        for i, x in enumerate(v):
            flatten(x, "%s/%d" % (path, i), out)
    elif isinstance(v, bool):
        out.append("%s\tbool\t%d" % (path, int(v)))
    elif v is None:
        out.append("%s\tnone\t" % path)
    elif isinstance(v, int):
        out.append("%s\tint\t%d" % (path, v))
    elif isinstance(v, float):
        out.append("%s\tfloat\t%s" % (path, struct.pack("<d", v).hex()))
    elif isinstance(v, bytes):
        out.append("%s\tbytes\t%s" % (path, v.hex()))
    else:
        out.append("%s\tstr\t%s" % (path, v.encode("utf-8").hex()))


shared = [1, 2]
values = [
    {"a": 1, "b": [True, False, None], "c": (1,), "d": (1, 2), "e": (1, 2, 3), "f": (1, 2, 3, 4), "g": ()},
    [0, 1, 255, 256, 65535, 65536, -1, -256, 2 ** 31 - 1, -2 ** 31, 2 ** 31, 2 ** 40, -2 ** 40,
     2 ** 63 - 1, -2 ** 63, 127, 128, -128, -129, 2 ** 56, -2 ** 56],
    [0.0, -0.0, 1.5, -2.25e-300, 1e308, float("inf"), float("-inf"), 5e-324],
    ["", "ascii", "caf\u00e9", "\u4e2d\u6587", "\U0001F600", "x" * 300, "y" * 70000],
    {"shared": shared, "again": shared, "t": (shared, shared)},
    {str(i): i for i in range(2500)},  # more than one SETITEMS batch, LONG_BINPUT
    [[[[[[[[1]]]]]]]],
]
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
n = 0
for proto in (2, 3, 4, 5):
    for v in values + ([b"", b"\x00\xff", b"z" * 300] if proto >= 3 else []):
        lines = []
        flatten(v, "", lines)
        with open(os.path.join(out, "%d.pkl" % n), "wb") as f:
            f.write(pickle.dumps(v, protocol=proto))
        with open(os.path.join(out, "%d.expect" % n), "w") as f:
            f.write("\n".join(lines) + "\n")
        n += 1

rec = []
rec.append(rec)
bad = {
    "recursive": pickle.dumps(rec, protocol=2),
    "deep": pickle.dumps(eval("[" * 100 + "]" * 100), protocol=2),
    "bigint": pickle.dumps(2 ** 70, protocol=2),
    "set": pickle.dumps({1, 2}, protocol=2),
    "bytes_p2": pickle.dumps(b"ab", protocol=2),  # protocol 2 pickles bytes via _codecs.encode
    "proto0": pickle.dumps([1], protocol=0),
}
for tag, data in bad.items():
    with open(os.path.join(out, "bad_%s.pkl" % tag), "wb") as f:
        f.write(data)
