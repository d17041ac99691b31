// The loupe vs llama.cpp benchmark (bench/run.sh runs this after building
// loupe_bench). One process per measurement; loupe and llama.cpp alternate
// within every round (the machine is shared and noisy: only medians of
// interleaved runs are worth comparing). Prints a markdown table of medians and
// ratios, and writes every raw measurement to $LOUPE_BENCH_CACHE/results-<date>.json.
//
// Environment (defaults):
//   LOUPE_BENCH_BIN      path of loupe_bench (required; run.sh sets it)
//   LOUPE_BENCH_CACHE    /work/bench-cache — synthetic models are made here once
//   LOUPE_BENCH_ROUNDS   3
//   LOUPE_BENCH_THREADS  1,2
//   LOUPE_BENCH_TYPES    q4_0,q8_0
//   LOUPE_BENCH_SKIP     comma list of parts to skip: llm,clip,ttft,load
//   LOUPE_BENCH_BASELINE an older build's loupe_bench: its runs join every round
//                        (engine "baseline"), and the table gains a "× baseline" column
//   LOUPE_BENCH_SUMMARY  a results-*.json file: measure nothing, print its table again
import { spawn, spawnSync } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

import { bin, cache, env, here, llama7b, log, loupe, median, root, run } from "./common.mjs";

const summaryFile = env.LOUPE_BENCH_SUMMARY;
const saved = summaryFile ? JSON.parse(readFileSync(summaryFile, "utf8")) : null;
const baselineBin = env.LOUPE_BENCH_BASELINE;
if (baselineBin && !existsSync(baselineBin)) throw new Error(`LOUPE_BENCH_BASELINE: ${baselineBin} does not exist`);
const loupeOf = (e) => (e === "baseline" ? (...args) => run(baselineBin, args.map(String)) : loupe);

const rounds = Number(env.LOUPE_BENCH_ROUNDS ?? 3);
const threadList = (env.LOUPE_BENCH_THREADS ?? "1,2").split(",").map(Number);
const types = (env.LOUPE_BENCH_TYPES ?? "q4_0,q8_0").split(",");
const skip = new Set((env.LOUPE_BENCH_SKIP ?? "").split(",").filter(Boolean));
const PROMPT = 128, GEN = 32, TTFT_TEXT = 32, IMAGE_POSITIONS = 576;

const llmPath = (t) => join(cache, `llama7b-${t}.gguf`);
const mmprojPath = join(cache, "mmproj-vit-l-336-f16.gguf");
const llamacpp = (...args) => run("node", [join(here, "llamacpp.mjs"), ...args.map(String)], { cwd: root });

// ---- synthetic models, made once
if (!saved) for (const t of types) llama7b(t);
if (!saved && !existsSync(mmprojPath)) {
  log(`making ${mmprojPath} (CLIP ViT-L/14-336 + mlp2x_gelu, random f16 weights)...`);
  run(bin, ["make-mmproj", mmprojPath], { stdio: ["ignore", "pipe", "inherit"] });
}

// ---- measurements
const results = saved ? saved.results : [];
const record = (part, extra, r) => {
  const row = { part, ...r, ...extra };  // extra last: loupe_bench names its engine "loupe", the baseline's too
  results.push(row);
  log(JSON.stringify(row));
};
// Another process busy on one core for the duration of fn (the "under load" runs).
function underLoad(fn) {
  const spinner = spawn("sh", ["-c", "while :; do :; done"], { stdio: "ignore" });
  try {
    return fn();
  } finally {
    spinner.kill("SIGKILL");
  }
}

const started = new Date();
const pressure = () => spawnSync("sh", ["-c", "head -1 /proc/pressure/cpu 2>/dev/null"], { encoding: "utf8" }).stdout.trim() || "?";
const pressureAtStart = pressure();
for (let round = 1; !saved && round <= rounds; ++round) {
  log(`--- round ${round}/${rounds}`);
  const engines = round % 2 ? ["loupe", "llama.cpp"] : ["llama.cpp", "loupe"];
  if (baselineBin) engines.splice(1, 0, "baseline");  // between the other two, so no engine is always first
  if (!skip.has("llm")) {
    for (const t of types)
      for (const th of threadList) {
        record("bandwidth", { round, threads: th }, loupe("bandwidth", "-t", th));
        for (const e of engines) {
          const r = e !== "llama.cpp" ? loupeOf(e)("llm", llmPath(t), "-t", th, "--prompt", PROMPT, "--gen", GEN)
                                  : llamacpp(llmPath(t), th, PROMPT, GEN);
          record("llm", { round, type: t, engine: e }, r);
        }
      }
  }
  if (!skip.has("load") && threadList.includes(2)) {
    // Decode with 1 and 2 threads while another process keeps one core busy.
    for (const e of engines)
      for (const th of [1, 2]) {
        const r = underLoad(() => e !== "llama.cpp" ? loupeOf(e)("llm", llmPath(types[0]), "-t", th, "--prompt", 16, "--gen", GEN)
                                                : llamacpp(llmPath(types[0]), th, 16, GEN));
        record("llm_under_load", { round, type: types[0], engine: e }, r);
      }
  }
  if (!skip.has("clip"))
    for (const th of threadList)
      for (const e of engines.filter((e) => e !== "llama.cpp")) record("clip", { round, engine: e }, loupeOf(e)("clip", mmprojPath, "-t", th));
  if (!skip.has("ttft")) {
    const th = Math.max(...threadList);
    for (const e of engines) {
      // llama.cpp (node-llama-cpp) has no CLIP: its figure is the LLM prefill of the same positions only.
      const r = e !== "llama.cpp" ? loupeOf(e)("ttft", llmPath(types[0]), mmprojPath, "-t", th, "--prompt", TTFT_TEXT)
                              : llamacpp(llmPath(types[0]), th, 1 + IMAGE_POSITIONS + TTFT_TEXT, 1);
      record("ttft", { round, type: types[0], engine: e }, r);
    }
  }
}

// ---- summary
const hasBaseline = results.some((r) => r.engine === "baseline");
const pick = (f, key) => {
  const v = results.filter(f).map((r) => r[key]).filter((x) => x !== undefined);
  return v.length ? median(v) : NaN;
};
const fmt = (x, d = 2) => (Number.isFinite(x) ? x.toFixed(d) : "–");
const ratio = (a, b) => (Number.isFinite(a) && Number.isFinite(b) && b > 0 ? `${(a / b).toFixed(2)}×` : "–");
const head = ["measurement", "threads", "loupe", "llama.cpp", "loupe / llama.cpp"];
if (hasBaseline) head.push("baseline", "× baseline");
const rows = [head, head.map((_, i) => (i ? "---:" : "---"))];
// One row; b: the baseline's figure, timeLike: smaller is better (the × column is then baseline / loupe).
const add = (label, th, l, c, cmp, b = NaN, timeLike = false) => {
  const row = [label, th, l, c, cmp];
  if (hasBaseline) row.push(Number.isFinite(b) ? fmt(b, timeLike ? 0 : 2) : "–", timeLike ? ratio(b, Number(l)) : ratio(Number(l), b));
  rows.push(row);
};
for (const t of types)
  for (const th of threadList) {
    const f = (e) => (r) => r.part === "llm" && r.type === t && r.threads === th && r.engine === e;
    const pl = pick(f("loupe"), "prefill_tok_s"), pc = pick(f("llama.cpp"), "prefill_tok_s"), pb = pick(f("baseline"), "prefill_tok_s");
    const dl = pick(f("loupe"), "decode_tok_s"), dc = pick(f("llama.cpp"), "decode_tok_s"), db = pick(f("baseline"), "decode_tok_s");
    add(`prefill tok/s, ${t.toUpperCase()}, ${PROMPT}-token prompt`, th, fmt(pl), fmt(pc), ratio(pl, pc), pb);
    add(`decode tok/s, ${t.toUpperCase()}, ${GEN} tokens`, th, fmt(dl), fmt(dc), ratio(dl, dc), db);
    const bw = pick((r) => r.part === "bandwidth" && r.threads === th, "read_gb_s");
    const bytes = pick(f("loupe"), "decode_bytes_per_token");
    const bound = (bw * 1e9) / bytes;
    add(`decode as % of the read-bandwidth bound (${fmt(bw, 1)} GB/s → ${fmt(bound, 2)} tok/s), ${t.toUpperCase()}`, th,
        `${fmt((100 * dl) / bound, 0)} %`, `${fmt((100 * dc) / bound, 0)} %`, "");
    add(`peak RSS MB, ${t.toUpperCase()} (llama.cpp: whole node process)`, th, fmt(pick(f("loupe"), "peak_rss_mb"), 0),
        fmt(pick(f("llama.cpp"), "peak_rss_mb"), 0), "");
  }
for (const th of [1, 2]) {
  const f = (e) => (r) => r.part === "llm_under_load" && r.threads === th && r.engine === e;
  const l = pick(f("loupe"), "decode_tok_s"), c = pick(f("llama.cpp"), "decode_tok_s");
  if (Number.isFinite(l) || Number.isFinite(c))
    add(`decode tok/s under load (one core busy), ${types[0].toUpperCase()}`, th, fmt(l), fmt(c), ratio(l, c), pick(f("baseline"), "decode_tok_s"));
}
for (const th of threadList) {
  const f = (e) => (r) => r.part === "clip" && r.threads === th && r.engine === e;
  const c = pick(f("loupe"), "clip_ms");
  if (Number.isFinite(c)) add("CLIP ViT-L/14-336 encode ms (llama.cpp: not in node-llama-cpp)", th, fmt(c, 0), "–", "", pick(f("baseline"), "clip_ms"), true);
}
{
  const th = Math.max(...threadList);
  const f = (e) => (r) => r.part === "ttft" && r.engine === e;
  const l = pick(f("loupe"), "ttft_ms"), lp = pick(f("loupe"), "prefill_ms"), c = pick(f("llama.cpp"), "prefill_ms");
  if (Number.isFinite(l)) {
    add(`TTFT ms, image + ${TTFT_TEXT}-token prompt (${1 + IMAGE_POSITIONS + TTFT_TEXT} positions), ${types[0].toUpperCase()}`, th, fmt(l, 0), "–", "",
        pick(f("baseline"), "ttft_ms"), true);
    add(`  of which LLM prefill ms (llama.cpp: same positions as tokens)`, th, fmt(lp, 0), fmt(c, 0), ratio(c, lp) + " faster",
        pick(f("baseline"), "prefill_ms"), true);
  }
}
const table = rows.map((r) => `| ${r.join(" | ")} |`).join("\n");
const cpu = spawnSync("sh", ["-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2; nproc"], { encoding: "utf8" }).stdout.trim().split("\n");
const minutes = ((Date.now() - started.getTime()) / 60000).toFixed(0);
const header = saved ? saved.header :
  `${started.toISOString()} — ${rounds} round(s) in ${minutes} min, medians; CPU:${cpu[0]}, ${cpu[1]} cores; kernels: ${results.find((r) => r.kernels)?.kernels ?? "?"}\n` +
  `CPU pressure (PSI, share of time some runnable task waited for a CPU) at the start: ${pressureAtStart}; at the end: ${pressure()}`;
console.log(header + "\n\n" + table);
if (!saved) {
  const out = join(cache, `results-${started.toISOString().replace(/[:.]/g, "-")}.json`);
  writeFileSync(out, JSON.stringify({ header, results }, null, 1));
  log(`raw results: ${out}`);
}
