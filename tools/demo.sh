#!/usr/bin/env bash
# The main command: installs what is missing, builds loupe natively (and for
# WebAssembly once web/ lands), prints a native description of a bundled scene with the demo
# model, then serves the browser demo (cross-origin isolated, so with threads)
# on http://127.0.0.1:${PORT:-8080}/ until Ctrl-C.
#   bash tools/demo.sh            PORT=9000 bash tools/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target loupe_cli loupe-convert

# The default model, the first scene and the prompt, from the demo's manifest (one per line).
mapfile -t pick < <(node -e '
  const fs = require("fs"), path = require("path");
  const m = JSON.parse(fs.readFileSync("demo/models.json", "utf8"));
  const e = m.models.find((x) => x.id === m.default) || {};
  let scene = "";
  try {
    const capFile = path.join("demo", m.scenes), j = JSON.parse(fs.readFileSync(capFile, "utf8"));
    const list = Array.isArray(j) ? j : Array.isArray(j.scenes) ? j.scenes : Object.keys(j).map((file) => ({ file }));
    const s = list.map((x) => x.file || x.image || x.name).find((f) => f && /\.(png|jpe?g|gif|bmp)$/i.test(f));
    if (s) scene = path.join(path.dirname(capFile), s);
  } catch {}
  console.log([e.model ? path.join("demo", e.model) : "", e.mmproj ? path.join("demo", e.mmproj) : "", scene,
               (e.prompt || "Describe this image.").replace(/\n/g, " ")].join("\n"));
')
model=${pick[0]:-} mmproj=${pick[1]:-} scene=${pick[2]:-} prompt=${pick[3]:-Describe this image.}
if [ -f "$model" ] && [ -f "$mmproj" ] && [ -f "$scene" ]; then
  echo "== loupe describe (native) of $scene"
  build/bin/loupe describe -m "$model" --mmproj "$mmproj" --image "$scene" -p "$prompt" -n 128
else
  echo "== the demo model is not in demo/ yet ($model, $mmproj, $scene): skipping the native description;"
  echo "   the page still loads your own GGUF files (\"Load your own model\")."
fi
if [ -f tools/serve.mjs ] && [ -d build/wasm ]; then
  echo "== browser demo"
  exec node tools/serve.mjs --port "${PORT:-8080}"
fi
echo "== the browser demo (WebAssembly build) is not part of this build yet"
