#!/usr/bin/env bash
# The GPU checks in one run, for a machine with an NVIDIA GPU (the device tool's
# H100/H200): build the CUDA backend for this card, run ctest -L cuda, and keep
# the logs in $OUT (default build-gpu/out). Needs ../shared for the real-weight cases.
#   usage: OUT=DIR bash tools/cuda_device_check.sh   (about 8 minutes: build, ctest -L cuda, bench/cuda.sh)
set -euo pipefail
out=${OUT:-build-gpu/out}
mkdir -p "$out"
nvidia-smi | tee "$out/nvidia-smi.txt"
nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DLOUPE_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc" \
      -DCMAKE_CUDA_ARCHITECTURES=native -DLOUPE_WASM=OFF > "$out/configure.log" 2>&1 || { tail -30 "$out/configure.log"; exit 1; }
cmake --build build-gpu -j "$(nproc)" --target loupe_cli test_backend test_cuda_ops test_cuda_pipeline 2>&1 | tail -5
ctest --test-dir build-gpu -L cuda --output-on-failure -V 2>&1 | tee "$out/ctest-cuda.log"
build-gpu/bin/loupe describe --device cuda -m demo/shapes-q4_0.gguf --mmproj demo/mmproj-shapes-q4_0.gguf \
  --image demo/scenes/scene-1000-0007.png -p "What does this image show?" 2>&1 | tee "$out/describe.txt"
# The benchmark against PyTorch eager fp16 on the same card (bench/cuda.sh; its table: $out/cuda-bench.md).
OUT="$out" LOUPE_BENCH_BUILD=build-gpu bash bench/cuda.sh
