#!/usr/bin/python3
"""MindSpore .ckpt writer / reader, and a ShareGPT4V fixture in the layout of the
MindSpore port (mindone examples/sharegpt_4v).

Run with Debian's /usr/bin/python3 (torch + numpy). google.protobuf is NOT needed:
the protobuf wire format is written and read by hand. If google.protobuf can be
imported (or --protobuf-path DIR points at one, e.g. the pure-python package of
Debian's python3-protobuf unpacked with `apt-get download python3-protobuf &&
dpkg-deb -x python3-protobuf_*.deb X`, DIR = X/usr/lib/python3/dist-packages), the
self-check also parses every file with a message class built from checkpoint.proto
and re-serializes every record with it to compare bytes.

File format (MindSpore 2.3 `save_checkpoint`, no encryption)
------------------------------------------------------------
checkpoint.proto (mindspore/ccsrc/utils/checkpoint.proto, proto2):
    message Checkpoint {
        message Value {
            required string tag = 1;
            oneof value { TensorProto tensor = 2; MapTensorProto maptensor = 3; }
        }
        repeated Value value = 1;
    }
    message TensorProto {
        repeated int64 dims = 1;            // proto2, NOT packed: one key per dim
        required string tensor_type = 2;    // "Float32", "Float16", "BFloat16", "Int64", ..., "str"
        required bytes tensor_content = 3;  // raw little-endian C-order bytes
    }
    message MapTensorProto { repeated TensorProto tensor = 1; }
(older releases: Value has no oneof / maptensor, `required TensorProto tensor = 2`.)

_exec_save writes, for every parameter in order, one or more COMPLETE serialized
`Checkpoint` messages, each holding exactly ONE Value, back to back (a protobuf
parser reads the concatenation as one Checkpoint whose `value` list has all of
them). Bytes of one record:
    0x0A <varint len(V)> V                              Checkpoint.value (field 1, LEN)
    V = 0x0A <varint len(tag)> tag                      Value.tag (1, LEN)
        0x12 <varint len(T)> T                          Value.tensor (2, LEN)
    T = (0x08 <varint dim>)*                            TensorProto.dims (1, VARINT, int64)
        0x12 <varint len(type)> type                    TensorProto.tensor_type (2, LEN)
        0x1A <varint len(content)> content              TensorProto.tensor_content (3, LEN)
Chunking (_write_parameter_bytes_data, MindSpore >= 2.2): tensor bytes are cut every
chunk_size = 1024 * SLICE_SIZE = 512 MiB (byte offsets, not element-aligned in
principle); EVERY chunk repeats tag, the FULL dims and tensor_type; a tensor of 0 bytes
writes no record at all. np.ndarray / "str" values go through _write_parameter_data:
np.array_split along axis 0 into ceil(nbytes/512MiB) slices (rows style). Loader
(load_checkpoint): consecutive Values with the same tag are joined (b"".join), dims
taken from the last one; dims == [0] means a scalar (or a "str" value); a 0-d tensor
has no dims at all. "str" values: dims [0], tensor_content = numpy '<U' bytes
(UTF-32LE, len/4 characters). tensor_type = str(mindspore dtype): Int8 UInt8 Int16
UInt16 Int32 UInt32 Int64 UInt64 Float16 Float32 Float64 Bool BFloat16 str.
crc_check=True (2.3+; default False; exclusive with encryption): after the last record
b"crc_num" + crc.to_bytes(10, "big"), crc = binascii.crc32 chained over every record's
serialized bytes; load_checkpoint strips it whenever data[-17:-10] == b"crc_num".
enc_key != None: the whole stream is AES-GCM/CBC/SM4 encrypted in 64 MiB blocks (not
supported here).

The MindSpore port of ShareGPT4V (mindone examples/sharegpt_4v)
----------------------------------------------------------------
share4v/tools/convert_weights.py: torch.load each --source file (comma list) in the
order given, iterate the state dict in stored order, rename with
convert_pt_name_to_ms (replicated below, verbatim logic), convert EVERY tensor with
`.float()` (so Float32, int64 buffers too), no transpose / permute (the q/k permute is
commented out), collect a list and ms.save_checkpoint(list, target): target a folder ->
<folder>/mindspore_llama_model.ckpt. The same script converts the ViT
(Lin-Chen/ShareGPT4V-7B_Pretrained_vit-large336-l12, vision_model.* keys); the port
user points config.json "mm_vision_tower_path" at that .ckpt and "mm_vision_tower" at
a folder with the CLIP config.json + preprocessor_config.json (share4v/configs/vit/).
run_share4v.py loads <model-path>/mindspore_llama_model.ckpt and the tokenizer from
<model-path> (AutoTokenizer, use_fast=False), config from ./configs/config.json.

Output layout written by `convert` (OUT):
    OUT/mindspore_llama_model.ckpt       LLM + projector + lm_head
    OUT/vit-large336-l12.ckpt            vision tower (or OUT/<--vit-subdir>/...)
    OUT/tokenizer.model, tokenizer_config.json, special_tokens_map.json
    OUT/configs/config.json              port schema (share4v/configs/config.json)
    OUT/configs/vit/config.json, preprocessor_config.json
    OUT/loupe_fixture.json               NOT part of the port layout: name map, shapes,
                                         dtypes, chunks, options, break description
Paths in configs/config.json are relative to OUT unless --abs-paths.

CLI
---
  mindspore_ckpt.py convert --src DIR --out OUT
        [--llm-names convert|hf|hf-embedding-table] [--with-inv-freq]
        [--vit-prefix vision_tower.|none] [--vit-subdir NAME] [--dtype f32|f16|bf16]
        [--split-bytes N] [--split-style bytes|rows] [--crc] [--append-dict]
        [--abs-paths] [--break KIND [--break-target llm|vit] [--missing NAME]
        [--unknown-dtype NAME]] [--self-check] [--protobuf-path DIR]
      KIND: truncated | wrong-wire-type | length-past-end | length-past-parent |
            unknown-dtype | missing-parameter
  mindspore_ckpt.py dump FILE.ckpt [--records]
  mindspore_ckpt.py selftest [--protobuf-path DIR]
DIR is a fixture made by `vlm_fixture.py --layout sharegpt4v --out DIR --seed 1`
(DIR/llm, DIR/vit).
"""

import argparse
import binascii
import hashlib
import json
import math
import os
import shutil
import sys
from collections import OrderedDict

import numpy as np
import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
import hf_layout  # noqa: E402

MS_CHUNK_BYTES = 1024 * 512 * 1024   # 1024 * SLICE_SIZE (KB) = 512 MiB
LLM_CKPT = "mindspore_llama_model.ckpt"
VIT_CKPT = "vit-large336-l12.ckpt"
BREAK_KINDS = ("truncated", "wrong-wire-type", "length-past-end", "length-past-parent",
               "unknown-dtype", "missing-parameter")

# tensor_type string -> (numpy dtype of the stored bytes, item size). BFloat16 is kept
# as its 16-bit patterns (numpy has no bfloat16).
MS_TYPES = OrderedDict([
    ("Bool", ("|b1", 1)), ("Int8", ("|i1", 1)), ("UInt8", ("|u1", 1)),
    ("Int16", ("<i2", 2)), ("UInt16", ("<u2", 2)), ("Int32", ("<i4", 4)),
    ("UInt32", ("<u4", 4)), ("Int64", ("<i8", 8)), ("UInt64", ("<u8", 8)),
    ("Float16", ("<f2", 2)), ("Float32", ("<f4", 4)), ("Float64", ("<f8", 8)),
    ("BFloat16", ("<u2", 2)),
])
_TORCH_TO_MS = {torch.bool: "Bool", torch.int8: "Int8", torch.uint8: "UInt8",
                torch.int16: "Int16", torch.int32: "Int32", torch.int64: "Int64",
                torch.float16: "Float16", torch.float32: "Float32",
                torch.float64: "Float64", torch.bfloat16: "BFloat16"}
_MS_TO_TORCH = {v: k for k, v in _TORCH_TO_MS.items()}


class CkptError(Exception):
    """A malformed .ckpt (message says where: byte offset and what)."""


# ------------------------------------------------------------------ wire encoding

def varint(n):
    """Protobuf base-128 varint; negative int64 as its 64-bit two's complement."""
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def key(field, wire_type):
    return varint((field << 3) | wire_type)


def len_field(field, payload):
    return key(field, 2) + varint(len(payload)) + payload


def encode_tensor_proto(dims, tensor_type, content):
    out = bytearray()
    for d in dims:
        out += key(1, 0) + varint(int(d))
    out += len_field(2, tensor_type.encode("utf-8"))
    out += len_field(3, content)
    return bytes(out)


def encode_record(tag, dims, tensor_type, content):
    """One serialized Checkpoint message holding one Value (what _exec_save writes)."""
    value = len_field(1, tag.encode("utf-8")) + len_field(2, encode_tensor_proto(
        dims, tensor_type, content))
    return len_field(1, value)


# ------------------------------------------------------------------ tensors -> records

def ms_type_of(t):
    if t.dtype not in _TORCH_TO_MS:
        raise ValueError("no MindSpore tensor_type for %s" % t.dtype)
    return _TORCH_TO_MS[t.dtype]


def tensor_bytes(t):
    """Raw little-endian C-order bytes of a torch tensor (bf16 as its bit patterns)."""
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().tobytes()
    return t.numpy().tobytes()


def tensor_records(name, t, split_bytes=MS_CHUNK_BYTES, split_style="bytes"):
    """Records for one tensor. bytes style = _write_parameter_bytes_data (MindSpore's
    path for Tensor/Parameter values): cut the byte string every split_bytes bytes.
    rows style = _write_parameter_data (np.ndarray values): np.array_split along axis
    0 into ceil(nbytes / split_bytes) pieces when nbytes > split_bytes."""
    dims = list(t.shape)
    tt = ms_type_of(t)
    raw = tensor_bytes(t)
    if split_style == "bytes":
        return [encode_record(name, dims, tt, raw[i:i + split_bytes])
                for i in range(0, len(raw), split_bytes)]
    if split_style != "rows":
        raise ValueError(split_style)
    if len(raw) > split_bytes and t.dim() >= 1:
        n = math.ceil(len(raw) / split_bytes)
        flat_rows = t.detach().cpu().contiguous()
        pieces = np.array_split(np.arange(t.shape[0]), n)
        return [encode_record(name, dims, tt, tensor_bytes(flat_rows[int(p[0]):int(p[-1]) + 1])
                              if len(p) else b"") for p in pieces]
    return [encode_record(name, dims, tt, raw)]


def str_records(name, s):
    """A str value as save_checkpoint writes it (append_dict): dims [0], type "str",
    content = numpy unicode bytes (UTF-32LE)."""
    return [encode_record(name, [0], "str", np.array(s).tobytes())]


def write_ckpt(path, items, split_bytes=MS_CHUNK_BYTES, split_style="bytes", crc=False):
    """items: iterable of (name, torch tensor | str). Duplicate names keep the first
    position and the last value (save_checkpoint's OrderedDict). Returns the list of
    (name, [record lengths]) written."""
    od = OrderedDict()
    for name, v in items:
        od[name] = v
    layout = []
    crc_num = 0
    with open(path, "wb") as f:
        for name, v in od.items():
            recs = str_records(name, v) if isinstance(v, str) else \
                tensor_records(name, v, split_bytes, split_style)
            for r in recs:
                crc_num = binascii.crc32(r, crc_num)
                f.write(r)
            layout.append((name, [len(r) for r in recs]))
        if crc:
            f.write(b"crc_num" + crc_num.to_bytes(10, byteorder="big"))
    return layout


# ------------------------------------------------------------------ reading

class MsTensor:
    __slots__ = ("name", "dims", "tensor_type", "content", "chunks", "offset")

    def __init__(self, name, dims, tensor_type, content, chunks, offset):
        self.name, self.dims, self.tensor_type = name, dims, tensor_type
        self.content, self.chunks, self.offset = content, chunks, offset

    def value(self):
        """torch tensor (UInt16/32/64: numpy array), or str for tensor_type "str"."""
        if self.tensor_type == "str":
            s = np.frombuffer(self.content, "<U%d" % max(1, len(self.content) // 4)) \
                if self.content else np.array([""])
            return str(s[0])
        np_dt, size = MS_TYPES[self.tensor_type]
        shape = [] if self.dims == [0] else self.dims
        a = np.frombuffer(self.content, np_dt).reshape(shape).copy()
        if self.tensor_type == "BFloat16":
            return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
        if self.tensor_type in ("UInt16", "UInt32", "UInt64"):
            return a
        return torch.from_numpy(a)


def _read_varint(buf, pos, end, what):
    result, shift = 0, 0
    start = pos
    while True:
        if pos >= end:
            raise CkptError("%s: varint at byte %d runs past the end (%d)" % (what, start, end))
        if shift >= 70:
            raise CkptError("%s: varint at byte %d longer than 10 bytes" % (what, start))
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    return result & ((1 << 64) - 1), pos


def _fields(buf, pos, end, what):
    """Yield (field, wire_type, value, field_start) for a message in buf[pos:end];
    LEN values as (start, stop) slices; unknown wire types 3/4/6/7 raise."""
    while pos < end:
        fstart = pos
        k, pos = _read_varint(buf, pos, end, what)
        field, wt = k >> 3, k & 7
        if field == 0:
            raise CkptError("%s: field number 0 at byte %d" % (what, fstart))
        if wt == 0:
            v, pos = _read_varint(buf, pos, end, what)
        elif wt == 1:
            if pos + 8 > end:
                raise CkptError("%s: fixed64 at byte %d runs past the end" % (what, fstart))
            v, pos = buf[pos:pos + 8], pos + 8
        elif wt == 2:
            n, pos = _read_varint(buf, pos, end, what)
            if n > end - pos:
                raise CkptError("%s: field %d at byte %d: length %d runs past the end of its "
                                "enclosing message (%d bytes left)" % (what, field, fstart, n,
                                                                        end - pos))
            v, pos = (pos, pos + n), pos + n
        elif wt == 5:
            if pos + 4 > end:
                raise CkptError("%s: fixed32 at byte %d runs past the end" % (what, fstart))
            v, pos = buf[pos:pos + 4], pos + 4
        else:
            raise CkptError("%s: field %d at byte %d has wire type %d (groups / invalid)"
                            % (what, field, fstart, wt))
        yield field, wt, v, fstart


def parse_records(data):
    """The raw Values of a .ckpt byte string (crc trailer already removed), protobuf
    semantics: a known field with an unexpected wire type is an unknown field (skipped),
    so the required fields it carried count as missing. Returns a list of dicts
    {tag, kind: "tensor"|"maptensor", dims, tensor_type, content, offset}."""
    buf = memoryview(data)
    out = []
    for field, wt, v, off in _fields(buf, 0, len(buf), "Checkpoint"):
        if field != 1 or wt != 2:
            continue  # unknown field of Checkpoint
        vs, ve = v
        rec = {"tag": None, "kind": None, "offset": off}
        for f2, wt2, v2, off2 in _fields(buf, vs, ve, "Checkpoint.value@%d" % off):
            if f2 == 1 and wt2 == 2:
                try:
                    rec["tag"] = bytes(buf[v2[0]:v2[1]]).decode("utf-8")
                except UnicodeDecodeError:
                    raise CkptError("Value at byte %d: tag is not UTF-8" % off)
            elif f2 == 2 and wt2 == 2:
                rec["kind"] = "tensor"
                rec.update(_parse_tensor_proto(buf, v2, "Value at byte %d: tensor" % off))
            elif f2 == 3 and wt2 == 2:
                rec["kind"] = "maptensor"
                rec["map"] = [_parse_tensor_proto(buf, v3, "maptensor")
                              for f3, wt3, v3, _ in _fields(buf, v2[0], v2[1], "maptensor")
                              if f3 == 1 and wt3 == 2]
        if rec["tag"] is None:
            raise CkptError("Value at byte %d: required field 'tag' missing" % off)
        if rec["kind"] is None:
            raise CkptError("Value at byte %d (%s): no tensor / maptensor" % (off, rec["tag"]))
        out.append(rec)
    return out


def _parse_tensor_proto(buf, span, what):
    dims, tt, content = [], None, None
    for f, wt, v, off in _fields(buf, span[0], span[1], what):
        if f == 1 and wt == 0:
            dims.append(v - (1 << 64) if v >= 1 << 63 else v)
        elif f == 1 and wt == 2:  # packed (accepted by protobuf parsers for repeated scalars)
            p = v[0]
            while p < v[1]:
                d, p = _read_varint(buf, p, v[1], what + ".dims")
                dims.append(d - (1 << 64) if d >= 1 << 63 else d)
        elif f == 2 and wt == 2:
            try:
                tt = bytes(buf[v[0]:v[1]]).decode("utf-8")
            except UnicodeDecodeError:
                raise CkptError("%s: tensor_type is not UTF-8" % what)
        elif f == 3 and wt == 2:
            content = bytes(buf[v[0]:v[1]])
    if tt is None:
        raise CkptError("%s: required field 'tensor_type' missing" % what)
    if content is None:
        raise CkptError("%s: required field 'tensor_content' missing" % what)
    return {"dims": dims, "tensor_type": tt, "content": content}


def split_crc(data):
    """(payload, crc or None) like load_checkpoint: trailer iff data[-17:-10] == b"crc_num"."""
    if len(data) >= 17 and data[-17:-10] == b"crc_num":
        return data[:-17], int.from_bytes(data[-10:], "big")
    return data, None


def read_ckpt(path, check_crc=True):
    """OrderedDict name -> MsTensor, joined like load_checkpoint (consecutive Values with
    the same tag), with strict checks: known tensor_type, byte count == prod(dims) * size."""
    with open(path, "rb") as f:
        data = f.read()
    data, crc = split_crc(data)
    if crc is not None and check_crc and binascii.crc32(data, 0) != crc:
        raise CkptError("%s: crc check failed" % path)
    recs = parse_records(data)
    out = OrderedDict()
    i = 0
    while i < len(recs):
        r = recs[i]
        j = i
        while j + 1 < len(recs) and recs[j + 1]["tag"] == r["tag"]:
            j += 1
        group = recs[i:j + 1]
        i = j + 1
        if r["kind"] == "maptensor":
            raise CkptError("%s: map parameter %r not supported" % (path, r["tag"]))
        last = group[-1]
        for g in group:
            if g["tensor_type"] != last["tensor_type"] or g["dims"] != last["dims"]:
                raise CkptError("%s: chunks of %r disagree on dims / tensor_type"
                                % (path, r["tag"]))
        content = b"".join(g["content"] for g in group)
        tt, dims = last["tensor_type"], last["dims"]
        if tt != "str":
            if tt not in MS_TYPES:
                raise CkptError("%s: %r has unknown tensor_type %r" % (path, r["tag"], tt))
            if any(d < 0 for d in dims):
                raise CkptError("%s: %r has negative dims %s" % (path, r["tag"], dims))
            n = 1
            for d in ([] if dims == [0] else dims):
                n *= d
            if n * MS_TYPES[tt][1] != len(content):
                raise CkptError("%s: %r: %d content bytes for dims %s of %s (%d expected)"
                                % (path, r["tag"], len(content), dims, tt, n * MS_TYPES[tt][1]))
        if r["tag"] in out:
            # load_checkpoint would overwrite; a non-consecutive repeat is suspicious
            raise CkptError("%s: %r appears twice (not consecutively)" % (path, r["tag"]))
        out[r["tag"]] = MsTensor(r["tag"], dims, tt, content, len(group), r["offset"])
    return out


# ------------------------------------------------------------------ google.protobuf (optional)

def load_protobuf(path=None):
    """The Checkpoint message class built from checkpoint.proto (newer oneof form), or
    None when google.protobuf cannot be imported."""
    if path:
        sys.path.insert(0, path)
        os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
    try:
        from google.protobuf import descriptor_pb2, descriptor_pool
        try:
            from google.protobuf import message_factory
        except ImportError:
            message_factory = None
    except ImportError:
        return None
    F = descriptor_pb2.FieldDescriptorProto
    fd = descriptor_pb2.FileDescriptorProto(name="loupe_checkpoint.proto", syntax="proto2")
    ck = fd.message_type.add(name="Checkpoint")
    val = ck.nested_type.add(name="Value")
    val.oneof_decl.add(name="value")
    val.field.add(name="tag", number=1, type=F.TYPE_STRING, label=F.LABEL_REQUIRED)
    val.field.add(name="tensor", number=2, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                  type_name=".TensorProto", oneof_index=0)
    val.field.add(name="maptensor", number=3, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                  type_name=".MapTensorProto", oneof_index=0)
    ck.field.add(name="value", number=1, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED,
                 type_name=".Checkpoint.Value")
    tp = fd.message_type.add(name="TensorProto")
    tp.field.add(name="dims", number=1, type=F.TYPE_INT64, label=F.LABEL_REPEATED)
    tp.field.add(name="tensor_type", number=2, type=F.TYPE_STRING, label=F.LABEL_REQUIRED)
    tp.field.add(name="tensor_content", number=3, type=F.TYPE_BYTES, label=F.LABEL_REQUIRED)
    mp = fd.message_type.add(name="MapTensorProto")
    mp.field.add(name="tensor", number=1, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED,
                 type_name=".TensorProto")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    desc = pool.FindMessageTypeByName("Checkpoint")
    if message_factory is not None and hasattr(message_factory, "GetMessageClass"):
        return message_factory.GetMessageClass(desc)
    return message_factory.MessageFactory(pool).GetPrototype(desc)


def protobuf_check(Checkpoint, path, expect):
    """Parse path with google.protobuf like _parse_ckpt_proto + load_checkpoint's join;
    compare with expect (OrderedDict name -> (dims, tensor_type, content)); re-serialize
    each Value alone and compare with the file's bytes. Returns a list of problems."""
    with open(path, "rb") as f:
        data = f.read()
    payload, _ = split_crc(data)
    ck = Checkpoint()
    ck.ParseFromString(payload)
    problems = []
    got = OrderedDict()
    rebuilt = bytearray()
    vals = list(ck.value)
    for i, v in enumerate(vals):
        one = Checkpoint()
        one.value.add().CopyFrom(v)
        rebuilt += one.SerializeToString()
        if v.tag in got and vals[i - 1].tag == v.tag:
            got[v.tag][2].append(v.tensor.tensor_content)
            got[v.tag][0] = list(v.tensor.dims)
        else:
            got[v.tag] = [list(v.tensor.dims), v.tensor.tensor_type, [v.tensor.tensor_content]]
    if bytes(rebuilt) != payload:
        problems.append("google.protobuf re-serialization differs from the file's bytes")
    if list(got) != list(expect):
        problems.append("names/order differ: %s vs %s" % (list(got)[:4], list(expect)[:4]))
    for k, (dims, tt, content) in expect.items():
        if k not in got:
            continue
        g = got[k]
        if g[0] != list(dims) or g[1] != tt or b"".join(g[2]) != content:
            problems.append("%s differs (dims %s/%s, type %s/%s)" % (k, g[0], dims, g[1], tt))
    return problems


# ------------------------------------------------------------------ the port's names

def convert_pt_name_to_ms(content):
    """mindone examples/sharegpt_4v/share4v/tools/convert_weights.py, same logic."""
    if content.startswith("model.layers"):
        content = content.replace("self_attn.q_proj", "attention.wq")
        content = content.replace("self_attn.k_proj", "attention.wk")
        content = content.replace("self_attn.v_proj", "attention.wv")
        content = content.replace("self_attn.o_proj", "attention.wo")
        content = content.replace("mlp.gate_proj", "feed_forward.w1")
        content = content.replace("mlp.up_proj", "feed_forward.w3")
        content = content.replace("mlp.down_proj", "feed_forward.w2")
        content = content.replace("input_layernorm", "attention_norm")
        content = content.replace("post_attention_layernorm", "ffn_norm")
    elif content.startswith("vision_model"):
        content = content.replace("vision_model", "vision_tower.vision_model")
        content = content.replace("position_embedding.weight", "position_embedding.embedding_table")
        if "norm" in content:
            content = content.replace("weight", "gamma")
            content = content.replace("bias", "beta")
    else:
        content = content.replace("model.norm", "model.norm_out")
    content = content.replace("embed_tokens.weight", "embed_tokens.embedding_table")
    return content


def port_config(hf_cfg, vit_cfg_dir, vit_ckpt):
    """config.json in the schema of the port's share4v/configs/config.json, values from
    the HF config (missing keys get the port file's values)."""
    g = hf_cfg.get
    return OrderedDict([
        ("_name_or_path", "MS_ShareGPT4V-7B"),
        ("architectures", ["Share4VLlamaForCausalLM"]),
        ("bos_token_id", g("bos_token_id", 1)), ("eos_token_id", g("eos_token_id", 2)),
        ("freeze_mm_mlp_adapter", g("freeze_mm_mlp_adapter", False)),
        ("hidden_act", g("hidden_act", "silu")), ("hidden_size", g("hidden_size")),
        ("image_aspect_ratio", g("image_aspect_ratio", "pad")),
        ("image_grid_pinpoints", g("image_grid_pinpoints")),
        ("initializer_range", g("initializer_range", 0.02)),
        ("intermediate_size", g("intermediate_size")),
        ("max_position_embeddings", g("max_position_embeddings", 4096)),
        ("mm_hidden_size", g("mm_hidden_size")), ("mm_projector_lr", g("mm_projector_lr")),
        ("mm_projector_type", g("mm_projector_type", "mlp2x_gelu")),
        ("mm_use_im_patch_token", g("mm_use_im_patch_token", False)),
        ("mm_use_im_start_end", g("mm_use_im_start_end", False)),
        ("mm_vision_select_feature", g("mm_vision_select_feature", "patch")),
        ("mm_vision_select_layer", g("mm_vision_select_layer", -2)),
        ("mm_vision_tower", vit_cfg_dir), ("mm_vision_tower_path", vit_ckpt),
        ("model_type", "share4v"),
        ("num_attention_heads", g("num_attention_heads")),
        ("num_hidden_layers", g("num_hidden_layers")),
        ("num_key_value_heads", g("num_key_value_heads", g("num_attention_heads"))),
        ("pad_token_id", g("pad_token_id", 0)), ("pretraining_tp", g("pretraining_tp", 1)),
        ("rms_norm_eps", g("rms_norm_eps", 1e-5)), ("rope_scaling", g("rope_scaling")),
        ("tie_word_embeddings", g("tie_word_embeddings", False)),
        ("dtype", "float16"), ("transformers_version", "4.31.0"),
        ("tune_entire_model", False), ("tune_mm_mlp_adapter", False),
        ("tune_vision_tower", False), ("use_cache", True), ("use_mm_proj", True),
        ("vision_tower_lr", None), ("vocab_size", g("vocab_size")),
        ("output_attentions", False), ("output_hidden_states", False),
        ("use_return_dict", True),
    ])


# ------------------------------------------------------------------ breaking a file

def break_file(path, kind, layout, missing=None, unknown_dtype="Complex64"):
    """Rewrite path as one malformed file; returns a description dict. layout: the
    (name, [record lengths]) list from write_ckpt; the file has no crc trailer then
    (the crc is dropped so the damage itself is what a reader meets)."""
    with open(path, "rb") as f:
        data = f.read()
    data, _ = split_crc(data)
    recs = parse_records(data)
    desc = OrderedDict([("kind", kind), ("file", os.path.basename(path))])
    first = recs[0]

    def rebuild(new_first):
        return new_first + data[first_len:]

    first_len = layout[0][1][0]
    tag0 = first["tag"]
    if kind == "truncated":
        # cut inside the tensor_content of the middle record (the largest one if the
        # middle one has fewer than 2 content bytes); tensor_content is a record's last field
        i = len(recs) // 2
        if len(recs[i]["content"]) < 2:
            i = max(range(len(recs)), key=lambda j: len(recs[j]["content"]))
        mid = recs[i]
        rec_end = recs[i + 1]["offset"] if i + 1 < len(recs) else len(data)
        cut = rec_end - len(mid["content"]) + max(1, len(mid["content"]) // 2)
        data = data[:cut]
        desc.update(parameter=mid["tag"], cut_at=cut,
                    what="file ends inside the tensor_content of %r" % mid["tag"])
    elif kind == "wrong-wire-type":
        # tensor_content (field 3) of the first Value written as a VARINT (key 0x18, 0)
        tp = bytearray()
        for d in first["dims"]:
            tp += key(1, 0) + varint(d)
        tp += len_field(2, first["tensor_type"].encode())
        tp += key(3, 0) + varint(0)
        v = len_field(1, tag0.encode()) + len_field(2, bytes(tp))
        data = rebuild(len_field(1, v))
        desc.update(parameter=tag0, offset=0,
                    what="TensorProto.tensor_content (field 3) has wire type 0 (VARINT) "
                         "instead of 2 (LEN); for protobuf: unknown field, required "
                         "tensor_content missing")
    elif kind in ("length-past-end", "length-past-parent"):
        # tensor_content of the first Value declares more bytes than its TensorProto
        # holds; the outer lengths stay those of the real bytes
        tt = first["tensor_type"].encode()
        content = first["content"]
        extra = len(data) + 1000 if kind == "length-past-end" else 16
        tp = bytearray()
        for d in first["dims"]:
            tp += key(1, 0) + varint(d)
        tp += len_field(2, tt)
        tp += key(3, 2) + varint(len(content) + extra) + content
        v = len_field(1, tag0.encode()) + len_field(2, bytes(tp))
        data = rebuild(len_field(1, v))
        desc.update(parameter=tag0, declared=len(content) + extra, actual=len(content),
                    what=("tensor_content length points past the end of the file"
                          if kind == "length-past-end" else
                          "tensor_content length overruns its TensorProto / Value by 16 "
                          "bytes (still inside the file)"))
    elif kind == "unknown-dtype":
        v = encode_record(tag0, first["dims"], unknown_dtype, first["content"])
        data = rebuild(v)
        desc.update(parameter=tag0, tensor_type=unknown_dtype,
                    what="tensor_type %r is not one load_checkpoint knows" % unknown_dtype)
    elif kind == "missing-parameter":
        if missing not in [r["tag"] for r in recs]:
            raise SystemExit("--missing %r is not in %s" % (missing, path))
        kept = bytearray()
        pos = 0
        for name, lens in layout:
            n = sum(lens)
            if name != missing:
                kept += data[pos:pos + n]
            pos += n
        data = bytes(kept)
        desc.update(parameter=missing, what="parameter %r left out" % missing)
    else:
        raise SystemExit("unknown --break %r" % kind)
    with open(path, "wb") as f:
        f.write(data)
    return desc


# ------------------------------------------------------------------ convert

def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def build_port_tensors(llm_sd, vit_sd, a):
    """Two OrderedDicts ms_name -> (hf_name, tensor as written)."""
    dt = hf_layout.parse_dtype(a.dtype)

    def conv(t):
        # convert_weights.py: .float() on everything (int64 buffers become Float32 too)
        return t.float().to(dt) if dt != torch.float32 else t.float()

    if a.with_inv_freq:  # HF LlamaAttention buffer, after o_proj (older checkpoints keep it)
        src, llm_sd = llm_sd, OrderedDict()
        for k, v in src.items():
            llm_sd[k] = v
            if k.endswith(".self_attn.o_proj.weight"):
                hd = a.head_dim
                llm_sd[k[:-len("o_proj.weight")] + "rotary_emb.inv_freq"] = \
                    1.0 / (10000.0 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    llm = OrderedDict()
    for k, v in llm_sd.items():
        if a.llm_names == "convert":
            name = convert_pt_name_to_ms(k)
        elif a.llm_names == "hf-embedding-table":
            name = k.replace("embed_tokens.weight", "embed_tokens.embedding_table")
        else:
            name = k
        llm[name] = (k, conv(v))
    vit = OrderedDict()
    for k, v in vit_sd.items():
        name = convert_pt_name_to_ms(k)
        if a.vit_prefix == "none" and name.startswith("vision_tower."):
            name = name[len("vision_tower."):]
        vit[name] = (k, conv(v))
    return llm, vit


def cmd_convert(a):
    src = os.path.abspath(a.src)
    out = os.path.abspath(a.out)
    llm_src, vit_src = os.path.join(src, "llm"), os.path.join(src, "vit")
    llm_sd = hf_layout.load_state_dict(llm_src)
    vit_sd = hf_layout.load_state_dict(vit_src)
    with open(os.path.join(llm_src, "config.json")) as f:
        hf_cfg = json.load(f)
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(os.path.join(out, "configs", "vit"))
    vit_dir = os.path.join(out, a.vit_subdir) if a.vit_subdir else out
    os.makedirs(vit_dir, exist_ok=True)
    llm_path, vit_path = os.path.join(out, LLM_CKPT), os.path.join(vit_dir, VIT_CKPT)

    a.head_dim = hf_cfg["hidden_size"] // hf_cfg["num_attention_heads"]
    llm, vit = build_port_tensors(llm_sd, vit_sd, a)
    items_llm = [(k, t) for k, (_, t) in llm.items()]
    if a.append_dict:  # what save_checkpoint(append_dict=...) adds: 0-d Int64 + a str
        items_llm += [("epoch_num", torch.tensor(1, dtype=torch.int64)),
                      ("step_num", torch.tensor(10, dtype=torch.int64)),
                      ("loupe_note", "ShareGPT4V fixture \u00e9")]
    split = a.split_bytes or MS_CHUNK_BYTES
    lay_llm = write_ckpt(llm_path, items_llm, split, a.split_style, a.crc)
    lay_vit = write_ckpt(vit_path, [(k, t) for k, (_, t) in vit.items()], split,
                         a.split_style, a.crc)

    for fn in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        if os.path.exists(os.path.join(llm_src, fn)):
            shutil.copyfile(os.path.join(llm_src, fn), os.path.join(out, fn))
    for fn in ("config.json", "preprocessor_config.json"):
        shutil.copyfile(os.path.join(vit_src, fn), os.path.join(out, "configs", "vit", fn))
    rel = lambda p: os.path.relpath(p, out)
    vcfg = os.path.join(out, "configs", "vit")
    cfg = port_config(hf_cfg, vcfg if a.abs_paths else rel(vcfg),
                      vit_path if a.abs_paths else rel(vit_path))
    with open(os.path.join(out, "configs", "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")

    brk = None
    if a.brk:
        target = llm_path if a.break_target == "llm" else vit_path
        lay = lay_llm if a.break_target == "llm" else lay_vit
        missing = a.missing
        if a.brk == "missing-parameter" and not missing:
            if a.break_target == "vit":
                missing = ("vision_tower." if a.vit_prefix != "none" else "") + \
                    "vision_model.embeddings.patch_embedding.weight"
            else:
                missing = ("model.layers.0.attention.wq.weight" if a.llm_names == "convert"
                           else "model.layers.0.self_attn.q_proj.weight")
        brk = break_file(target, a.brk, lay, missing, a.unknown_dtype)

    def table(od, lay, fname):
        chunks = dict(lay)
        return [OrderedDict([("ms", k), ("hf", hf), ("shape", list(t.shape)),
                             ("tensor_type", ms_type_of(t)), ("hf_dtype",
                              str((llm_sd if fname == LLM_CKPT else vit_sd)[hf].dtype)
                              .replace("torch.", "") if hf in (llm_sd if fname == LLM_CKPT
                                                               else vit_sd) else None),
                             ("chunks", len(chunks[k]))])
                for k, (hf, t) in od.items()]

    meta = OrderedDict([
        ("format", "MindSpore checkpoint (protobuf Checkpoint records), see mindspore_ckpt.py"),
        ("source", src), ("port", "mindone examples/sharegpt_4v (tools/convert_weights.py)"),
        ("options", OrderedDict([("llm_names", a.llm_names), ("vit_prefix", a.vit_prefix),
                                 ("with_inv_freq", a.with_inv_freq),
                                 ("dtype", a.dtype), ("split_bytes", split),
                                 ("split_style", a.split_style), ("crc", a.crc),
                                 ("append_dict", a.append_dict), ("abs_paths", a.abs_paths),
                                 ("vit_subdir", a.vit_subdir)])),
        ("files", OrderedDict([("llm_ckpt", rel(llm_path)), ("vit_ckpt", rel(vit_path)),
                               ("config", "configs/config.json"),
                               ("vit_config_dir", "configs/vit")])),
        ("sha256", OrderedDict((rel(p), _sha256(p)) for p in (llm_path, vit_path))),
        ("break", brk),
        ("llm", table(llm, lay_llm, LLM_CKPT)),
        ("vit", table(vit, lay_vit, VIT_CKPT)),
    ])
    with open(os.path.join(out, "loupe_fixture.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    n_rec = sum(len(l) for _, l in lay_llm) + sum(len(l) for _, l in lay_vit)
    print("wrote %s: %s (%d tensors), %s (%d tensors), %d records%s%s"
          % (out, rel(llm_path), len(llm), rel(vit_path), len(vit), n_rec,
             ", crc" if a.crc else "", ", BROKEN %s: %s" % (a.brk, brk["what"]) if brk else ""))
    if a.self_check:
        return self_check_convert(a, out, llm_path, vit_path, llm, vit, items_llm, brk)
    return 0


def self_check_convert(a, out, llm_path, vit_path, llm, vit, items_llm, brk):
    problems = []
    Checkpoint = load_protobuf(a.protobuf_path)
    expect_llm = OrderedDict()
    for k, v in items_llm:
        if isinstance(v, str):
            expect_llm[k] = ([0], "str", np.array(v).tobytes())
        else:
            expect_llm[k] = (list(v.shape), ms_type_of(v), tensor_bytes(v))
    expect_vit = OrderedDict((k, (list(t.shape), ms_type_of(t), tensor_bytes(t)))
                             for k, (_, t) in vit.items())
    broken = brk["file"] if brk else None
    for path, expect in ((llm_path, expect_llm), (vit_path, expect_vit)):
        fname = os.path.basename(path)
        if fname == broken:
            problems += check_broken(path, brk, Checkpoint)
            continue
        got = read_ckpt(path)
        if list(got) != list(expect):
            problems.append("%s: names/order differ" % fname)
        for k, (dims, tt, content) in expect.items():
            g = got.get(k)
            if g is None or g.dims != dims or g.tensor_type != tt or g.content != content:
                problems.append("%s: %s differs" % (fname, k))
        # the values themselves: MindSpore tensor == HF tensor (as float32 / target dtype)
        for k, (hf, t) in (llm if fname == LLM_CKPT else vit).items():
            v = got[k].value()
            if not torch.equal(v, t):
                problems.append("%s: %s value differs from %s" % (fname, k, hf))
        if Checkpoint is not None:
            problems += ["%s: %s" % (fname, p) for p in protobuf_check(Checkpoint, path, expect)]
    print("self-check: %s%s" % ("OK" if not problems else "FAILED",
                                "" if Checkpoint else " (google.protobuf not available: "
                                "hand reader only)"))
    for p in problems:
        print("  " + p)
    return 1 if problems else 0


def check_broken(path, brk, Checkpoint):
    """The broken file must fail our reader (missing-parameter: lack the name) and,
    where the damage is at the protobuf level, google.protobuf too."""
    problems = []
    kind = brk["kind"]
    try:
        got = read_ckpt(path)
        if kind == "missing-parameter":
            if brk["parameter"] in got:
                problems.append("missing-parameter: %s still present" % brk["parameter"])
        else:
            problems.append("%s: hand reader accepted the broken file" % kind)
    except CkptError as e:
        if kind == "missing-parameter":
            problems.append("missing-parameter: reader failed: %s" % e)
        else:
            print("  broken (%s) rejected by the hand reader: %s" % (kind, e))
    if Checkpoint is not None and kind not in ("missing-parameter", "unknown-dtype"):
        with open(path, "rb") as f:
            data = f.read()
        try:
            msg = Checkpoint()
            msg.ParseFromString(data)
            if not msg.IsInitialized():  # the pure-python parser does not check required
                raise ValueError("missing required fields: %s" % msg.FindInitializationErrors())
            problems.append("%s: google.protobuf accepted the broken file" % kind)
        except Exception as e:  # DecodeError / EncodeError (missing required)
            print("  broken (%s) rejected by google.protobuf: %s: %s"
                  % (kind, type(e).__name__, e))
    return problems


# ------------------------------------------------------------------ dump / selftest

def cmd_dump(a):
    with open(a.file, "rb") as f:
        data = f.read()
    payload, crc = split_crc(data)
    if a.records:
        for r in parse_records(payload):
            print("%8d  %-60s %-9s %-16s %d bytes" % (r["offset"], r["tag"], r.get("tensor_type"),
                                                     r.get("dims"), len(r.get("content", b""))))
    for k, t in read_ckpt(a.file).items():
        extra = " = %r" % t.value() if t.tensor_type == "str" else ""
        print("%-62s %-9s %-18s %8d bytes %d chunk(s)%s" % (k, t.tensor_type, t.dims,
                                                            len(t.content), t.chunks, extra))
    if crc is not None:
        print("crc_num trailer: %d (%s)" % (crc, "ok" if binascii.crc32(payload) == crc
                                           else "MISMATCH"))
    return 0


def cmd_selftest(a):
    """Encoder/decoder unit checks on a small synthetic file (no fixture needed)."""
    import tempfile
    fails = []
    ok = lambda c, m: None if c else fails.append(m)
    for n, enc in ((0, b"\x00"), (1, b"\x01"), (127, b"\x7f"), (128, b"\x80\x01"),
                   (300, b"\xac\x02"), (-1, b"\xff" * 9 + b"\x01")):
        ok(varint(n) == enc, "varint(%d)" % n)
    g = torch.Generator().manual_seed(0)
    items = [("a.f32", torch.randn(3, 5, generator=g)),
             ("b.bf16", torch.randn(7, generator=g).to(torch.bfloat16)),
             ("c.f16", torch.randn(2, 3, 4, generator=g).half()),
             ("d.i64", torch.arange(6, dtype=torch.int64).reshape(1, 6)),
             ("e.scalar", torch.tensor(2.5)),
             ("f.bool", torch.tensor([True, False, True])),
             ("g.str", "hello \u00fc"),
             ("h.big", torch.randn(9, 4, generator=g))]
    Checkpoint = load_protobuf(a.protobuf_path)
    with tempfile.TemporaryDirectory() as d:
        for style, split, crc in (("bytes", MS_CHUNK_BYTES, False), ("bytes", 10, True),
                                  ("rows", 40, False), ("bytes", 1, False)):
            p = os.path.join(d, "t.ckpt")
            lay = write_ckpt(p, items, split, style, crc)
            got = read_ckpt(p)
            ok(list(got) == [k for k, _ in items], "%s/%d: names" % (style, split))
            for k, v in items:
                gv = got[k].value()
                same = gv == v if isinstance(v, str) else (torch.equal(gv, v) and
                                                          gv.dtype == v.dtype)
                ok(same, "%s/%d: %s" % (style, split, k))
            nch = dict((k, len(l)) for k, l in lay)
            if split == 10:
                ok(nch["h.big"] == 15 and got["h.big"].chunks == 15, "bytes split count")
                ok(got["e.scalar"].dims == [], "0-d tensor has no dims")
            if style == "rows":
                ok(nch["h.big"] == 4, "rows split count %d" % nch["h.big"])
            if Checkpoint is not None:
                exp = OrderedDict()
                for k, v in items:
                    exp[k] = (([0], "str", np.array(v).tobytes()) if isinstance(v, str) else
                              (list(v.shape), ms_type_of(v), tensor_bytes(v)))
                for pr in protobuf_check(Checkpoint, p, exp):
                    fails.append("protobuf %s/%d: %s" % (style, split, pr))
        # every break kind is rejected
        for kind in BREAK_KINDS:
            p = os.path.join(d, "b.ckpt")
            lay = write_ckpt(p, items)
            brk = break_file(p, kind, lay, missing="c.f16")
            probs = check_broken(p, brk, Checkpoint)
            fails += ["break %s: %s" % (kind, x) for x in probs]
    print("selftest: %s%s" % ("OK" if not fails else "FAILED",
                              "" if Checkpoint else " (no google.protobuf)"))
    for f in fails:
        print("  " + f)
    return 1 if fails else 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="HF-layout ShareGPT4V fixture -> the port's .ckpt layout")
    c.add_argument("--src", required=True, help="vlm_fixture.py --layout sharegpt4v output dir")
    c.add_argument("--out", required=True)
    c.add_argument("--llm-names", choices=("convert", "hf", "hf-embedding-table"),
                   default="convert",
                   help="convert: convert_weights.py names (default); hf: the names of the "
                        "port's current network (= HF names); hf-embedding-table: HF names "
                        "but model.embed_tokens.embedding_table (what load_model's shim maps)")
    c.add_argument("--with-inv-freq", action="store_true",
                   help="add model.layers.N.self_attn.rotary_emb.inv_freq (F32) after o_proj, "
                        "as checkpoints saved with persistent inv_freq buffers have")
    c.add_argument("--vit-prefix", choices=("vision_tower.", "none"), default="vision_tower.",
                   help="convert_weights.py gives vision_tower.vision_model.*; none: "
                        "vision_model.* (what clip_encoder.py's loader re-prefixes)")
    c.add_argument("--vit-subdir", default=None, help="put vit-large336-l12.ckpt in OUT/NAME/")
    c.add_argument("--dtype", default="f32", help="f32 (the port: .float()), f16, bf16")
    c.add_argument("--split-bytes", type=int, default=None,
                   help="chunk tensors bigger than N bytes (MindSpore: 512 MiB)")
    c.add_argument("--split-style", choices=("bytes", "rows"), default="bytes")
    c.add_argument("--crc", action="store_true", help="append the crc_num trailer (crc_check)")
    c.add_argument("--append-dict", action="store_true",
                   help="add epoch_num/step_num (0-d Int64) and a str value to the LLM ckpt")
    c.add_argument("--abs-paths", action="store_true")
    c.add_argument("--break", dest="brk", choices=BREAK_KINDS, default=None)
    c.add_argument("--break-target", choices=("llm", "vit"), default="llm")
    c.add_argument("--missing", default=None, help="parameter left out by missing-parameter")
    c.add_argument("--unknown-dtype", default="Complex64")
    c.add_argument("--self-check", action="store_true")
    c.add_argument("--protobuf-path", default=None)
    w = sub.add_parser("write", help="any checkpoint hf_layout reads -> one .ckpt, same names and dtypes")
    w.add_argument("src")
    w.add_argument("out")
    w.add_argument("--split-bytes", type=int, default=MS_CHUNK_BYTES)
    w.add_argument("--crc", action="store_true")
    d = sub.add_parser("dump", help="list a .ckpt")
    d.add_argument("file")
    d.add_argument("--records", action="store_true", help="also list every raw record")
    s = sub.add_parser("selftest", help="encoder/decoder checks on synthetic data")
    s.add_argument("--protobuf-path", default=None)
    a = ap.parse_args(argv)
    if a.cmd == "convert":
        if a.split_bytes is not None and a.split_bytes < 1:
            ap.error("--split-bytes must be >= 1")
        return cmd_convert(a)
    if a.cmd == "write":
        write_ckpt(a.out, list(hf_layout.load_state_dict(a.src).items()), split_bytes=a.split_bytes, crc=a.crc)
        return 0
    if a.cmd == "dump":
        return cmd_dump(a)
    return cmd_selftest(a)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # `dump ... | head`
        sys.stderr.close()
        sys.exit(0)
