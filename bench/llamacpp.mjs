// llama.cpp's half of bench/run.sh, through npm node-llama-cpp's prebuilt
// binaries (no build, CPU backend picked at run time):
//   node bench/llamacpp.mjs MODEL.gguf THREADS PROMPT_TOKENS GEN_TOKENS
// prints one JSON line: load time, prefill tok/s (prompt evaluation up to the
// first sampled token), decode tok/s (each later token: one evaluation and
// a greedy sample), peak RSS of this node process.
// The prompt is random token ids (BOS first), as loupe_bench uses: speed does
// not depend on which tokens they are.
process.env.NODE_LLAMA_CPP_SKIP_DOWNLOAD = "true";
const { getLlama } = await import("node-llama-cpp");

const [modelPath, threadsArg, promptArg, genArg] = process.argv.slice(2);
const threads = Number(threadsArg ?? 1), nPrompt = Number(promptArg ?? 128), nGen = Number(genArg ?? 32);

// splitmix64, as loupe_bench's random_tokens (not the same ids: it does not matter).
let state = 7n;
const next = () => {
  state = (state + 0x9e3779b97f4a7c15n) & 0xffffffffffffffffn;
  let z = state;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & 0xffffffffffffffffn;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & 0xffffffffffffffffn;
  return z ^ (z >> 31n);
};

const t0 = performance.now();
const llama = await getLlama({ gpu: false, build: "never", skipDownload: true, usePrebuiltBinaries: true, logLevel: "error" });
const model = await llama.loadModel({ modelPath, gpuLayers: 0 });
const context = await model.createContext({
  contextSize: Math.max(512, nPrompt + nGen + 16),
  batchSize: Math.max(512, nPrompt),
  threads: { ideal: threads, min: threads },
});
const loadMs = performance.now() - t0;
const vocab = 32000;  // LLaMA's
const ids = [1];
for (let i = 1; i < nPrompt; ++i) ids.push(3 + Number(next() % BigInt(vocab - 3)));

const seq = context.getSequence();
let first = 0, n = 0;
const start = performance.now();
for await (const _ of seq.evaluate(ids, { temperature: 0 })) {
  if (n === 0) first = performance.now();
  if (++n > nGen) break;  // the first token ends the prefill; nGen more are decode steps
}
const end = performance.now();
const out = {
  engine: "llama.cpp",
  threads,
  load_ms: +loadMs.toFixed(1),
  prefill_tokens: nPrompt,
  prefill_ms: +(first - start).toFixed(1),
  prefill_tok_s: +((1000 * nPrompt) / (first - start)).toFixed(3),
  decode_tokens: nGen,
  decode_tok_s: +((1000 * nGen) / (end - first)).toFixed(3),
  peak_rss_mb: Math.round(process.resourceUsage().maxRSS / 1024),
};
console.log(JSON.stringify(out));
await context.dispose();
await model.dispose();
