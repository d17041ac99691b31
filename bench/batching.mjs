// Batched decoding: aggregate decode tokens/s of B sessions advanced together
// (one forward pass per step for all of them: Generator + Batch), for
// B = 1, 2, 4, 8, 16, on the LLaMA-7B-shaped Q4_0 model and on the demo model.
// bench/run.sh batching runs this after building loupe_bench. One process per
// measurement; the sizes are run in a different order every round and each
// round's ratio to its own B = 1 is taken, so the medians of the ratios hold
// even on a noisy machine.
//
// Environment (defaults):
//   LOUPE_BENCH_BIN      path of loupe_bench (required; run.sh sets it)
//   LOUPE_BENCH_CACHE    /work/bench-cache — the synthetic 7B model is made here once
//   LOUPE_BENCH_ROUNDS   3
//   LOUPE_BENCH_THREADS  2
//   LOUPE_BENCH_SIZES    1,2,4,8,16
//   LOUPE_BENCH_PROMPT   32 (tokens per sequence, read before the timed steps)
//   LOUPE_BENCH_GEN      16 (timed decode steps)
import { writeFileSync } from "node:fs";
import { join } from "node:path";

import { cache, env, llama7b, log, loupe, median, root } from "./common.mjs";

const rounds = Number(env.LOUPE_BENCH_ROUNDS ?? 3);
const threads = Number(env.LOUPE_BENCH_THREADS ?? 2);
const sizes = (env.LOUPE_BENCH_SIZES ?? "1,2,4,8,16").split(",").map(Number);
const prompt = Number(env.LOUPE_BENCH_PROMPT ?? 32), gen = Number(env.LOUPE_BENCH_GEN ?? 16);
const llama = llama7b("q4_0");
const models = [["LLaMA-7B shape, Q4_0", llama], ["demo model (4 × 128), Q4_0", join(root, "demo", "shapes-q4_0.gguf")]];

const rows = [];  // {model, batch, round, ...}
for (let round = 0; round < rounds; ++round) {
  for (const [name, path] of models) {
    const order = round % 2 ? [...sizes].reverse() : [...sizes];
    for (const b of order) {
      const r = loupe("batch", path, "-t", threads, "--n", b, "--prompt", prompt, "--gen", gen);
      rows.push({ model: name, round, ...r });
      log(`round ${round + 1}/${rounds} ${name} B=${b}: ${r.aggregate_tok_s.toFixed(1)} tok/s (${r.step_ms.toFixed(1)} ms a step)`);
    }
  }
}

const date = new Date().toISOString().slice(0, 10);
const out = [];
out.push(`Batched decoding, ${date}: ${threads} threads, ${rounds} rounds, ${prompt}-token prompts, ${gen} timed decode steps, medians`);
out.push("");
out.push("| model | B | aggregate tok/s | per sequence tok/s | ms per step | × B = 1 (median of per-round ratios) | peak RSS MB |");
out.push("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
for (const [name] of models) {
  for (const b of sizes) {
    const mine = rows.filter((r) => r.model === name && r.batch === b);
    const ratios = mine.map((r) => r.aggregate_tok_s / rows.find((o) => o.model === name && o.round === r.round && o.batch === 1).aggregate_tok_s);
    out.push(`| ${name} | ${b} | ${median(mine.map((r) => r.aggregate_tok_s)).toFixed(1)} | ` +
             `${median(mine.map((r) => r.per_sequence_tok_s)).toFixed(2)} | ${median(mine.map((r) => r.step_ms)).toFixed(1)} | ` +
             `${median(ratios).toFixed(2)}× | ${median(mine.map((r) => r.peak_rss_mb)).toFixed(0)} |`);
  }
}
console.log(out.join("\n"));
writeFileSync(join(cache, `batching-${date}.json`), JSON.stringify(rows, null, 1));
log(`raw rows: ${join(cache, `batching-${date}.json`)}`);
