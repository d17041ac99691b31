#!/usr/bin/env bash
# One command for the whole CPU benchmark: builds loupe_bench (Release, this
# CPU's kernels are picked at run time), makes the synthetic 7B / ViT-L models
# once in $LOUPE_BENCH_CACHE (default /work/bench-cache, outside the repo),
# then runs loupe and llama.cpp (npm node-llama-cpp) alternately and prints the
# table of medians. See bench/README.md; bench/bench.mjs lists the knobs.
#
#   bench/run.sh                        # 3 rounds, 1 and 2 threads, Q4_0 and Q8_0
#   LOUPE_BENCH_ROUNDS=1 LOUPE_BENCH_TYPES=q4_0 bench/run.sh   # a quick look
#   bench/run.sh batching               # batched decoding, B = 1..16 (bench/batching.mjs)
#   bench/run.sh serve                  # loupe serve under load, --parallel 1 vs 8 (bench/serve.mjs)
#   bench/run.sh caption                # loupe caption, images/hour at --batch 1 vs 8 (bench/caption.mjs)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${LOUPE_BENCH_BUILD:-build-bench}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DLOUPE_WASM=OFF -DLOUPE_BUILD_TESTS=OFF >/dev/null
cmake --build "$build" --target loupe_bench -j"$(nproc)" >/dev/null
if [ "${1:-}" = batching ]; then
  LOUPE_BENCH_BIN="$PWD/$build/bin/loupe_bench" exec node bench/batching.mjs
fi
if [ "${1:-}" = serve ]; then
  cmake --build "$build" --target loupe_cli -j"$(nproc)" >/dev/null
  LOUPE_BENCH_BIN="$PWD/$build/bin/loupe_bench" LOUPE_SERVE_BIN="$PWD/$build/bin/loupe" exec node bench/serve.mjs
fi
if [ "${1:-}" = caption ]; then
  cmake --build "$build" --target loupe_cli loupe-convert -j"$(nproc)" >/dev/null
  LOUPE_BENCH_BIN="$PWD/$build/bin/loupe_bench" LOUPE_CAPTION_BIN="$PWD/$build/bin/loupe" exec node bench/caption.mjs
fi
if [ ! -d node_modules/node-llama-cpp ]; then
  echo "node-llama-cpp is missing: npm install --ignore-scripts --omit=optional --no-audit --no-fund node-llama-cpp@3.22.1 @node-llama-cpp/linux-x64@3.22.1" >&2
  exit 1
fi
LOUPE_BENCH_BIN="$PWD/$build/bin/loupe_bench" exec node bench/bench.mjs
