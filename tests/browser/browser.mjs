// What the Chromium tests share (demo.test.mjs, ux.test.mjs): Debian's chromium
// through npm playwright-core and the demo server (tools/serve.mjs), or a skip
// (exit 77, ctest: skipped) naming what is missing.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const chromiumPath = process.env.LOUPE_CHROMIUM || '/usr/bin/chromium';
export const skip = (why) => { console.log(`SKIPPED: ${why}`); process.exit(77); };

// {chromium, serve} once chromium, the WebAssembly build in `dist` and playwright-core are there.
export async function browserTools(dist) {
  if (!fs.existsSync(chromiumPath)) skip(`${chromiumPath} not found (apt-get install chromium)`);
  if (!fs.existsSync(path.join(dist, 'loupe-mt.js'))) skip(`no WebAssembly build in ${dist}`);
  let chromium;
  try {
    ({ chromium } = await import('playwright-core'));
  } catch {
    skip('npm playwright-core is not installed (bash tools/setup.sh)');
  }
  const { serve } = await import(path.join(root, 'tools/serve.mjs'));
  return { chromium, serve };
}
