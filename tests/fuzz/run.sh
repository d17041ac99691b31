#!/usr/bin/env bash
# Runs the libFuzzer harnesses of a LOUPE_FUZZ build, each for SECONDS, from a
# fresh corpus of its seeds and regression inputs; fails if any found a crash,
# a sanitizer report, a hang (> 10 s on one input), a leak or a memory blow-up
# (> 2 GB RSS or one allocation past it). See tests/fuzz/README.md.
#
#   tests/fuzz/run.sh BUILD_DIR SECONDS [NAME...]   (default: every harness)
#   JOBS=2 tests/fuzz/run.sh build-san 600          (the long campaign, two at a time)
#
# Prints one line per harness (runs, coverage, result) and a table for the README.
# A crashing input is left in BUILD_DIR/fuzz-artifacts/NAME/; once fixed, copy it
# to tests/fuzz/regressions/NAME/, where every ctest run replays it.
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
build=$(cd "$1" && pwd)
seconds=$2
shift 2
here=$(cd "$(dirname "$0")" && pwd)
seeds_file="$build/fuzz-seeds.txt"
[ -f "$seeds_file" ] || { echo "run.sh: $seeds_file is missing: configure $build with -DLOUPE_FUZZ=ON" >&2; exit 2; }
names=("$@")
[ ${#names[@]} -gt 0 ] || mapfile -t names < <(cut -d' ' -f1 "$seeds_file")

# One harness: fresh corpus, run, summary line in $build/fuzz-logs/NAME.summary.
one() {
  local name=$1 exe="$build/tests/fuzz/fuzz_$1"
  [ -x "$exe" ] || { echo "$name: $exe not built (LOUPE_FUZZ=ON, clang)" > "$build/fuzz-logs/$name.summary"; return 1; }
  local corpus="$build/fuzz-corpus/$name" artifacts="$build/fuzz-artifacts/$name/" log="$build/fuzz-logs/$name.log"
  rm -rf "$corpus" "$artifacts"
  mkdir -p "$corpus" "$artifacts"
  # libFuzzer takes folders: seed files are copied into the fresh corpus, seed folders read as they are.
  local seed dirs=()
  for seed in $(grep "^$name " "$seeds_file" | cut -d' ' -f2-) "$here/regressions/$name"; do
    if [ -d "$seed" ]; then dirs+=("$seed"); elif [ -f "$seed" ]; then cp "$seed" "$corpus/"; fi
  done
  local rc=0
  # -rss_limit_mb also caps a single allocation (malloc_limit_mb defaults to it).
  "$exe" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$artifacts" "$corpus" "${dirs[@]}" > "$log" 2>&1 || rc=$?
  local runs cov
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  cov=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$log" | tail -1 || true)
  local found
  found=$(find "$artifacts" -type f | wc -l)
  if [ "$rc" = 0 ] && [ "$found" = 0 ]; then
    echo "$name: ${seconds} s, ${runs} runs, ${cov:-cov ?}, 0 crashes" > "$build/fuzz-logs/$name.summary"
  else
    echo "$name: FAILED (exit $rc, $found artifacts in $artifacts; log $log)" > "$build/fuzz-logs/$name.summary"
    grep -m1 -A12 "ERROR: \|==ERROR\|runtime error\|deadly signal\|Timeout\|out-of-memory" "$log" \
      >> "$build/fuzz-logs/$name.summary" || true
    return 1
  fi
}
export -f one
export build seconds here seeds_file
mkdir -p "$build/fuzz-logs"

start=$(date +%s)
status=0
printf '%s\n' "${names[@]}" | xargs -P "${JOBS:-1}" -I{} bash -c 'one "$@"' _ {} || status=1
for n in "${names[@]}"; do cat "$build/fuzz-logs/$n.summary"; done
echo "fuzz: ${#names[@]} harnesses, ${seconds} s each, $(( $(date +%s) - start )) s in all ($(date -u +%Y-%m-%d))"
exit $status
