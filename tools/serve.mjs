#!/usr/bin/env node
// Serves loupe's browser demo on http://127.0.0.1:PORT with the headers that
// make the page cross-origin isolated (so the WebAssembly engine can use threads):
//   Cross-Origin-Opener-Policy: same-origin
//   Cross-Origin-Embedder-Policy: require-corp
// Static files only, through node's own http module. URL layout:
//   /            demo/ (index.html, app.js, models.json, the demo GGUFs, scenes/)
//   /web/        the WebAssembly build output (loupe.js, loupe-worker.js, loupe-*.js/.wasm)
//   /photos/     ../shared/images when that folder exists (sample photos)
//   /<name>/     any extra --mount name=DIR (tests and benchmarks)
//
// usage: node tools/serve.mjs [--port 8080] [--host 127.0.0.1] [--dist build/wasm/dist]
//                            [--mount name=DIR]... [--quiet] [--no-isolation]
// --port 0 picks a free port; the URL is printed on stdout ("serving http://...").
// Also importable: `const s = await serve({port: 0, mounts: {...}}); s.url; s.close()`.
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

const types = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8', '.json': 'application/json; charset=utf-8', '.wasm': 'application/wasm',
  '.png': 'image/png', '.jpg': 'image/jpeg', '.jpeg': 'image/jpeg', '.gif': 'image/gif', '.bmp': 'image/bmp',
  '.svg': 'image/svg+xml', '.txt': 'text/plain; charset=utf-8', '.md': 'text/plain; charset=utf-8',
  '.gguf': 'application/octet-stream', '.ico': 'image/x-icon',
};

export function defaultDist() {
  for (const d of ['build/wasm/dist', 'build-wasm/dist']) if (fs.existsSync(path.join(root, d, 'loupe-st.js'))) return path.join(root, d);
  return path.join(root, 'build/wasm/dist');
}

// mounts: {prefix: dir}; '' is the site root.
// onResponse(status, method, url): every answer (tests count downloads with it).
export function serve({ port = 8080, host = '127.0.0.1', dist = defaultDist(), mounts = {}, quiet = true, isolate = true,
                        onResponse = null } = {}) {
  const table = { '': path.join(root, 'demo'), web: dist, ...mounts };
  const photos = path.resolve(root, '../shared/images');
  if (!('photos' in table) && fs.existsSync(photos)) table.photos = photos;
  const prefixes = Object.keys(table).sort((a, b) => b.length - a.length);

  const server = http.createServer((req, res) => {
    const headers = {
      ...(isolate ? { 'Cross-Origin-Opener-Policy': 'same-origin', 'Cross-Origin-Embedder-Policy': 'require-corp' } : {}),
      'Cross-Origin-Resource-Policy': 'same-origin',
      'Cache-Control': 'no-cache',
      'X-Content-Type-Options': 'nosniff',
    };
    const done = (code, body, extra = {}) => {
      res.writeHead(code, { ...headers, 'Content-Type': 'text/plain; charset=utf-8', ...extra });
      res.end(body);
      if (!quiet) console.log(`${code} ${req.method} ${req.url}`);
      if (onResponse) onResponse(code, req.method, req.url);
    };
    if (req.method !== 'GET' && req.method !== 'HEAD') return done(405, 'method not allowed\n', { Allow: 'GET, HEAD' });
    let pathname;
    try {
      pathname = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    } catch {
      return done(400, 'bad request\n');
    }
    if (pathname.includes('\0')) return done(400, 'bad request\n');
    let file = null;
    for (const p of prefixes) {
      const pre = p ? `/${p}/` : '/';
      if (p && pathname === `/${p}`) return done(301, '', { Location: `${pre}` });
      if (!pathname.startsWith(pre)) continue;
      const dir = path.resolve(table[p]);
      const f = path.resolve(dir, '.' + pathname.slice(pre.length - 1));
      if (f !== dir && !f.startsWith(dir + path.sep)) return done(403, 'forbidden\n');
      file = f;
      break;
    }
    if (!file) return done(404, 'not found\n');
    fs.stat(file, (err, st) => {
      if (!err && st.isDirectory()) {
        file = path.join(file, 'index.html');
        return fs.stat(file, (e2, st2) => send(e2, st2));
      }
      send(err, st);
    });
    function send(err, st) {
      if (err || !st.isFile()) return done(404, 'not found\n');
      // Conditional requests (the page's model cache revalidates with If-None-Match): 304, no body.
      const etag = `"${st.size.toString(16)}-${Math.floor(st.mtimeMs).toString(16)}"`;
      const lastModified = st.mtime.toUTCString();
      const inm = req.headers['if-none-match'], ims = req.headers['if-modified-since'];
      const fresh = inm ? inm.split(',').some((t) => t.trim().replace(/^W\//, '') === etag)
        : ims ? Math.floor(st.mtimeMs / 1000) <= Math.floor(Date.parse(ims) / 1000) : false;
      if (fresh) {
        res.writeHead(304, { ...headers, ETag: etag, 'Last-Modified': lastModified });
        if (!quiet) console.log(`304 ${req.method} ${req.url}`);
        if (onResponse) onResponse(304, req.method, req.url);
        return res.end();
      }
      const h = { ...headers, 'Content-Type': types[path.extname(file).toLowerCase()] || 'application/octet-stream',
                  'Content-Length': st.size, 'Last-Modified': lastModified, ETag: etag };
      res.writeHead(200, h);
      if (!quiet) console.log(`200 ${req.method} ${req.url} ${st.size}`);
      if (onResponse) onResponse(200, req.method, req.url);
      if (req.method === 'HEAD') return res.end();
      const s = fs.createReadStream(file);
      s.on('error', () => res.destroy());
      s.pipe(res);
    }
  });

  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      const a = server.address();
      const url = `http://${host}:${a.port}/`;
      resolve({ server, url, port: a.port, table, close: () => new Promise((r) => server.close(r)) });
    });
  });
}

// ------------------------------------------------------------------ CLI
if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const args = process.argv.slice(2);
  const opt = { port: 8080, host: '127.0.0.1', mounts: {}, quiet: false };
  for (let i = 0; i < args.length; ++i) {
    const a = args[i], v = () => {
      if (i + 1 >= args.length) { console.error(`serve: ${a} needs a value`); process.exit(2); }
      return args[++i];
    };
    if (a === '--port') opt.port = Number(v());
    else if (a === '--host') opt.host = v();
    else if (a === '--dist') opt.dist = path.resolve(v());
    else if (a === '--mount') {
      const [name, dir] = v().split('=');
      opt.mounts[name] = path.resolve(dir);
    } else if (a === '--quiet') opt.quiet = true;
    else if (a === '--no-isolation') opt.isolate = false;  // no COOP/COEP: tries the single-threaded fallback
    else if (a === '-h' || a === '--help') {
      console.log('usage: node tools/serve.mjs [--port 8080] [--host 127.0.0.1] [--dist DIR] [--mount name=DIR]... [--quiet] [--no-isolation]');
      process.exit(0);
    } else { console.error(`serve: unknown argument ${a}`); process.exit(2); }
  }
  if (!opt.dist) opt.dist = defaultDist();
  if (!fs.existsSync(path.join(opt.dist, 'loupe-st.js')))
    console.error(`serve: warning: ${opt.dist} has no loupe-st.js: build the WebAssembly engine first (cmake --build build)`);
  serve(opt).then((s) => {
    console.log(`serving ${s.url}  (demo: ${s.table['']}, engine: ${s.table.web}; ${opt.isolate === false ? 'NOT ' : ''}cross-origin isolated; Ctrl-C stops)`);
  }, (err) => {
    console.error(`serve: ${err.message}`);
    process.exit(1);
  });
}
