#!/usr/bin/env node
// `loupe serve` against the official `openai` npm client (pinned in package.json)
// and raw HTTP, on loopback, with the demo model (run by ctest as `serve_openai`):
//
//   - non-streaming and streaming descriptions of the bundled scenes equal
//     `loupe describe`'s text; "model": "lt" (the Lithuanian adapter's name) gives
//     `loupe describe --lora`'s; a second turn about the same image equals
//     `loupe chat`'s second answer and does not encode the image again (/metrics);
//   - 8 concurrent clients, different scenes and adapters, streaming or not: every
//     answer equals its single-request answer;
//   - every bad input gets its status and OpenAI-style error, and a normal request
//     succeeds right after; a client that aborts a stream frees its slot; a full
//     queue answers 503 with Retry-After; SIGTERM ends the server with status 0.
//
// Every wait is bounded (AbortSignal timeouts); the servers are stopped by PID,
// also when a check fails.
//
// usage: node tests/serve/serve.test.mjs --build BUILD_DIR
// Exit 0 pass, 1 fail.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

import OpenAI from 'openai';

import { build, check, cli, demo, demoMmproj as mmproj, demoModel as model, freePort, root, runTest } from '../harness.mjs';

const adapter = path.join(demo, 'shapes-lt-lora.gguf');
const scenes = JSON.parse(fs.readFileSync(path.join(demo, 'scenes/captions.json'), 'utf8'));
const names = Object.keys(scenes);
const KEY = 'test-key';

const servers = [];
process.on('exit', () => { for (const s of servers) if (s.exitCode === null) s.kill('SIGKILL'); });

// Starts `loupe serve` with `args`; resolves when /health answers (at most 30 s).
async function startServer(args) {
  const port = await freePort();
  const log = fs.openSync(path.join(build, `serve-test-${port}.log`), 'w');
  const proc = spawn(cli, ['serve', '-m', model, '--mmproj', mmproj, '--port', String(port), '-t', '2', ...args],
                     { stdio: ['ignore', log, log] });
  servers.push(proc);
  const base = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 300; ++i) {
    if (proc.exitCode !== null) throw new Error(`loupe serve exited with ${proc.exitCode} (log: ${build}/serve-test-${port}.log)`);
    try {
      if ((await fetch(`${base}/health`, { signal: AbortSignal.timeout(1000) })).ok) return { proc, base, port };
    } catch { /* not up yet */ }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('loupe serve did not come up in 30 s');
}

// A PNG that claims 60000 × 60000 pixels (a decompression bomb's header): refused before any pixel memory.
function hugePngUrl() {
  const crc = (buf) => {
    let c = ~0;
    for (const b of buf) { c ^= b; for (let k = 0; k < 8; ++k) c = (c >>> 1) ^ (0xedb88320 & -(c & 1)); }
    return ~c >>> 0;
  };
  const chunk = (type, data) => {
    const body = Buffer.concat([Buffer.from(type), data]), out = Buffer.alloc(8 + data.length + 4);
    out.writeUInt32BE(data.length, 0);
    body.copy(out, 4);
    out.writeUInt32BE(crc(body), 8 + data.length);
    return out;
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(60000, 0), ihdr.writeUInt32BE(60000, 4), ihdr[8] = 8, ihdr[9] = 2;
  const png = Buffer.concat([Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]), chunk('IHDR', ihdr), chunk('IEND', Buffer.alloc(0))]);
  return `data:image/png;base64,${png.toString('base64')}`;
}

const dataUrl = (file) => `data:image/png;base64,${fs.readFileSync(path.join(demo, 'scenes', file)).toString('base64')}`;
const userTurn = (file, text) => ({
  role: 'user', content: [{ type: 'image_url', image_url: { url: dataUrl(file) } }, { type: 'text', text }],
});

// `loupe describe` (greedy, -n 128) for a scene, base or with the adapter.
const cliCache = new Map();
function describe(file, lt) {
  const key = `${file}|${lt}`;
  if (!cliCache.has(key)) {
    const r = spawnSync(cli, ['describe', '-m', model, '--mmproj', mmproj, '--image', path.join(demo, 'scenes', file),
                              '-p', scenes[file].prompt, '-n', '128', ...(lt ? ['--lora', adapter] : [])], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`loupe describe failed: ${r.stderr}`);
    cliCache.set(key, r.stdout.replace(/\n$/, ''));
  }
  return cliCache.get(key);
}

async function metrics(base) {
  const text = await (await fetch(`${base}/metrics`, { headers: { Authorization: `Bearer ${KEY}` }, signal: AbortSignal.timeout(5000) })).text();
  const m = {};
  for (const line of text.split('\n')) {
    const hit = line.match(/^(loupe_[a-z_]+)(\{[^}]*\})? ([0-9.e+]+)$/);
    if (hit) m[hit[1] + (hit[2] || '')] = Number(hit[3]);
  }
  return m;
}

async function post(base, body, { key = KEY, raw = false } = {}) {
  const headers = { 'Content-Type': 'application/json' };
  if (key) headers.Authorization = `Bearer ${key}`;
  const r = await fetch(`${base}/v1/chat/completions`, {
    method: 'POST', headers, body: raw ? body : JSON.stringify(body), signal: AbortSignal.timeout(60000),
  });
  const text = await r.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* an SSE stream or nothing */ }
  return { status: r.status, json, text, headers: r.headers };
}

const ask = (client, file, lt, extra = {}) => client.chat.completions.create(
  { model: lt ? 'lt' : 'shapes-q4_0', temperature: 0, max_tokens: 128, messages: [userTurn(file, scenes[file].prompt)], ...extra },
  { timeout: 60000 });

async function streamText(client, file, lt) {
  const stream = await ask(client, file, lt, { stream: true, stream_options: { include_usage: true } });
  let text = '', finish = null, usage = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    const c = chunk.choices[0];
    if (!c) continue;
    text += c.delta?.content ?? '';
    if (c.finish_reason) finish = c.finish_reason;
  }
  return { text, finish, usage };
}

async function main() {
  const { proc, base } = await startServer(['--lora', `lt=${adapter}`, '--parallel', '4', '--queue', '16', '--api-key', KEY,
                                            '--media-path', path.join(demo, 'scenes'), '--max-body', '2000000', '-c', '1024', '-n', '64']);
  const client = new OpenAI({ apiKey: KEY, baseURL: `${base}/v1`, maxRetries: 0 });

  // ---- models
  const listed = (await client.models.list()).data.map((m) => m.id).sort();
  check(JSON.stringify(listed) === JSON.stringify(['lt', 'shapes-q4_0']), 'GET /v1/models lists the base and the adapter', JSON.stringify(listed));

  // ---- single requests equal the CLI
  for (const file of names.slice(0, 2)) {
    for (const lt of [false, true]) {
      const r = await ask(client, file, lt);
      const want = describe(file, lt);
      check(r.choices[0].message.content === want, `${file}${lt ? ' (lt)' : ''}: non-streaming equals loupe describe${lt ? ' --lora' : ''}`,
            `${JSON.stringify(r.choices[0].message.content)} vs ${JSON.stringify(want)}`);
      check(r.choices[0].finish_reason === 'stop' && r.usage.prompt_tokens > 576 && r.usage.completion_tokens > 0,
            `${file}: finish_reason stop, usage counts the image's positions`, JSON.stringify(r.usage));
      const s = await streamText(client, file, lt);
      check(s.text === want && s.finish === 'stop' && s.usage?.completion_tokens === r.usage.completion_tokens,
            `${file}${lt ? ' (lt)' : ''}: streaming equals it too (finish chunk, usage chunk)`, JSON.stringify(s));
    }
  }

  // ---- README's curl example prints what README says
  {
    const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8');
    const r = await post(base, { model: 'lt', temperature: 0, messages: [{ role: 'user', content: [
      { type: 'image_url', image_url: { url: 'file://scene-1000-0007.png' } }, { type: 'text', text: 'What does this image show?' }] }] });
    const content = r.json?.choices?.[0]?.message?.content;
    check(r.status === 200 && readme.includes(`"content":${JSON.stringify(content)}`) &&
          readme.includes(`"usage":${JSON.stringify(r.json.usage)}`),
          'README\'s curl example: the content and usage README shows', `${r.status} ${r.text.slice(0, 400)}`);
  }

  // ---- a second turn about the same image: loupe chat's answer, no new encode, the prefix reused
  {
    const file = names[2];
    const chat = spawnSync(cli, ['chat', '-m', model, '--mmproj', mmproj, '--image', path.join(demo, 'scenes', file)],
                           { input: `${scenes[file].prompt}\nWhat colour is the background?\n`, encoding: 'utf8' });
    const answers = chat.stdout.split('\n').filter((l) => l.startsWith('ASSISTANT: ')).map((l) => l.slice(11));
    check(chat.status === 0 && answers.length === 2, 'loupe chat answers two turns', chat.stderr);
    const first = await ask(client, file, false);
    const before = await metrics(base);
    const second = await client.chat.completions.create({
      model: 'shapes-q4_0', temperature: 0, max_tokens: 128,
      messages: [userTurn(file, scenes[file].prompt), { role: 'assistant', content: first.choices[0].message.content },
                 { role: 'user', content: 'What colour is the background?' }],
    }, { timeout: 60000 });
    const after = await metrics(base);
    check(first.choices[0].message.content === answers[0] && second.choices[0].message.content === answers[1],
          'two turns equal loupe chat\'s two answers', JSON.stringify([first.choices[0].message.content, second.choices[0].message.content, answers]));
    check(after.loupe_image_encodes_total === before.loupe_image_encodes_total &&
          after.loupe_image_cache_hits_total === before.loupe_image_cache_hits_total + 1,
          'the second turn does not encode the image again', JSON.stringify([before, after]));
    check(after.loupe_prompt_tokens_reused_total - before.loupe_prompt_tokens_reused_total > 576,
          'the second turn reuses the first turn\'s cached prefix');
  }

  // ---- 8 concurrent clients: each answer equals its single-request answer
  {
    const jobs = names.slice(0, 8).map((file, i) => ({ file, lt: i % 2 === 1, stream: i % 3 === 0 }));
    for (const j of jobs) describe(j.file, j.lt);
    const results = await Promise.all(jobs.map((j) => j.stream ? streamText(client, j.file, j.lt).then((s) => s.text)
                                                               : ask(client, j.file, j.lt).then((r) => r.choices[0].message.content)));
    const wrong = jobs.filter((j, i) => results[i] !== describe(j.file, j.lt));
    check(wrong.length === 0, '8 concurrent clients (scenes, adapters, streaming or not) get their single-request answers',
          JSON.stringify(wrong));
  }

  // ---- bad input: status, OpenAI error shape, and the server goes on
  const good = { model: 'shapes-q4_0', temperature: 0, max_tokens: 128, messages: [userTurn(names[0], scenes[names[0]].prompt)] };
  const cases = [
    ['malformed JSON', '{"model": "shapes-q4_0", "messages": [', 400, /request body/, { raw: true }],
    ['messages of the wrong type', { model: 'shapes-q4_0', messages: 'hello' }, 400, /'messages' must be a array/],
    ['temperature of the wrong type', { ...good, temperature: 'hot' }, 400, /'temperature' must be a number/],
    ['n other than 1', { ...good, n: 2 }, 400, /only n = 1/],
    ['an unknown model', { ...good, model: 'gpt-5' }, 404, /does not exist/],
    ['an undecodable image', { model: 'shapes-q4_0', messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'data:image/png;base64,AAAAAAAA' } }, { type: 'text', text: 'hi' }] }] }, 400, /image_url: .*(not a JPEG|PNG)/],
    ['an oversized image', { model: 'shapes-q4_0', messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: hugePngUrl() } }, { type: 'text', text: 'hi' }] }] }, 400, /60000x60000.*more than the limit/],
    ['an http image URL', { model: 'shapes-q4_0', messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'https://example.com/a.png' } }] }] }, 400, /remote image URLs are not fetched/],
    ['a path outside --media-path', { model: 'shapes-q4_0', messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'file://../../README.md' } }] }] }, 400, /not a file under --media-path/],
    ['two images', { model: 'shapes-q4_0', messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: dataUrl(names[0]) } }, { type: 'image_url', image_url: { url: dataUrl(names[1]) } }] }] }, 400, /one image per conversation/],
    ['a prompt longer than the context', { model: 'shapes-q4_0', messages: [{ role: 'user', content: 'star '.repeat(1500) }] }, 400, /positions but the context holds 1024/],
    ['a body over --max-body', { model: 'shapes-q4_0', messages: [{ role: 'user', content: 'x'.repeat(3000000) }] }, 413, /larger than the server's limit/],
    ['no API key', good, 401, /no API key/, { key: null }],
    ['a wrong API key', good, 401, /not valid/, { key: 'nope' }],
  ];
  for (const [what, body, status, message, opts] of cases) {
    const r = await post(base, body, opts);
    const e = r.json?.error;
    check(r.status === status && e && message.test(e.message) && 'type' in e && 'param' in e && 'code' in e,
          `${what}: ${status} with an OpenAI error body`, `${r.status} ${r.text.slice(0, 300)}`);
    const after = await post(base, good);
    check(after.status === 200 && after.json?.choices?.[0]?.message?.content === describe(names[0], false),
          '  and then a normal request succeeds', `${after.status} ${after.text.slice(0, 200)}`);
  }
  {
    const r = await post(base, { ...good, messages: [userTurn(names[3], scenes[names[3]].prompt)] });
    const viaPath = await post(base, { ...good, messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: `file://${names[3]}` } }, { type: 'text', text: scenes[names[3]].prompt }] }] });
    check(viaPath.status === 200 && viaPath.json.choices[0].message.content === r.json.choices[0].message.content,
          'an image file under --media-path reads as its data: URL does');
  }

  // ---- a client that aborts a stream frees its slot
  {
    const controller = new AbortController();
    const stream = await client.chat.completions.create({
      model: 'shapes-q4_0', temperature: 2, max_tokens: 100000, stream: true, messages: [{ role: 'user', content: 'Tell me a long story.' }],
    }, { signal: controller.signal, timeout: 60000 });
    let chunks = 0;
    try {
      for await (const _ of stream) if (++chunks === 5) controller.abort();
    } catch { /* aborted */ }
    let m = {};
    for (let i = 0; i < 50; ++i) {
      m = await metrics(base);
      if (m.loupe_active_sequences === 0) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    check(chunks >= 5 && m.loupe_active_sequences === 0 && m.loupe_requests_cancelled_total >= 1,
          'an aborted stream is cancelled and its slot freed (0 active sequences)', JSON.stringify(m));
  }

  // ---- SIGTERM: stops accepting, ends what is in flight, exits 0
  {
    const inflight = post(base, { model: 'shapes-q4_0', temperature: 2, max_tokens: 100000, messages: [{ role: 'user', content: 'Go on.' }] })
      .catch((e) => ({ status: 0, error: String(e) }));
    await new Promise((r) => setTimeout(r, 300));
    proc.kill('SIGTERM');
    const code = await new Promise((resolve) => {
      const t = setTimeout(() => resolve('timeout'), 20000);
      proc.on('exit', (c) => { clearTimeout(t); resolve(c); });
    });
    const r = await inflight;
    check(code === 0, 'SIGTERM: the server exits with status 0', String(code));
    check(r.status === 200 || r.status === 0, 'SIGTERM: the request in flight ends (answered or closed)', JSON.stringify(r).slice(0, 200));
  }

  // ---- a full queue: 503 with Retry-After (one slot, one queue place, long generations)
  {
    const { proc: p2, base: b2 } = await startServer(['--parallel', '1', '--queue', '1', '-n', '64']);
    const slow = { model: 'shapes-q4_0', temperature: 2, max_tokens: 400, messages: [{ role: 'user', content: 'Tell me a story.' }] };
    const rs = await Promise.all(Array.from({ length: 8 }, () => post(b2, slow, { key: null })));
    const busy = rs.filter((r) => r.status === 503);
    check(busy.length >= 1 && busy.every((r) => r.headers.get('retry-after') && r.json?.error?.code === 'overloaded') &&
          rs.filter((r) => r.status === 200).length >= 2,
          `8 requests at once on 1 slot + 1 queue place: ${busy.length} get 503 with Retry-After, the others 200`,
          rs.map((r) => r.status).join(' '));
    const after = await post(b2, { ...good }, { key: null });
    check(after.status === 200, '  and afterwards the server serves again');
    p2.kill('SIGTERM');
    await new Promise((resolve) => p2.on('exit', resolve));
  }
}

await runTest(main, () => { for (const s of servers) if (s.exitCode === null) s.kill('SIGKILL'); });
