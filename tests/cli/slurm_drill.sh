#!/usr/bin/env bash
# ops/slurm/ringworld.sbatch on a real Slurm on loopback: its own munged (fresh key, own socket), slurmctld
# and slurmd (one node: this machine, 2 CPUs, non-default ports, everything in a temp dir), stopped at exit.
#   1. sbatch JOB.yaml: the batch script brings up the daemon and a worker and runs the job; the Slurm job
#      ends COMPLETED with exit 0:0 and the RingWorld job SUCCEEDED with all its steps;
#   2. sbatch a longer job and, while it trains, `scancel --batch --signal=TERM` (what --signal=B:TERM@120
#      does before the time limit): the daemon checkpoints the job (exit 75), the workers exit 75, the script
#      requeues itself; the same Slurm job runs again (Restarts=1) and the RingWorld job resumes from that
#      committed checkpoint (not step 0: every step exactly once in its metrics) to SUCCEEDED;
#   3. the same with `scancel --signal=TERM` (what --signal=TERM@T does: TERM to the steps, the workers):
#      the workers checkpoint the ring and exit 75, the script requeues itself, the job resumes;
#   4. `scancel` (Slurm's TERM to every process, srun's SIGKILL to the workers): the Slurm job is CANCELLED,
#      not requeued; sbatch of the same job file resumes the RingWorld job from its last checkpoint;
#   5. the RingWorld state after all allocations (a fresh daemon on the shared state directory): every job
#      SUCCEEDED, each preempted only as above.
# RW_SLURM_DRILL_SHORT=1 runs 1, 2 and 5 only (~30 s instead of ~75 s on 2 cores).
# Needs slurm-wlm and munge (ops/setup.sh installs them) and root (slurmd). Every wait is bounded, the whole
# drill by RW_SLURM_DRILL_LIMIT seconds (default 150); RW_SLURM_DRILL_KEEP=1 keeps its directory.
# Usage: slurm_drill.sh RINGWORLD_BINARY REPO_ROOT
set -eEuo pipefail
[ $# -eq 2 ] || { echo "usage: $0 RINGWORLD_BINARY REPO_ROOT"; exit 2; }
t_start=$SECONDS
limit=${RW_SLURM_DRILL_LIMIT:-150}
repo=$(readlink -f "$2")
sbatch_script=$repo/ops/slurm/ringworld.sbatch
work=$(mktemp -d /tmp/rw-slurm-drill.XXXXXX)
bin=$work/bin/ringworld
shared=$work/shared
for v in $(compgen -e); do case $v in SLURM_* | RINGWORLD_*) unset "$v" ;; esac; done  # not ours
export SLURM_CONF=$work/slurm/slurm.conf

pids=()
cleanup() {
  set +e
  trap - ERR
  if [ -n "${ctld:-}" ] && kill -0 "$ctld" 2> /dev/null; then
    timeout 10 scancel --user="$(id -un)" 2> /dev/null
    for _ in $(seq 50); do [ -z "$(timeout 5 squeue -h 2> /dev/null)" ] && break; sleep 0.2; done
  fi
  # Whatever is left of the jobs: processes of our binary copy, and our slurmd's step daemons.
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/exe" 2> /dev/null)" = "$bin" ] && kill -9 "${p#/proc/}" 2> /dev/null
    [ "$(readlink "$p/exe" 2> /dev/null)" = /usr/sbin/slurmstepd ] &&
      grep -qz "^SLURM_CONF=$SLURM_CONF\$" "$p/environ" 2> /dev/null && kill -9 "${p#/proc/}" 2> /dev/null
  done
  for p in "${pids[@]}"; do kill -TERM "$p" 2> /dev/null; done
  for _ in $(seq 25); do
    alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2> /dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.2
  done
  for p in "${pids[@]}"; do kill -9 "$p" 2> /dev/null; done
  wait 2> /dev/null
  if [ "${RW_SLURM_DRILL_KEEP:-0}" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'fail "line $LINENO: $BASH_COMMAND exited $?"' ERR
fail() {
  trap - ERR
  echo "FAIL: $*"
  for f in "$work"/slurm/*.log "$work"/slurm-*.out "$shared"/ringworld-state/logs/*.log "$work"/check-daemon.log; do
    [ -f "$f" ] && { echo "--- $f"; tail -40 "$f"; }
  done
  exit 1
}
chmod 711 "$work"  # munged wants the directories above its socket searchable
mkdir -p "$work/bin" "$work/munge" "$work/slurm/ctld" "$work/slurm/spool" "$shared"
chmod 700 "$work/munge"
cp "$1" "$bin"  # a private copy: the build directory may be rebuilt meanwhile
need() { command -v "$1" > /dev/null || fail "$1 is not installed (ops/setup.sh installs slurm-wlm and munge)"; }
for c in munged mungekey munge unmunge slurmctld slurmd sbatch scontrol scancel squeue sinfo; do need "$c"; done
[ "$(id -u)" -eq 0 ] || fail "slurmd runs jobs as their users and needs root"
# wait_for SECONDS DESCRIPTION COMMAND...: polls every 0.2 s, within the drill's limit too.
wait_for() {
  local end=$((SECONDS + $1)) what=$2
  shift 2
  until "$@" > /dev/null 2>&1; do
    [ $SECONDS -lt $end ] || fail "$what (not within the time allowed)"
    [ $((SECONDS - t_start)) -lt "$limit" ] || fail "$what: the drill ran past its limit of $limit s"
    sleep 0.2
  done
}
free_port() {  # a port nothing listens on
  local p
  for _ in $(seq 100); do
    p=$((20000 + RANDOM % 30000))
    (exec 3<> "/dev/tcp/127.0.0.1/$p") 2> /dev/null || { echo "$p"; return 0; }
  done
  return 1
}
t() { timeout 20 "$@"; }  # every Slurm command bounded in time

# ---- munge and Slurm on loopback --------------------------------------------------------------------------
mungekey --create --keyfile="$work/munge/munge.key"
munged -F -f --socket="$work/munge/socket" --key-file="$work/munge/munge.key" --pid-file="$work/munge/pid" \
  --seed-file="$work/munge/seed" --log-file="$work/munge/munged.log" 2> /dev/null &
pids+=("$!")
wait_for 10 "munged listening on its socket" test -S "$work/munge/socket"
munge -n -S "$work/munge/socket" | unmunge -S "$work/munge/socket" > /dev/null || fail "munge round trip"

node=$(hostname -s)
ctld_port=$(free_port)
slurmd_port=$(free_port)
[ "$ctld_port" != "$slurmd_port" ] || slurmd_port=$((ctld_port + 1))
cat > "$SLURM_CONF" << EOF
ClusterName=rwdrill
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=$(id -un)
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire is also how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket=$work/munge/socket,cred_expire=5
StateSaveLocation=$work/slurm/ctld
SlurmdSpoolDir=$work/slurm/spool
SlurmctldPidFile=$work/slurm/slurmctld.pid
SlurmdPidFile=$work/slurm/slurmd.pid
SlurmctldLogFile=$work/slurm/slurmctld.log
SlurmdLogFile=$work/slurm/slurmd.log
# no cgroups in a container: processes tracked through /proc, no binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=600
KillWait=10
NodeName=$node NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=drill Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
slurmctld -D -f "$SLURM_CONF" > "$work/slurm/slurmctld.out" 2>&1 &
ctld=$!
pids+=("$ctld")
slurmd -D -f "$SLURM_CONF" -N "$node" > "$work/slurm/slurmd.out" 2>&1 &
pids+=("$!")
node_idle() { [ "$(t sinfo -h -n "$node" -o %T)" = idle ]; }
wait_for 30 "node $node idle in Slurm" node_idle
echo "slurm on 127.0.0.1: slurmctld :$ctld_port, slurmd :$slurmd_port, node $node idle ($((SECONDS - t_start)) s)"

# ---- the jobs ----------------------------------------------------------------------------------------------
job_yaml() {  # job_yaml NAME STEPS: a tiny LLaMA (2 layers, width 64) on a ring of 2 CPU devices
  cat > "$shared/$1.yaml" << EOF
name: $1
seed: 1
output_dir: out/$1
model: {vocab_size: 259, hidden_size: 64, intermediate_size: 176, num_hidden_layers: 2, num_attention_heads: 4,
        num_key_value_heads: 2, max_position_embeddings: 256}
data: {source: synthetic, task: copy, min_len: 4, max_len: 24}
optimizer: {lr: 2.0e-3, warmup_steps: 5, schedule: cosine}
ring: {devices: 2, layout: zigzag, transport: inproc, threads_per_device: 1}
stages:
  - {seq_len: 128, rope_theta: 10000, steps: $2, batch: 2}
checkpoint: {dir: ck/$1, every_steps: 25, keep: 3}
EOF
}
export RINGWORLD_SHARED=$shared RINGWORLD_BIN=$bin RINGWORLD_DEVICES=cpu:2 RINGWORLD_PORT=0
submit() {  # submit NAME: prints the Slurm job id
  t sbatch --parsable --nodes=1 --time=10 --output="$work/slurm-%j.out" --chdir="$shared" "$sbatch_script" "$1.yaml"
}
field() { t scontrol show job "$1" -o | grep -o " $2=[^ ]*" | cut -d= -f2-; }
slurm_done() { case $(field "$1" JobState) in COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY) return 0 ;; esac; return 1; }
restarted() { [ "$(field "$1" Restarts)" -ge 1 ]; }
last_step() { [ -s "$1" ] && tail -1 "$1" | sed 's/.*"step": \([0-9]*\),.*/\1/' || echo 0; }
step_at_least() { [ "$(last_step "$1")" -ge "$2" ]; }
steps_once() {  # steps_once METRICS N: the steps are 1..N, each exactly once
  awk -v n="$2" '{ match($0, /"step": [0-9]+/); s = substr($0, RSTART + 8, RLENGTH - 8) + 0
                   if (s != NR) { print "line " NR " is step " s; exit 1 } }
                 END { if (NR != n) { print NR " steps, expected " n; exit 1 } }' "$1"
}

# ---- 1: sbatch -> COMPLETED, the RingWorld job SUCCEEDED ----------------------------------------------------
job_yaml quick 60
J1=$(submit quick)
wait_for 60 "Slurm job $J1 (quick) finished" slurm_done "$J1"
out1=$work/slurm-$J1.out
[ "$(field "$J1" JobState)" = COMPLETED ] || fail "Slurm job $J1 is $(field "$J1" JobState), expected COMPLETED"
[ "$(field "$J1" ExitCode)" = 0:0 ] || fail "Slurm job $J1 exit code $(field "$J1" ExitCode), expected 0:0"
grep -q "ringworld.sbatch: job .*: SUCCEEDED" "$out1" || fail "$out1 does not say SUCCEEDED"
A=$(sed -n 's/^ringworld.sbatch: ringworld job \(.*\)/\1/p' "$out1")
grep -q "step 60/60" "$out1" || fail "the job's log in $out1 lacks its last step"
steps_once "$shared/out/quick/metrics.jsonl" 60 || fail "quick: its metrics are not steps 1..60"
echo "1. sbatch: Slurm job $J1 COMPLETED 0:0, ringworld job $A SUCCEEDED ($((SECONDS - t_start)) s)"

# ---- 2, 3: TERM mid-run: checkpoint, exit 75, requeue, resume from the checkpoint ---------------------------
steps=500
# preempt_and_resume NAME CAUSE DAEMON_RC SCANCEL_ARGS...: sbatch NAME, TERM it past step 60 with
# `scancel SCANCEL_ARGS JOB`; the batch script must name CAUSE, the daemon exit DAEMON_RC and the workers 75,
# the stop step's checkpoint be committed, the same Slurm job run again and the same RingWorld job resume
# from that step to SUCCEEDED. Sets J (Slurm job), R (RingWorld job), stopped.
preempt_and_resume() {
  local name=$1 cause=$2 drc=$3
  shift 3
  job_yaml "$name" $steps
  J=$(submit "$name")
  local metrics=$shared/out/$name/metrics.jsonl out=$work/slurm-$J.out
  wait_for 60 "$name: training past step 60" step_at_least "$metrics" 60
  t scancel "$@" "$J"
  wait_for 40 "Slurm job $J ($name) requeued" restarted "$J"
  stopped=$(last_step "$metrics")  # the next run waits out the requeue delay (5 s) before it writes
  local run1 run2
  run1=$(sed '/^ringworld.sbatch: job [0-9]* run 2 /,$d' "$out")
  R=$(sed -n 's/^ringworld.sbatch: ringworld job \(.*\)/\1/p' <<< "$run1")
  grep -q "daemon exited $drc, workers exited 75" <<< "$run1" ||
    fail "$name: expected the daemon to exit $drc and the workers 75: $(grep 'exited' <<< "$run1")"
  grep -q "job $R: preempted ($cause)" <<< "$run1" || fail "$name: the batch script did not see $cause"
  grep -q "requeueing Slurm job $J" <<< "$run1" || fail "$name: the batch script did not requeue itself"
  { [ "$stopped" -gt 60 ] && [ "$stopped" -lt $steps ]; } || fail "$name stopped at step $stopped, not mid-run"
  grep -q "checkpoint of step $stopped committed" <<< "$run1" || fail "$name: no checkpoint of step $stopped in its log"
  [ -f "$shared/ck/$name/step-$stopped/MANIFEST" ] ||
    fail "$name: no committed checkpoint of step $stopped: $(ls "$shared/ck/$name")"
  grep -q "\"step\": $stopped," "$shared/ck/$name/step-$stopped/trainer_state.json" ||
    fail "$name: the checkpoint of step $stopped records another step"
  wait_for 90 "Slurm job $J ($name) finished after its requeue" slurm_done "$J"
  [ "$(field "$J" JobState)" = COMPLETED ] || fail "Slurm job $J is $(field "$J" JobState), expected COMPLETED"
  [ "$(field "$J" ExitCode)" = 0:0 ] || fail "Slurm job $J exit code $(field "$J" ExitCode), expected 0:0"
  [ "$(field "$J" Restarts)" = 1 ] || fail "Slurm job $J ran $(($(field "$J" Restarts) + 1)) times, expected 2"
  run2=$(sed -n '/^ringworld.sbatch: job [0-9]* run 2 /,$p' "$out")
  [ -n "$run2" ] || fail "$out has no second run"
  grep -q "ringworld job $R$" <<< "$run2" || fail "$name: the requeued run submitted another ringworld job"
  grep -q "ringworld.sbatch: job $R: SUCCEEDED" <<< "$run2" || fail "$name: the second run does not say SUCCEEDED"
  grep -q "ring of 2 devices .*, from step $stopped\$" <<< "$run2" ||
    fail "$name: the second run did not resume from step $stopped: $(grep -o 'from step [0-9]*' <<< "$run2")"
  steps_once "$metrics" $steps || fail "$name: its metrics are not steps 1..$steps each once"
}

# 2: what --signal=B:TERM@120 does before the time limit: TERM to the batch script only.
preempt_and_resume long "TERM to this script" 75 --batch --signal=TERM
B=$R
echo "2. TERM to the batch script at step $stopped: daemon and workers exit 75, checkpoint committed, Slurm job" \
  "$J requeued; run 2 resumed $B from step $stopped, COMPLETED 0:0, SUCCEEDED ($((SECONDS - t_start)) s)"

if [ "${RW_SLURM_DRILL_SHORT:-0}" != 1 ]; then
  # 3: what --signal=TERM@120 (no B:) does: TERM to the job's steps, the workers; they drain the ring.
  preempt_and_resume steps "TERM to the workers" 0 --signal=TERM
  C=$R
  echo "3. TERM to the worker step at step $stopped: workers exit 75, checkpoint committed, Slurm job $J requeued;" \
    "run 2 resumed $C from step $stopped, SUCCEEDED ($((SECONDS - t_start)) s)"

  # 4: scancel: Slurm's TERM to every process (srun SIGKILLs the workers) and no requeue; sbatch of the same
  # job file later resumes the RingWorld job from its last committed checkpoint.
  job_yaml cancel $steps
  J4=$(submit cancel)
  wait_for 60 "cancel: training past step 60" step_at_least "$shared/out/cancel/metrics.jsonl" 60
  t scancel "$J4"
  wait_for 30 "Slurm job $J4 (cancel) finished" slurm_done "$J4"
  [ "$(field "$J4" JobState)" = CANCELLED ] || fail "Slurm job $J4 is $(field "$J4" JobState), expected CANCELLED"
  [ "$(field "$J4" Restarts)" = 0 ] || fail "the cancelled Slurm job $J4 was requeued"
  D=$(sed -n 's/^ringworld.sbatch: ringworld job \(.*\)/\1/p' "$work/slurm-$J4.out")
  last_ck=$(grep -o "checkpoint of step [0-9]* committed" "$shared/ringworld-state/logs/$D.log" | tail -1 | grep -o "[0-9]\+")
  [ -n "$last_ck" ] || fail "cancel: no checkpoint was committed before the cancel"
  J5=$(submit cancel)
  wait_for 60 "Slurm job $J5 (cancel, resubmitted) finished" slurm_done "$J5"
  out5=$work/slurm-$J5.out
  [ "$(field "$J5" JobState)" = COMPLETED ] || fail "Slurm job $J5 is $(field "$J5" JobState), expected COMPLETED"
  grep -q "ringworld job $D$" "$out5" || fail "cancel: the resubmission made another ringworld job"
  grep -q "ringworld.sbatch: job $D: SUCCEEDED" "$out5" || fail "cancel: the resubmission does not say SUCCEEDED"
  from=$(grep -o "ring of 2 devices .*, from step [0-9]*" "$out5" | tail -1 | grep -o "[0-9]*$")
  [ "$from" = "$last_ck" ] || fail "cancel: resumed from step $from, expected its last checkpoint, step $last_ck"
  echo "4. scancel: Slurm job $J4 CANCELLED, not requeued; sbatch again: $D resumed from its checkpoint of step" \
    "$from, SUCCEEDED ($((SECONDS - t_start)) s)"
fi

# ---- 5: the RingWorld state the allocations left ------------------------------------------------------------
"$bin" daemon --state "$shared/ringworld-state" --listen 127.0.0.1:0 --data-root "$shared" \
  --checkpoint-root "$shared" > "$work/check-daemon.log" 2>&1 &
check=$!
pids+=("$check")
rm -f "$shared/ringworld-state/api.addr"
wait_for 10 "a daemon on the shared state" test -s "$shared/ringworld-state/api.addr"
rw() { "$bin" "$@" --daemon "$(cat "$shared/ringworld-state/api.addr")" --token-file "$shared/ringworld-state/token"; }
api_up() { rw workers; }
wait_for 10 "the daemon's API" api_up
state_of() { rw status "$1" --json | sed -n 's/^  "state": "\([A-Z]*\)".*/\1/p'; }
all=("$A" "$B" ${C:+"$C"} ${D:+"$D"})
for j in "${all[@]}"; do
  [ "$(state_of "$j")" = SUCCEEDED ] || fail "ringworld job $j is $(state_of "$j"), expected SUCCEEDED"
done
[ "$(rw jobs --json | grep -c '^      "id"')" = ${#all[@]} ] || fail "expected ${#all[@]} ringworld jobs: $(rw jobs)"
rw status "$B" > "$work/B.events"
[ "$(grep -c "RUNNING -> PREEMPTED" "$work/B.events")" = 1 ] || fail "job $B: expected one preemption: $(cat "$work/B.events")"
grep -q "RUNNING -> PREEMPTED .*daemon shutting down" "$work/B.events" || fail "job $B was not preempted by the daemon's stop"
if [ -n "${C:-}" ]; then
  # The workers' SIGTERM stops the ring once: the daemon marks them draining as the ring reports it, so the
  # requeued job is not placed on them again (it once was, a step and a checkpoint each time).
  rw status "$C" > "$work/C.events"
  { [ "$(grep -c "RUNNING -> PREEMPTED" "$work/C.events")" = 1 ] &&
    grep -q "RUNNING -> PREEMPTED .*a worker stopped the ring (SIGTERM)" "$work/C.events"; } ||
    fail "job $C: expected one preemption, by the workers' SIGTERM: $(cat "$work/C.events")"
fi
kill -TERM "$check"
rc=0
wait "$check" || rc=$?
[ $rc = 0 ] || fail "the checking daemon exited $rc"
echo "5. the shared state: jobs ${all[*]} SUCCEEDED, preempted only as the drill asked ($((SECONDS - t_start)) s)"
echo "slurm drill passed in $((SECONDS - t_start)) s"
