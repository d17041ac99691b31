#!/usr/bin/env bash
# Runs every test: installs dependencies, builds native (and WASM) and runs ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
jobs=$(nproc)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$jobs"
log=build/ctest.log
ctest --test-dir build --output-on-failure -j"$jobs" 2>&1 | tee "$log"

# The sanitizer job (LOUPE_SANITIZE=OFF skips it): clang with AddressSanitizer +
# UndefinedBehaviorSanitizer, every report fatal; the unit tests and the fuzz
# regression inputs (ctest -L unit), then each libFuzzer harness for
# LOUPE_FUZZ_SMOKE_S seconds (tests/fuzz/run.sh; the long campaign is in
# tests/fuzz/README.md).
if [ "${LOUPE_SANITIZE:-ON}" != OFF ]; then
  cmake -S . -B build-san -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DLOUPE_SANITIZE=ON -DLOUPE_FUZZ=ON -DLOUPE_WASM=OFF >/dev/null
  cmake --build build-san -j"$jobs"
  ctest --test-dir build-san -L unit --output-on-failure -j"$jobs" 2>&1 | tee build-san/ctest.log
  tests/fuzz/run.sh build-san "${LOUPE_FUZZ_SMOKE_S:-30}"
fi

# In CI every test must run: a skipped one (missing ../shared, chromium, a tool) fails the run.
if [ "${CI:-}" = true ] && grep -q "(Skipped)" "$log" build-san/ctest.log 2>/dev/null; then
  echo "CI: the tests above marked (Skipped) did not run; in CI every test must" >&2
  exit 1
fi
