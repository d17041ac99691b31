// One browser benchmark run (bench/browser/run.mjs opens this page once per
// engine × model × threads): ?engine=loupe|wllama&model=URL&threads=N&pp=N&tg=N.
// Prefill pp tokens, decode tg tokens greedily with EOS ignored, after a short
// warm-up; sets window.benchResult = {prefillTokS, decodeTokS, ...} or {error}.
const q = new URLSearchParams(location.search);
const engine = q.get('engine'), model = new URL(q.get('model'), location.href).href;  // absolute: wllama fetches from a blob: worker
const threads = Number(q.get('threads') || 1), pp = Number(q.get('pp') || 64), tg = Number(q.get('tg') || 32);
const log = (s) => { document.getElementById('log').textContent += `\n${s}`; };

async function runLoupe() {
  const { Loupe } = await import('/web/loupe.js');
  const lp = new Loupe({ threads });
  const rt = await lp.ready;
  const t0 = performance.now();
  await lp.loadTextModel(model);
  const loadMs = performance.now() - t0;
  await lp.bench(8, 4);  // warm-up (memory growth, first-touch)
  const r = await lp.bench(pp, tg);
  lp.terminate();
  return { engine: 'loupe', build: rt.build, threads: rt.threads, loadMs, promptTokens: r.promptTokens, genTokens: r.genTokens,
           prefillTokS: r.prefillTokS, decodeTokS: r.decodeTokS };
}

async function runWllama() {
  const { Wllama } = await import('/wllama/index.js');
  const w = new Wllama({ default: '/wllama/wasm/wllama.wasm' }, { suppressNativeLog: !q.get('verbose') });
  const t0 = performance.now();
  await w.loadModelFromUrl(model, { n_threads: threads, n_ctx: pp + tg + 64, n_batch: 512, n_ubatch: 512, n_gpu_layers: 0,
                                    useCache: false, cache_type_k: 'f16', cache_type_v: 'f16' });
  const loadMs = performance.now() - t0;
  const greedy = { temperature: 0, temp: 0, top_k: 1, ignore_eos: true, cache_prompt: false };
  await w.createCompletion({ prompt: 'Once upon a time', max_tokens: 4, ...greedy });  // warm-up
  // "hello" × (pp − 1) tokenises to exactly pp − 1 tokens (▁hello) after BOS.
  const prompt = Array(pp - 1).fill('hello').join(' ');
  const r = await w.createCompletion({ prompt, max_tokens: tg, ...greedy });
  const t = r.timings || {};
  const out = { engine: 'wllama', threads: w.getNumThreads(), multithread: w.isMultithread(), loadMs,
                promptTokens: t.prompt_n, genTokens: t.predicted_n, prefillTokS: t.prompt_per_second, decodeTokS: t.predicted_per_second,
                cached: t.cache_n };
  await w.exit();
  return out;
}

// wllama 2.x (the last wasm32 line: separate single- and multi-thread builds), through its
// low-level API: decode() the prompt, then sample/accept/decode one token at a time (greedy).
// Timed in JS around the worker calls (their messaging costs well under a millisecond a call).
async function runWllama2() {
  const { Wllama } = await import('/wllama2/index.js');
  const w = new Wllama({ 'single-thread/wllama.wasm': '/wllama2/single-thread/wllama.wasm',
                         'multi-thread/wllama.wasm': '/wllama2/multi-thread/wllama.wasm' },
                       { suppressNativeLog: !q.get('verbose') });
  const t0 = performance.now();
  await w.loadModelFromUrl(model, { n_threads: threads, n_ctx: pp + tg + 64, n_batch: 512, useCache: false });
  const loadMs = performance.now() - t0;
  await w.samplingInit({ temp: 0 });
  const ids = [1];
  for (let i = 1; i < pp; ++i) ids.push(3 + ((i * 7919) % 31990));
  await w.decode(ids.slice(0, 8), {});  // warm-up
  await w.kvClear();
  let t = performance.now();
  await w.decode(ids, {});
  const prefillMs = performance.now() - t;
  t = performance.now();
  for (let i = 0; i < tg; ++i) {
    const { token } = await w.samplingSample();
    await w.samplingAccept([token]);
    await w.decode([token], {});
  }
  const decodeMs = performance.now() - t;
  const out = { engine: 'wllama2', threads: w.getNumThreads ? w.getNumThreads() : threads, multithread: w.isMultithread ? w.isMultithread() : null,
                loadMs, promptTokens: pp, genTokens: tg, prefillTokS: 1000 * pp / prefillMs, decodeTokS: 1000 * tg / decodeMs };
  await w.exit();
  return out;
}

({ wllama: runWllama, wllama2: runWllama2 }[engine] || runLoupe)().then((r) => {
  window.benchResult = r;
  log(JSON.stringify(r));
}, (err) => {
  window.benchResult = { error: String(err && err.stack || err) };
  log(`error: ${err && err.stack || err}`);
});
