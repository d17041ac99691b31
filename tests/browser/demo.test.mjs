#!/usr/bin/env node
// Browser test of the demo page (run by ctest as `browser_demo`).
//
// Debian's chromium, driven by npm playwright-core, loads demo/index.html from
// tools/serve.mjs (cross-origin isolated), waits for the model, describes a
// scene and checks that the streamed text equals the native CLI's greedy output
// (`loupe describe`, same files, image and prompt) — with the pthreads build
// (2 threads) and the single-threaded build, from URLs (fetch streaming) and
// from File objects ("load your own model"); checks the "too big for the
// browser" message; toggles the Lithuanian adapter when the engine can apply
// adapters; saves screenshots under --work.
//
// --model demo (ctest browser_demo, the default): the demo model named by
// demo/models.json (its default entry: text GGUF, mmproj, the Lithuanian adapter
// with its .replace.gguf, and the scenes in demo/scenes/captions.json); skipped
// (exit 77) with a message while none of those files is in demo/ yet, failed when
// only some are. Every bundled scene is described with the adapter off and on and
// compared with `loupe describe` / `loupe describe --lora`.
// --model fixture (ctest browser_fixture): a tiny random ShareGPT4V checkpoint
// (reference/vlm_fixture.py) converted by loupe-convert to Q4_0 and F16, and a
// random LLaVA LoRA run (reference/lora_ref.py): the engine's exactness without
// the demo files.
//
// usage: node tests/browser/demo.test.mjs [--model demo|fixture] --build BUILD_DIR --dist WASM_DIST --work SCRATCH_DIR
// LOUPE_DEMO_DIR=DIR: another folder laid out like demo/ (to try files before they are committed).
// Exit 0 pass, 1 fail, 77 skipped (no chromium / playwright-core / wasm build / demo files).
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

import { browserTools, chromiumPath, root, skip } from './browser.mjs';

const args = Object.fromEntries(process.argv.slice(2).reduce((acc, a, i, all) => {
  if (a.startsWith('--')) acc.push([a.slice(2), all[i + 1]]);
  return acc;
}, []));
const build = path.resolve(args.build || path.join(root, 'build'));
const dist = path.resolve(args.dist || path.join(build, 'wasm/dist'));
const work = path.resolve(args.work || path.join(build, 'browser-test'));
const cli = path.join(build, 'bin/loupe');
const convert = path.join(build, 'bin/loupe-convert');
const python = '/usr/bin/python3';
// The demo folder the page and its manifest come from (another one only to try the test itself).
const demoDir = path.resolve(process.env.LOUPE_DEMO_DIR || path.join(root, 'demo'));

const { chromium, serve } = await browserTools(dist);

let failures = 0, tagNow = '';
const check = (ok, what, detail = '') => {
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${tagNow ? `${tagNow}: ` : ''}${what}${detail ? `\n     ${detail}` : ''}`);
  if (!ok) failures++;
};
const run = (cmd, argv, opts = {}) => {
  const r = spawnSync(cmd, argv, { encoding: 'utf8', maxBuffer: 64 << 20, ...opts });
  if (r.status !== 0) throw new Error(`${cmd} ${argv.join(' ')} failed (${r.status}):\n${r.stderr}`);
  return r;
};

fs.mkdirSync(work, { recursive: true });
for (const f of fs.readdirSync(work)) if (f !== 'ux') fs.rmSync(path.join(work, f), { recursive: true, force: true });  // ux/: browser_ux's

// ------------------------------------------------------------- the model
// models: {dir (served as /models/), manifest entry, files for the native CLI}
function demoModel() {
  const m = JSON.parse(fs.readFileSync(path.join(demoDir, 'models.json'), 'utf8'));
  const e = m.models.find((x) => x.id === m.default);
  if (!e) throw new Error(`${demoDir}/models.json: no model with the default id '${m.default}'`);
  const have = (f) => f && fs.existsSync(path.join(demoDir, f));
  const adapter = (e.adapters || [])[0];
  const wanted = [e.model, e.mmproj, ...(adapter ? [adapter.file] : []), m.scenes].filter(Boolean);
  const missing = wanted.filter((f) => !have(f));
  if (missing.length === wanted.length)
    skip(`the demo model is not in ${demoDir} yet (${wanted.join(', ')} named by models.json are missing)`);
  if (missing.length) {
    console.log(`FAIL demo files incomplete: ${missing.join(', ')} missing from ${demoDir} (named by models.json)`);
    process.exit(1);
  }
  const capFile = path.join(demoDir, m.scenes);
  const cap = JSON.parse(fs.readFileSync(capFile, 'utf8'));
  const list = Array.isArray(cap) ? cap : Array.isArray(cap.scenes) ? cap.scenes
    : Object.entries(cap).map(([file, c]) => ({ file, ...(typeof c === 'object' ? c : { en: c }) }));
  const scenes = list.map((s) => ({ file: path.join(path.dirname(capFile), s.file || s.image || s.name), en: s.en || s.caption, lt: s.lt }))
    .filter((s) => /\.(png|jpe?g|gif|bmp)$/i.test(s.file) && fs.existsSync(s.file));
  if (!scenes.length) {
    console.log(`FAIL ${capFile} names no image that exists`);
    process.exit(1);
  }
  return {
    source: 'demo', manifest: '/models.json', id: e.id, prompt: e.prompt || 'Describe this image.', conv: e.conv || 'vicuna_v1',
    text: path.join(demoDir, e.model), mmproj: path.join(demoDir, e.mmproj), scene: scenes[0].file, scenes,
    adapter: adapter ? { name: adapter.name, file: path.join(demoDir, adapter.file), scale: adapter.scale ?? 1 } : null,
  };
}

function fixtureModel() {
  const dir = path.join(work, 'fixture');
  const ckpt = path.join(work, 'ckpt');
  run(python, [path.join(root, 'reference/vlm_fixture.py'), '--layout', 'sharegpt4v', '--out', ckpt, '--seed', '11'], { cwd: root });
  for (const t of ['q4_0', 'f16'])
    run(convert, ['--model', path.join(ckpt, 'llm'), '--vision-tower', path.join(ckpt, 'vit'), '--outtype', t, '-o', dir, '--name', `fixture-${t}`, '-q']);
  // A scene like the demo's (a shape on a plain background), drawn with PIL.
  fs.mkdirSync(path.join(dir, 'scenes'), { recursive: true });
  run(python, ['-c', `
from PIL import Image, ImageDraw
im = Image.new("RGB", (336, 336), (255, 255, 255))
d = ImageDraw.Draw(im)
d.ellipse((40, 120, 140, 220), fill=(220, 30, 30))
d.rectangle((200, 230, 260, 290), fill=(30, 60, 220))
im.save("${path.join(dir, 'scenes/scene-0.png')}")
`]);
  fs.writeFileSync(path.join(dir, 'scenes/captions.json'), JSON.stringify({ 'scene-0.png': { en: 'A red circle and a blue square.' } }));
  // A random LLaVA LoRA run (LoRA on every linear + a trained projector in non_lora_trainables.bin),
  // written by the LoRA tests' reference and converted to a LoRA GGUF (+ its .replace.gguf).
  const adapters = [];
  try {
    run(python, [path.join(root, 'reference/lora_ref.py'), 'make', '--base', path.join(ckpt, 'llm'), '--out', path.join(work, 'lora'),
                 '--layout', 'llava', '--r', '4', '--alpha', '8', '--magnitude', '2', '--seed', '5'], { cwd: root });
    run(convert, ['--lora', path.join(work, 'lora'), '--base-config', path.join(ckpt, 'llm'), '-o', dir, '--name', 'fixture-lt', '-q']);
    adapters.push({ name: 'lt', label: 'Lithuanian (fixture)', file: 'fixture-lt.gguf', scale: 1 });
  } catch (err) {
    console.log(`note: no fixture adapter (${err.message.split('\n')[0]})`);
  }
  fs.writeFileSync(path.join(dir, 'models.json'), JSON.stringify({
    default: 'fixture-q4_0',
    models: [{ id: 'fixture-q4_0', label: 'fixture Q4_0', model: 'fixture-q4_0.gguf', mmproj: 'mmproj-fixture-q4_0.gguf',
               adapters, conv: 'vicuna_v1', prompt: 'Describe this image.' }],
    scenes: 'scenes/captions.json',
    photos: [],
  }, null, 1));
  return {
    source: 'fixture', manifest: '/models/models.json', id: 'fixture-q4_0', prompt: 'Describe this image.', conv: 'vicuna_v1',
    text: path.join(dir, 'fixture-q4_0.gguf'), mmproj: path.join(dir, 'mmproj-fixture-q4_0.gguf'),
    textF16: path.join(dir, 'fixture-f16.gguf'), mmprojF16: path.join(dir, 'mmproj-fixture-f16.gguf'),
    scene: path.join(dir, 'scenes/scene-0.png'), caption: null, dir,
    adapter: adapters.length ? { name: 'lt', file: path.join(dir, adapters[0].file), scale: 1 } : null,
  };
}

const which = args.model || 'demo';
if (which !== 'demo' && which !== 'fixture') { console.log(`unknown --model ${which} (demo or fixture)`); process.exit(2); }
const models = [which === 'demo' ? demoModel() : fixtureModel()];
// Enough for a whole demo caption (Lithuanian takes byte-fallback tokens); the fixture's random text stops at the limit.
const maxTokens = which === 'demo' ? 96 : 48;

// ------------------------------------------------------------- native reference
function native(model, text, mmproj, image, prompt, extra = []) {
  const r = run(cli, ['describe', '-m', text, '--mmproj', mmproj, '--image', image, '-p', prompt, '-n', String(maxTokens),
                      '--temp', '0', '--conv', model.conv, '-t', '2', ...extra]);
  if (!r.stdout.endsWith('\n')) throw new Error(`loupe describe: unexpected output ${JSON.stringify(r.stdout)}`);
  return r.stdout.slice(0, -1);
}

// A sparse 5 GB "model" for the too-big message (nothing is downloaded: the size check comes first).
const hugeDir = path.join(work, 'huge');
fs.mkdirSync(hugeDir, { recursive: true });
fs.closeSync(fs.openSync(path.join(hugeDir, 'huge.gguf'), 'w'));
fs.truncateSync(path.join(hugeDir, 'huge.gguf'), 5e9);
const profile = fs.mkdtempSync(path.join(work, 'profile-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: chromiumPath,
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync'],
  viewport: { width: 1280, height: 900 },
});
const logs = [];

async function waitState(page, states, timeout = 120000) {
  await page.waitForFunction((s) => s.includes(document.body.dataset.state), states, { timeout });
  return page.evaluate(() => document.body.dataset.state);
}

// ------------------------------------------------------------- browser
async function suite(model) {
const tag = model.source;
tagNow = tag;
console.log(`== model: ${model.source} (${path.basename(model.text)} + ${path.basename(model.mmproj)}), scene ${path.basename(model.scene)}`);
const expected = native(model, model.text, model.mmproj, model.scene, model.prompt);
console.log(`native: ${JSON.stringify(expected)}`);
const mounts = model.source === 'fixture' ? { models: model.dir } : demoDir !== path.join(root, 'demo') ? { '': demoDir } : {};
mounts.huge = hugeDir;
const server = await serve({ port: 0, dist, mounts });

async function openPage(query) {
  const page = await context.newPage();
  page.on('console', (m) => logs.push(`[console.${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => logs.push(`[pageerror] ${e.message}`));
  await page.goto(`${server.url}?manifest=${encodeURIComponent(model.manifest)}&${query}`);
  return page;
}

// Pick the scene, type the prompt, press Describe; returns {state, text, streamed pieces, stats}.
async function describeScene(page, { lora = false } = {}) {
  const name = path.basename(model.scene);
  await page.click(`#scenes button[data-name="${name}"]`);
  await page.fill('#prompt', model.prompt);
  await page.fill('#max-tokens', String(maxTokens));
  await page.fill('#temperature', '0');
  if (await page.isChecked('#lora-toggle') !== lora) await page.click('#lora-toggle');
  // Count streamed updates of #output to be sure the text did stream.
  await page.evaluate(() => {
    window.__pieces = 0;
    new MutationObserver(() => window.__pieces++).observe(document.getElementById('output'), { childList: true, characterData: true, subtree: true });
  });
  await page.click('#describe');
  const state = await waitState(page, ['done', 'describe-error']);
  return page.evaluate((st) => ({
    state: st,
    text: document.getElementById('output').textContent,
    result: window.loupeDemo.lastResult && window.loupeDemo.lastResult.text,
    pieces: window.__pieces,
    stats: window.loupeDemo.lastResult && window.loupeDemo.lastResult.stats,
    error: document.getElementById('describe-error').textContent,
  }), state);
}

// Every bundled scene through the page's API, adapter off and on, against the native CLI;
// and how many outputs are the scene's reference captions (the demo model's quality, reported).
async function everyScene(page) {
  let same = 0, en = 0, lt = 0;
  const lines = [];
  for (const sc of model.scenes) {
    const url = '/' + path.relative(demoDir, sc.file).split(path.sep).map(encodeURIComponent).join('/');
    for (const on of [false, true]) {
      const want = native(model, model.text, model.mmproj, sc.file, model.prompt,
                          on ? ['--lora-scaled', model.adapter.file, String(model.adapter.scale)] : []);
      const got = await page.evaluate(async ({ url, prompt, maxTokens, conv, lora }) => {
        const r = await window.loupeDemo.loupe.describe(url, prompt, { maxTokens, temperature: 0, conv, lora });
        return r.text;
      }, { url, prompt: model.prompt, maxTokens, conv: model.conv, lora: on ? { [model.adapter.name]: model.adapter.scale } : null });
      if (got === want) same++;
      else lines.push(`${path.basename(sc.file)} ${on ? 'adapter on' : 'base'}:\n       browser: ${JSON.stringify(got)}\n       native:  ${JSON.stringify(want)}`);
      const ref = on ? sc.lt : sc.en;
      if (ref && got.trim() === ref.trim()) on ? lt++ : en++;
    }
  }
  const n = model.scenes.length;
  check(same === 2 * n, `every bundled scene (${n}), adapter off and on: browser == native in ${same} of ${2 * n}`, lines.join('\n     '));
  console.log(`     reference captions reproduced: English ${en}/${n} (adapter off), Lithuanian ${lt}/${n} (adapter on)`);
}

try {
  for (const threads of [2, 1]) {
    const page = await openPage(`threads=${threads}`);
    const st = await waitState(page, ['ready', 'error', 'no-model']);
    const err = await page.textContent('#model-error');
    check(st === 'ready', `[${threads}T] page loads the model`, st !== 'ready' ? `state ${st}: ${err}` : '');
    if (st !== 'ready') { await page.screenshot({ path: path.join(work, `${tag}-failed-${threads}T.png`) }); continue; }
    const runtime = await page.textContent('#runtime');
    check(threads === 1 ? /single thread/.test(runtime) : runtime.includes(`${threads} threads`) && runtime.includes('cross-origin isolated'),
          `[${threads}T] runtime: ${runtime}`);
    const r = await describeScene(page);
    check(r.state === 'done', `[${threads}T] describe finishes`, r.error);
    check(r.text === expected && r.result === expected, `[${threads}T] streamed text equals the native CLI's greedy output`,
          `browser: ${JSON.stringify(r.text)}\n     native:  ${JSON.stringify(expected)}`);
    check(r.pieces > 1, `[${threads}T] text streamed in ${r.pieces} updates`);
    if (r.stats) console.log(`     encode ${r.stats.encodeMs.toFixed(0)} ms, prefill ${r.stats.prefillTokS.toFixed(1)} tok/s (${r.stats.promptTokens}), decode ${r.stats.decodeTokS.toFixed(1)} tok/s (${r.stats.generated}), ${r.stats.threads} threads`);
    const timings = await page.textContent('#timings');
    check(/ms/.test(timings) && /tok\/s/.test(timings), `[${threads}T] timings shown`, timings.replace(/\s+/g, ' '));
    await page.screenshot({ path: path.join(work, `${tag}-${threads}T.png`), fullPage: true });

    if (threads === 2) {
      // Same image again: the features are reused, the answer is the same.
      const again = await describeScene(page);
      check(again.text === expected && again.stats && again.stats.imageCached, '[2T] second describe reuses the image features, same text');

      // Stop: a long request is cut short by the Stop button (SharedArrayBuffer flag, isolated pages).
      // (A trained model may reach its end-of-sequence before Stop can be pressed: then it is only reported.)
      await page.fill('#max-tokens', '3000');
      await page.click('#describe');
      await page.waitForFunction(() => (document.getElementById('output').textContent.length > 20 && !document.getElementById('stop').disabled) ||
                                       ['done', 'describe-error'].includes(document.body.dataset.state));
      const pressed = await page.evaluate(() => {
        if (document.body.dataset.state !== 'describing') return false;
        document.getElementById('stop').click();
        return true;
      });
      await waitState(page, ['done', 'describe-error']);
      const stopped = await page.evaluate(() => window.loupeDemo.lastResult.stats.generated);
      if (pressed || model.source === 'fixture') check(pressed && stopped > 0 && stopped < 3000, `Stop ends a running description (after ${stopped} of 3000 tokens)`);
      else console.log(`note: the description ended by itself after ${stopped} tokens before Stop could be pressed`);

      // Too big for wasm32: a clear message, and the loaded model still works.
      const msg = await page.evaluate(async (mm) => {
        try {
          await window.loupeDemo.loupe.loadModel({ model: '/huge/huge.gguf', mmproj: mm });
          return 'loaded?!';
        } catch (e) { return e.message; }
      }, model.manifest.replace(/models\.json$/, path.basename(model.mmproj)));
      check(/too big for the browser/.test(msg) && /4\.\d+ GB/.test(msg), 'a 5 GB model is refused with a clear message', msg);

      // The adapter switch.
      const canLora = await page.evaluate(() => window.loupeDemo.loupe.info && window.loupeDemo.loupe.info.loraSupported);
      if (model.adapter && canLora) {
        const lt = native(model, model.text, model.mmproj, model.scene, model.prompt, ['--lora-scaled', model.adapter.file, String(model.adapter.scale)]);
        const a = await describeScene(page, { lora: true });
        check(a.state === 'done' && a.text === lt, 'adapter on: streamed text equals `loupe describe --lora`',
              `browser: ${JSON.stringify(a.text)}\n     native:  ${JSON.stringify(lt)}`);
        check(a.text !== expected, 'adapter on: the output changed', `base: ${JSON.stringify(expected)}`);
        // The demo grammar's words (issue 7): shapes, sizes, colours, "... fone".
        const lithuanian = /(apskritim|kvadrat|trikamp|žvaigžd|didel|maž|fone\b|kairėje|dešinėje|viršuje|apačioje)/i;
        if (model.source === 'demo') check(lithuanian.test(a.text) && !lithuanian.test(expected), 'adapter on: the description is Lithuanian, off: it is not', a.text);
        await page.screenshot({ path: path.join(work, `${tag}-lora.png`), fullPage: true });
        const b = await describeScene(page, { lora: false });
        check(b.text === expected, 'adapter off again: back to the base output');
        if (model.scenes) await everyScene(page);
      } else {
        check(false, 'adapter switch tested', !model.adapter ? 'no adapter GGUF (demo/models.json or the fixture)' : 'the engine reports no LoRA support');
      }
    }

    if (threads === 1 && model.source === 'demo') {
      // "Load your own model": the demo's files picked from disk (File objects, File.stream()),
      // the adapter with its companion .replace.gguf (the trained projector).
      const lt = native(model, model.text, model.mmproj, model.scene, model.prompt, ['--lora-scaled', model.adapter.file, String(model.adapter.scale)]);
      await page.click('#own-model summary');
      await page.setInputFiles('#own-text', model.text);
      await page.setInputFiles('#own-mmproj', model.mmproj);
      const rep = model.adapter.file.replace(/\.gguf$/, '.replace.gguf');
      await page.setInputFiles('#own-adapter', fs.existsSync(rep) ? [model.adapter.file, rep] : [model.adapter.file]);
      await page.click('#own-load');
      const st2 = await waitState(page, ['ready', 'error']);
      check(st2 === 'ready', 'own model (files from disk, with the adapter) loads', await page.textContent('#model-error'));
      const r2 = await describeScene(page);
      check(r2.text === expected, 'own model: streamed text equals the native CLI\'s',
            `browser: ${JSON.stringify(r2.text)}\n     native:  ${JSON.stringify(expected)}`);
      const r3 = await describeScene(page, { lora: true });
      check(r3.text === lt, 'own model, adapter on: streamed text equals `loupe describe --lora`',
            `browser: ${JSON.stringify(r3.text)}\n     native:  ${JSON.stringify(lt)}`);
      await page.screenshot({ path: path.join(work, `${tag}-own-model.png`), fullPage: true });
    }

    if (threads === 1 && model.textF16) {
      // "Load your own model": File objects from the file inputs (File.stream()), F16 weights.
      const expF16 = native(model, model.textF16, model.mmprojF16, model.scene, model.prompt);
      await page.click('#own-model summary');
      await page.setInputFiles('#own-text', model.textF16);
      await page.setInputFiles('#own-mmproj', model.mmprojF16);
      await page.click('#own-load');
      const st2 = await waitState(page, ['ready', 'error']);
      check(st2 === 'ready', 'own model (F16, from File objects) loads', await page.textContent('#model-error'));
      const r2 = await describeScene(page);
      check(r2.text === expF16, 'own model: streamed text equals the native CLI\'s',
            `browser: ${JSON.stringify(r2.text)}\n     native:  ${JSON.stringify(expF16)}`);
      await page.screenshot({ path: path.join(work, `${tag}-own-model.png`), fullPage: true });
    }
    await page.close();
  }

  // Without COOP/COEP the page is not cross-origin isolated: no SharedArrayBuffer, so the
  // worker falls back to the single-threaded build, with the same output.
  const plain = await serve({ port: 0, dist, mounts, isolate: false });
  try {
    const page = await context.newPage();
    page.on('pageerror', (e) => logs.push(`[pageerror] ${e.message}`));
    await page.goto(`${plain.url}?manifest=${encodeURIComponent(model.manifest)}&threads=2`);
    const st = await waitState(page, ['ready', 'error', 'no-model']);
    const runtime = await page.textContent('#runtime');
    check(st === 'ready' && /single thread/.test(runtime) && /not cross-origin isolated/.test(runtime),
          'not isolated: falls back to the single-threaded build', runtime);
    const r = await describeScene(page);
    check(r.text === expected, 'not isolated: streamed text equals the native CLI\'s', JSON.stringify(r.text));
    await page.close();
  } finally {
    await plain.close();
  }
} catch (err) {
  check(false, 'browser test ran', err.stack || String(err));
} finally {
  await server.close();
}
}

try {
  for (const m of models) await suite(m);
} finally {
  await context.close();
  fs.rmSync(profile, { recursive: true, force: true });
  fs.writeFileSync(path.join(work, 'console.log'), logs.join('\n') + '\n');
}
if (failures) {
  console.log(`browser console (${path.join(work, 'console.log')}):\n${logs.slice(-40).join('\n')}`);
  console.log(`${failures} check(s) failed; screenshots in ${work}`);
  process.exit(1);
}
console.log(`all checks passed; screenshots in ${work}`);
