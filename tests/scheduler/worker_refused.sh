#!/usr/bin/env bash
# A worker whose registration the daemon refuses exits at once, non-zero, saying why: a wrong token (401)
# and a bad registration (400: a name the daemon does not accept). Before, it lingered on its published
# device host. A right token registers. `jobs` says why a job waits. The token shows in no log and
# no metric. Bounded: each worker must be gone within 15 s.
# Usage: worker_refused.sh RINGWORLD_BINARY
set -euo pipefail
bin=$(readlink -f "$1")
work=$(mktemp -d)
cd "$work"
daemon=""
cleanup() {
  [ -n "$daemon" ] && { kill -9 "$daemon"; wait "$daemon"; } 2> /dev/null || true
  pkill -9 -f "$work/st" 2> /dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*"
  for f in daemon.log w*.log; do [ -f "$f" ] && { echo "--- $f"; tail -20 "$f"; }; done
  exit 1
}
"$bin" daemon --state st --listen 127.0.0.1:0 --data-root . --checkpoint-root . > daemon.log 2>&1 &
daemon=$!
for _ in $(seq 100); do [ -s st/api.addr ] && break; sleep 0.1; done
[ -s st/api.addr ] || fail "the daemon did not start"
addr=$(cat st/api.addr)
head -c 40 /dev/urandom | od -An -tx1 | tr -d ' \n' > wrong-token

# expect_refused LOG EXPECTED_TEXT ARGS...: the worker exits 2 within 15 s and says EXPECTED_TEXT.
expect_refused() {
  local log=$1 want=$2
  shift 2
  local t0=$SECONDS rc=0
  timeout 15 "$bin" worker --daemon "$addr" --devices cpu:1 "$@" > "$log" 2>&1 || rc=$?
  [ "$rc" -eq 2 ] || fail "$log: exit $rc, expected 2 (124: it lingered)"
  grep -q "$want" "$log" || fail "$log: does not say '$want'"
  echo "  $log: exit $rc after $((SECONDS - t0)) s: $(grep 'refused' "$log")"
}
expect_refused w-token.log "refused the registration (401: a bearer token is required" --name w1 --token-file wrong-token
expect_refused w-name.log "refused the registration (400: name:" --name 'bad name!' --token-file st/token

# The right token registers (and the worker stays until told to stop).
"$bin" worker --daemon "$addr" --devices cpu:1 --name w-ok --token-file st/token > w-ok.log 2>&1 &
ok=$!
for _ in $(seq 100); do grep -q "registered with daemon" w-ok.log && break; sleep 0.1; done
grep -q "registered with daemon" w-ok.log || fail "the worker with the right token did not register"
# A job that needs more devices than the cluster has: `jobs` says why it waits.
cat > big.yaml <<'YAML'
name: too-big
model: {vocab_size: 259, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1,
        num_attention_heads: 2, num_key_value_heads: 1}
data: {task: copy}
ring: {devices: 2, min_devices: 2}
stages:
  - {seq_len: 64, rope_theta: 10000, steps: 3, batch: 1}
checkpoint: {dir: ck/big}
YAML
"$bin" submit big.yaml --daemon "$addr" --token-file st/token > /dev/null || fail "submit"
for _ in $(seq 50); do "$bin" jobs --daemon "$addr" --token-file st/token | grep -q "waiting: no valid ring" && break; sleep 0.1; done
"$bin" jobs --daemon "$addr" --token-file st/token > jobs.txt
grep -q "waiting: no valid ring.*2 devices.*1 available" jobs.txt || { cat jobs.txt; fail "jobs does not say why the job waits"; }
echo "  $(grep too-big jobs.txt)"

# The token appears in no log, no job log, no reply of /metrics.
curl -sf "http://$addr/metrics" > metrics.txt || fail "no /metrics"
token=$(cat st/token)
for f in daemon.log w*.log metrics.txt st/logs/*; do
  [ -f "$f" ] && grep -qF "$token" "$f" && fail "$f holds the API token"
done
grep -q 'ringworld_heartbeats_missed_total{worker="w-ok"}' metrics.txt || fail "no series of the registered worker"
kill -TERM "$ok"
wait "$ok" || true
# It drained and left: its series are gone from /metrics.
curl -sf "http://$addr/metrics" | grep -q 'worker="w-ok"' && fail "the series of a worker that left are still served"
echo "  a worker that left: its series are gone from /metrics"
echo "PASS: refused workers exit with the reason; the right token registers"
