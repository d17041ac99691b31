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
  lastResult: null,
};
window.loupeDemo = state;  // for tests and the console

const setState = (s) => { document.body.dataset.state = s; };
const showError = (el, msg) => { $(el).textContent = msg || ''; $(el).hidden = !msg; };
const fmtBytes = (n) => (n >= 1e9 ? `${(n / 1e9).toFixed(2)} GB` : `${(n / 1e6).toFixed(1)} MB`);

async function exists(url) {
  try {
    const r = await fetch(url, { method: 'HEAD' });
    return r.ok;
  } catch {
    return false;
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
  showError('model-error', '');
  setState('loading');
  $('describe').disabled = true;
  $('lora-toggle').disabled = true;
  $('lora-toggle').checked = false;
  $('progress').value = 0;
  try {
    const info = await state.loupe.loadModel(files, { onProgress });
    state.model = entry;
    state.adapters = info.adapters || [];
    $('progress').value = 1;
    $('progress-text').textContent = `loaded in ${(info.loadMs / 1000).toFixed(1)} s`;
    $('model-info').textContent =
      `${info.files.map((f) => f.name).join(' + ')} — ${fmtBytes(info.fileBytes)}; LLM ${info.layers} layers × ${info.dim}, ` +
      `${info.weightType}; vision ${info.imageSize}px, ${info.patches} patches; context ${info.context} (${info.kvType} KV cache); ` +
      `memory ${fmtBytes(info.heapBytes)} of ${fmtBytes(info.heapMaxBytes)}`;
    updateLoraSwitch(info);
    if (entry.prompt && !$('prompt').dataset.touched) $('prompt').value = entry.prompt;
    setState('ready');
    updateDescribe();
    return info;
  } catch (err) {
    $('progress-text').textContent = '';
    showError('model-error', err.message);
    setState('error');
    throw err;
  }
}

function updateLoraSwitch(info) {
  const has = state.adapters.length > 0;
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
  state.image = { src, name, caption };
  const img = $('preview');
  img.src = typeof src === 'string' ? src : URL.createObjectURL(src);
  img.hidden = false;
  $('drop-hint').hidden = true;
  $('image-name').textContent = name;
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
  $('image-file').onchange = (e) => e.target.files[0] && selectImage(e.target.files[0], e.target.files[0].name);
  drop.ondragover = (e) => { e.preventDefault(); drop.classList.add('over'); };
  drop.ondragleave = () => drop.classList.remove('over');
  drop.ondrop = (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    const f = e.dataTransfer.files[0];
    if (f) selectImage(f, f.name);
  };
}

// ------------------------------------------------------------------ describe
function updateDescribe() {
  $('describe').disabled = state.running || !state.model || !state.image;
  $('stop').disabled = !state.running || !state.loupe.canStop;
}

async function run() {
  if (state.running) return;
  state.running = true;
  updateDescribe();
  showError('describe-error', '');
  setState('describing');
  const out = $('output');
  out.textContent = '';
  for (const id of ['t-encode', 't-prefill', 't-decode']) $(id).textContent = '…';
  const lora = $('lora-toggle').checked && state.adapters.length ? { [state.adapters[0]]: loraScale() } : null;
  try {
    const r = await state.loupe.describe(state.image.src, $('prompt').value, {
      maxTokens: Number($('max-tokens').value) || 128,
      temperature: Number($('temperature').value) || 0,
      conv: (state.model && state.model.conv) || '',
      lora,
    }, (piece) => { out.textContent += piece; });
    state.lastResult = r;
    const s = r.stats;
    $('t-encode').textContent = !s.imageCached ? `${s.encodeMs.toFixed(0)} ms`
      : s.projectMs > 0 ? `CLIP cached; projector ${s.projectMs.toFixed(0)} ms (adapter switched)` : 'cached (same image)';
    $('t-prefill').textContent = `${s.prefillTokS.toFixed(1)} tok/s (${s.promptTokens} positions, ${s.prefillMs.toFixed(0)} ms)`;
    $('t-decode').textContent = `${s.decodeTokS.toFixed(1)} tok/s (${s.generated} tokens, ${s.decodeMs.toFixed(0)} ms)`;
    $('t-threads').textContent = `${s.threads}`;
    setState('done');
  } catch (err) {
    showError('describe-error', err.message);
    setState('describe-error');
  } finally {
    state.running = false;
    updateDescribe();
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
  const rt = await state.loupe.ready;
  $('runtime').textContent = `${rt.build === 'mt' ? `${rt.threads} threads` : 'single thread'}` +
    ` · ${rt.crossOriginIsolated ? 'cross-origin isolated' : 'not cross-origin isolated (no threads)'}` +
    ` · WebAssembly memory up to ${fmtBytes(rt.heapMaxBytes)}`;

  $('prompt').oninput = () => { $('prompt').dataset.touched = '1'; };
  $('describe').onclick = run;
  $('stop').onclick = () => state.loupe.stop();
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
