// What bench.mjs and batching.mjs share: where things are, running a
// measurement process (one JSON line on stdout), making the synthetic 7B model.
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export const here = dirname(fileURLToPath(import.meta.url));
export const root = dirname(here);
export const env = process.env;
export const bin = env.LOUPE_BENCH_BIN;
if (!bin || !existsSync(bin)) throw new Error("set LOUPE_BENCH_BIN to the loupe_bench binary (bench/run.sh does)");
export const cache = env.LOUPE_BENCH_CACHE ?? "/work/bench-cache";
mkdirSync(cache, { recursive: true });
export const log = (s) => process.stderr.write(s + "\n");

// Runs a command; returns the last JSON line it printed (null if none).
export function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: "utf8", maxBuffer: 1 << 24, ...opts });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")} failed (${r.status}):\n${r.stderr}`);
  const line = r.stdout.trim().split("\n").filter((l) => l.startsWith("{")).pop();
  return line ? JSON.parse(line) : null;
}
export const loupe = (...args) => run(bin, args.map(String));

// The LLaMA-7B-shaped GGUF of type t (random weights, the LLaMA tokenizer), made once.
export function llama7b(t) {
  const path = join(cache, `llama7b-${t}.gguf`);
  if (!existsSync(path)) {
    log(`making ${path} (LLaMA-7B shapes, random ${t} weights)...`);
    run(bin, ["make-llama", path, "--type", t, "--vocab", join(root, "..", "shared", "tokenizers", "llama2.model")],
        { stdio: ["ignore", "pipe", "inherit"] });
  }
  return path;
}

export const median = (v) => {
  const s = [...v].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
