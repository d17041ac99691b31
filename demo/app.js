// The demo page: loads the default model from models.json, lets the user pick
// an image and a prompt, streams the description, switches the Lithuanian adapter.
// URL parameters: ?manifest=URL (another models.json), ?model=ID, ?threads=N, ?autoload=0.
import { Loupe, defaultThreads } from './web/loupe.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const manifestUrl = new URL(params.get('manifest') || 'models.json', location.href);

const state = {
  loupe: null,
  manifest: null,
  model: null,        // manifest entry (or {id: 'own'})
  adapters: [],       // loaded adapter names
  image: null,        // {src: URL string | File, name, caption?}
  running: false,
  loading: false,
  lastResult: null,
  runImage: null,     // the image the running (or last) description is about
};
window.loupeDemo = state;  // for tests and the console

const setState = (s) => { document.body.dataset.state = s; };
// Screen readers hear milestones, not every progress tick or token.
const announce = (text) => { $('announce').textContent = text; };
// Library messages that mean nothing in a browser, said plainly.
const friendly = (msg) => String(msg).replace(/more than the limit of (\d+) \(PIL's decompression-bomb limit;[^)]*\)/,
  (_, n) => `more than ${Number(n).toLocaleString('en')} pixels, the most loupe reads (a guard against images made to exhaust memory)`);
// What loupe's decoder reads; anything else is refused before it is shown.
const imageTypes = /\.(png|jpe?g|gif|bmp)$/i;
const imageMime = /^image\/(png|jpeg|gif|bmp|x-ms-bmp)$/;
const showError = (el, msg) => { $(el).textContent = msg || ''; $(el).hidden = !msg; };
const fmtBytes = (n) => (n >= 1e9 ? `${(n / 1e9).toFixed(2)} GB` : `${(n / 1e6).toFixed(1)} MB`);

async function exists(url) {
  try {
    const r = await fetch(url, { method: 'HEAD' });
    return r.ok;
  } catch {
    return true;  // no network: the worker's model cache (or the service worker) may still have it
  }
}

// ------------------------------------------------------------------ model
function onProgress(p) {
  const frac = p.total ? p.loaded / p.total : 0;
  $('progress').value = frac;
  $('progress-text').textContent = p.phase === 'parse' ? 'reading the model…'
    : `${p.file}: ${fmtBytes(p.loaded)} of ${fmtBytes(p.total)} (${(100 * frac).toFixed(0)} %)`;
}

async function load(files, entry) {
  if (state.loading) return null;
  state.loading = true;
  showError('model-error', '');
  setState('loading');
  announce(`loading ${entry.label || entry.id}`);
  for (const id of ['model-load', 'own-load']) $(id).disabled = true;
  $('describe').disabled = true;
  $('lora-toggle').disabled = true;
  $('progress').value = 0;
  try {
    const info = await state.loupe.loadModel(files, { onProgress });
    state.model = entry;
    state.adapters = info.adapters || [];
    $('progress').value = 1;
    const fromCache = info.files.every((f) => f.cached);
    $('progress-text').textContent = `${fromCache ? 'loaded from this browser\'s cache' : 'loaded'} in ${(info.loadMs / 1000).toFixed(1)} s`;
    showCache();
    $('model-info').textContent =
      `${info.files.map((f) => f.name).join(' + ')} — ${fmtBytes(info.fileBytes)}; LLM ${info.layers} layers × ${info.dim}, ` +
      `${info.weightType}; vision ${info.imageSize}px, ${info.patches} patches; context ${info.context} (${info.kvType} KV cache); ` +
      `memory ${fmtBytes(info.heapBytes)} of ${fmtBytes(info.heapMaxBytes)}`;
    updateLoraSwitch(info);
    $('lora-toggle').checked = false;
    if (entry.prompt && !$('prompt').dataset.touched) $('prompt').value = entry.prompt;
    showAbout(entry);
    setState('ready');
    announce(`model loaded`);
    return info;
  } catch (err) {
    // The worker refuses a wrong file before it lets go of the loaded model; only a failure
    // after that (err.modelLost) leaves the page without one.
    if (err.modelLost) {
      state.model = null, state.adapters = [];
      $('model-info').textContent = 'No model loaded: the last load failed after the old model was unloaded.';
      showAbout(null);
    }
    $('progress-text').textContent = state.model ? `still loaded: ${state.model.label || state.model.id}` : '';
    showError('model-error', friendly(err.message));
    setState(state.model ? 'ready' : 'error');
    announce('the model did not load');
    throw err;
  } finally {
    state.loading = false;
    for (const id of ['model-load', 'own-load']) $(id).disabled = false;
    updateLoraSwitch(null);
    updateDescribe();
  }
}

// The model cache (OPFS, kept by the worker): what it holds, and a way to empty it.
async function showCache() {
  try {
    const c = await state.loupe.cacheInfo();
    $('cache-state').textContent = c.files ? `cached in this browser: ${c.files} file${c.files > 1 ? 's' : ''}, ${fmtBytes(c.bytes)}`
      : 'no model files cached in this browser';
    $('cache-clear').hidden = !c.files;
  } catch (err) {
    $('cache-state').textContent = `model cache unavailable (${err.message})`;
  }
}

// What the model is (and is not) for, from its manifest entry.
function showAbout(entry) {
  $('model-about').textContent = (entry && entry.about) || '';
  $('model-about').hidden = !(entry && entry.about);
  const note = entry && entry.photos_note;
  $('photos-note').textContent = note || '';
  $('photos-note').hidden = !note;
}

function updateLoraSwitch(info) {
  const has = state.adapters.length > 0 && !!state.model;
  if (!info) { $('lora-toggle').disabled = !has; return; }
  $('lora-toggle').disabled = !has;
  // The switch is named after the manifest's label for the adapter (own files: the adapter's file name).
  const e = has && state.model && (state.model.adapters || []).find((a) => a.name === state.adapters[0]);
  $('lora-label').textContent = !has ? 'adapter' : e && e.label ? `${e.label} adapter` : `adapter ${state.adapters[0]}`;
  $('lora-note').textContent = !has ? 'No adapter loaded with this model.' : (info.notes || []).join(' ');
}

async function loadEntry(entry) {
  const base = manifestUrl;
  const url = (f) => new URL(f, base).href;
  const files = { model: url(entry.model), mmproj: url(entry.mmproj), adapters: {} };
  for (const a of entry.adapters || [])
    if (a.available) files.adapters[a.name] = a.replace ? [url(a.file), url(a.replace)] : url(a.file);
  return load(files, entry);
}

async function setupModels() {
  const r = await fetch(manifestUrl);
  if (!r.ok) throw new Error(`${manifestUrl}: HTTP ${r.status}`);
  const m = await r.json();
  state.manifest = m;
  const sel = $('model-select');
  sel.textContent = '';
  for (const e of m.models || []) {
    const [a, b] = await Promise.all([exists(new URL(e.model, manifestUrl)), exists(new URL(e.mmproj, manifestUrl))]);
    e.available = a && b;
    for (const ad of e.adapters || []) ad.available = await exists(new URL(ad.file, manifestUrl));
    const o = document.createElement('option');
    o.value = e.id;
    o.textContent = e.label + (e.available ? '' : ' (files not present)');
    o.disabled = !e.available;
    sel.appendChild(o);
  }
  const want = params.get('model') || m.default;
  const entry = (m.models || []).find((e) => e.id === want && e.available) || (m.models || []).find((e) => e.available);
  if (entry) sel.value = entry.id;
  return entry;
}

// ------------------------------------------------------------------ images
function selectImage(src, name, caption) {
  showError('image-error', '');
  if (typeof src !== 'string' && !(imageMime.test(src.type) || (!src.type && imageTypes.test(name)))) {
    showError('image-error', `${name}: ${src.type || 'this file type'} is not an image loupe reads; use PNG, JPEG, GIF or BMP.`);
    return;
  }
  state.image = { src, name, caption };
  $('follow-up-form').hidden = true;  // follow-ups are about the image of the answer
  if (state.running) {  // the answer on screen is about the previous image: stop it (where Stop works) and say so
    state.loupe.stop();
    $('status').textContent = `the image changed: this answer is about ${state.runImage}`;
  }
  const img = $('preview');
  img.src = typeof src === 'string' ? src : URL.createObjectURL(src);
  img.hidden = false;
  $('drop-hint').hidden = true;
  $('image-name').textContent = name;
  announce(`image ${name} selected`);
  const text = !caption ? '' : typeof caption === 'string' ? caption
    : [caption.en, caption.lt].filter(Boolean).join(' / ') || caption.caption || '';
  $('expected').textContent = text ? `reference caption: ${text}` : '';
  document.querySelectorAll('.thumbs button').forEach((b) => b.classList.toggle('selected', b.dataset.name === name));
  updateDescribe();
}

function thumb(container, url, name, label, caption) {
  const b = document.createElement('button');
  b.type = 'button';
  b.dataset.name = name;
  b.title = label;
  const img = document.createElement('img');
  img.src = url;
  img.alt = label;
  img.loading = 'lazy';
  b.appendChild(img);
  b.onclick = () => selectImage(url, name, caption);
  container.appendChild(b);
}

// captions.json: {"file.png": "caption" | {en, lt}} or [{file|image, caption|en, lt}].
function parseCaptions(j) {
  const out = [];
  const list = Array.isArray(j) ? j : j.scenes && Array.isArray(j.scenes) ? j.scenes : null;
  if (list) {
    for (const s of list) {
      const file = s.file || s.image || s.name;
      if (file) out.push({ file, caption: s.captions || (s.en || s.lt ? { en: s.en, lt: s.lt } : s.caption) });
    }
  } else {
    for (const [file, c] of Object.entries(j)) if (/\.(png|jpe?g|gif|bmp)$/i.test(file)) out.push({ file, caption: c });
  }
  return out;
}

async function setupImages() {
  const m = state.manifest;
  const scenes = $('scenes');
  try {
    if (m.scenes) {
      const u = new URL(m.scenes, manifestUrl);
      const r = await fetch(u);
      if (r.ok) {
        const list = parseCaptions(await r.json());
        if (list.length) scenes.textContent = '';
        for (const s of list) thumb(scenes, new URL(s.file, u).href, s.file.split('/').pop(), s.file, s.caption);
      }
    }
  } catch (err) {
    console.warn('scenes:', err);
  }
  const photos = $('photos');
  let any = false;
  for (const p of m.photos || []) {
    const u = new URL(p.url, manifestUrl).href;
    if (!(await exists(u))) continue;
    if (!any) photos.textContent = '', any = true;
    thumb(photos, u, u.split('/').pop(), p.label);
  }

  const drop = $('drop');
  const pick = () => $('image-file').click();
  $('image-file').onchange = (e) => {
    const f = e.target.files[0];
    e.target.value = '';  // the same file again fires onchange again
    if (f) selectImage(f, f.name);
  };
  $('choose-image').onclick = pick;
  drop.onclick = pick;
  drop.onkeydown = (e) => {
    if (e.key === 'Enter' || e.key === ' ') e.preventDefault(), pick();
  };
  // A file dropped anywhere on the page is taken as the image (never opened by the browser in place of the page).
  document.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  document.addEventListener('dragleave', (e) => { if (!e.relatedTarget) drop.classList.remove('over'); });
  document.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    const f = e.dataTransfer && e.dataTransfer.files[0];
    if (f) selectImage(f, f.name);
  });
}

// ------------------------------------------------------------------ describe
function updateDescribe() {
  $('describe').disabled = state.running || state.loading || !state.model || !state.image;
  $('stop').disabled = !state.running || !state.loupe.canStop;
  $('stop-note').hidden = !state.loupe || state.loupe.canStop;
  $('copy').disabled = state.running || !$('output').textContent;
}

async function run() {
  if (state.running) return;
  state.running = true;
  updateDescribe();
  showError('describe-error', '');
  setState('describing');
  $('follow-up-form').hidden = true;
  const out = $('output');
  out.textContent = '';
  out.setAttribute('aria-busy', 'true');
  for (const id of ['t-encode', 't-prefill', 't-decode']) $(id).textContent = '…';
  const lora = $('lora-toggle').checked && state.adapters.length ? { [state.adapters[0]]: loraScale() } : null;
  // The answer is labelled with its image and language (lang="lt" for the Lithuanian adapter).
  state.runImage = state.image.name;
  const language = lora ? (state.model.adapters || []).find((a) => a.name === state.adapters[0]) : null;
  out.lang = language && language.name === 'lt' ? 'lt' : 'en';
  $('output-label').textContent = `About ${state.image.name}${language ? ` · ${language.label || language.name}` : ''}:`;
  $('status').textContent = 'reading the image…';
  announce(`describing ${state.image.name}`);
  let first = true;
  try {
    const r = await state.loupe.describe(state.image.src, $('prompt').value, {
      maxTokens: Number($('max-tokens').value) || 128,
      temperature: Number($('temperature').value) || 0,
      conv: (state.model && state.model.conv) || '',
      lora,
      onProgress: (p) => {
        if (p.phase === 'encode') $('status').textContent = 'encoding the image…';
      },
    }, (piece) => {
      if (first && state.image.name === state.runImage) $('status').textContent = '';
      first = false;
      out.textContent += piece;
    });
    state.lastResult = r;
    const s = r.stats;
    if (r.stopped && !r.text) $('status').textContent = 'stopped before the first word';
    else if (r.stopped) $('status').textContent = 'stopped';
    else if (state.image.name === state.runImage) $('status').textContent = '';
    $('t-encode').textContent = (s.imageReadMs != null ? `read ${s.imageReadMs.toFixed(0)} ms · ` : '') + (s.encodeMs == null ? '–'
      : !s.imageCached ? `encode ${s.encodeMs.toFixed(0)} ms`
      : s.projectMs > 0 ? `CLIP cached; projector ${s.projectMs.toFixed(0)} ms (adapter switched)` : 'cached (same image)');
    showRates(s, 'positions');
    $('t-threads').textContent = s.threads == null ? '–' : `${s.threads}`;
    setState('done');
    announce(`answer: ${out.textContent}`);
    $('follow-up-form').hidden = !r.text || state.image.name !== state.runImage;  // the conversation goes on
  } catch (err) {
    $('status').textContent = '';
    showError('describe-error', friendly(err.message));
    setState('describe-error');
    announce('the description failed');
  } finally {
    state.running = false;
    out.setAttribute('aria-busy', 'false');
    updateDescribe();
    if (document.activeElement === $('describe') || document.activeElement === $('stop') || document.activeElement === document.body) out.focus();
  }
}

// Prefill and decode rates of a turn ('–' for a request stopped before them).
function showRates(s, positions) {
  $('t-prefill').textContent = s.prefillTokS == null ? '–' : `${s.prefillTokS.toFixed(1)} tok/s (${s.promptTokens} ${positions}, ${s.prefillMs.toFixed(0)} ms)`;
  $('t-decode').textContent = s.decodeTokS == null ? '–' : `${s.decodeTokS.toFixed(1)} tok/s (${s.generated} tokens, ${s.decodeMs.toFixed(0)} ms)`;
}

// A follow-up question about the same image: the next turn of the conversation,
// appended below the answers so far.
async function askFollowUp(e) {
  e.preventDefault();
  const q = $('follow-up').value.trim();
  if (!q || state.running) return;
  state.running = true;
  updateDescribe();
  $('ask').disabled = true;
  showError('describe-error', '');
  setState('describing');
  const out = $('output');
  out.setAttribute('aria-busy', 'true');
  out.textContent += `\n\n» ${q}\n`;
  announce(`asking: ${q}`);
  try {
    const r = await state.loupe.followUp(q, { maxTokens: Number($('max-tokens').value) || 128,
                                              temperature: Number($('temperature').value) || 0 },
                                         (piece) => { out.textContent += piece; });
    state.lastResult = r;
    const s = r.stats;
    $('t-encode').textContent = 'same image, same conversation';
    showRates(s, 'new positions');
    $('follow-up').value = '';
    setState('done');
    announce(`answer: ${r.text}`);
  } catch (err) {
    showError('describe-error', friendly(err.message));
    setState('describe-error');
  } finally {
    state.running = false;
    $('ask').disabled = false;
    out.setAttribute('aria-busy', 'false');
    updateDescribe();
    $('follow-up').focus();
  }
}

function loraScale() {
  const e = state.model && (state.model.adapters || []).find((a) => a.name === state.adapters[0]);
  return e && e.scale != null ? e.scale : 1.0;
}

// ------------------------------------------------------------------ start
async function main() {
  const threads = Number(params.get('threads')) || defaultThreads();
  state.loupe = new Loupe({ threads });
  const rt = await state.loupe.ready.catch((err) => {
    $('runtime').textContent = 'the engine did not start';
    throw new Error(`The WebAssembly engine did not start: ${err.message}`);
  });
  updateDescribe();
  $('runtime').textContent = `${rt.build === 'mt' ? `${rt.threads} threads` : 'single thread'}` +
    ` · ${rt.crossOriginIsolated ? 'cross-origin isolated' : 'not cross-origin isolated (no threads)'}` +
    ` · WebAssembly memory up to ${fmtBytes(rt.heapMaxBytes)}`;
  showCache();
  // The page itself works offline once visited (sw.js keeps its files; the models are in the model cache).
  if ('serviceWorker' in navigator && params.get('sw') !== '0') navigator.serviceWorker.register('sw.js').catch((err) => console.warn('service worker:', err));

  $('prompt').oninput = () => { $('prompt').dataset.touched = '1'; };
  $('describe').onclick = run;
  $('follow-up-form').onsubmit = askFollowUp;
  $('stop').onclick = () => state.loupe.stop();
  $('cache-clear').onclick = async () => {
    await state.loupe.clearCache();
    showCache();
  };
  $('copy').onclick = async () => {
    try {
      await navigator.clipboard.writeText($('output').textContent);
      $('status').textContent = 'copied';
    } catch (err) {
      $('status').textContent = `could not copy: ${err.message}`;
    }
  };
  $('model-load').onclick = () => {
    const e = state.manifest.models.find((x) => x.id === $('model-select').value);
    if (e) loadEntry(e).catch(() => {});
  };
  $('own-load').onclick = () => {
    const t = $('own-text').files[0], m = $('own-mmproj').files[0];
    if (!t || !m) return showError('model-error', 'Pick a text model GGUF and an mmproj GGUF.');
    // The adapter GGUF, and its companion "<name>.replace.gguf" when it has one (a LLaVA projector).
    const picked = Array.from($('own-adapter').files);
    const rep = picked.find((f) => /\.replace\.gguf$/i.test(f.name)), a = picked.find((f) => f !== rep);
    const files = { model: t, mmproj: m, adapters: a ? { [a.name.replace(/\.gguf$/i, '')]: rep ? [a, rep] : a } : {} };
    load(files, { id: 'own', label: t.name, adapters: [], conv: '' }).catch(() => {});
  };

  let entry = null;
  try {
    entry = await setupModels();
  } catch (err) {
    showError('model-error', `cannot read the model list: ${err.message}`);
  }
  if (state.manifest) await setupImages();
  if (entry && params.get('autoload') !== '0') await loadEntry(entry).catch(() => {});
  else if (!entry) {
    setState('no-model');
    $('progress-text').textContent = 'The demo model files are not here yet: load your own model below.';
  }
}

main().catch((err) => {
  showError('model-error', err.message);
  setState('error');
});
