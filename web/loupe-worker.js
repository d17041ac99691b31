// loupe's Web Worker: owns the WebAssembly engine so the page never freezes.
// A classic worker (Emscripten's MODULARIZE output and its pthread workers load
// with importScripts). Protocol: web/loupe.js posts {type, id, ...}; the worker
// answers {type: 'result', id, value} or {type: 'error', id, message}, and
// streams {type: 'progress'|'token', id, ...} while a request runs.
'use strict';

const base = new URL('./', self.location.href).href;
let Module = null;   // the Emscripten module
let engine = null;   // Module.Engine
let build = null;    // 'st' | 'mt'
let stopFlag = null; // Int32Array on a SharedArrayBuffer (when cross-origin isolated)
const decoder = () => new TextDecoder('utf-8');

const MiB = 1024 * 1024;
const fmtMiB = (n) => `${(n / MiB).toFixed(0)} MiB`;
const fmtGB = (n) => `${(n / 1e9).toFixed(2)} GB`;

async function init({ threads, stop }) {
  const wantThreads = Math.max(1, threads | 0);
  build = self.crossOriginIsolated && wantThreads > 1 ? 'mt' : 'st';
  const script = base + `loupe-${build}.js`;
  importScripts(script);
  Module = await self.createLoupeModule({
    loupeThreads: wantThreads,       // pthread pool size (mt build)
    mainScriptUrlOrBlob: script,     // pthread workers load the same script
    locateFile: (path) => base + path,
    print: (s) => console.log(s),
    printErr: (s) => console.warn(s),
  });
  const n = build === 'mt' ? wantThreads : 1;
  engine = new Module.Engine(n);
  baseHeap = Module.Engine.heapSize();
  if (stop) stopFlag = new Int32Array(stop);
  return {
    build, threads: n, crossOriginIsolated: !!self.crossOriginIsolated,
    heapMaxBytes: Module.Engine.heapMax(), simd: true,
  };
}

// ------------------------------------------------------------------ model cache
// Model files fetched by URL are kept in the Origin Private File System (as wllama
// keeps them), keyed by URL, with the server's ETag / Last-Modified and the size.
// The next load asks the server "changed?" (If-None-Match): 304 reads the file from
// OPFS, no download; offline, the cached copy is used as it is. Where OPFS is
// missing (or full) models simply load from the network.
const kCacheDir = 'loupe-models';
async function cacheDir(create = true) {
  try {
    return await (await navigator.storage.getDirectory()).getDirectoryHandle(kCacheDir, { create });
  } catch {
    return null;
  }
}
async function cacheKey(url) {
  const h = new Uint8Array(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(url)));
  return Array.from(h.slice(0, 16), (b) => b.toString(16).padStart(2, '0')).join('');
}
async function readJson(dir, name) {
  try {
    return JSON.parse(await (await (await dir.getFileHandle(name)).getFile()).text());
  } catch {
    return null;
  }
}
async function writeFile(dir, name, data) {
  const w = await (await dir.getFileHandle(name, { create: true })).createWritable();
  await w.write(data);
  await w.close();
}
// {files, bytes, entries: [{url, size}]} of what is cached.
async function cacheInfo() {
  const dir = await cacheDir(false);
  const out = { files: 0, bytes: 0, entries: [] };
  if (!dir) return out;
  for await (const [name] of dir.entries()) {
    if (!name.endsWith('.json')) continue;
    const m = await readJson(dir, name);
    if (m && m.complete) out.files++, out.bytes += m.size, out.entries.push({ url: m.url, size: m.size });
  }
  return out;
}
async function clearCache() {
  try {
    await (await navigator.storage.getDirectory()).removeEntry(kCacheDir, { recursive: true });
  } catch { /* nothing cached */ }
  return cacheInfo();
}
// The cached copy of `url` as an opened source, or null.
async function fromCache(dir, key, meta, name) {
  try {
    const f = await (await dir.getFileHandle(`${key}.bin`)).getFile();
    if (f.size !== meta.size) return null;
    return { name, size: f.size, stream: f.stream(), cancel: () => {}, cached: true };
  } catch {
    return null;
  }
}

// ------------------------------------------------------------------ sources
// A source is {url}, {file: Blob|File, name?} or {bytes: ArrayBuffer|Uint8Array, name}.
// open() returns {name, size, reader} without reading the body yet; with `cache`, a
// URL's file comes from (and goes to) the model cache.
async function open(src, { cache = false } = {}) {
  if (src.url) {
    const url = new URL(src.url, self.location.href).href;
    const name = src.name || decodeURIComponent(new URL(url).pathname.split('/').pop());
    const dir = cache ? await cacheDir() : null;
    const key = dir ? await cacheKey(url) : null;
    const meta = dir ? await readJson(dir, `${key}.json`) : null;
    const have = meta && meta.complete && meta.url === url;
    const validators = !have ? {} : meta.etag ? { 'If-None-Match': meta.etag } : meta.lastModified ? { 'If-Modified-Since': meta.lastModified } : {};
    let r;
    try {
      r = await fetch(url, have ? { headers: validators, cache: 'no-store' } : {});
    } catch (err) {
      const c = have && await fromCache(dir, key, meta, name);  // offline: the cached copy as it is
      if (c) return c;
      throw new Error(`${src.url}: ${err.message}`);
    }
    if (r.status === 304 && have) {
      const c = await fromCache(dir, key, meta, name);
      if (c) return c;
      r = await fetch(url, { cache: 'no-store' });  // the cached file went missing: download it again
    }
    if (!r.ok) throw new Error(`${src.url}: HTTP ${r.status} ${r.statusText}`);
    const len = r.headers.get('Content-Length');
    const enc = r.headers.get('Content-Encoding');
    const o = { name, size: len && !enc ? Number(len) : null, stream: r.body, cancel: () => r.body.cancel() };
    if (dir) o.save = { dir, key, meta: { url, etag: r.headers.get('ETag'), lastModified: r.headers.get('Last-Modified') } };
    return o;
  }
  if (src.file) {
    const f = src.file;
    return { name: src.name || f.name || 'file', size: f.size, stream: f.stream(), cancel: () => {} };
  }
  if (src.bytes) {
    const b = src.bytes instanceof Uint8Array ? src.bytes : new Uint8Array(src.bytes);
    return { name: src.name || 'bytes', size: b.byteLength, bytes: b, cancel: () => {} };
  }
  throw new Error('a model or image source must be {url}, {file} or {bytes}');
}

// Stream one opened source into an engine slot: straight into WASM memory, chunk by chunk.
async function fill(slot, o, onBytes) {
  if (o.bytes) {
    const p = engine.allocFile(slot, o.size, o.name);
    Module.HEAPU8.set(o.bytes, p);
    onBytes(o.size);
    return;
  }
  let size = o.size;
  let pending = null;
  if (size == null) {  // no usable Content-Length: collect the chunks first (rare: compressed responses)
    pending = o.first ? [o.first] : [];
    size = o.first ? o.first.byteLength : 0;
    const rd = o.stream.getReader();
    for (;;) {
      const { done, value } = await rd.read();
      if (done) break;
      pending.push(value);
      size += value.byteLength;
    }
  }
  const p = engine.allocFile(slot, size, o.name);
  if (Module.HEAPU8.length < p + size) throw new Error(`internal: WebAssembly memory view is stale (${o.name})`);
  // A download is also written to the model cache as it streams (a failed write only loses the caching).
  let writer = null, writes = Promise.resolve();
  if (o.save) {
    try {
      writer = await (await o.save.dir.getFileHandle(`${o.save.key}.bin`, { create: true })).createWritable();
      await writeFile(o.save.dir, `${o.save.key}.json`, JSON.stringify({ ...o.save.meta, size, complete: false }));
    } catch {
      writer = null;
    }
  }
  let off = 0;
  const put = (chunk) => {
    if (off + chunk.byteLength > size) throw new Error(`${o.name}: more bytes than announced (${size})`);
    Module.HEAPU8.set(chunk, p + off);  // HEAPU8 is re-read: memory may have grown
    off += chunk.byteLength;
    onBytes(chunk.byteLength);
    if (writer) writes = writes.then(() => writer.write(chunk)).catch(() => { writer = null; });
  };
  if (pending) pending.forEach(put);
  else {
    if (o.first) put(o.first);  // the chunk checkMagic() read
    const rd = o.stream.getReader();
    for (;;) {
      const { done, value } = await rd.read();
      if (done) break;
      put(value);
    }
  }
  if (off !== size) throw new Error(`${o.name}: got ${off} bytes, expected ${size}`);
  if (o.save) {
    await writes;
    try {
      if (!writer) throw new Error('not cached');
      await writer.close();
      await writeFile(o.save.dir, `${o.save.key}.json`, JSON.stringify({ ...o.save.meta, size, complete: true }));
    } catch {
      await o.save.dir.removeEntry(`${o.save.key}.json`).catch(() => {});
      await o.save.dir.removeEntry(`${o.save.key}.bin`).catch(() => {});
    }
  }
}

// Can it ever fit? The files live in WASM memory next to the KV cache and the activations;
// wasm32 memory ends at 4 GB whatever the machine has. (Whether it fits *now*, next to what
// an earlier model left fragmented, the allocation itself tells: see Engine.allocFile.)
function preflight(opened) {
  const known = opened.filter((o) => o.size != null);
  const total = known.reduce((s, o) => s + o.size, 0);
  const max = Module.Engine.heapMax();
  const margin = 160 * MiB;  // runtime, activations, a small KV cache
  if (total + margin > max - baseHeap) {
    const list = known.map((o) => `${o.name} ${fmtGB(o.size)}`).join(', ');
    throw new Error(
      `too big for the browser: the files total ${fmtGB(total)} (${list}), but WebAssembly (wasm32) memory ` +
      `in a browser tab is limited to ${fmtGB(max)}, and the weights, the KV cache and the activations must ` +
      `all fit in it. Use a smaller model or a 4-bit (Q4_0) conversion; the native CLI has no such limit.`);
  }
  return total;
}
let baseHeap = 0;  // memory in use before any model

// An error after engine.unload(): the page no longer has the model it had.
const lost = (err) => Object.assign(err instanceof Error ? err : new Error(String(err)), { modelLost: true });

// A GGUF file starts with "GGUF": checked from the first bytes, before anything is read
// in full or the loaded model is let go of. A URL's first chunk is kept for fill().
async function checkMagic(o) {
  let head;
  if (o.bytes) head = o.bytes.subarray(0, 4);
  else if (o.file) head = new Uint8Array(await o.file.slice(0, 4).arrayBuffer());
  else {
    const rd = o.stream.getReader();
    const { done, value } = await rd.read();
    rd.releaseLock();
    o.first = done ? new Uint8Array(0) : value;
    head = o.first.subarray(0, 4);
  }
  if (head.length < 4 || String.fromCharCode(...head) !== 'GGUF')
    throw new Error(`${o.name} is not a GGUF file (it does not start with "GGUF"); pick the .gguf files loupe-convert or llama.cpp wrote`);
}

async function loadFiles(id, entries) {
  // entries: [{slot, src, role}]
  const opened = [];
  try {
    for (const e of entries) opened.push(Object.assign(await open(e.src, { cache: true }), { slot: e.slot, role: e.role, file: e.src.file }));
    preflight(opened);
    for (const o of opened) await checkMagic(o);
  } catch (err) {
    opened.forEach((o) => o.cancel());
    throw err;  // the loaded model is untouched
  }
  const total = opened.reduce((s, o) => s + (o.size || 0), 0);
  engine.unload();  // the old model's memory is reused for the new one
  try {
    let loaded = 0, last = 0;
    for (const o of opened) {
      await fill(o.slot, o, (n) => {
        loaded += n;
        const now = performance.now();
        if (now - last > 50 || loaded === total) {
          last = now;
          self.postMessage({ type: 'progress', id, phase: 'download', file: o.name, role: o.role, loaded, total });
        }
      });
    }
  } catch (err) {
    throw lost(err);
  }
  self.postMessage({ type: 'progress', id, phase: 'parse', loaded: total, total });
  return { opened, total };
}

async function loadModel(id, { text, mmproj, adapters = [] }) {
  if (!text || !mmproj) throw new Error('loadModel needs a text model GGUF and an mmproj GGUF');
  const entries = [
    { slot: 'text', src: text, role: 'text' },
    { slot: 'mmproj', src: mmproj, role: 'mmproj' },
    ...adapters.map((a, i) => ({ slot: `adapter${i}`, src: a.src, role: 'adapter' })),
    ...adapters.flatMap((a, i) => (a.replace ? [{ slot: `adapter${i}.replace`, src: a.replace, role: 'adapter' }] : [])),
  ];
  const t0 = performance.now();
  const { opened, total } = await loadFiles(id, entries);
  let info;
  try {
    info = engine.loadModel('text', 'mmproj');
  } catch (err) {
    throw lost(err);
  }
  info.adapters = [];
  info.notes = [];
  let extra = 0;
  for (let i = 0; i < adapters.length; ++i) {
    const a = adapters[i], slot = `adapter${i}`;
    let replaceSlot = a.replace ? `${slot}.replace` : '';
    const needs = engine.adapterReplaceFile(slot);
    if (needs && !replaceSlot) {
      // The adapter keeps the tensors it replaces (the LLaVA projector) in a companion GGUF.
      if (!a.src.url) {
        engine.dropFile(slot);
        throw new Error(`adapter ${a.name}: also pick its companion file ${needs} (it holds the tensors the adapter replaces, e.g. the projector)`);
      }
      const o = await open({ url: new URL(needs, new URL(a.src.url, self.location.href)).href }, { cache: true });
      await fill(`${slot}.replace`, o, () => {});
      extra += o.size || 0;
      replaceSlot = `${slot}.replace`;
    }
    const r = engine.loadAdapter(a.name, slot, replaceSlot);
    info.adapters.push(a.name);
    info.notes.push(...r.notes);
  }
  info.loadMs = performance.now() - t0;
  info.fileBytes = total + extra;
  info.files = opened.map((o) => ({ name: o.name, role: o.role, size: o.size, cached: !!o.cached }));
  info.build = build;
  info.heapBytes = Module.Engine.heapSize();
  return info;
}

async function loadTextModel(id, { text }) {
  const t0 = performance.now();
  const { total } = await loadFiles(id, [{ slot: 'text', src: text, role: 'text' }]);
  const info = engine.loadTextModel('text');
  info.loadMs = performance.now() - t0;
  info.build = build;
  return info;
}

function applyLora(lora) {
  if (lora === undefined) return;
  const want = typeof lora === 'string' ? { [lora]: 1 } : lora || {};
  for (const a of engine.adapters()) engine.setLora(a.name, Number(want[a.name] || 0));
}

// The page clears the stop flag when it sends a request (loupe.js), so Stop pressed
// while the image is still being read or decoded ends the request too.
const stopped = () => !!(stopFlag && Atomics.load(stopFlag, 0));

async function describe(id, { image, prompt, maxTokens = 256, temperature = 0, seed = 42, conv = '', lora }) {
  applyLora(lora);
  self.postMessage({ type: 'progress', id, phase: 'image' });
  const t0 = performance.now();
  const o = await open(image);
  await fill('image', o, () => {});
  const img = engine.setImage('image');
  const imageReadMs = performance.now() - t0;  // read + decode the file: before CLIP, outside the engine's timings
  if (stopped()) return { text: '', tokens: [], stopped: true, stats: { imageReadMs, imageWidth: img.width, imageHeight: img.height } };
  self.postMessage({ type: 'progress', id, phase: 'encode' });
  const r = streamTurn(id, (onBytes) => engine.describe(prompt, maxTokens, temperature, seed, conv, onBytes));
  Object.assign(r.stats, { imageReadMs, imageWidth: img.width, imageHeight: img.height });
  return r;
}

// A follow-up question about the same image, in the conversation describe() started.
async function followUp(id, { prompt, maxTokens = 256, temperature = 0, seed = 42 }) {
  return streamTurn(id, (onBytes) => engine.followUp(prompt, maxTokens, temperature, seed, onBytes));
}

// One turn of the engine (describe or followUp), its UTF-8 pieces decoded and streamed to
// the page as they come, until the end or Stop: {text, tokens, stopped, stats}.
function streamTurn(id, run) {
  const dec = decoder();
  let text = '';
  const emit = (s) => {
    if (s) text += s, self.postMessage({ type: 'token', id, text: s });
  };
  const r = run((bytes) => {
    emit(dec.decode(bytes, { stream: true }));
    return !stopped();
  });
  emit(dec.decode());
  return { text, tokens: r.tokens, stopped: stopped(), stats: r.stats };
}

async function generate(id, { prompt, maxTokens = 64, temperature = 0 }) {
  const dec = decoder();
  let text = '';
  const r = engine.generate(prompt, maxTokens, temperature, (b) => {
    const s = dec.decode(b, { stream: true });
    if (s) text += s, self.postMessage({ type: 'token', id, text: s });
    return true;
  });
  r.text = text + dec.decode();
  return r;
}

const handlers = {
  init: (id, m) => init(m),
  loadModel: (id, m) => loadModel(id, m),
  loadTextModel: (id, m) => loadTextModel(id, m),
  describe: (id, m) => describe(id, m),
  followUp: (id, m) => followUp(id, m),
  generate: (id, m) => generate(id, m),
  setLora: (id, m) => (engine.setLora(m.name, m.scale), engine.adapters()),
  adapters: () => engine.adapters(),
  bench: (id, m) => engine.bench(m.nPrompt, m.nGen),
  info: () => engine.info(),
  cacheInfo: () => cacheInfo(),
  clearCache: () => clearCache(),
};

const engineFree = new Set(['init', 'cacheInfo', 'clearCache']);  // requests that need no engine

// Requests run one at a time, in order.
let queue = Promise.resolve();
self.onmessage = (ev) => {
  const m = ev.data;
  queue = queue.then(async () => {
    try {
      const h = handlers[m.type];
      if (!h) throw new Error(`unknown request '${m.type}'`);
      if (!engineFree.has(m.type) && !engine) throw new Error('the engine is not initialised');
      const value = await h(m.id, m);
      self.postMessage({ type: 'result', id: m.id, value });
    } catch (err) {
      if (err && err.stack && err.name !== 'Error') console.warn('loupe worker:', err.stack);  // a JS/runtime fault, not a loupe message
      self.postMessage({ type: 'error', id: m.id, message: err && err.message ? err.message : String(err), modelLost: !!(err && err.modelLost) });
    }
  });
};
