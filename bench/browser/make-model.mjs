#!/usr/bin/env node
// Writes a synthetic LLaMA GGUF with random Q4_0 weights, for speed benchmarks
// (speed depends on the shapes and types, not on the values). Default shape:
// TinyLlama-1.1B (dim 2048, 22 layers, 32 heads, 4 KV heads, FFN 5632, vocab
// 32000) — about 0.6 GB, so it loads in wasm32's 4 GB and in wllama (< 2 GB per file).
// The tokenizer metadata is built from ../shared/tokenizers/llama2.model (the LLaMA-2
// SentencePiece model) the way llama.cpp's converter does, so llama.cpp/wllama load it too.
// A small GGUF writer and protobuf reader of its own: independent of loupe's.
//
// usage: node bench/browser/make-model.mjs OUT.gguf [--vocab tokenizer.model] [--dim 2048] [--layers 22]
//        [--heads 32] [--kv-heads 4] [--ffn 5632] [--seed 1]
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

const T = { U8: 0, I8: 1, U16: 2, I16: 3, U32: 4, I32: 5, F32: 6, BOOL: 7, STRING: 8, ARRAY: 9, U64: 10, I64: 11, F64: 12 };

// ------------------------------------------------------------------ SentencePiece model -> tokenizer.*
// ModelProto { repeated SentencePiece pieces = 1 { string piece = 1; float score = 2; Type type = 3 } }.
// SentencePiece's piece types (NORMAL 1, UNKNOWN 2, CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6)
// are GGUF's token types.
export function readSentencePiece(file) {
  const b = fs.readFileSync(file);
  const pieces = [];
  let p = 0;
  const varint = (end) => {
    let v = 0, mul = 1;
    for (;;) {
      if (p >= end) throw new Error(`${file}: truncated varint`);
      const c = b[p++];
      v += (c & 0x7f) * mul;
      if (!(c & 0x80)) return v;
      mul *= 128;
    }
  };
  const skip = (wire, end) => {
    if (wire === 0) varint(end);
    else if (wire === 1) p += 8;
    else if (wire === 2) { const n = varint(end); p += n; }  // (not p += varint(): p would be read first)
    else if (wire === 5) p += 4;
    else throw new Error(`${file}: unsupported protobuf wire type ${wire}`);
  };
  while (p < b.length) {
    const key = varint(b.length), field = Math.floor(key / 8), wire = key & 7;
    if (field === 1 && wire === 2) {
      const len = varint(b.length), end = p + len;
      const piece = { piece: '', score: 0, type: 1 };
      while (p < end) {
        const k = varint(end), f = Math.floor(k / 8), w = k & 7;
        if (f === 1 && w === 2) { const n = varint(end); piece.piece = b.toString('utf8', p, p + n); p += n; }
        else if (f === 2 && w === 5) { piece.score = b.readFloatLE(p); p += 4; }
        else if (f === 3 && w === 0) piece.type = varint(end);
        else skip(w, end);
      }
      pieces.push(piece);
    } else skip(wire, b.length);
  }
  if (!pieces.length) throw new Error(`${file}: no pieces (not a SentencePiece model?)`);
  return pieces;
}

function tokenizerKv(pieces) {
  const strings = Buffer.concat(pieces.map((x) => gstr(x.piece)));
  const scores = Buffer.alloc(4 * pieces.length), types = Buffer.alloc(4 * pieces.length);
  pieces.forEach((x, i) => { scores.writeFloatLE(x.score, 4 * i); types.writeInt32LE(x.type, 4 * i); });
  const arr = (key, et, body) => ({ key, type: T.ARRAY, raw: Buffer.concat([u32(et), u64(pieces.length), body]) });
  const kvBool = (key, v) => ({ key, type: T.BOOL, raw: Buffer.from([v ? 1 : 0]) });
  return [
    kvStr('tokenizer.ggml.model', 'llama'),
    kvStr('tokenizer.ggml.pre', 'default'),
    arr('tokenizer.ggml.tokens', T.STRING, strings),
    arr('tokenizer.ggml.scores', T.F32, scores),
    arr('tokenizer.ggml.token_type', T.I32, types),
    kvU32('tokenizer.ggml.bos_token_id', 1),
    kvU32('tokenizer.ggml.eos_token_id', 2),
    kvU32('tokenizer.ggml.unknown_token_id', 0),
    kvBool('tokenizer.ggml.add_bos_token', true),
    kvBool('tokenizer.ggml.add_eos_token', false),
  ];
}

// ------------------------------------------------------------------ GGUF write
const enc = (s) => Buffer.from(s, 'utf8');
const u32 = (v) => { const x = Buffer.alloc(4); x.writeUInt32LE(v); return x; };
const u64 = (v) => { const x = Buffer.alloc(8); x.writeBigUInt64LE(BigInt(v)); return x; };
const f32 = (v) => { const x = Buffer.alloc(4); x.writeFloatLE(v); return x; };
const gstr = (s) => Buffer.concat([u64(enc(s).length), enc(s)]);
const kvU32 = (key, v) => ({ key, type: T.U32, raw: u32(v) });
const kvF32 = (key, v) => ({ key, type: T.F32, raw: f32(v) });
const kvStr = (key, v) => ({ key, type: T.STRING, raw: gstr(v) });

function f32ToF16(v) {
  const f = new Float32Array([v]), u = new Uint32Array(f.buffer)[0];
  const sign = (u >>> 16) & 0x8000, e = ((u >>> 23) & 0xff) - 127 + 15, m = u & 0x7fffff;
  if (e <= 0) return sign;
  if (e >= 31) return sign | 0x7c00;
  return sign | (e << 10) | (m >>> 13);  // truncation is fine for random scales
}

export function makeModel(out, o = {}) {
  const vocabFile = o.vocab || path.resolve(root, '../shared/tokenizers/llama2.model');
  const D = o.dim ?? 2048, L = o.layers ?? 22, H = o.heads ?? 32, HKV = o.kvHeads ?? 4, F = o.ffn ?? 5632;
  const pieces = readSentencePiece(vocabFile);
  const hd = D / H, V = pieces.length, align = 32;
  const vocab = tokenizerKv(pieces);
  const kv = [
    kvStr('general.architecture', 'llama'),
    kvStr('general.name', `synthetic-llama-${D}x${L}`),
    kvU32('general.file_type', 2),  // MOSTLY_Q4_0
    kvU32('general.quantization_version', 2),
    kvU32('general.alignment', align),
    kvU32('llama.vocab_size', V),
    kvU32('llama.context_length', 2048),
    kvU32('llama.embedding_length', D),
    kvU32('llama.block_count', L),
    kvU32('llama.feed_forward_length', F),
    kvU32('llama.rope.dimension_count', hd),
    kvU32('llama.attention.head_count', H),
    kvU32('llama.attention.head_count_kv', HKV),
    kvF32('llama.attention.layer_norm_rms_epsilon', 1e-5),
    kvF32('llama.rope.freq_base', 10000),
    ...vocab,
  ];
  // tensors: [name, type (0 f32, 2 q4_0), shape (GGUF order: innermost first)]
  const tensors = [['token_embd.weight', 2, [D, V]]];
  for (let l = 0; l < L; ++l) {
    const p = `blk.${l}.`;
    tensors.push([p + 'attn_norm.weight', 0, [D]], [p + 'attn_q.weight', 2, [D, D]], [p + 'attn_k.weight', 2, [D, HKV * hd]],
                 [p + 'attn_v.weight', 2, [D, HKV * hd]], [p + 'attn_output.weight', 2, [D, D]], [p + 'ffn_norm.weight', 0, [D]],
                 [p + 'ffn_gate.weight', 2, [D, F]], [p + 'ffn_up.weight', 2, [D, F]], [p + 'ffn_down.weight', 2, [F, D]]);
  }
  tensors.push(['output_norm.weight', 0, [D]], ['output.weight', 2, [D, V]]);
  const nbytes = ([, t, s]) => { const n = s.reduce((a, b) => a * b, 1); return t === 0 ? n * 4 : (n / 32) * 18; };

  const head = [enc('GGUF'), u32(3), u64(tensors.length), u64(kv.length)];
  for (const e of kv) head.push(gstr(e.key), u32(e.type), e.raw);
  let off = 0;
  const offsets = [];
  for (const t of tensors) {
    offsets.push(off);
    head.push(gstr(t[0]), u32(t[2].length), ...t[2].map(u64), u32(t[1]), u64(off));
    off += Math.ceil(nbytes(t) / align) * align;
  }
  let header = Buffer.concat(head);
  header = Buffer.concat([header, Buffer.alloc((align - (header.length % align)) % align)]);

  const tmp = `${out}.tmp`;
  const fd = fs.openSync(tmp, 'w');
  fs.writeSync(fd, header);
  let seed = (o.seed ?? 1) >>> 0 || 1;
  const rand = (buf) => {  // xorshift32 over a Uint32Array view
    const w = new Uint32Array(buf.buffer, buf.byteOffset, buf.byteLength >>> 2);
    let s = seed;
    for (let i = 0; i < w.length; ++i) { s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0; w[i] = s; }
    seed = s;
  };
  const scale = f32ToF16(0.02 / 4.6);  // uniform nibbles have std ≈ 4.6: weights of std ≈ 0.02
  const chunkBlocks = 1 << 16;
  for (let i = 0; i < tensors.length; ++i) {
    const t = tensors[i], n = nbytes(t);
    if (t[1] === 0) {
      const v = new Float32Array(n / 4).fill(1);
      fs.writeSync(fd, Buffer.from(v.buffer));
    } else {
      let blocks = n / 18;
      while (blocks > 0) {
        const k = Math.min(blocks, chunkBlocks);
        const raw = Buffer.alloc(k * 18 + 4);
        rand(new Uint8Array(raw.buffer, raw.byteOffset, (raw.length >>> 2) << 2));
        for (let b = 0; b < k; ++b) raw.writeUInt16LE(scale, b * 18);
        fs.writeSync(fd, raw, 0, k * 18);
        blocks -= k;
      }
    }
    const pad = (Math.ceil(n / align) * align) - n;
    if (pad) fs.writeSync(fd, Buffer.alloc(pad));
  }
  fs.closeSync(fd);
  fs.renameSync(tmp, out);
  return { file: out, bytes: header.length + off, params: tensors.reduce((a, t) => a + t[2].reduce((x, y) => x * y, 1), 0) };
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const a = process.argv.slice(2);
  if (!a.length || a[0].startsWith('-')) {
    console.error('usage: node bench/browser/make-model.mjs OUT.gguf [--vocab tokenizer.model] [--dim N] [--layers N] [--heads N] [--kv-heads N] [--ffn N] [--seed N]');
    process.exit(2);
  }
  const o = {};
  for (let i = 1; i < a.length; i += 2) {
    const k = a[i].replace(/^--/, '').replace(/-(\w)/g, (_, c) => c.toUpperCase());
    o[k] = k === 'vocab' ? a[i + 1] : Number(a[i + 1]);
  }
  const t0 = Date.now();
  const r = makeModel(a[0], o);
  console.log(`wrote ${r.file}: ${(r.bytes / 1e9).toFixed(2)} GB, ${(r.params / 1e9).toFixed(2)} B parameters, ${((Date.now() - t0) / 1000).toFixed(1)} s`);
}
