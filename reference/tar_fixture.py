"""Tar archives written by Python's tarfile (as webdataset / img2dataset write
shards) in the three formats, for tests/test_tar.cpp: USTAR, GNU (long names as
'L' members) and PAX (long and non-ASCII names as 'x' headers).

usage: tar_fixture.py OUT_DIR   -> OUT_DIR/{ustar,gnu,pax}.tar and members.json
"""
import io
import json
import os
import sys
import tarfile

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
members = [
    ("000000.jpg", bytes(range(256)) * 3),
    ("000000.json", b'{"prompt": "Describe this image."}'),
    ("000000.txt", b"a caption"),
    ("empty.bin", b""),
    ("dir/" + "long-name-" * 12 + ".png", b"\x89PNG" + b"x" * 1000),
    ("sub/dir/nested.gif", b"GIF89a" + b"y" * 511),
    ("p" * 60 + "/" + "q" * 60 + ".jpg", b"split into ustar's prefix and name fields"),
]
pax_only = [("žvaigždė-" + "ą" * 60 + ".png", b"z" * 513)]
for fmt, name in [(tarfile.USTAR_FORMAT, "ustar"), (tarfile.GNU_FORMAT, "gnu"), (tarfile.PAX_FORMAT, "pax")]:
    items = [m for m in members if fmt != tarfile.USTAR_FORMAT or len(os.path.basename(m[0])) <= 100]
    if fmt == tarfile.PAX_FORMAT:
        items = items + pax_only
    with tarfile.open(os.path.join(out, name + ".tar"), "w", format=fmt) as t:
        d = tarfile.TarInfo("a-directory")
        d.type = tarfile.DIRTYPE
        t.addfile(d)
        for n, data in items:
            info = tarfile.TarInfo(n)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    with open(os.path.join(out, name + ".json"), "w") as f:
        json.dump([{"name": n, "hex": data.hex()} for n, data in items], f)
