#!/usr/bin/env bash
# The NEON kernels, run for real: tests/test_ops.cpp cross-compiled for AArch64
# (Debian g++-aarch64-linux-gnu) and run under qemu-user, where the active kernel
# level must be "neon" and every NEON kernel must equal the scalar reference.
#   tests/cross/aarch64.sh OUT_DIR        exit 77 (ctest: skipped) without the tools
set -euo pipefail
src="$(cd "$(dirname "$0")/../.." && pwd)"
out="$1"
cxx=$(command -v aarch64-linux-gnu-g++ || true)
qemu=$(command -v qemu-aarch64 || command -v qemu-aarch64-static || true)
if [ -z "$cxx" ] || [ -z "$qemu" ] || [ ! -d /usr/aarch64-linux-gnu ]; then
  echo "skipped: needs g++-aarch64-linux-gnu and qemu-user (tools/setup.sh installs them)"
  exit 77
fi
mkdir -p "$out"
"$cxx" -std=c++17 -O2 -Wall -Wextra -ffp-contract=off -pthread -I "$src/include" -isystem /usr/include/eigen3 -isystem /usr/include/stb \
  -isystem /usr/include/doctest/.. -DLOUPE_SOURCE_DIR="\"$src\"" \
  -DLOUPE_BINARY_DIR="\"$out\"" -DLOUPE_TEST_TMP="\"$out\"" "$src/tests/test_ops.cpp" "$src/tests/test_main.cpp" "$src/src/loupe.cpp" -o "$out/test_ops_aarch64"
log="$out/test_ops_aarch64.log"
QEMU_LD_PREFIX=/usr/aarch64-linux-gnu "$qemu" "$out/test_ops_aarch64" -s 2>&1 | tee "$log" | tail -4
grep -q "active kernels: neon" "$log" || { echo "the NEON kernels were not the active level"; exit 1; }
grep -q "Status: SUCCESS" "$log"
