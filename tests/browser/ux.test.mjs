#!/usr/bin/env node
// The demo page as its users meet it (ctest browser_ux): headless Debian chromium
// (playwright-core) on a desktop (1280×800) and a phone (390×844) viewport, by
// mouse and by keyboard only, with bad files. Each check is one property a user
// notices; screenshots of both layouts go to --work.
//
// usage: node tests/browser/ux.test.mjs --build BUILD_DIR --dist WASM_DIST --work SCRATCH_DIR
// Exit 0 pass, 1 fail, 77 skipped (no chromium / playwright-core / wasm build).
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

import { browserTools, chromiumPath, root } from './browser.mjs';

const arg = (name, dflt) => (process.argv.includes(`--${name}`) ? process.argv[process.argv.indexOf(`--${name}`) + 1] : dflt);
const build = path.resolve(arg('build', path.join(root, 'build')));
const dist = path.resolve(arg('dist', path.join(build, 'wasm/dist')));
const work = path.resolve(arg('work', path.join(build, 'browser-ux')));
const { chromium, serve } = await browserTools(dist);

let failures = 0;
const check = (ok, what, detail = '') => {
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}${ok || !detail ? '' : `\n     ${detail}`}`);
  if (!ok) failures++;
};
fs.rmSync(work, { recursive: true, force: true });
fs.mkdirSync(work, { recursive: true });

// The scene and its captions, and what `loupe describe` prints for it (the page must show the same).
const scene = path.join(root, 'demo/scenes/scene-1000-0007.png');
const captions = JSON.parse(fs.readFileSync(path.join(root, 'demo/scenes/captions.json'), 'utf8'))['scene-1000-0007.png'];
const native = (extra = []) => {
  const r = spawnSync(path.join(build, 'bin/loupe'), ['describe', '-m', 'demo/shapes-q4_0.gguf', '--mmproj', 'demo/mmproj-shapes-q4_0.gguf',
    '--image', scene, '-p', 'Describe this image.', '-n', '128', ...extra], { cwd: root, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`loupe describe failed: ${r.stderr}`);
  return r.stdout.replace(/\n$/, '');
};
const english = native(), lithuanian = native(['--lora', 'demo/shapes-lt-lora.gguf']);
// `loupe chat`'s second answer about the scene: what a follow-up question on the page must give.
const followUpQuestion = 'What colour is the background?';
const chatTurns = (() => {
  const r = spawnSync(path.join(build, 'bin/loupe'), ['chat', '-m', 'demo/shapes-q4_0.gguf', '--mmproj', 'demo/mmproj-shapes-q4_0.gguf',
    '--image', scene, '-n', '128'], { cwd: root, input: `Describe this image.\n${followUpQuestion}\n`, encoding: 'utf8' });
  return r.stdout.split('\n').filter((l) => l.startsWith('ASSISTANT: ')).map((l) => l.slice(11));
})();
if (chatTurns.length !== 2 || chatTurns[0] !== english) throw new Error(`loupe chat: ${JSON.stringify(chatTurns)}`);

// Bad files: a PNG named as a model, a WebP, and a BMP whose header claims 20000 × 20000 pixels.
const notGguf = path.join(work, 'not-a-model.gguf');
fs.copyFileSync(scene, notGguf);
const webp = path.join(work, 'photo.webp');
fs.writeFileSync(webp, Buffer.from('RIFF\x24\x00\x00\x00WEBPVP8 ', 'latin1'));
const huge = Buffer.alloc(54);
huge.write('BM', 0, 'latin1');
huge.writeUInt32LE(54, 2), huge.writeUInt32LE(54, 10), huge.writeUInt32LE(40, 14);
huge.writeInt32LE(20000, 18), huge.writeInt32LE(20000, 22), huge.writeUInt16LE(1, 26), huge.writeUInt16LE(24, 28);
const hugeBmp = path.join(work, 'huge.bmp');
fs.writeFileSync(hugeBmp, huge);

const profile = fs.mkdtempSync(path.join(work, 'profile-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: chromiumPath, headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-sync'],
});
await context.grantPermissions(['clipboard-read', 'clipboard-write']);
const logs = [];
const responses = [];  // [status, method, url] of the isolated server: downloads are counted from them
const server = await serve({ port: 0, dist, onResponse: (...r) => responses.push(r) });
const plain = await serve({ port: 0, dist, isolate: false });

async function openPage(url, viewport, query = '') {
  const page = await context.newPage();
  await page.setViewportSize(viewport);
  page.on('console', (m) => logs.push(`[console.${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => logs.push(`[pageerror] ${e.message}`));
  // File choosers are intercepted from the start: Playwright turns interception on
  // asynchronously when the first listener comes, and a chooser opened by a key
  // press right after waitForEvent() could be missed (seen once in CI).
  page.on('filechooser', () => {});
  await page.goto(`${url}?threads=2${query}`);
  await page.waitForFunction(() => ['ready', 'error', 'no-model'].includes(document.body.dataset.state), null, { timeout: 120000 });
  return page;
}
const done = (page) => page.waitForFunction(() => ['done', 'describe-error'].includes(document.body.dataset.state) && !window.loupeDemo.running,
                                            null, { timeout: 120000 });
const text = (page, sel) => page.evaluate((s) => document.querySelector(s).textContent, sel);
const visible = (page, sel) => page.isVisible(sel);

try {
  // ---- phone: the picker stays reachable after the first image; honest about the toy model.
  const phone = await openPage(server.url, { width: 390, height: 844 });
  check(await phone.evaluate(() => document.body.dataset.state) === 'ready', 'phone: the demo model loads');
  check(await visible(phone, '#model-about') && /toy model/.test(await text(phone, '#model-about')) &&
        /nothing else/.test(await text(phone, '#model-about')), 'the page says what the bundled model is and is not for',
        await text(phone, '#model-about'));
  if (await phone.$('#photos button')) check(await visible(phone, '#photos-note') && /never seen a photo/.test(await text(phone, '#photos-note')),
                                             'the photos row warns that the toy model has never seen a photo');
  await phone.click('#scenes button >> nth=0');
  check(await visible(phone, '#choose-image'), 'phone: after a scene is picked, "Choose an image…" is still there');
  const [chooser] = await Promise.all([phone.waitForEvent('filechooser'), phone.click('#choose-image')]);
  await chooser.setFiles(scene);
  check(await text(phone, '#image-name') === 'scene-1000-0007.png', 'phone: it opens the file picker, and a second own image replaces the first');
  await phone.click('#describe');
  await done(phone);
  check(await text(phone, '#output') === english, 'phone: the description equals `loupe describe`', await text(phone, '#output'));
  await phone.screenshot({ path: path.join(work, 'phone.png'), fullPage: true });
  await phone.close();

  // ---- keyboard only: open the picker from the drop zone, describe, land on the answer.
  const desk = await openPage(server.url, { width: 1280, height: 800 });
  await desk.focus('#drop');
  check(await desk.evaluate(() => document.activeElement.id) === 'drop', 'keyboard: the drop zone takes the focus');
  const [kbChooser] = await Promise.all([desk.waitForEvent('filechooser'), desk.keyboard.press('Enter')]);
  await kbChooser.setFiles(scene);
  let tabs = 0;
  while (tabs < 60 && await desk.evaluate(() => document.activeElement.id) !== 'describe') await desk.keyboard.press('Tab'), tabs++;
  check(tabs < 60, `keyboard: Describe is reached with Tab (${tabs} presses from the drop zone)`);
  await desk.keyboard.press('Enter');
  await done(desk);
  const focused = await desk.evaluate(() => document.activeElement.id);
  check(focused === 'output' && await text(desk, '#output') === english, 'keyboard: after Describe the focus is on the answer, which is `loupe describe`\'s',
        `focus on ${focused}: ${await text(desk, '#output')}`);
  check(/About scene-1000-0007\.png/.test(await text(desk, '#output-label')) && await desk.getAttribute('#output', 'lang') === 'en',
        'the answer is labelled with its image and language (en)', await text(desk, '#output-label'));
  check(await desk.getAttribute('#output', 'aria-live') === null && await desk.getAttribute('.progress', 'aria-live') === null &&
        /answer: /.test(await text(desk, '#announce')), 'screen readers hear milestones (the answer once), not every token or progress tick');
  check(/read \d+ ms/.test(await text(desk, '#t-encode')), 'the timings include reading the image', await text(desk, '#t-encode'));
  await desk.click('#copy');
  check(await desk.evaluate(() => navigator.clipboard.readText()) === english, 'Copy puts the answer on the clipboard');
  // A follow-up question about the same image: `loupe chat`'s second answer, below the first.
  check(await visible(desk, '#follow-up'), 'after an answer, a follow-up question can be asked');
  await desk.fill('#follow-up', followUpQuestion);
  await desk.press('#follow-up', 'Enter');
  await done(desk);
  const transcript = await text(desk, '#output');
  check(transcript === `${english}\n\n» ${followUpQuestion}\n${chatTurns[1]}` && await desk.evaluate(() => document.activeElement.id) === 'follow-up',
        'the follow-up answer is `loupe chat`\'s second turn, appended; the focus stays in the question box', JSON.stringify(transcript));

  // ---- the adapter: Lithuanian, labelled lang="lt".
  await desk.check('#lora-toggle');
  await desk.click('#describe');
  await done(desk);
  check(await text(desk, '#output') === lithuanian && await desk.getAttribute('#output', 'lang') === 'lt' && /Lithuanian/.test(await text(desk, '#output-label')),
        'with the adapter: the Lithuanian answer, labelled lang="lt"', `${await text(desk, '#output-label')} ${await text(desk, '#output')}`);
  await desk.uncheck('#lora-toggle');
  await desk.screenshot({ path: path.join(work, 'desktop.png'), fullPage: true });

  // ---- Stop pressed before the first token (while the image is still read): nothing is generated.
  const early = await desk.evaluate(async () => {
    const lp = window.loupeDemo.loupe;
    const p = lp.describe('/scenes/scene-1000-0001.png', 'Describe this image.', { maxTokens: 64 });
    lp.stop();
    return p;
  });
  check(early.stopped && early.text === '' && early.tokens.length === 0, 'Stop before the first token ends the request with nothing generated',
        JSON.stringify(early));

  // ---- bad files get clear messages; a wrong model file leaves the loaded model working.
  await desk.setInputFiles('#image-file', webp);
  check(/photo\.webp: image\/webp is not an image loupe reads/.test(await text(desk, '#image-error')) &&
        await text(desk, '#image-name') === 'scene-1000-0007.png', 'a WebP is refused before it is shown; the image stays', await text(desk, '#image-error'));
  await desk.setInputFiles('#image-file', hugeBmp);
  await desk.click('#describe');
  await done(desk);
  const bomb = await text(desk, '#describe-error');
  check(/more than 178,956,970 pixels, the most loupe reads/.test(bomb) && !/PIL/.test(bomb), 'an image too large says so in plain words', bomb);
  const info = await text(desk, '#model-info');
  await desk.click('#own-model summary');
  await desk.setInputFiles('#own-text', notGguf);
  await desk.setInputFiles('#own-mmproj', path.join(root, 'demo/mmproj-shapes-q4_0.gguf'));
  await desk.click('#own-load');
  await desk.waitForFunction(() => !window.loupeDemo.loading);
  check(/not-a-model\.gguf is not a GGUF file/.test(await text(desk, '#model-error')) && await text(desk, '#model-info') === info,
        'a wrong model file is refused from its first bytes; the loaded model stays', await text(desk, '#model-error'));
  await desk.setInputFiles('#image-file', scene);
  await desk.click('#describe');
  await done(desk);
  check(await text(desk, '#output') === english, 'after the refused load, Describe still works with the old model');
  // Load cannot be pressed twice: the buttons are off while a model loads.
  await desk.click('#model-load');
  const during = await desk.evaluate(() => [document.getElementById('model-load').disabled, document.getElementById('own-load').disabled]);
  await desk.waitForFunction(() => !window.loupeDemo.loading && document.body.dataset.state === 'ready', null, { timeout: 120000 });
  check(during[0] && during[1], 'while a model loads, both Load buttons are disabled');

  // ---- a file dropped beside the drop zone is taken as the image; the page stays.
  const before = desk.url();
  await desk.evaluate(async () => {
    const bytes = await (await fetch('/scenes/scene-1000-0002.png')).arrayBuffer();
    const dt = new DataTransfer();
    dt.items.add(new File([bytes], 'dropped.png', { type: 'image/png' }));
    document.querySelector('footer').dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
  });
  check(desk.url() === before && await text(desk, '#image-name') === 'dropped.png', 'a file dropped next to the drop zone becomes the image, the page stays');
  await desk.close();

  // ---- single-threaded (not cross-origin isolated): Stop cannot work, and the page says why.
  const st = await openPage(plain.url, { width: 1280, height: 800 });
  check(await visible(st, '#stop-note') && /Stop needs threads/.test(await text(st, '#stop-note')), 'single-threaded: the page explains why Stop is off');
  await st.close();

  // ---- the engine's scripts missing: a message, not an endless "starting…" (an origin no service worker has seen).
  const fresh = await serve({ port: 0, dist });
  const broken = await context.newPage();
  await broken.route('**/web/loupe-*.js', (r) => r.fulfill({ status: 404, body: 'not found' }));
  await broken.route('**/web/loupe-worker.js', (r) => r.fulfill({ status: 404, body: 'not found' }));
  await broken.goto(`${fresh.url}?threads=2&sw=0`);
  await broken.waitForFunction(() => document.body.dataset.state === 'error', null, { timeout: 30000 }).catch(() => {});
  check(/did not start/.test(await text(broken, '#runtime')) && /did not start/.test(await text(broken, '#model-error')),
        'the engine failing to start is said on the page', `${await text(broken, '#runtime')} | ${await text(broken, '#model-error')}`);
  await broken.close();
  await fresh.close();

  // ---- the model cache: a second visit downloads no model; Clear empties it; offline, page and model still load.
  const models = (from) => responses.slice(from).filter(([, method, url]) => method === 'GET' && /\.gguf$/.test(url));
  check(models(0).some(([status, , url]) => status === 200 && /shapes-q4_0\.gguf$/.test(url)), 'first visit: the model was downloaded');
  let from = responses.length;
  const again = await openPage(server.url, { width: 1280, height: 800 });
  const revisit = models(from);
  check(revisit.length >= 3 && revisit.every(([status]) => status === 304), 'second visit: every model file answered 304, nothing downloaded',
        JSON.stringify(revisit));
  check(/loaded from this browser's cache/.test(await text(again, '#progress-text')) && /cached in this browser: \d+ files, [\d.]+ MB/.test(await text(again, '#cache-state')),
        'the page says the model came from the cache, and how much is cached', `${await text(again, '#progress-text')} | ${await text(again, '#cache-state')}`);
  await again.waitForFunction(() => navigator.serviceWorker.controller !== null, null, { timeout: 30000 }).catch(() => {});
  await again.close();
  // Offline: the server goes away; the service worker has the page and the engine, OPFS the model.
  const closing = server.close();
  server.server.closeAllConnections();
  await closing;
  const offline = await openPage(server.url, { width: 1280, height: 800 });
  check(await offline.evaluate(() => document.body.dataset.state) === 'ready', 'offline: the page and the cached model load', await text(offline, '#model-error'));
  await offline.click('#scenes button[data-name="scene-1000-0007.png"]');
  await offline.click('#describe');
  await done(offline);
  check(await text(offline, '#output') === english, 'offline: the description is `loupe describe`\'s');
  await offline.click('#cache-clear');
  await offline.waitForFunction(() => /no model files cached/.test(document.getElementById('cache-state').textContent), null, { timeout: 10000 }).catch(() => {});
  check(/no model files cached/.test(await text(offline, '#cache-state')) && await offline.isHidden('#cache-clear'), 'Clear empties the model cache');
  await offline.close();
} catch (err) {
  check(false, 'the browser test ran to its end', err.stack || String(err));
} finally {
  await server.close();
  await plain.close();
  await context.close();
  fs.rmSync(profile, { recursive: true, force: true });
  fs.writeFileSync(path.join(work, 'console.log'), logs.join('\n') + '\n');
}
if (failures) {
  console.log(`browser console:\n${logs.slice(-30).join('\n')}\n${failures} check(s) failed; screenshots in ${work}`);
  process.exit(1);
}
console.log(`all checks passed; screenshots in ${work}`);
