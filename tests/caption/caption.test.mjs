#!/usr/bin/env node
// `loupe caption` on the demo model (ctest `caption_inputs_resume`):
//
//   - a folder, a .txt list, a .jsonl manifest and WebDataset .tar shards of the
//     bundled scenes plus 240 generated ones (tools/demo_model/scenes.py) give,
//     item by item, the caption `loupe describe` gives one image at a time; a
//     corrupt image, a missing file and an unsupported format are rows with
//     "error" set, and the run finishes;
//   - SIGKILL at several points (after 1, 60 and 180 rows, and between two
//     shards' files), then --resume: every item exactly once, the same rows;
//   - --lora: the captions `loupe describe --lora` gives, the adapter named in the rows;
//   - a torn last line in a partial file is dropped and captioned again;
//   - --shard i/4 for i = 0..3: together the whole input, no item twice;
//   - README's example prints the row README shows.
//
// usage: node tests/caption/caption.test.mjs --build BUILD_DIR
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

import { build, check, cli, demo, demoMmproj, demoModel, jsonl as rows, root, run, runTest } from '../harness.mjs';

const model = ['-m', demoModel, '--mmproj', demoMmproj];
const work = path.join(build, 'caption-test');
const PROMPT = 'What does this image show?';
const OTHER = 'Describe this image.';

await runTest(async () => {
  // ---- the collection: 240 generated scenes + the 8 bundled ones, and three bad items
  fs.rmSync(work, { recursive: true, force: true });
  const scenesDir = path.join(work, 'scenes');
  run('/usr/bin/python3', [path.join(root, 'tools/demo_model/scenes.py'), '--out', path.join(scenesDir, 'generated'), '--seed', '2000', '--count', '240']);
  fs.cpSync(path.join(demo, 'scenes'), path.join(scenesDir, 'bundled'), { recursive: true });
  for (const f of fs.readdirSync(scenesDir, { recursive: true })) if (f.endsWith('.json')) fs.rmSync(path.join(scenesDir, f));
  fs.mkdirSync(path.join(scenesDir, 'bad'));
  fs.writeFileSync(path.join(scenesDir, 'bad/corrupt.png'), Buffer.concat([Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]), Buffer.alloc(200, 7)]));
  fs.writeFileSync(path.join(scenesDir, 'bad/unsupported.webp'), Buffer.concat([Buffer.from('RIFF'), Buffer.alloc(4), Buffer.from('WEBPVP8 '), Buffer.alloc(64)]));
  const images = fs.readdirSync(scenesDir, { recursive: true }).filter((f) => /\.(png|webp)$/.test(f)).sort();
  const good = images.filter((f) => !f.startsWith('bad/'));
  // Every 10th item asks its own question (manifest and tar); the rest -p's.
  const promptOf = (i) => (i % 10 === 3 ? OTHER : PROMPT);

  // ---- loupe describe, one image at a time: the reference
  const refs = new Map();
  const describe = (file, prompt) => {
    const key = `${file}|${prompt}`;
    if (!refs.has(key))
      refs.set(key, run(cli, ['describe', ...model, '--image', path.join(scenesDir, file), '-p', prompt, '-n', '128']).replace(/\n$/, ''));
    return refs.get(key);
  };
  const started = Date.now();
  images.forEach((f, i) => { if (!f.startsWith('bad/')) { describe(f, PROMPT); if (promptOf(i) !== PROMPT) describe(f, promptOf(i)); } });
  console.log(`(${refs.size} loupe describe references in ${((Date.now() - started) / 1000).toFixed(1)} s)`);

  const caption = (args, opts) => run(cli, ['caption', ...model, '-t', '2', '-n', '128', ...args], opts);

  // Checks an output's rows against the references; `expect` maps id -> {file, prompt} or {error: RegExp}.
  function verify(what, outRows, expect) {
    const ids = outRows.map((r) => r.id);
    check(ids.length === expect.size && new Set(ids).size === ids.length && ids.every((id) => expect.has(id)),
          `${what}: every item exactly once (${ids.length} rows)`, `${ids.length} rows, ${new Set(ids).size} distinct, ${expect.size} expected`);
    const wrong = outRows.filter((r) => {
      const e = expect.get(r.id);
      if (!e) return true;
      if (e.error) return !(r.caption === null && typeof r.error === 'string' && e.error.test(r.error));
      return !(r.error === null && r.caption === describe(e.file, e.prompt) && r.prompt === e.prompt && r.tokens > 0 &&
               r.model === 'shapes-q4_0' && r.adapter === null);
    });
    check(wrong.length === 0, `${what}: captions equal loupe describe's, bad items are error rows`, JSON.stringify(wrong.slice(0, 3)));
  }

  // ---- a folder
  const folderExpect = new Map(images.map((f) => [f, f.startsWith('bad/')
    ? { error: f.endsWith('.webp') ? /WebP images are not supported/ : /corrupt|not a|PNG/ }
    : { file: f, prompt: PROMPT }]));
  caption(['--input', scenesDir, '--output', path.join(work, 'folder'), '-p', PROMPT, '--batch', '8']);
  const folderRows = rows(path.join(work, 'folder/captions.jsonl'));
  verify('folder', folderRows, folderExpect);
  check(JSON.stringify(folderRows.map((r) => r.id)) === JSON.stringify(images), 'folder: rows in sorted input order');
  check(!fs.existsSync(path.join(work, 'folder/captions.jsonl.tmp')), 'folder: no .tmp left');

  // ---- with an adapter (the demo's Lithuanian LoRA): loupe describe --lora's captions, "adapter" named
  {
    const lora = path.join(demo, 'shapes-lt-lora.gguf');
    const dir = path.join(scenesDir, 'bundled');
    caption(['--input', dir, '--output', path.join(work, 'lora'), '-p', PROMPT, '--batch', '4', '--lora', lora]);
    const got = rows(path.join(work, 'lora/captions.jsonl'));
    const files = fs.readdirSync(dir).filter((f) => f.endsWith('.png')).sort();
    const wrong = files.filter((f, i) => !got[i] || got[i].id !== f || got[i].adapter !== 'shapes-lt-lora' ||
      got[i].caption !== run(cli, ['describe', ...model, '--lora', lora, '--image', path.join(dir, f), '-p', PROMPT, '-n', '128']).replace(/\n$/, ''));
    check(got.length === files.length && wrong.length === 0, `--lora: ${files.length} captions equal loupe describe --lora's`, JSON.stringify(wrong));
  }

  // ---- README's example, run as it is written there (from the repository root)
  {
    const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8');
    const block = /```sh\n(build\/bin\/loupe caption [^`]*?)head -1 captions\/captions\.jsonl\n((?:# .*\n)+)```/.exec(readme);
    check(!!block, 'README has the loupe caption example');
    if (block) {
      const args = block[1].replace(/\\\n\s*/g, ' ').trim().split(/\s+(?=(?:[^"]*"[^"]*")*[^"]*$)/).slice(1)
        .map((x) => x.replace(/^"(.*)"$/, '$1').replace(/^captions\/$/, path.join(work, 'readme')));
      run(cli, args, { cwd: root });
      const first = fs.readFileSync(path.join(work, 'readme/captions.jsonl'), 'utf8').split('\n')[0];
      const shown = block[2].split('\n').filter(Boolean).map((l) => l.slice(2)).join('')
        .replace('"ms":...', `"ms":${JSON.parse(first).ms}`);
      // README wraps the row after a comma: joined, ", " there is "," in the file
      check(shown.replace(/, /g, ',') === first.replace(/, /g, ','), "README's loupe caption example prints what README shows", `${first}\n     README: ${shown}`);
    }
  }

  // ---- a .txt list (relative paths, a missing file)
  const listLines = [...images, 'generated/no-such-image.png'];
  fs.writeFileSync(path.join(scenesDir, 'list.txt'), listLines.join('\n') + '\n');
  caption(['--input', path.join(scenesDir, 'list.txt'), '--output', path.join(work, 'list'), '-p', PROMPT, '--batch', '4']);
  verify('list', rows(path.join(work, 'list/list.jsonl')),
         new Map([...folderExpect, ['generated/no-such-image.png', { error: /cannot open|No such file/ }]]));

  // ---- a .jsonl manifest with ids and some prompts of its own
  const manifest = images.map((f, i) => ({ id: `item-${i}`, image: `scenes/${f}`, ...(promptOf(i) !== PROMPT ? { prompt: promptOf(i) } : {}) }));
  manifest.push({ id: 'item-missing', image: 'scenes/nowhere.png' });
  fs.writeFileSync(path.join(work, 'manifest.jsonl'), manifest.map((m) => JSON.stringify(m)).join('\n') + '\n');
  const manifestExpect = new Map(manifest.map((m, i) => [m.id, i === images.length ? { error: /cannot open|No such file/ }
    : folderExpect.get(images[i]).error ? folderExpect.get(images[i]) : { file: images[i], prompt: promptOf(i) }]));
  caption(['--input', path.join(work, 'manifest.jsonl'), '--output', path.join(work, 'manifest'), '-p', PROMPT, '--batch', '8']);
  verify('manifest', rows(path.join(work, 'manifest/manifest.jsonl')), manifestExpect);

  // ---- WebDataset shards (img2dataset's layout: KEY.png, KEY.json, KEY.txt), 4 of them
  const shardsDir = path.join(work, 'shards');
  fs.mkdirSync(shardsDir);
  run('/usr/bin/python3', ['-c', `
import io, json, sys, tarfile
items = json.loads(sys.argv[1])
for s in range(4):
    with tarfile.open(f"${shardsDir}/shard-{s:05d}.tar", "w") as t:
        for k, (f, prompt) in enumerate(items):
            if k % 4 != s: continue
            key = f"{k:06d}"
            def add(name, data):
                info = tarfile.TarInfo(name); info.size = len(data); t.addfile(info, io.BytesIO(data))
            add(key + "." + f.rsplit(".", 1)[1], open("${scenesDir}/" + f, "rb").read())
            add(key + ".json", json.dumps({"prompt": prompt} if prompt else {"url": f}).encode())
            add(key + ".txt", b"an alt text")
  `, JSON.stringify(images.map((f, i) => [f, promptOf(i) !== PROMPT ? promptOf(i) : null]))]);
  const shardGlob = path.join(shardsDir, 'shard-{00000..00003}.tar');
  const tarExpect = (s) => new Map(images.map((f, k) => [k, f]).filter(([k]) => k % 4 === s).map(([k, f]) => [String(k).padStart(6, '0'),
    folderExpect.get(f).error ? folderExpect.get(f) : { file: f, prompt: promptOf(k) }]));
  caption(['--input', shardGlob, '--output', path.join(work, 'tar'), '-p', PROMPT, '--batch', '8']);
  for (let s = 0; s < 4; ++s) verify(`tar shard ${s}`, rows(path.join(work, `tar/shard-0000${s}.jsonl`)), tarExpect(s));

  // ---- SIGKILL at several points, then --resume
  const strip = (r) => JSON.stringify({ ...r, ms: 0 });
  async function killAfter(args, file, n) {
    const p = spawn(cli, ['caption', ...model, '-t', '2', '-n', '128', ...args], { stdio: 'ignore' });
    const t0 = Date.now();
    while (Date.now() - t0 < 120000) {
      if (p.exitCode !== null) break;
      const lines = fs.existsSync(file) ? fs.readFileSync(file, 'utf8').split('\n').length - 1 : 0;
      if (lines >= n) break;
      await new Promise((r) => setTimeout(r, 5));
    }
    p.kill('SIGKILL');
    await new Promise((r) => (p.exitCode !== null || p.signalCode !== null ? r() : p.on('exit', r)));
    return p.exitCode === 0;  // finished before the kill
  }
  for (const n of [1, 60, 180]) {
    const out = path.join(work, `resume-${n}`);
    const finishedFirst = await killAfter(['--input', scenesDir, '--output', out, '-p', PROMPT, '--batch', '4'], path.join(out, 'captions.jsonl.tmp'), n);
    const before = fs.existsSync(path.join(out, 'captions.jsonl.tmp')) ? fs.readFileSync(path.join(out, 'captions.jsonl.tmp'), 'utf8').split('\n').length - 1 : 0;
    caption(['--input', scenesDir, '--output', out, '-p', PROMPT, '--batch', '4', '--resume']);
    const got = rows(path.join(out, 'captions.jsonl'));
    check(!finishedFirst && JSON.stringify(got.map(strip)) === JSON.stringify(folderRows.map(strip)),
          `SIGKILL after ${n} row(s) (${before} on disk), then --resume: the same rows, each item once`);
  }
  {  // a torn last line (a kill in the middle of a write): dropped and captioned again
    const out = path.join(work, 'resume-torn');
    fs.mkdirSync(out);
    const lines = folderRows.slice(0, 5).map((r) => JSON.stringify(r));
    fs.writeFileSync(path.join(out, 'captions.jsonl.tmp'), lines.slice(0, 4).join('\n') + '\n' + lines[4].slice(0, 17));
    caption(['--input', scenesDir, '--output', out, '-p', PROMPT, '--batch', '4', '--resume']);
    check(JSON.stringify(rows(path.join(out, 'captions.jsonl')).map(strip)) === JSON.stringify(folderRows.map(strip)),
          'a torn last line in the partial file, then --resume: the same rows, each item once');
  }
  {  // between two shards' files: the first complete, the rest not started
    const out = path.join(work, 'resume-tar');
    await killAfter(['--input', shardGlob, '--output', out, '-p', PROMPT, '--batch', '4'], path.join(out, 'shard-00001.jsonl.tmp'), 1);
    const complete = fs.readdirSync(out).filter((f) => f.endsWith('.jsonl'));
    caption(['--input', shardGlob, '--output', out, '-p', PROMPT, '--batch', '4', '--resume']);
    let same = complete.length >= 1;
    for (let s = 0; s < 4; ++s)
      same &&= JSON.stringify(rows(path.join(out, `shard-0000${s}.jsonl`)).map(strip)) ===
               JSON.stringify(rows(path.join(work, `tar/shard-0000${s}.jsonl`)).map(strip));
    check(same, `SIGKILL during the second shard (${complete.length} file(s) complete), then --resume: every shard's rows, each item once`);
    const again = spawnSync(cli, ['caption', ...model, '--input', shardGlob, '--output', out, '-p', PROMPT], { encoding: 'utf8' });
    check(again.status === 1 && /exists: --resume/.test(again.stderr), 'without --resume a finished output is not overwritten', again.stderr);
  }

  // ---- slices
  {
    const all = [];
    for (let i = 0; i < 4; ++i) {
      caption(['--input', path.join(work, 'manifest.jsonl'), '--output', path.join(work, 'slices'), '-p', PROMPT, '--batch', '4', '--shard', `${i}/4`]);
      all.push(...rows(path.join(work, `slices/manifest-${i}-of-4.jsonl`)));
    }
    verify('--shard i/4 for i = 0..3, together', all, manifestExpect);
  }
});
