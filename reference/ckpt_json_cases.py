"""Python's json module as the reference for loupe::Json.

Usage:
  ckpt_json_cases.py OUTDIR [FILE...]   write OUTDIR/<i>.json and OUTDIR/<i>.expect for
                                         hand-picked and random documents (and each FILE)
  ckpt_json_cases.py --check-escape JSON HEX
                                         JSON holds an array written with loupe::json_escape;
                                         HEX holds the original strings' UTF-8, hex, one a line;
                                         exit 0 iff json.load gives back exactly those strings

.expect lines: "<path>\t<kind>\t<value>", path segments are "/<index>" or "/<key as
UTF-8 hex>"; kinds: object/array (size), str (UTF-8 hex), bool, null, int (exact
int64 literal; value and the double's bits), num (the double's bits, hex).
"""
import json
import os
import random
import struct
import sys


def bits(x):
    return struct.pack("<d", float(x)).hex()


def flatten(v, path, out):
    if isinstance(v, dict):
        out.append("%s\tobject\t%d" % (path, len(v)))
        for k, x in v.items():
            flatten(x, path + "/" + k.encode("utf-8").hex(), out)
    elif isinstance(v, list):
        out.append("%s\tarray\t%d" % (path, len(v)))
        for i, x in enumerate(v):
            flatten(x, "%s/%d" % (path, i), out)
    elif isinstance(v, bool):
        out.append("%s\tbool\t%d" % (path, int(v)))
    elif v is None:
        out.append("%s\tnull\t" % path)
    elif isinstance(v, int):
        if -2 ** 63 <= v < 2 ** 63:
            out.append("%s\tint\t%d %s" % (path, v, bits(v)))
        else:
            out.append("%s\tnum\t%s" % (path, bits(v)))
    elif isinstance(v, float):
        out.append("%s\tnum\t%s" % (path, bits(v)))
    else:
        out.append("%s\tstr\t%s" % (path, v.encode("utf-8").hex()))


HAND = [
    '{"b": 1, "a": [true, false, null], "c": {"z": {}, "y": []}}',
    '"esc \\" \\\\ \\/ \\b \\f \\n \\r \\t \\u0000 \\u001f \\u00e9 \\u4e2d \\ud83d\\ude00 \\uD834\\uDD1E"',
    '"raw UTF-8: caf\u00e9 \u4e2d\u6587 \U0001F600 \u0080 \u07ff \u0800 \uffff \U00010000 \U0010ffff"',
    '[0, -0, 1, -1, 9007199254740993, 9223372036854775807, -9223372036854775808, 9223372036854775808,'
    ' -9223372036854775809, 123456789012345678901234567890]',
    '[0.0, -0.0, 0.1, 1e-7, 1E+2, 2.5e-3, 1e308, 1.7976931348623157e308, 5e-324, 2.2250738585072014e-308,'
    ' 1e-400, 0.30000000000000004, 3.141592653589793, 1.0, 2e0, 123456789.123456789e-5]',
    ' \t\r\n {\t"k" \n:\r [ 1 , 2 ] } \n',
    '"\u007f"',
    "3",
    "null",
    '[' * 100 + ']' * 100,
]


def rand_str(r):
    pool = [chr(c) for c in range(0x20, 0x7f)] + ['"', "\\", "\n", "\t", "\x00", "\x1f", "\x7f"]
    pool += ["\u00e9", "\u0101", "\u4e2d", "\uffff", "\ufeff", "\U0001F600", "\U0010FFFF", "\u2028"]
    return "".join(r.choice(pool) for _ in range(r.randrange(0, 12)))


def rand_val(r, depth):
    k = r.randrange(9 if depth < 5 else 6)
    if k == 0:
        return None
    if k == 1:
        return r.random() < 0.5
    if k == 2:
        return r.randrange(-2 ** r.randrange(1, 66), 2 ** r.randrange(1, 66))
    if k == 3:
        while True:
            x = struct.unpack("<d", r.getrandbits(64).to_bytes(8, "little"))[0]
            if x == x and abs(x) != float("inf"):
                return x
    if k == 4:
        return r.uniform(-1000, 1000)
    if k == 5:
        return rand_str(r)
    if k == 6:
        return [rand_val(r, depth + 1) for _ in range(r.randrange(0, 5))]
    return {rand_str(r): rand_val(r, depth + 1) for _ in range(r.randrange(0, 5))}


def main():
    if sys.argv[1] == "--check-escape":
        with open(sys.argv[2], "rb") as f:
            got = json.loads(f.read().decode("utf-8"))
        with open(sys.argv[3]) as f:
            want = [bytes.fromhex(line.strip()).decode("utf-8") for line in f]
        if got != want:
            print("json_escape round trip differs:", got, want)
            sys.exit(1)
        return
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    docs = [s.encode("utf-8") for s in HAND]
    r = random.Random(7)
    for i in range(300):
        docs.append(json.dumps(rand_val(r, 0), ensure_ascii=r.random() < 0.5,
                               indent=r.choice([None, 1, "\t"])).encode("utf-8"))
    for path in sys.argv[2:]:
        with open(path, "rb") as f:
            docs.append(f.read())
    for i, d in enumerate(docs):
        lines = []
        flatten(json.loads(d.decode("utf-8")), "", lines)
        with open(os.path.join(out, "%d.json" % i), "wb") as f:
            f.write(d)
        with open(os.path.join(out, "%d.expect" % i), "w") as f:
            f.write("\n".join(lines) + "\n")


main()
