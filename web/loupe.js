// loupe in the browser: a small ES-module API over a Web Worker that runs the
// WebAssembly engine (the same C++ headers as the native CLI).
//
//   import { Loupe } from './loupe.js';
//   const lp = await Loupe.create();                       // threads when crossOriginIsolated
//   await lp.loadModel({ model: 'shapes-q4_0.gguf', mmproj: 'mmproj-shapes-q4_0.gguf',
//                        adapters: { lt: 'shapes-lt-lora.gguf' } },
//                      { onProgress: (p) => console.log(p.loaded / p.total) });
//   const r = await lp.describe(fileOrUrl, 'Describe this image.',
//                               { maxTokens: 128, temperature: 0, lora: 'lt' },
//                               (piece) => out.textContent += piece);
//   r.stats → { encodeMs, prefillTokS, decodeTokS, ... }
//
// The module-level loadModel / describe / setLora use one shared instance.
// Model sources: URL strings (streamed with fetch, progress from Content-Length)
// or File/Blob objects (File.stream()); either way the bytes go chunk by chunk
// into WebAssembly memory, never into one big ArrayBuffer.

const workerUrl = new URL('./loupe-worker.js', import.meta.url);

// Threads to use: 1 unless the page is cross-origin isolated (SharedArrayBuffer).
export function defaultThreads() {
  if (!globalThis.crossOriginIsolated) return 1;
  const n = navigator.hardwareConcurrency || 2;
  return Math.max(1, Math.min(n, 8));
}

function toSource(x, name) {
  if (x == null) return null;
  if (typeof x === 'string' || x instanceof URL) return { url: String(x), name };
  if (typeof Blob !== 'undefined' && x instanceof Blob) return { file: x, name: name || x.name };
  if (x instanceof ArrayBuffer || ArrayBuffer.isView(x))
    return { bytes: x instanceof ArrayBuffer ? x : new Uint8Array(x.buffer, x.byteOffset, x.byteLength), name: name || 'bytes' };
  if (x.url || x.file || x.bytes) return x;
  throw new TypeError('expected a URL, a File/Blob or bytes');
}

const baseName = (x) => (typeof x === 'string' ? x.split(/[?#]/)[0].split('/').pop() : (x && x.name) || '');

// {model, mmproj, adapters: {name: src}} or an array / FileList of sources,
// sorted by name: "*mmproj*" is the vision half, "*lora*"/"*adapter*" adapters.
function normaliseFiles(files) {
  if (files && !Array.isArray(files) && !(typeof FileList !== 'undefined' && files instanceof FileList)) {
    // adapters: {name: src} or {name: [src, replaceSrc]} (replaceSrc: loupe's companion GGUF of replaced tensors)
    const adapters = Object.entries(files.adapters || {}).map(([name, src]) => (Array.isArray(src)
      ? { name, src: toSource(src[0]), replace: src[1] ? toSource(src[1]) : null } : { name, src: toSource(src) }));
    return { text: toSource(files.model || files.text), mmproj: toSource(files.mmproj), adapters };
  }
  const out = { text: null, mmproj: null, adapters: [] };
  const replaces = [];
  for (const f of Array.from(files || [])) {
    const n = baseName(f).toLowerCase();
    if (n.includes('mmproj')) out.mmproj = toSource(f);
    else if (n.endsWith('.replace.gguf')) replaces.push(f);
    else if (n.includes('lora') || n.includes('adapter')) out.adapters.push({ name: n.replace(/\.gguf$/, ''), src: toSource(f) });
    else out.text = toSource(f);
  }
  for (const r of replaces) {  // "x.replace.gguf" belongs to adapter "x"
    const a = out.adapters.find((x) => `${x.name}.replace.gguf` === baseName(r).toLowerCase()) || out.adapters[0];
    if (a) a.replace = toSource(r);
  }
  return out;
}

export class Loupe {
  // options: { threads }
  static async create(options = {}) {
    const lp = new Loupe(options);
    await lp.ready;
    return lp;
  }

  constructor({ threads = defaultThreads() } = {}) {
    this.worker = new Worker(workerUrl);  // classic worker: the engine loads with importScripts
    this.pending = new Map();
    this.nextId = 1;
    this.info = null;
    this.stopBuffer = typeof SharedArrayBuffer !== 'undefined' && globalThis.crossOriginIsolated ? new SharedArrayBuffer(4) : null;
    this.worker.onmessage = (ev) => this._onMessage(ev.data);
    this.worker.onerror = (ev) => {
      const err = new Error(`loupe worker failed: ${ev.message || 'could not start (is the web build served?)'}`);
      for (const p of this.pending.values()) p.reject(err);
      this.pending.clear();
    };
    this.ready = this._call('init', { threads, stop: this.stopBuffer }).then((r) => {
      this.runtime = r;  // {build: 'st'|'mt', threads, crossOriginIsolated, heapMaxBytes}
      return r;
    });
  }

  _call(type, msg = {}, hooks = {}) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, ...hooks });
      this.worker.postMessage({ type, id, ...msg });
    });
  }

  _onMessage(m) {
    const p = this.pending.get(m.id);
    if (!p) return;
    if (m.type === 'progress') p.onProgress && p.onProgress(m);
    else if (m.type === 'token') p.onToken && p.onToken(m.text);
    else {
      this.pending.delete(m.id);
      if (m.type === 'result') p.resolve(m.value);
      else p.reject(Object.assign(new Error(m.message), m.modelLost ? { modelLost: true } : {}));
    }
  }

  get threads() { return this.runtime ? this.runtime.threads : 0; }

  // files: {model, mmproj, adapters?: {name: src}} or [model, mmproj, adapter...] (URLs or Files).
  // onProgress({phase: 'download'|'parse', file, loaded, total}).
  async loadModel(files, { onProgress } = {}) {
    await this.ready;
    const f = normaliseFiles(files);
    this.info = await this._call('loadModel', f, { onProgress });
    return this.info;
  }

  // A text-only GGUF (benchmarks: no vision half).
  async loadTextModel(model, { onProgress } = {}) {
    await this.ready;
    this.info = await this._call('loadTextModel', { text: toSource(model) }, { onProgress });
    return this.info;
  }

  // image: URL, File/Blob or bytes of a JPEG/PNG/BMP/GIF file (decoded by loupe, as natively).
  // options: {maxTokens, temperature, seed, conv, lora, onProgress}; lora: adapter name, {name: scale},
  // or null for none (undefined keeps the current setLora state); onProgress({phase: 'image'|'encode'}).
  // onToken(text) is called for each streamed piece. Resolves to {text, tokens, stats, stopped}.
  // stop() from the moment describe() is called ends it, also before the first token.
  async describe(image, prompt, { maxTokens = 256, temperature = 0, seed = 42, conv = '', lora, onProgress } = {}, onToken) {
    if (this.stopBuffer) Atomics.store(new Int32Array(this.stopBuffer), 0, 0);  // a new request: not stopped (yet)
    await this.ready;
    return this._call('describe', { image: toSource(image, baseName(image) || 'image'), prompt, maxTokens, temperature, seed, conv, lora },
                      { onToken, onProgress });
  }

  // A follow-up question about the image of the last describe(), in the same conversation
  // (what was said stays in the KV cache; only the new turn is read). Same result as describe().
  async followUp(prompt, { maxTokens = 256, temperature = 0, seed = 42 } = {}, onToken) {
    if (this.stopBuffer) Atomics.store(new Int32Array(this.stopBuffer), 0, 0);
    await this.ready;
    return this._call('followUp', { prompt, maxTokens, temperature, seed }, { onToken });
  }

  // Scale an adapter (0 = off). Resolves to [{name, scale}].
  async setLora(name, scale = 1) {
    await this.ready;
    return this._call('setLora', { name, scale });
  }

  async adapters() { await this.ready; return this._call('adapters'); }
  // The model cache (model files loaded by URL, kept in the browser's OPFS):
  // {files, bytes, entries: [{url, size}]}; clearCache() empties it.
  async cacheInfo() { await this.ready; return this._call('cacheInfo'); }
  async clearCache() { await this.ready; return this._call('clearCache'); }
  async generate(prompt, { maxTokens = 64, temperature = 0 } = {}, onToken) {
    await this.ready;
    return this._call('generate', { prompt, maxTokens, temperature }, { onToken });
  }
  async bench(nPrompt, nGen) { await this.ready; return this._call('bench', { nPrompt, nGen }); }

  // Ask a running describe() to stop after the current token (cross-origin isolated pages only).
  stop() {
    if (!this.stopBuffer) return false;
    Atomics.store(new Int32Array(this.stopBuffer), 0, 1);
    return true;
  }
  get canStop() { return !!this.stopBuffer; }

  terminate() {
    this.worker.terminate();
    for (const p of this.pending.values()) p.reject(new Error('loupe: terminated'));
    this.pending.clear();
  }
}

// ------------------------------------------------- one shared instance
let shared = null;
function instance() {
  if (!shared) shared = new Loupe();
  return shared;
}
export function loadModel(files, options) { return instance().loadModel(files, options); }
export function describe(image, prompt, options, onToken) { return instance().describe(image, prompt, options, onToken); }
export function setLora(name, scale) { return instance().setLora(name, scale); }
export function stop() { return instance().stop(); }
export default Loupe;
