#!/usr/bin/env bash
# The main command: installs what is missing, builds loupe natively and for
# WebAssembly, prints a native description of a bundled scene with the demo
# model, then serves the browser demo (cross-origin isolated, so with threads)
# on http://127.0.0.1:${PORT:-8080}/ until Ctrl-C.
#   bash tools/demo.sh            PORT=9000 bash tools/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
targets=(loupe_cli loupe-convert)
# loupe_wasm: the WebAssembly engine (web/wasm.cmake; absent without Emscripten or with -DLOUPE_WASM=OFF)
if cmake --build build --target help 2>/dev/null | grep -q loupe_wasm; then targets+=(loupe_wasm); fi
cmake --build build -j"$(nproc)" --target "${targets[@]}"

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
  const a = (e.adapters || [])[0];
  console.log([e.model ? path.join("demo", e.model) : "", e.mmproj ? path.join("demo", e.mmproj) : "", scene,
               (e.prompt || "Describe this image.").replace(/\n/g, " "), a ? path.join("demo", a.file) : ""].join("\n"));
')
model=${pick[0]:-} mmproj=${pick[1]:-} scene=${pick[2]:-} prompt=${pick[3]:-Describe this image.} adapter=${pick[4]:-}
if [ -f "$model" ] && [ -f "$mmproj" ] && [ -f "$scene" ]; then
  echo "== loupe describe (native) of $scene, prompt \"$prompt\""
  build/bin/loupe describe -m "$model" --mmproj "$mmproj" --image "$scene" -p "$prompt" -n 128
  if [ -f "$adapter" ]; then
    echo "== the same with the Lithuanian adapter (--lora $adapter)"
    build/bin/loupe describe -m "$model" --mmproj "$mmproj" --image "$scene" -p "$prompt" -n 128 --lora "$adapter"
  fi
else
  echo "== the demo model is not in demo/ yet ($model, $mmproj, $scene): skipping the native description;"
  echo "   the page still loads your own GGUF files (\"Load your own model\")."
fi
if [ ! -f build/wasm/dist/loupe-st.js ]; then
  echo "== no WebAssembly build (Emscripten missing, or -DLOUPE_WASM=OFF): not serving the browser demo" >&2
  exit 1
fi
echo "== browser demo"
exec node tools/serve.mjs --port "${PORT:-8080}"
