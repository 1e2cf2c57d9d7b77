#!/usr/bin/env bash
# A network partition, not a dead process: the daemon and two workers each in their own network namespace
# (test hosts of this script's own, 169.254.77.0/24 on a bridge in a fourth namespace; nothing leaves
# them), the ring of 4 over UCX on TCP between the hosts. Mid-step, the link of the worker holding rank 0
# is cut (its end of the bridge set down): its process keeps running and computing, only the network is
# gone. Then:
#   1. the ring ends in an abort and the job re-forms on the other worker, bounded in time (heartbeat
#      timeout 3 s, then the healthy ranks' answers to the abort; the cut-off ranks are not waited for);
#   2. the cut-off worker fences itself: its heartbeats fail and it aborts its devices' stale ring;
#   3. the link is healed: the worker registers again, the job grows back to a ring of 4 and SUCCEEDS;
#   4. no split brain: every checkpoint on disk was committed by the ring the daemon drove (its log says
#      so; a stale ring's commit is refused by the fence), committed steps only grow, and every step's loss
#      equals an undisturbed embedded run's (1e-4 relative).
# Needs root and network namespaces (ip netns); exits 77 (skipped) with the reason where they are missing.
# Usage: partition_drill.sh RINGWORLD_BINARY REPO_ROOT
set -eEuo pipefail
bin=$(readlink -f "$1")
repo=$(readlink -f "$2")
source "$(dirname "$(readlink -f "$0")")/drill_lib.sh"  # wait_for, loss_curve_matches
ns=rwp$$
if [ "$(id -u)" -ne 0 ] || ! command -v ip > /dev/null || ! ip netns add "$ns-probe" 2> /dev/null; then
  echo "SKIP: network namespaces are not available here (needs root and 'ip netns')"
  exit 77
fi
ip netns del "$ns-probe"
# Namespaces of an earlier run that was killed before its cleanup (rwp<its pid>-*): their processes and them.
for n in $(ip netns list | awk '{ print $1 }' | grep '^rwp[0-9]*-' || true); do
  owner=${n#rwp}
  owner=${owner%%-*}
  kill -0 "$owner" 2> /dev/null && continue
  ip netns pids "$n" | xargs -r kill -9 2> /dev/null || true
  ip netns del "$n" 2> /dev/null || true
done
work=$(mktemp -d)
cd "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2> /dev/null || true; done
  # Whatever still runs in the test's namespaces (a namespace lives on while a process holds it).
  for n in d w1 w2 sw; do ip netns pids "$ns-$n" 2> /dev/null | xargs -r kill -9 2> /dev/null || true; done
  wait 2> /dev/null || true
  for n in d w1 w2 sw; do ip netns del "$ns-$n" 2> /dev/null || true; done
  [ -n "${RW_KEEP_DRILL:-}" ] && echo "kept $work" || rm -rf "$work"
}
trap cleanup EXIT
trap 'fail "line $LINENO: $BASH_COMMAND exited $?"' ERR
t_start=$SECONDS
fail() {
  echo "FAIL: $*"
  for f in daemon.log w1.log w2.log st/logs/*.log; do [ -f "$f" ] && { echo "--- $f"; tail -40 "$f"; }; done
  exit 1
}
now_ms() { echo $(($(date +%s%N) / 1000000)); }

# ---- the hosts: a bridge in "sw", one veth from it to each host ----------------------------------------------
declare -A addr=([d]=169.254.77.1 [w1]=169.254.77.11 [w2]=169.254.77.12)
ip netns add "$ns-sw"
ip -n "$ns-sw" link add br0 type bridge
ip -n "$ns-sw" link set br0 up
for h in d w1 w2; do
  ip netns add "$ns-$h"
  ip -n "$ns-sw" link add "v-$h" type veth peer name rw0 netns "$ns-$h"
  ip -n "$ns-sw" link set "v-$h" master br0
  ip -n "$ns-sw" link set "v-$h" up
  ip -n "$ns-$h" link set lo up
  ip -n "$ns-$h" addr add "${addr[$h]}/24" dev rw0
  ip -n "$ns-$h" link set rw0 up
done
on() { local h=$1; shift; ip netns exec "$ns-$h" "$@"; }  # not for background processes: $! must be theirs
cut_link() { ip -n "$ns-sw" link set "v-$1" down; }
heal_link() { ip -n "$ns-sw" link set "v-$1" up; }

ADDR=${addr[d]}:0
rw() { on d "$bin" "$@" --daemon "$ADDR" --token-file st/token; }
state_of() { rw status "$1" --json | grep -m1 '"state"' | sed 's/.*"state": "\([A-Z]*\)".*/\1/'; }
is_state() { [ "$(state_of "$1")" = "$2" ]; }
last_step() { [ -f "$1/metrics.jsonl" ] && tail -1 "$1/metrics.jsonl" | sed 's/.*"step": \([0-9]*\),.*/\1/' || echo 0; }
step_at_least() { [ "$(last_step "$1")" -ge "$2" ]; }
healthy() { on d curl -sf "http://$ADDR/healthz"; }
worker_alive() { rw workers | grep -q "^$1 .*alive"; }
registrations() { grep -c 'registered with daemon instance' "$1.log" || true; }

ip netns exec "$ns-d" "$bin" daemon --state st --listen "$ADDR" --data-root . --checkpoint-root . --worker-timeout 3 --grace 20 \
  >> daemon.log 2>&1 &
pids+=("$!")
wait_for 10 "daemon api.addr" test -s st/api.addr
ADDR=$(cat st/api.addr)
wait_for 10 "daemon /healthz" healthy
# UCX over TCP on the hosts' own interface (no shared memory between them: they stand for machines).
for w in w1 w2; do
  ip netns exec "$ns-$w" env UCX_TLS=tcp,self UCX_NET_DEVICES=rw0 "$bin" worker --daemon "$ADDR" --listen "${addr[$w]}" \
    --devices cpu:2 --name "$w" --token-file st/token --grace 20 >> "$w.log" 2>&1 &
  pids+=("$!")
  wait_for 15 "worker $w registered" worker_alive "$w"
done
echo "daemon at $ADDR, workers w1 ${addr[w1]}, w2 ${addr[w2]}, each in its own network namespace ($((SECONDS - t_start)) s)"

job=(--set ring.devices=4 --set ring.min_devices=2 --set ring.threads_per_device=1 --set stages.0.seq_len=128
     --set stages.0.batch=2 --set stages.0.steps=140 --set stages.1.seq_len=256 --set stages.1.batch=1
     --set stages.1.steps=10 --set checkpoint.every_steps=10 --set checkpoint.keep=100)
cfg=$repo/configs/tiny-cpu.yaml
"$bin" train "$cfg" "${job[@]}" --set checkpoint.dir= --set output_dir=ref > ref.log 2>&1 || fail "reference run"
P=$(rw submit "$cfg" "${job[@]}" --set name=partition --set checkpoint.dir=ck/partition \
    --set output_dir=out/partition --json | grep -m1 '"id"' | sed 's/.*"id": "\([^"]*\)".*/\1/')
log=st/logs/$P.log
wait_for 60 "$P on a ring of 4 past step 12" step_at_least out/partition 12
grep -q "ring of 4 devices on w1 (2), w2 (2), ucx, epoch 1" "$log" || fail "$P did not start on a ring of 4 over two hosts"

# ---- 1: cut the link of w1 (ranks 0 and 1: rank 0 commits checkpoints) ----------------------------------------
cut_step=$(last_step out/partition)
t_cut=$(now_ms)
cut_link w1
wait_for 30 "$P re-formed on w2" grep -q "ring of 2 devices on w2 (2), inproc, epoch 2" "$log"
t_ring=$(now_ms)
resumed=$(grep -o "ring of 2 devices on w2 (2), inproc, epoch 2, from step [0-9]*" "$log" | grep -o "[0-9]*$")
wait_for 30 "$P computing on w2" step_at_least out/partition $((resumed + 1))
grep -q "worker w1 lost" "$log" || fail "$P: the abort does not name the lost worker"
re_form_s=$(awk -v a="$t_cut" -v b="$t_ring" 'BEGIN { printf "%.1f", (b - a) / 1000 }')
awk -v s="$re_form_s" 'BEGIN { exit !(s <= 15) }' || fail "re-forming took $re_form_s s (bound 15 s)"
echo "1. link of w1 cut at about step $cut_step: ring aborted, re-formed on w2 from step $resumed in $re_form_s s ($((SECONDS - t_start)) s)"

# ---- 2: the cut-off worker fences itself ------------------------------------------------------------------------
wait_for 40 "w1 aborts its stale ring (heartbeats fail)" grep -q "lost the daemon" w1.log
step_before_heal=$(last_step out/partition)
wait_for 40 "$P progressing on w2 while w1 is cut off" step_at_least out/partition $((step_before_heal + 5))
echo "2. w1 fenced itself (its heartbeats failed: devices aborted); $P went on on w2 ($((SECONDS - t_start)) s)"

# ---- 3: heal; w1 comes back and the job grows back to 4 ---------------------------------------------------------
regs=$(registrations w1)
t_heal=$(now_ms)
heal_link w1
back() { [ "$(registrations w1)" -gt "$regs" ]; }
wait_for 30 "w1 registered again after the heal" back
t_back=$(now_ms)
grown() { grep -q "ring of 4 devices on w1 (2), w2 (2), ucx, epoch [3-9]" "$log"; }
# The first ring of 4 after the heal may fail to form (30 s): w1's neighbour entry for w2 failed during the
# partition and connects get "No route to host" until the kernel probes again; the driver forms it anew.
wait_for 100 "$P grown back to a ring of 4" grown
wait_for 120 "$P SUCCEEDED" is_state "$P" SUCCEEDED
rejoin_s=$(awk -v a="$t_heal" -v b="$t_back" 'BEGIN { printf "%.1f", (b - a) / 1000 }')
echo "3. healed: w1 registered again in $rejoin_s s, the job grew back to 4 and SUCCEEDED ($((SECONDS - t_start)) s)"

# ---- 4: no split brain -------------------------------------------------------------------------------------------
prev=0
for d in $(ls ck/partition | grep '^step-' | sort -t- -k2 -n); do
  s=${d#step-}
  grep -q "checkpoint of step $s committed" "$log" || fail "ck/partition/$d was not committed by the daemon's ring"
  [ "$s" -gt "$prev" ] || fail "checkpoint steps do not grow: $prev then $s"
  prev=$s
done
[ "$prev" -eq 150 ] || fail "the last checkpoint is of step $prev, not 150"
ls -a ck/partition | grep -q '^\.tmp' && fail "temporary checkpoint directories left: $(ls -a ck/partition)"
loss_curve_matches ref/metrics.jsonl out/partition/metrics.jsonl 150 "4. no split brain" ||
  fail "$P: the loss curve departs from the undisturbed run"
echo "checkpoints $(ls ck/partition | grep -c '^step-'), each committed by the daemon's ring, steps growing"

# ---- 5: a whole ring on the cut-off host ------------------------------------------------------------------------
# A ring of 2 on one worker needs no network: cut off, it could compute on beside the ring that replaces it
# (split brain). It must stop by itself: its commits are asked of a driver it cannot reach (refused), and its
# worker aborts it when its heartbeats fail.
Q=$(rw submit "$cfg" "${job[@]}" --set ring.devices=2 --set stages.0.steps=2000 --set name=island \
    --set checkpoint.dir=ck/island --set output_dir=out/island --json | grep -m1 '"id"' | sed 's/.*"id": "\([^"]*\)".*/\1/')
qlog=st/logs/$Q.log
wait_for 60 "$Q past step 12" step_at_least out/island 12
host=$(grep -o "ring of 2 devices on w[12] (2), inproc, epoch 1" "$qlog" | grep -o "w[12]" || true)
[ -n "$host" ] || fail "$Q did not start on a ring of 2 on one worker"
other=w1
[ "$host" = w1 ] && other=w2
t_cut=$(now_ms)
cut_link "$host"
wait_for 30 "$Q re-formed on $other" grep -q "ring of 2 devices on $other (2), inproc, epoch 2" "$qlog"
island_stopped() { grep -q "of job [0-9]* (epoch 1): training stopped" "$host.log"; }
wait_for 40 "the island ring on $host stops by itself" island_stopped
stop_s=$(awk -v a="$t_cut" -v b="$(now_ms)" 'BEGIN { printf "%.1f", (b - a) / 1000 }')
why=$(grep -m1 "(epoch 1): training stopped" "$host.log" | sed 's/.*training stopped: //')
grep -Eq "commit .*refused|lost the daemon|aborted" <<< "$why" || fail "the island ring stopped for another reason: $why"
heal_link "$host"
rw cancel "$Q" > /dev/null
wait_for 30 "$Q cancelled" is_state "$Q" CANCELLED
echo "5. a ring of 2 cut off on $host stopped by itself within $stop_s s ($why) while $Q went on on $other ($((SECONDS - t_start)) s)"
echo "partition drill passed in $((SECONDS - t_start)) s: re-formed in $re_form_s s after the cut, w1 back in $rejoin_s s after the heal"
echo "1 passed, 0 failed"
