#!/usr/bin/env bash
# One worker's death must not disturb the rings that do not use it. Three workers of 2 CPU devices, three
# jobs, each on a ring of 2 inside one worker; kill -9 one worker: its job re-forms, the other two run on
# in the same ring (epoch 1), untouched. Before the fix in actors/openssl_error_queue.cpp, every ring
# failed at once ("device lost (remote_link_unreachable)"): CAF's OpenSSL module read the dead connection's
# error as its own on every other connection. Bounded: about 20 s.
# Usage: worker_isolation.sh RINGWORLD_BINARY REPO_ROOT
set -euo pipefail
bin=$(readlink -f "$1")
cfg=$(readlink -f "$2")/configs/tiny-cpu.yaml
work=$(mktemp -d)
cd "$work"
cleanup() {
  pkill -9 -f -- "--state $work/st" 2> /dev/null || true
  pkill -9 -f -- "--token-file $work/st/token" 2> /dev/null || true
  wait 2> /dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*"
  for f in daemon.log w*.log st/logs/*.log; do [ -f "$f" ] && { echo "--- $f"; grep -v " step [0-9]*/" "$f" | tail -15; }; done
  exit 1
}
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local end=$((SECONDS + $1)) what=$2
  shift 2
  until "$@" > /dev/null 2>&1; do
    [ $SECONDS -lt $end ] || fail "$what (not within the time)"
    sleep 0.2
  done
}
"$bin" daemon --state "$work/st" --listen 127.0.0.1:0 --data-root . --checkpoint-root . --worker-timeout 3 > daemon.log 2>&1 &
wait_for 10 "the daemon's api.addr" test -s st/api.addr
addr=$(cat st/api.addr)
rw() { "$bin" "$@" --daemon "$addr" --token-file "$work/st/token"; }
declare -A pid
for w in w1 w2 w3; do
  "$bin" worker --daemon "$addr" --devices cpu:2 --name $w --token-file "$work/st/token" > $w.log 2>&1 &
  pid[$w]=$!
done
alive3() { [ "$(rw workers | grep -c ' alive')" -eq 3 ]; }
wait_for 20 "three workers registered" alive3
for j in a b c; do
  rw submit "$cfg" --set ring.devices=2 --set ring.min_devices=2 --set ring.threads_per_device=1 \
    --set stages.0.seq_len=128 --set stages.0.batch=2 --set stages.0.steps=100000 --set stages.1.steps=1 \
    --set name=$j --set checkpoint.dir=ck/$j --set checkpoint.every_steps=50 --set output_dir=out/$j > /dev/null
done
three_rings() { [ "$(cat st/logs/*.log | grep -c 'ring of 2 devices on w[123] (2), inproc, epoch 1')" -eq 3 ]; }
wait_for 30 "three rings of 2, one per worker" three_rings
sleep 2
victim=$(grep -l "ring of 2 devices on w2 (2)" st/logs/*.log)
{ kill -9 "${pid[w2]}"; wait "${pid[w2]}"; } 2> /dev/null || true
reformed() { grep -q "ring failed" "$victim"; }
wait_for 15 "the job of w2 noticed its loss" reformed
sleep 3  # time for a wrongly broken ring to show
for f in st/logs/*.log; do
  [ "$f" = "$victim" ] && continue
  ! grep -q "ring failed" "$f" || fail "$(basename "$f" .log), on another worker, lost its ring when w2 died"
  n1=$(grep -c " step " "$f")
  sleep 1
  [ "$(grep -c " step " "$f")" -gt "$n1" ] || fail "$(basename "$f" .log) stopped stepping after w2 died"
done
echo "kill -9 of w2: its job re-formed, the two rings on w1 and w3 ran on untouched"
