#!/usr/bin/env bash
# run_fuzzer.sh FUZZER CORPUS SECONDS: replays every input of CORPUS (the seeds, and the input of every bug
# found, kept as a regression), then fuzzes for SECONDS starting from it. New inputs go to a scratch
# corpus, never into the repository. Any crash, leak, sanitizer report, timeout (10 s) or RSS over 2 GB
# fails; the input that did it is printed (base64) and left under $RW_FUZZ_ARTIFACTS (default: the build's
# fuzz-artifacts/) to add to CORPUS once the bug is fixed.
set -euo pipefail
fuzzer=$1
corpus=$2
seconds=$3
name=$(basename "$fuzzer")
artifacts=${RW_FUZZ_ARTIFACTS:-$(dirname "$fuzzer")/fuzz-artifacts}/$name
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$artifacts" "$work/corpus"
n=$(find "$corpus" -type f | wc -l)
[ "$n" -gt 0 ] || { echo "FAIL: $corpus has no inputs"; exit 1; }
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
opts=(-timeout=10 -rss_limit_mb=2048 -max_len=65536 -artifact_prefix="$artifacts/" -print_final_stats=1)
report() {
  echo "FAIL: $name: the inputs that failed (base64):"
  for f in "$artifacts"/*; do [ -f "$f" ] && { echo "$f"; base64 -w0 "$f"; echo; }; done
  exit 1
}
echo "$name: replaying $n inputs of $corpus"
"$fuzzer" "${opts[@]}" -runs=0 "$corpus" > "$work/replay.log" 2>&1 || { tail -60 "$work/replay.log"; report; }
echo "$name: fuzzing for $seconds s"
"$fuzzer" "${opts[@]}" -max_total_time="$seconds" "$work/corpus" "$corpus" > "$work/fuzz.log" 2>&1 ||
  { tail -60 "$work/fuzz.log"; report; }
grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb|cov: " "$work/fuzz.log" | tail -3
