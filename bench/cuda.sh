#!/usr/bin/env bash
# The GPU benchmark of issue #16, one run on a machine with an NVIDIA GPU: loupe's
# CUDA backend and PyTorch eager fp16 (transformers, bench/torch_gpu.py) on the same
# card, the same shapes: a 7B-shaped Q4_0 LLaMA (loupe_bench make-llama; PyTorch runs
# the same shape in fp16) and CLIP ViT-L/14-336 (make-mmproj, F16).
#   decode B = 1, 16, 64 (aggregate tok/s), prefill 608 positions, CLIP encode,
#   image + 32-token prompt to the first token.
# Rounds alternate loupe and PyTorch; the table (medians, ratios) goes to $OUT/cuda-bench.md.
# llama.cpp's CUDA build (npm @node-llama-cpp/linux-x64-cuda) is not in it: its
# libraries do not fit in what the device tool carries (64 MiB).
#   usage: OUT=DIR bash bench/cuda.sh          (about 5 minutes on an H100, most of it making the 7B file)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-build-gpu/out}
cache=${LOUPE_BENCH_CACHE:-/tmp/loupe-bench-cache}
build=${LOUPE_BENCH_BUILD:-build-gpu}
rounds=${LOUPE_BENCH_ROUNDS:-2}
mkdir -p "$out" "$cache"
nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DLOUPE_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc" -DCMAKE_CUDA_ARCHITECTURES=native \
      -DLOUPE_WASM=OFF > "$out/bench-configure.log" 2>&1 || { tail -20 "$out/bench-configure.log"; exit 1; }
cmake --build "$build" --target loupe_bench -j "$(nproc)" > /dev/null
bin=$build/bin/loupe_bench
llm=$cache/llama-7b-q4_0.gguf mmproj=$cache/mmproj-vit-l-336-f16.gguf
[ -f "$llm" ] || "$bin" make-llama "$llm" --type q4_0 --vocab demo/shapes-q4_0.gguf  # the LLaMA-2 vocabulary it embeds
[ -f "$mmproj" ] || "$bin" make-mmproj "$mmproj"

log=$out/cuda-bench.jsonl
: > "$log"
for round in $(seq "$rounds"); do
  echo "round $round: loupe" >&2
  "$bin" llm "$llm" --device cuda --prompt 608 --gen 128 --ctx 1024 | tee -a "$log"
  "$bin" batch "$llm" --device cuda --n 1,16,64 --prompt 32 --gen 64 | tee -a "$log"
  "$bin" clip "$mmproj" --device cuda | tee -a "$log"
  "$bin" ttft "$llm" "$mmproj" --device cuda --prompt 32 | tee -a "$log"
  echo "round $round: PyTorch" >&2
  python3 bench/torch_gpu.py --rounds 3 | tee -a "$log"
done

# Medians per measurement and engine, and the ratios the issue asks for.
python3 - "$log" > "$out/cuda-bench.md" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
def med(pred, key):
    v = [r[key] for r in rows if pred(r) and key in r]
    return statistics.median(v) if v else None
loupe = lambda r: r.get("engine") == "loupe"
torch_ = lambda r: r.get("engine", "").startswith("pytorch")
card = next((r["device"] for r in rows if torch_(r)), next((r.get("device") for r in rows if loupe(r)), "?"))
print(f"GPU: {card}\n")
print("| measurement | loupe CUDA | PyTorch eager fp16 | loupe / PyTorch |\n|---|---|---|---|")
def line(name, a, b, unit, higher=True):
    ratio = f"{(a / b if higher else b / a):.2f}x" if a and b else "-"
    fmt = lambda x: "-" if x is None else f"{x:.1f} {unit}"
    print(f"| {name} | {fmt(a)} | {fmt(b)} | {ratio} |")
for B in (1, 16, 64):
    line(f"decode B = {B} (aggregate)", med(lambda r: loupe(r) and r.get("batch") == B, "aggregate_tok_s"),
         med(lambda r: torch_(r) and r.get("batch") == B, "aggregate_tok_s"), "tok/s")
line("prefill 608 positions", med(lambda r: loupe(r) and r.get("prefill_tokens") == 608, "prefill_tok_s"),
     med(torch_, "prefill_tok_s"), "tok/s")
line("CLIP ViT-L/14-336 encode", med(loupe, "clip_ms"), med(torch_, "clip_ms"), "ms", higher=False)
line("image + 32 tokens: first token", med(loupe, "ttft_ms"), None, "ms", higher=False)
b1, b64 = med(lambda r: loupe(r) and r.get("batch") == 1, "aggregate_tok_s"), med(lambda r: loupe(r) and r.get("batch") == 64, "aggregate_tok_s")
if b1 and b64:
    print(f"\nloupe B = 64 aggregate / B = 1: {b64 / b1:.1f}x (target >= 10x); CLIP target <= 10 ms")
EOF
cat "$out/cuda-bench.md"
