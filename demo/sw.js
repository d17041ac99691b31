// The demo's service worker: the page works offline once it has been visited.
// Every same-origin GET (the page, the engine's scripts and .wasm, the scene
// images, models.json) goes to the network first and a copy is kept; without a
// network the kept copy answers. Model files (.gguf) are left alone: the engine's
// worker keeps them in its own model cache (OPFS, web/loupe-worker.js), which
// also knows when the server's copy changed.
'use strict';
const kCache = 'loupe-page-v1';

self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', (e) => e.waitUntil(self.clients.claim()));

self.addEventListener('fetch', (e) => {
  const r = e.request;
  const url = new URL(r.url);
  if (r.method !== 'GET' || url.origin !== self.location.origin || /\.gguf$/i.test(url.pathname) || r.headers.has('Range')) return;
  e.respondWith((async () => {
    const cache = await caches.open(kCache);
    try {
      const res = await fetch(r);
      if (res.ok) await cache.put(r, res.clone());
      return res;
    } catch (err) {
      // The page under any query string (?threads=2 ...) is the same file.
      const kept = await cache.match(r, { ignoreSearch: r.mode === 'navigate' });
      if (kept) return kept;
      throw err;
    }
  })());
});
