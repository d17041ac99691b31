// `loupe serve` under load: N requests over C connections (each connection
// sends its next request when the last one is answered), at --parallel 1 and 8,
// alternately for R rounds; prints throughput (requests/s, generated tokens/s)
// and latency percentiles, medians over the rounds. Then the overload path: C2
// connections at once against a small queue, counting the 503s and how fast
// they come back. bench/run.sh serve runs this after building loupe.
//
// Two workloads: the demo model describing the bundled scenes (image requests:
// 625 prompt positions; the scenes' encodings are cached after the first
// round), and the LLaMA-7B-shaped Q4_0 model (text requests, 16 tokens each:
// where decoding together pays, a step reading the weights once for all slots).
//
// Environment (defaults): LOUPE_BENCH_ROUNDS 3 (the 7B workload: 2), LOUPE_BENCH_THREADS 2,
// LOUPE_SERVE_BIN (build-bench/bin/loupe), LOUPE_BENCH_CACHE (/work/bench-cache).
import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import { join } from "node:path";

import { cache, env, llama7b, log, median, root } from "./common.mjs";

const loupe = env.LOUPE_SERVE_BIN ?? join(root, "build-bench/bin/loupe");
const rounds = Number(env.LOUPE_BENCH_ROUNDS ?? 3);
const threads = Number(env.LOUPE_BENCH_THREADS ?? 2);
const demo = join(root, "demo");
const scenes = JSON.parse(fs.readFileSync(join(demo, "scenes/captions.json"), "utf8"));

const freePort = () => new Promise((resolve) => {
  const s = net.createServer().listen(0, "127.0.0.1", () => { const { port } = s.address(); s.close(() => resolve(port)); });
});

async function withServer(args, fn) {
  const port = await freePort();
  const proc = spawn(loupe, ["serve", "--port", String(port), "-t", String(threads), ...args], { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  proc.stderr.on("data", (d) => { stderr += d; });
  const base = `http://127.0.0.1:${port}`;
  try {
    for (let i = 0; ; ++i) {
      if (proc.exitCode !== null || i > 600) throw new Error(`loupe serve did not come up:\n${stderr}`);
      try { if ((await fetch(`${base}/health`)).ok) break; } catch { /* not yet */ }
      await new Promise((r) => setTimeout(r, 100));
    }
    return await fn(base);
  } finally {
    proc.kill("SIGTERM");
    await new Promise((r) => (proc.exitCode !== null ? r() : proc.on("exit", r)));
  }
}

async function request(base, body) {
  const t0 = performance.now();
  const r = await fetch(`${base}/v1/chat/completions`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal: AbortSignal.timeout(600000),
  });
  const j = await r.json().catch(() => null);
  return { status: r.status, ms: performance.now() - t0, tokens: j?.usage?.completion_tokens ?? 0, retryAfter: r.headers.get("retry-after") };
}

// `bodies` over `connections` connections; returns the summary of one run.
async function load(base, bodies, connections) {
  let next = 0;
  const results = [];
  const t0 = performance.now();
  await Promise.all(Array.from({ length: connections }, async () => {
    while (next < bodies.length) results.push(await request(base, bodies[next++]));
  }));
  const wall = (performance.now() - t0) / 1000;
  const ok = results.filter((r) => r.status === 200), ms = ok.map((r) => r.ms).sort((a, b) => a - b);
  const pct = (p) => ms[Math.min(ms.length - 1, Math.floor(p * ms.length))];
  return { ok: ok.length, wall, rps: ok.length / wall, tok_s: ok.reduce((s, r) => s + r.tokens, 0) / wall, p50: pct(0.5), p95: pct(0.95) };
}

const imageBody = (file) => ({
  model: "shapes-q4_0", temperature: 0, max_tokens: 64,
  messages: [{ role: "user", content: [
    { type: "image_url", image_url: { url: `data:image/png;base64,${fs.readFileSync(join(demo, "scenes", file)).toString("base64")}` } },
    { type: "text", text: scenes[file].prompt }] }],
});
const textBody = (i) => ({ model: "llama7b-q4_0", temperature: 0, max_tokens: 16, messages: [{ role: "user", content: `Request ${i}: tell me something.` }] });

const workloads = [
  { name: "demo model, image requests (64 over 8 connections)", rounds,
    args: ["-m", join(demo, "shapes-q4_0.gguf"), "--mmproj", join(demo, "mmproj-shapes-q4_0.gguf")],
    bodies: Array.from({ length: 64 }, (_, i) => imageBody(Object.keys(scenes)[i % Object.keys(scenes).length])), connections: 8 },
  { name: "LLaMA-7B shape Q4_0, text requests of 16 tokens (32 over 8 connections)", rounds: Math.min(rounds, 2),
    args: ["-m", llama7b("q4_0"), "-c", "512"], bodies: Array.from({ length: 32 }, (_, i) => textBody(i)), connections: 8 },
];

const date = new Date().toISOString().slice(0, 10);
const out = [`loupe serve under load, ${date}: ${threads} threads, medians of the rounds`, "",
  "| workload | --parallel | requests/s | generated tok/s | p50 ms | p95 ms | × --parallel 1 (tok/s) |",
  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"];
const raw = [];
for (const w of workloads) {
  const runs = { 1: [], 8: [] };
  for (let r = 0; r < w.rounds; ++r)
    for (const p of r % 2 ? [8, 1] : [1, 8]) {
      const s = await withServer([...w.args, "--parallel", String(p), "--queue", "64"], (base) => load(base, w.bodies, w.connections));
      runs[p].push(s);
      raw.push({ workload: w.name, parallel: p, round: r, ...s });
      log(`${w.name}, --parallel ${p}, round ${r + 1}: ${s.rps.toFixed(2)} req/s, ${s.tok_s.toFixed(1)} tok/s, p50 ${s.p50.toFixed(0)} ms, p95 ${s.p95.toFixed(0)} ms`);
    }
  const base = median(runs[1].map((s) => s.tok_s));
  for (const p of [1, 8]) {
    const m = (k) => median(runs[p].map((s) => s[k]));
    out.push(`| ${w.name} | ${p} | ${m("rps").toFixed(2)} | ${m("tok_s").toFixed(1)} | ${m("p50").toFixed(0)} | ${m("p95").toFixed(0)} | ${(m("tok_s") / base).toFixed(2)}× |`);
  }
}

// Overload: 64 connections at once against 8 slots + 8 queue places (the demo model, image requests).
const over = await withServer([...workloads[0].args, "--parallel", "8", "--queue", "8"], async (base) => {
  const rs = await Promise.all(workloads[0].bodies.map((b) => request(base, b)));
  return { ok: rs.filter((r) => r.status === 200), busy: rs.filter((r) => r.status === 503) };
});
const busyMs = over.busy.map((r) => r.ms).sort((a, b) => a - b), okMs = over.ok.map((r) => r.ms).sort((a, b) => a - b);
out.push("", `Overload (64 requests at once, --parallel 8 --queue 8): ${over.ok.length} answered (median ${okMs.length ? median(okMs).toFixed(0) : "–"} ms), ` +
  `${over.busy.length} refused with 503 + Retry-After: ${over.busy.every((r) => r.retryAfter) ? "yes" : "NO"} (median ${busyMs.length ? median(busyMs).toFixed(0) : "–"} ms).`);
console.log(out.join("\n"));
fs.writeFileSync(join(cache, `serve-${date}.json`), JSON.stringify({ raw, overload: { ok: okMs, busy: busyMs } }, null, 1));
