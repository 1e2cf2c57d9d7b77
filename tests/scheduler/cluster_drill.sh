#!/usr/bin/env bash
# The daemon with real processes on loopback: a daemon, two workers of 2 CPU devices each, jobs on rings
# of 4 over UCX, and the faults a cluster meets, each bounded in time:
#   1. submit -> SUCCEEDED; kill -9 one worker mid-step: the ring becomes 2 and the job finishes, its loss
#      curve equal (within 1e-4) to an undisturbed embedded run; the worker comes back and is used again;
#   2. priority preemption: the lower job checkpoints, is PREEMPTED, requeued automatically and finishes;
#   3. kill -9 the daemon mid-job and restart it: the job continues from its last recorded checkpoint, no job
#      is lost or duplicated (an idempotent resubmission finds the same job);
#   4. SIGTERM drill: SIGTERM to a worker (exit 75, job PREEMPTED and resumed), SIGTERM to the daemon
#      (exit 75, the job continues at the next step after restart), the latest checkpoint corrupted while
#      the daemon is down (the previous one is used, with an event), a second SIGTERM exits at once;
#   5. a real Prometheus server scrapes the daemon; promtool checks the metrics we serve and the rules, the
#      config and the alert unit tests we ship; every metric the dashboard and the alerts use is served.
# Usage: cluster_drill.sh RINGWORLD_BINARY REPO_ROOT
set -eEuo pipefail
bin=$(readlink -f "$1")
repo=$(readlink -f "$2")
source "$(dirname "$(readlink -f "$0")")/drill_lib.sh"  # wait_for, loss_curve_matches
work=$(mktemp -d)
cd "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2> /dev/null || true; done
  wait 2> /dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'fail "line $LINENO: $BASH_COMMAND exited $?"' ERR
t_start=$SECONDS
fail() {
  echo "FAIL: $*"
  for f in daemon.log w1.log w2.log *.events st/logs/*.log; do [ -f "$f" ] && { echo "--- $f"; tail -30 "$f"; }; done
  exit 1
}
rw() { "$bin" "$@" --daemon "$ADDR" --token-file st/token; }
state_of() { rw status "$1" --json | grep -m1 '"state"' | sed 's/.*"state": "\([A-Z]*\)".*/\1/'; }
is_state() { [ "$(state_of "$1")" = "$2" ]; }
events_of() { rw status "$1"; }
last_step() { [ -f "$1/metrics.jsonl" ] && tail -1 "$1/metrics.jsonl" | sed 's/.*"step": \([0-9]*\),.*/\1/' || echo 0; }
step_at_least() { [ "$(last_step "$1")" -ge "$2" ]; }
healthy() { curl -sf "http://$ADDR/healthz"; }
worker_alive() { rw workers | grep -q "^$1 .*alive"; }

ADDR=127.0.0.1:0
start_daemon() {
  "$bin" daemon --state st --listen "$ADDR" --data-root . --checkpoint-root . --worker-timeout 3 --grace 20 \
    >> daemon.log 2>&1 &
  DAEMON=$!
  pids+=("$DAEMON")
  wait_for 10 "daemon api.addr" test -s st/api.addr
  ADDR=$(cat st/api.addr)
  wait_for 10 "daemon /healthz" healthy
}
start_worker() {
  "$bin" worker --daemon "$ADDR" --devices cpu:2 --name "$1" --token-file st/token --grace 20 >> "$1.log" 2>&1 &
  eval "W_$1=$!"
  pids+=("$!")
  wait_for 15 "worker $1 registered" worker_alive "$1"
}

# The job: tiny-cpu, shortened; a ring of 4 (two workers, UCX) that may shrink to 2.
job=(--set ring.devices=4 --set ring.min_devices=2 --set ring.threads_per_device=1 --set stages.0.seq_len=128
     --set stages.0.batch=2 --set stages.1.seq_len=256 --set stages.1.batch=1 --set checkpoint.every_steps=10
     --set checkpoint.keep=3)
cfg=$repo/configs/tiny-cpu.yaml
submit() {  # submit NAME STEPS0 STEPS1 [more args]; prints the job id
  local name=$1 s0=$2 s1=$3
  shift 3
  rw submit "$cfg" "${job[@]}" --set stages.0.steps="$s0" --set stages.1.steps="$s1" --set name="$name" \
    --set checkpoint.dir="ck/$name" --set output_dir="out/$name" --json "$@" | grep -m1 '"id"' | \
    sed 's/.*"id": "\([^"]*\)".*/\1/'
}

start_daemon
start_worker w1
start_worker w2
echo "daemon at $ADDR, workers w1 w2 ($((SECONDS - t_start)) s)"

# ---- 5 (started first, so it scrapes during the jobs): a real Prometheus -----------------------------------
prom_port=$((20000 + RANDOM % 20000))
cp "$repo/ops/prometheus/alerts.yml" .
sed -e "s/127.0.0.1:8470/$ADDR/" -e 's/scrape_interval: 15s/scrape_interval: 1s/' \
  "$repo/ops/prometheus/prometheus.yml" > prometheus.yml
promtool check config prometheus.yml > /dev/null || fail "promtool check config"
prometheus --config.file=prometheus.yml --storage.tsdb.path=tsdb --web.listen-address="127.0.0.1:$prom_port" \
  > prometheus.log 2>&1 &
pids+=("$!")
# `grep -q PATTERN <(curl ...)`, not `curl ... | grep -q`: under pipefail, grep leaving at its first match
# makes a curl still writing exit on SIGPIPE and fails the pipeline (a flake seen with /metrics).
prom_up() { grep -q '"1"\]' <(curl -sf "http://127.0.0.1:$prom_port/api/v1/query?query=up%7Bjob%3D%22ringworld%22%7D"); }

# ---- 1: submit -> SUCCEEDED; kill -9 a worker of the ring of 4 ----------------------------------------------
"$bin" train "$cfg" "${job[@]}" --set stages.0.steps=50 --set stages.1.steps=10 --set checkpoint.dir= \
  --set output_dir=ref > ref.log || fail "reference run"
A=$(submit elastic 50 10)
wait_for 60 "$A running past step 12" step_at_least out/elastic 12
kill -9 "$W_w2"
wait_for 120 "$A SUCCEEDED after losing w2" is_state "$A" SUCCEEDED
events_of "$A" > A.events
grep -q "ring of 4 devices on w1 (2), w2 (2), ucx" A.events || fail "$A never ran on a ring of 4"
grep -q "devices lost: rank [23] on w2" A.events || fail "$A: the lost device is not in the events"
grep -q "ring of 2 devices on w1 (2), inproc.*shrunk" A.events || fail "$A did not shrink to 2"
# The loss curve continues: every step's loss (its last run) equals the undisturbed run's.
loss_curve_matches ref/metrics.jsonl out/elastic/metrics.jsonl 60 elastic ||
  fail "$A: the loss curve after the shrink departs from the undisturbed run"
rw logs "$A" > A.log
grep -q "step 60/60" A.log || fail "ringworld logs $A lacks the last step"
start_worker w2  # back: registers again under its name
echo "1. elastic ring: 4 -> 2 after kill -9, SUCCEEDED ($((SECONDS - t_start)) s)"

# ---- 1b: the curriculum is the daemon's: a stage that asks for a bigger ring gets one at its checkpoint ------
C=$(submit curriculum 12 6 --set ring.devices=2 --set stages.1.devices=4)
wait_for 60 "$C SUCCEEDED" is_state "$C" SUCCEEDED
rw logs "$C" > C.log
grep -q "ring of 2 devices on w[12] (2), inproc, epoch 1, from step 0, until step 12" C.log ||
  fail "$C: stage 0 did not run on a ring of 2 on one worker"
grep -q "ring of 4 devices on w1 (2), w2 (2), ucx, epoch 2, from step 12" C.log ||
  fail "$C: stage 1 did not get its ring of 4 at the stage's checkpoint"
grep -q "step 13/18 stage 1 seq_len 256" C.log || fail "$C: stage 1 did not run at its seq_len"
echo "1b. curriculum: ring 2 (one worker) -> 4 (two workers) at the stage change ($((SECONDS - t_start)) s)"

# ---- 1c: a hung worker (SIGSTOP) is found by its missing heartbeats and the ring goes on without it ---------
S=$(submit hung 200 10)
wait_for 60 "$S running" step_at_least out/hung 5
t_stop=$SECONDS
kill -STOP "$W_w2"
wait_for 30 "w2 declared lost by heartbeat" grep -q "worker w2 lost: no heartbeat" daemon.log
detect=$((SECONDS - t_stop))
[ "$detect" -le 5 ] || fail "a hung worker took $detect s to be declared lost (timeout 3 s)"
wait_for 30 "$S re-formed on w1" grep -q "ring of 2 devices on w1 (2)" "st/logs/$S.log"
grep -q '^ringworld_heartbeats_missed_total{worker="w2"} 1' <(curl -sf "http://$ADDR/metrics") ||
  fail "heartbeats missed are not counted"
kill -CONT "$W_w2"  # it wakes up, is told to register again, aborts its stale ring and does
registered_thrice() { [ "$(grep -c 'registered with daemon instance' w2.log)" -ge 3 ]; }
wait_for 30 "w2 registered again" registered_thrice
wait_for 60 "$S SUCCEEDED" is_state "$S" SUCCEEDED
echo "1c. hung worker lost after $detect s (heartbeats), ring re-formed, worker back ($((SECONDS - t_start)) s)"

# ---- 2: priority preemption and automatic resume -------------------------------------------------------------
F=$(submit low 150 10)
wait_for 60 "$F running" step_at_least out/low 3
G=$(submit high 15 5 --priority 10)
wait_for 60 "$G SUCCEEDED" is_state "$G" SUCCEEDED
wait_for 120 "$F SUCCEEDED after being preempted" is_state "$F" SUCCEEDED
events_of "$F" > F.events
grep -q "preempting for $G" F.events || fail "$F was not preempted for $G"
grep -q "RUNNING -> PREEMPTED .*preempted by $G" F.events || fail "$F: no PREEMPTED transition"
grep -q "PREEMPTED -> QUEUED .*requeued" F.events || fail "$F was not requeued automatically"
echo "2. priority preemption and automatic resume ($((SECONDS - t_start)) s)"

# ---- 3: kill -9 the daemon mid-job, restart it ----------------------------------------------------------------
H=$(submit crash 60 10 --idempotency-key drill-crash)
wait_for 60 "$H past step 15" step_at_least out/crash 15
kill -9 "$DAEMON"
jobs_before=$(ls st/logs | wc -l)
start_daemon
[ "$(submit crash 60 10 --idempotency-key drill-crash)" = "$H" ] || fail "a resubmission with the same key made a new job"
wait_for 120 "$H SUCCEEDED after the daemon restart" is_state "$H" SUCCEEDED
events_of "$H" > H.events
grep -q "RUNNING -> PREEMPTED .*daemon restarted" H.events || fail "$H: the restart is not in the events"
resumed=$(grep -o "from step [0-9]*" H.events | tail -1 | grep -o "[0-9]*$")
[ "$resumed" -ge 10 ] || fail "$H restarted from step $resumed, not from its checkpoint"
[ "$(rw jobs --json | grep -c '"id"')" -eq 6 ] || fail "jobs lost or duplicated: $(rw jobs)"
[ "$(ls st/logs | wc -l)" -eq "$jobs_before" ] || fail "a job was added by the restart"
echo "3. daemon kill -9 + restart: $H resumed from step $resumed and SUCCEEDED ($((SECONDS - t_start)) s)"

# ---- 4: SIGTERM drill -----------------------------------------------------------------------------------------
I=$(submit term 250 10)
wait_for 60 "$I running" step_at_least out/term 3
kill -TERM "$W_w1"
rc=0
wait "$W_w1" || rc=$?
[ "$rc" -eq 75 ] || fail "worker w1 exited $rc after SIGTERM, expected 75"
wait_for 30 "$I requeued and running on w2" grep -q "ring of 2 devices on w2" st/logs/$I.log
grep -q "a worker stopped the ring (SIGTERM)" st/logs/$I.log || fail "$I: the worker's SIGTERM is not an event"
start_worker w1
grown() { awk '/ring of 2 devices on w2/ { s = 1 } s && /ring of 4 devices on w1 \(2\), w2 \(2\)/ { f = 1 } END { exit !f }' "$1"; }
wait_for 60 "$I back on a ring of 4" grown "st/logs/$I.log"
# SIGTERM to the daemon: the job stops after its step with a checkpoint, the daemon exits 75.
kill -TERM "$DAEMON"
rc=0
wait "$DAEMON" || rc=$?
[ "$rc" -eq 75 ] || fail "daemon exited $rc after SIGTERM, expected 75"
grep -q "PREEMPTED: daemon shutting down" st/logs/$I.log || fail "$I was not preempted by the daemon's SIGTERM"
stopped=$(last_step out/term)
[ -d "ck/term/step-$stopped" ] || fail "$I stopped at step $stopped without its checkpoint"
# Corrupt that newest checkpoint while the daemon is down: the previous one must be used.
printf '\x13\x37' | dd of="ck/term/step-$stopped/model.safetensors" bs=1 seek=5000 conv=notrunc 2> /dev/null
start_daemon
wait_for 120 "$I SUCCEEDED after the daemon's SIGTERM" is_state "$I" SUCCEEDED
grep -q "checkpoint of step $stopped is unusable .*CRC32C mismatch" st/logs/$I.log ||
  fail "$I: the corrupt checkpoint of step $stopped was not detected"
prev=$(grep -o "from step [0-9]*" st/logs/$I.log | tail -1 | grep -o "[0-9]*$")
[ "$prev" -lt "$stopped" ] && [ "$prev" -gt 0 ] || fail "$I resumed from step $prev, not the previous checkpoint"
# The run continues at the next step after the checkpoint it resumed from.
awk -v p="$prev" 'f { exit !($0 ~ "\"step\": " p + 1 ",") } $0 ~ "\"step\": " p "," { f = 1 }' out/term/metrics.jsonl ||
  fail "$I did not continue at step $((prev + 1))"
# A second SIGTERM exits at once (steps of ~1 s here, so the first is still waiting for one), and what was
# committed still serves: the job resumes from its last recorded checkpoint, which verifies.
K=$(submit twice 8 1 --set stages.0.seq_len=1024 --set stages.0.batch=8 --set checkpoint.every_steps=2)
wait_for 60 "$K past step 3" step_at_least out/twice 3
kill -TERM "$DAEMON"
sleep 0.3  # two deliveries (a signal sent while the same one is pending merges with it)
t_second=$(date +%s%N)
kill -TERM "$DAEMON"
rc=0
wait "$DAEMON" || rc=$?
ms=$((($(date +%s%N) - t_second) / 1000000))
[ "$rc" -eq 143 ] || fail "daemon exited $rc after two SIGTERMs, expected 143 (at once)"
[ "$ms" -lt 1000 ] || fail "the second SIGTERM took $ms ms to end the daemon"
start_daemon
wait_for 120 "$K SUCCEEDED after an abrupt stop" is_state "$K" SUCCEEDED
! grep -q "unusable" "st/logs/$K.log" || fail "$K: a committed checkpoint was harmed by the abrupt stop"
echo "4. SIGTERM drill: worker 75, daemon 75; step $stopped's checkpoint corrupted, resumed from step $prev's at step $((prev + 1)); second SIGTERM 143 in $ms ms ($((SECONDS - t_start)) s)"

# ---- 5: Prometheus, promtool, the dashboard -------------------------------------------------------------------
L=$(submit metrics 400 10)
wait_for 60 "$L running" step_at_least out/metrics 3
curl -sf "http://$ADDR/metrics" > metrics.txt
promtool check metrics < metrics.txt || fail "promtool check metrics"
for m in $(grep -oh 'ringworld_[a-z_]*' "$repo/ops/grafana/ringworld-dashboard.json" "$repo/ops/prometheus/alerts.yml" | sort -u); do
  base=${m%_bucket}
  grep -q "^# TYPE $base " metrics.txt || fail "the dashboard or the alerts use $m, which the daemon does not serve"
done
wait_for 30 "Prometheus scrapes the daemon (up == 1)" prom_up
has_loss() { grep -q "\"job_id\":\"$L\"" <(curl -sf "http://127.0.0.1:$prom_port/api/v1/query?query=ringworld_loss"); }
wait_for 30 "Prometheus has the loss of $L" has_loss
grep -q '"name":"RingWorldLossNaN".*"health":"ok"' <(curl -sf "http://127.0.0.1:$prom_port/api/v1/rules") ||
  fail "Prometheus did not load the alert rules"
(cd "$repo/ops/prometheus" && promtool check rules alerts.yml && promtool test rules alerts_test.yml) > promtool.log ||
  { cat promtool.log; fail "promtool check/test rules"; }
rw cancel "$L" > /dev/null
wait_for 20 "$L cancelled" is_state "$L" CANCELLED
echo "5. Prometheus scraped the daemon; promtool metrics/config/rules/tests pass ($((SECONDS - t_start)) s)"
rw jobs
echo "cluster drill passed in $((SECONDS - t_start)) s"
