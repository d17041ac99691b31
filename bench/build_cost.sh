#!/usr/bin/env bash
# Build cost of a consumer: compiles tests/consumer/pipeline_user.cpp (a TU that
# uses the pipeline API: models, two sessions with adapters, images, streaming)
# at -O2 against include/, 3 times, and prints the median wall time and peak
# memory of the compiler. The implementation half (src/loupe.cpp) is timed too,
# once: it is what the loupe::loupe library compiles a single time.
#   bash bench/build_cost.sh [CXX]
set -euo pipefail
cd "$(dirname "$0")/.."
cxx=${1:-g++}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
measure() {  # prints "seconds peak_MiB"
  /usr/bin/time -f "%e %M" -o "$out/t" "$cxx" "$@" -o "$out/o.o" >/dev/null 2>&1
  awk '{printf "%.2f %.0f\n", $1, $2 / 1024}' "$out/t"
}
flags=(-std=c++17 -O2 -ffp-contract=off -Iinclude -c)
for i in 1 2 3; do measure "${flags[@]}" tests/consumer/pipeline_user.cpp; done | sort -n | sed -n 2p |
  awk '{printf "consumer TU (tests/consumer/pipeline_user.cpp), -O2: %s s, %s MiB (median of 3)\n", $1, $2}'
measure "${flags[@]}" -I/usr/include/stb -I/usr/include/eigen3 -DLOUPE_HAVE_EIGEN=1 -march=native src/loupe.cpp |
  awk '{printf "implementation TU (src/loupe.cpp), -O2 -march=native: %s s, %s MiB (once per build)\n", $1, $2}'
