#!/usr/bin/env bash
# The CUDA build (LOUPE_CUDA=ON, sm_80 + sm_90) as a machine without a GPU can
# check it, so that it cannot rot where CI runs:
#   - it configures and builds (the CLI, the seam's tests and the GPU tests);
#   - its loupe links the CUDA runtime statically (needs only the driver);
#   - asked for --device cuda or auto it says why there is no GPU and prints
#     what the CPU-only build prints;
#   - the seam's CPU-side tests pass in it, and the GPU tests exit 77 saying why.
# On a machine with a GPU it runs the GPU tests instead (ctest -L cuda).
# usage: build_without_gpu.sh CUDA_BUILD_DIR CPU_BUILD_DIR     (77: no nvcc here)
set -euo pipefail
build=$1 cpu_build=$2
nvcc=$(command -v nvcc || true)
[ -n "$nvcc" ] || [ ! -x /usr/local/cuda/bin/nvcc ] || nvcc=/usr/local/cuda/bin/nvcc
if [ -z "$nvcc" ]; then echo "SKIP: no nvcc (CUDA toolkit) on this machine"; exit 77; fi

cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DLOUPE_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc" -DLOUPE_WASM=OFF > "$build.configure.log" 2>&1 \
  || { cat "$build.configure.log"; exit 1; }
cmake --build "$build" -j "$(nproc)" --target loupe_cli test_backend test_cuda_ops test_cuda_pipeline

if nvidia-smi -L > /dev/null 2>&1; then
  echo "a GPU is here: running the GPU tests"
  exec ctest --test-dir "$build" -L cuda --output-on-failure
fi

fail() { echo "FAIL: $*"; exit 1; }
if ldd "$build/bin/loupe" | grep -q libcudart; then fail "bin/loupe links the CUDA runtime dynamically"; fi

describe=(describe -m demo/shapes-q4_0.gguf --mmproj demo/mmproj-shapes-q4_0.gguf
          --image demo/scenes/scene-1000-0007.png -p "What does this image show?")
want=$("$cpu_build/bin/loupe" "${describe[@]}" 2> /dev/null)
for device in cuda auto; do
  got=$("$build/bin/loupe" "${describe[@]}" --device $device 2> "$build/stderr.txt")
  echo "--device $device: $(head -1 "$build/stderr.txt")"
  [ "$got" = "$want" ] || fail "--device $device printed '$got', the CPU build '$want'"
  case $device in
    cuda) grep -q "^CUDA requested but unavailable: .*; using the CPU$" "$build/stderr.txt" || fail "no fallback message for --device cuda" ;;
    auto) grep -q "^no CUDA GPU: .*; using the CPU$" "$build/stderr.txt" || fail "no fallback message for --device auto" ;;
  esac
done

"$build/tests/test_backend"
for t in test_cuda_ops test_cuda_pipeline; do
  set +e
  out=$("$build/tests/$t" 2>&1)
  rc=$?
  set -e
  why=$(grep "^SKIP: " <<< "$out" || true)
  echo "$t: exit $rc, $why"
  [ $rc -eq 77 ] && [ -n "$why" ] || fail "$t without a GPU: exit $rc (want 77 and SKIP: <why>): $out"
done
echo "CUDA build checked without a GPU"
