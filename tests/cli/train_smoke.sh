#!/usr/bin/env bash
# `ringworld train` as a user runs it: the main job (shortened with --set) writes one metrics line per
# step with every field, the loss falls, and a bad job file exits 2 naming the key.
set -euo pipefail
bin=$1
cfg=$2
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

"$bin" train "$cfg" --set output_dir="$out" --set stages.0.steps=40 --set stages.1.steps=4 > "$out/log"
cat "$out/log"
lines=$(wc -l < "$out/metrics.jsonl")
[ "$lines" -eq 44 ] || { echo "FAIL: $lines metrics lines, expected 44"; exit 1; }
for key in step stage seq_len loss grad_norm lr tokens tokens_per_s step_seconds ring_overlap_ratio peak_bytes; do
  grep -q "\"$key\": " "$out/metrics.jsonl" || { echo "FAIL: metrics.jsonl lacks $key"; exit 1; }
done
first=$(head -1 "$out/metrics.jsonl" | sed 's/.*"loss": \([0-9.]*\).*/\1/')
last=$(sed -n '40p' "$out/metrics.jsonl" | sed 's/.*"loss": \([0-9.]*\).*/\1/')
awk -v a="$first" -v b="$last" 'BEGIN { if (!(b < a - 1.0)) { print "FAIL: loss " a " -> " b " did not fall by 1"; exit 1 } }'
grep -q '"stage": 1, "seq_len": 512' "$out/metrics.jsonl" || { echo "FAIL: no stage-1 step at seq_len 512"; exit 1; }
echo "loss $first -> $last over 40 steps"

printf 'name: bad\nmodel: {hiden_size: 3}\nstages: [{seq_len: 8, steps: 1}]\n' > "$out/bad.yaml"
set +e
"$bin" train "$out/bad.yaml" 2> "$out/err"
rc=$?
set -e
[ "$rc" -eq 2 ] || { echo "FAIL: bad job file exited $rc, expected 2"; exit 1; }
grep -q "bad.yaml: model.hiden_size: unknown key" "$out/err" || { echo "FAIL: message: $(cat "$out/err")"; exit 1; }
echo "bad job file: $(cat "$out/err")"
echo "1 passed, 0 failed"
