// What the node-driven tests of the frontends share (tests/serve, tests/caption):
// where the build and the demo model are, checks that count their failures, and
// running a process. Each test is `node TEST.mjs --build BUILD_DIR`.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const argv = process.argv.slice(2);
export const build = path.resolve(argv.includes('--build') ? argv[argv.indexOf('--build') + 1] : path.join(root, 'build'));
export const cli = path.join(build, 'bin/loupe');
export const demo = path.join(root, 'demo');
export const demoModel = path.join(demo, 'shapes-q4_0.gguf');
export const demoMmproj = path.join(demo, 'mmproj-shapes-q4_0.gguf');

let failures = 0;
export function check(ok, what, detail = '') {
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}${ok || !detail ? '' : `\n     ${detail}`}`);
  if (!ok) failures++;
}

// Runs `main`; an exception is a failed check. Then `cleanup`, the summary, the exit status.
export async function runTest(main, cleanup = () => {}) {
  try {
    await main();
  } catch (e) {
    check(false, 'the test ran to its end', e.stack || String(e));
  }
  await cleanup();
  console.log(failures ? `${failures} check(s) failed` : 'all checks passed');
  process.exit(failures ? 1 : 0);
}

// Runs a command to its end; its stdout, or an exception with its stderr when it fails.
export function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 1 << 26, ...opts });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.error || r.status}):\n${r.stderr}\n${r.stdout ?? ''}`);
  return r.stdout;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// The rows of a JSONL file.
export const jsonl = (file) => fs.readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));

// A TCP port free on loopback now.
export const freePort = () => new Promise((resolve) => {
  const s = net.createServer().listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
});
