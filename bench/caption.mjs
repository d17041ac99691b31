// `loupe caption` throughput: images per hour at --batch 1 and 8, alternately for
// R rounds, medians; captions of at most 64 tokens (-n 64), 2 threads. The time is
// the command's own ("caption: N images in S s"), from the first image read to the
// last row written: model loading is not in it. bench/run.sh caption runs this.
//
// Two workloads:
//   - the demo model over its 8 bundled scenes and 56 generated ones (its captions
//     end at the end-of-sequence token, ~20 tokens: the table gives the mean);
//   - the LLaMA-7B-shaped Q4_0 model (random weights: speed does not depend on
//     them, and greedy decoding of them runs to the 64-token limit) with a CLIP
//     ViT-L/14-336 mmproj re-quantised to Q4_0, over 16 images (two batches of
//     8): per image an encode, a 625-position prefill and 64 decode steps.
//
// Environment (defaults): LOUPE_BENCH_ROUNDS 3 (the 7B workload: 2), LOUPE_BENCH_THREADS 2,
// LOUPE_CAPTION_BIN (build-bench/bin/loupe), LOUPE_BENCH_CACHE (/work/bench-cache).
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import { join } from "node:path";

import { cache, env, llama7b, log, median, root } from "./common.mjs";

const loupe = env.LOUPE_CAPTION_BIN ?? join(root, "build-bench/bin/loupe");
const rounds = Number(env.LOUPE_BENCH_ROUNDS ?? 3);
const threads = Number(env.LOUPE_BENCH_THREADS ?? 2);
const demo = join(root, "demo");
const work = join(cache, "caption-bench");
const PROMPT = "Describe this image.";

const sh = (cmd, args) => {
  const r = spawnSync(cmd, args, { encoding: "utf8", maxBuffer: 1 << 26 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")} failed (${r.status}):\n${r.stderr}`);
  return r;
};

// ---- the inputs and the models, made once
fs.rmSync(work, { recursive: true, force: true });
const scenes = join(work, "scenes"), sixteen = join(work, "sixteen");
sh("/usr/bin/python3", [join(root, "tools/demo_model/scenes.py"), "--out", join(scenes, "generated"), "--seed", "5000", "--count", "56"]);
fs.mkdirSync(sixteen);
for (const f of fs.readdirSync(join(demo, "scenes")).filter((f) => f.endsWith(".png"))) fs.cpSync(join(demo, "scenes", f), join(scenes, f));
for (const f of fs.readdirSync(scenes, { recursive: true }).filter((f) => f.endsWith(".png")).sort().slice(0, 16))
  fs.cpSync(join(scenes, f), join(sixteen, f.replace("/", "-")));
const mmproj7b = join(cache, "mmproj-vit-l-336-q4_0.gguf");
if (!fs.existsSync(mmproj7b)) {
  const f16 = join(cache, "mmproj-vit-l-336-f16.gguf");
  if (!fs.existsSync(f16)) sh(env.LOUPE_BENCH_BIN, ["make-mmproj", f16]);
  log(`making ${mmproj7b} (loupe-convert: the F16 mmproj re-quantised to Q4_0)...`);
  const out = join(cache, "requant");
  sh(join(loupe, "../loupe-convert"), ["--model", f16, "--outtype", "q4_0", "-o", out, "--name", "vit-l-336-q4_0"]);
  fs.renameSync(join(out, fs.readdirSync(out).find((f) => f.endsWith(".gguf"))), mmproj7b);
  fs.rmSync(out, { recursive: true });
}

const workloads = [
  { name: "demo model (4 layers), 64 images", rounds, input: scenes,
    args: ["-m", join(demo, "shapes-q4_0.gguf"), "--mmproj", join(demo, "mmproj-shapes-q4_0.gguf")] },
  { name: "LLaMA-7B shape Q4_0 + ViT-L/14-336 Q4_0, 16 images", rounds: Math.min(rounds, 2), input: sixteen,
    args: ["-m", llama7b("q4_0"), "--mmproj", mmproj7b, "-c", "1024"] },
];

function captionRun(w, batch) {
  const out = join(work, "out");
  fs.rmSync(out, { recursive: true, force: true });
  const r = sh(loupe, ["caption", ...w.args, "--input", w.input, "--output", out, "-p", PROMPT, "-n", "64",
                       "--batch", String(batch), "-t", String(threads)]);
  const m = /caption: (\d+) images in ([\d.]+) s \(.*, (\d+) errors\)/.exec(r.stderr);
  if (!m || m[3] !== "0") throw new Error(`unexpected summary:\n${r.stderr}`);
  const rows = fs.readFileSync(join(out, fs.readdirSync(out).find((f) => f.endsWith(".jsonl"))), "utf8")
    .split("\n").filter(Boolean).map((l) => JSON.parse(l));
  return { images: Number(m[1]), seconds: Number(m[2]), per_hour: Number(m[1]) / Number(m[2]) * 3600, tokens: rows.reduce((s, x) => s + x.tokens, 0) / rows.length };
}

const date = new Date().toISOString().slice(0, 10);
const out = [`loupe caption, ${date}: ${threads} threads, -n 64, medians of the rounds`, "",
  "| workload | --batch | images/hour | mean caption tokens | × --batch 1 |", "| --- | ---: | ---: | ---: | ---: |"];
const raw = [];
for (const w of workloads) {
  const runs = { 1: [], 8: [] };
  for (let r = 0; r < w.rounds; ++r)
    for (const b of r % 2 ? [8, 1] : [1, 8]) {
      const s = captionRun(w, b);
      runs[b].push(s);
      raw.push({ workload: w.name, batch: b, round: r, ...s });
      log(`${w.name}, --batch ${b}, round ${r + 1}: ${s.per_hour.toFixed(0)} images/hour (${s.tokens.toFixed(1)} tokens a caption)`);
    }
  const base = median(runs[1].map((s) => s.per_hour));
  for (const b of [1, 8]) {
    const m = (k) => median(runs[b].map((s) => s[k]));
    out.push(`| ${w.name} | ${b} | ${m("per_hour").toFixed(0)} | ${m("tokens").toFixed(1)} | ${(m("per_hour") / base).toFixed(2)}× |`);
  }
}
console.log(out.join("\n"));
fs.writeFileSync(join(cache, `caption-${date}.json`), JSON.stringify(raw, null, 1));
