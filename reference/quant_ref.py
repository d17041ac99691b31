#!/usr/bin/python3
"""numpy reference for ggml's reference (deterministic) Q8_0 / Q4_0 quantisers.

Written from ggml's published algorithm (quantize_row_q8_0_ref / quantize_row_q4_0_ref),
32-element blocks, all arithmetic in float32 exactly as the C code does it:

Q8_0 block (34 bytes): fp16 d (LE) + 32 x int8 q
    amax = max_j |x_j|;  d = amax / 127.f;  id = d != 0 ? 1.f/d : 0
    q_j  = roundf(x_j * id)            (round half away from zero)
    dequant: y_j = f16(d) * q_j

Q4_0 block (18 bytes): fp16 d (LE) + 16 bytes of nibbles
    m  = the x_j with the largest |x_j| (first one on ties; +0 if all are zero)
    d  = m / -8.f;  id = d != 0 ? 1.f/d : 0
    q_j = min(15, (int8)(x_j * id + 8.5f))      (C cast truncates toward zero)
    byte j (0..15) = q_j | (q_{j+16} << 4)
    dequant: y_j = (q_j - 8) * f16(d)
  Note: the scale is computed from the float32 d; only the stored d is fp16
  (round to nearest even).  An all-zero Q4_0 block stores d = -0.0 (0x8000)
  because 0.f / -8.f is -0.f; Q8_0 stores +0.0.

CLI (run with /usr/bin/python3):
  quant_ref.py --in X.npy --type q4_0|q8_0 --out Y.bin      quantise (rows independently)
  quant_ref.py --dequant --in Y.bin --type q4_0 --out Z.npy [--cols C]
  quant_ref.py --gen-input X.npy [--rows R --cols C --seed S]    adversarial test matrix
"""

import argparse
import sys

import numpy as np

QK = 32
BLOCK_BYTES = {"q8_0": 2 + QK, "q4_0": 2 + QK // 2}

_F32 = np.float32


def _blocks(x):
    x = np.ascontiguousarray(np.asarray(x, dtype=_F32))
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError("input must be 1-D or 2-D")
    if x.shape[1] % QK:
        raise ValueError("row length %d is not a multiple of %d" % (x.shape[1], QK))
    return x.reshape(-1, QK)


def _c_roundf(v):
    """C roundf on float32 values: half away from zero (done in float64: exact)."""
    v64 = v.astype(np.float64)
    return np.sign(v64) * np.floor(np.abs(v64) + 0.5)


def _inv(d):
    """id = d ? 1.0f/d : 0.0f, elementwise, float32."""
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, _F32(1.0) / np.where(d != 0, d, _F32(1.0)), _F32(0.0))
    return inv.astype(_F32)


def quantize_q8_0(x):
    """float array [R, C] (or [C]) -> bytes of R*C/32 Q8_0 blocks, rows contiguous."""
    b = _blocks(x)
    amax = np.abs(b).max(axis=1)                       # float32
    d = (amax / _F32(127.0)).astype(_F32)              # float32 division
    idv = _inv(d)
    x0 = (b * idv[:, None]).astype(_F32)               # float32 multiply (no FMA)
    q = _c_roundf(x0).astype(np.int8)
    out = np.empty((b.shape[0], BLOCK_BYTES["q8_0"]), dtype=np.uint8)
    out[:, 0:2] = d.astype("<f2").view(np.uint8).reshape(-1, 2)
    out[:, 2:] = q.view(np.uint8)
    return out.tobytes()


def quantize_q4_0(x):
    """float array [R, C] (or [C]) -> bytes of R*C/32 Q4_0 blocks, rows contiguous."""
    b = _blocks(x)
    a = np.abs(b)
    j = np.argmax(a, axis=1)                           # first index of the max |x|
    amax = a[np.arange(b.shape[0]), j]
    mx = np.where(amax > 0, b[np.arange(b.shape[0]), j], _F32(0.0)).astype(_F32)
    d = (mx / _F32(-8.0)).astype(_F32)
    idv = _inv(d)
    x0 = (b * idv[:, None]).astype(_F32)
    t = (x0 + _F32(8.5)).astype(_F32)                  # float32 add
    qi = np.trunc(t.astype(np.float64)).astype(np.int64)  # (int8_t) cast: toward zero
    qi = np.minimum(15, qi)
    if (qi < 0).any():
        raise AssertionError("negative Q4_0 code (NaN/inf input?)")
    q = qi.astype(np.uint8)
    out = np.empty((b.shape[0], BLOCK_BYTES["q4_0"]), dtype=np.uint8)
    out[:, 0:2] = d.astype("<f2").view(np.uint8).reshape(-1, 2)
    out[:, 2:] = q[:, :QK // 2] | (q[:, QK // 2:] << 4)
    return out.tobytes()


def dequantize(data, qtype):
    """bytes of Q8_0/Q4_0 blocks -> flat float32 array."""
    bb = BLOCK_BYTES[qtype]
    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size % bb:
        raise ValueError("%d bytes is not a whole number of %s blocks" % (raw.size, qtype))
    blk = raw.reshape(-1, bb)
    d = blk[:, 0:2].copy().view("<f2").astype(_F32)    # [nb, 1]
    if qtype == "q8_0":
        q = blk[:, 2:].copy().view(np.int8).astype(_F32)
    else:
        qs = blk[:, 2:]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.int32) - 8
        q = q.astype(_F32)
    return (q * d).astype(_F32).reshape(-1)


def quantize(x, qtype):
    return {"q8_0": quantize_q8_0, "q4_0": quantize_q4_0}[qtype](x)


def gen_input(rows, cols, seed):
    """Random rows plus adversarial blocks (needs cols % 32 == 0, rows >= 1)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, cols)).astype(_F32) * _F32(0.5)
    flat = x.reshape(-1, QK)
    specials = []
    z = np.zeros(QK, _F32)
    specials.append(z.copy())                                  # all zeros
    s = z.copy(); s[3] = -0.0; specials.append(s)              # zeros with -0
    s = rng.standard_normal(QK).astype(_F32); s[5] = 3.0; s[20] = -3.0
    specials.append(s)                                         # tie +a / -a: first wins
    s = rng.standard_normal(QK).astype(_F32); s[2] = -3.0; s[30] = 3.0
    specials.append(s)                                         # tie -a / +a
    s = rng.standard_normal(QK).astype(_F32); s[7] = -4.0
    specials.append(s)                                         # negative max
    # Q8_0 with amax 127 -> d = 1, id = 1: exact .5 values test roundf's half-away rule
    s = (np.arange(QK, dtype=_F32) - 16) + _F32(0.5); s[0] = 127.0; s[1] = -126.5
    specials.append(s.astype(_F32))
    # Q4_0 with max -8 -> d = 1, id = 1: x+8.5 lands on/near integers
    s = np.array([-8.0, -0.5, 0.5, -7.5, 6.5, 7.5, 7.49, -0.4999, 0.4999, 1.0, -1.0, 6.9999]
                 + [0.0] * (QK - 12), dtype=_F32)
    specials.append(s)
    s = np.full(QK, 1e-8, _F32); s[::2] = -2e-8; specials.append(s)  # tiny values (fp16 subnormal d)
    s = rng.standard_normal(QK).astype(_F32) * _F32(3e4); specials.append(s)  # large values
    s = np.full(QK, 0.7, _F32); specials.append(s)             # constant block
    for i, sp in enumerate(specials[:flat.shape[0]]):
        flat[i * 7 % flat.shape[0]] = sp
    return flat.reshape(rows, cols)


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="ggml Q8_0/Q4_0 reference quantiser (numpy).",
        epilog="Quantise: --in X.npy (1-D or 2-D float, row length %% 32 == 0) --type T --out Y.bin "
               "writes the raw blocks (Q8_0: 34 bytes = fp16 d + 32 int8; Q4_0: 18 bytes = fp16 d "
               "+ 16 nibble bytes, low nibble element j, high nibble element j+16), rows "
               "contiguous. Dequant: --dequant --in Y.bin --type T --out Z.npy [--cols C] "
               "writes float32 (shape [n/C, C] with --cols, else 1-D). --gen-input X.npy writes "
               "a float32 test matrix with adversarial blocks.")
    ap.add_argument("--in", dest="inp", help="input .npy (quantise) or .bin (dequant)")
    ap.add_argument("--out", help="output .bin (quantise) or .npy (dequant)")
    ap.add_argument("--type", choices=["q8_0", "q4_0"])
    ap.add_argument("--dequant", action="store_true", help="dequantise --in bytes to float32 .npy")
    ap.add_argument("--cols", type=int, help="(dequant) row length for a 2-D output; "
                    "(gen-input) columns, multiple of 32 [96]")
    ap.add_argument("--gen-input", metavar="X.npy", help="write a test matrix and exit")
    ap.add_argument("--rows", type=int, default=16, help="(gen-input) rows [16]")
    ap.add_argument("--seed", type=int, default=0, help="(gen-input) seed [0]")
    a = ap.parse_args(argv)

    if a.gen_input:
        x = gen_input(a.rows, a.cols or 96, a.seed)
        np.save(a.gen_input, x)
        print("wrote %s %s float32" % (a.gen_input, list(x.shape)))
        return 0
    if not (a.inp and a.out and a.type):
        ap.error("--in, --out and --type are required")
    if a.dequant:
        with open(a.inp, "rb") as f:
            y = dequantize(f.read(), a.type)
        if a.cols:
            y = y.reshape(-1, a.cols)
        np.save(a.out, y)
        print("wrote %s %s float32" % (a.out, list(y.shape)))
    else:
        x = np.load(a.inp)
        data = quantize(x, a.type)
        with open(a.out, "wb") as f:
            f.write(data)
        print("wrote %s: %d %s blocks (%d bytes)" % (a.out, len(data) // BLOCK_BYTES[a.type],
                                                    a.type, len(data)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
