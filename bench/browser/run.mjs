#!/usr/bin/env node
// Browser benchmark: prefill and decode tok/s of loupe's WebAssembly build and of
// npm @wllama/wllama (llama.cpp compiled to WASM) on the same GGUF files, in
// headless Debian chromium (cross-origin isolated, so both may use threads), with
// 1 and 2 threads; plus native loupe (build/bin/loupe_bench llm) on the same file.
//
// Models: the demo's text model (demo/shapes-q4_0.gguf, when present) and a
// synthetic TinyLlama-1.1B-shaped Q4_0 model (random weights, 0.6 GB) written by
// make-model.mjs into a cache outside the repository ($LOUPE_BENCH_CACHE or
// ~/.cache/loupe-bench). Timings are the engines' own (inside the WASM), after a
// warm-up; prompts are pp tokens, then tg greedy tokens with EOS ignored.
//
// usage: node bench/browser/run.mjs [--build build] [--dist build/wasm/dist] [--threads 1,2]
//        [--pp 64] [--tg 32] [--reps 1] [--models demo,1b] [--engines loupe,wllama,native] [--json out.json]
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { serve } from '../../tools/serve.mjs';
import { makeModel } from './make-model.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const argv = process.argv.slice(2);
const opt = (name, dflt) => { const i = argv.indexOf(`--${name}`); return i >= 0 ? argv[i + 1] : dflt; };
const build = path.resolve(opt('build', path.join(root, 'build')));
const dist = path.resolve(opt('dist', path.join(build, 'wasm/dist')));
const threadList = opt('threads', '1,2').split(',').map(Number);
const pp = Number(opt('pp', 64)), tg = Number(opt('tg', 32)), reps = Number(opt('reps', 1));
const engines = opt('engines', 'loupe,wllama,wllama2,native').split(',');
const which = opt('models', 'demo,1b').split(',');
const cache = process.env.LOUPE_BENCH_CACHE || path.join(os.homedir(), '.cache/loupe-bench');
const chromiumPath = process.env.LOUPE_CHROMIUM || '/usr/bin/chromium';

const models = [];
if (which.includes('demo')) {
  const f = path.join(root, 'demo/shapes-q4_0.gguf');
  if (fs.existsSync(f)) models.push({ name: 'demo shapes-q4_0', file: f });
  else console.error('note: demo/shapes-q4_0.gguf is not there yet; skipping the demo model');
}
if (which.includes('1b')) {
  fs.mkdirSync(cache, { recursive: true });
  const f = path.join(cache, 'synthetic-1b-q4_0.gguf');
  if (!fs.existsSync(f)) {
    console.error(`writing ${f} (once) …`);
    makeModel(f);
  }
  models.push({ name: 'synthetic 1.1B Q4_0', file: f });
}
if (!models.length) { console.error('no models'); process.exit(1); }

const { chromium } = await import('playwright-core');
const wllama2 = process.env.LOUPE_WLLAMA2 || path.join(root, 'node_modules/wllama-2/esm');
const mounts = { bench: path.join(root, 'bench/browser'), wllama: path.join(root, 'node_modules/@wllama/wllama/esm'),
                 wllama2 };
const modelUrl = (m, i) => {
  mounts[`m${i}`] = path.dirname(m.file);
  return `/m${i}/${path.basename(m.file)}`;
};
const urls = models.map(modelUrl);
const server = await serve({ port: 0, dist, mounts });
const browser = await chromium.launch({
  executablePath: chromiumPath, headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync'],
});

async function inBrowser(engine, url, threads) {
  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  const logs = [];
  page.on('console', (m) => logs.push(m.text()));
  await page.goto(`${server.url}bench/index.html?engine=${engine}&model=${encodeURIComponent(url)}&threads=${threads}&pp=${pp}&tg=${tg}`);
  await page.waitForFunction(() => window.benchResult, null, { timeout: 600000 });
  const r = await page.evaluate(() => window.benchResult);
  await ctx.close();
  if (r.error) throw new Error(`${engine} ${threads}T: ${r.error}\n${logs.slice(-10).join('\n')}`);
  return r;
}

function native(file, threads) {
  const bin = path.join(build, 'bin/loupe_bench');
  if (!fs.existsSync(bin)) return null;
  const r = spawnSync(bin, ['llm', file, '-t', String(threads), '--prompt', String(pp), '--gen', String(tg)], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`loupe_bench: ${r.stderr}`);
  const j = JSON.parse(r.stdout.trim().split('\n').pop());
  return { engine: 'native loupe', threads, prefillTokS: j.prefill_tok_s, decodeTokS: j.decode_tok_s, promptTokens: pp, genTokens: tg };
}

const best = (runs) => runs.reduce((a, b) => ({ ...a, prefillTokS: Math.max(a.prefillTokS, b.prefillTokS), decodeTokS: Math.max(a.decodeTokS, b.decodeTokS) }));
const results = [];
try {
  for (let i = 0; i < models.length; ++i) {
    for (const threads of threadList) {
      const row = { model: models[i].name, threads };
      for (const engine of engines) {
        const runs = [];
        for (let k = 0; k < reps; ++k) runs.push(engine === 'native' ? native(models[i].file, threads) : await inBrowser(engine, urls[i], threads));
        if (!runs[0]) continue;
        row[engine] = best(runs);
        console.error(`${models[i].name} ${threads}T ${engine}: prefill ${row[engine].prefillTokS.toFixed(1)} tok/s (${row[engine].promptTokens}), ` +
                      `decode ${row[engine].decodeTokS.toFixed(1)} tok/s (${row[engine].genTokens})`);
      }
      results.push(row);
    }
  }
} finally {
  await browser.close();
  await server.close();
}

// Markdown table.
const f = (x) => (x == null ? '–' : x >= 100 ? x.toFixed(0) : x.toFixed(1));
const ratio = (a, b) => (a && b ? `${(a / b).toFixed(2)}×` : '–');
const cpu = os.cpus()[0].model;
console.log(`\npp ${pp}, tg ${tg}; tok/s, best of ${reps}; ${spawnSync(chromiumPath, ['--version'], { encoding: 'utf8' }).stdout.trim()}; ${cpu}; ` +
            `load average at the end ${os.loadavg().map((x) => x.toFixed(1)).join(' ')}\n`);
console.log('| model | threads | | loupe WASM | wllama 3.8.1 | wllama 2.3.7 | loupe ÷ best wllama | native loupe | loupe WASM ÷ native |');
console.log('|---|---|---|---|---|---|---|---|---|');
for (const r of results) {
  for (const [k, label] of [['prefillTokS', 'prefill'], ['decodeTokS', 'decode']]) {
    const l = r.loupe?.[k], w3 = r.wllama?.[k], w2 = r.wllama2?.[k], n = r.native?.[k];
    const bw = Math.max(w3 || 0, w2 || 0) || null;
    console.log(`| ${r.model} | ${r.threads} | ${label} | ${f(l)} | ${f(w3)} | ${f(w2)} | ${ratio(l, bw)} | ${f(n)} | ${ratio(l, n)} |`);
  }
}
const out = opt('json', null);
if (out) fs.writeFileSync(out, JSON.stringify({ pp, tg, reps, cpu, results }, null, 1));
