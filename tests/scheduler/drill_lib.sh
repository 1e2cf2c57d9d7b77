# Sourced by the drills (cluster_drill.sh, partition_drill.sh), which define fail().
#
# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND every 0.2 s; fail()s with DESCRIPTION when it has
# not succeeded within SECONDS.
wait_for() {
  local limit=$1 what=$2
  shift 2
  local end=$((SECONDS + limit))
  until "$@" > /dev/null 2>&1; do
    [ $SECONDS -lt $end ] || fail "$what (not within ${limit} s)"
    sleep 0.2
  done
}

# loss_curve_matches REF GOT STEPS LABEL compares two metrics.jsonl files step by
# step (the last line of each step in GOT: a step recomputed after a fault counts once, as last computed).
# It prints "LABEL: N steps, worst relative loss difference to the undisturbed run X" and fails unless
# every one of the STEPS steps of REF is in GOT within 1e-4 relative.
loss_curve_matches() {
  awk -v steps="$3" -v label="$4" '
    FNR == 1 { f++ }
    { match($0, /"step": [0-9]+/); s = substr($0, RSTART + 8, RLENGTH - 8)
      match($0, /"loss": [0-9.]+/); l = substr($0, RSTART + 8, RLENGTH - 8)
      if (f == 1) ref[s] = l; else got[s] = l }
    END { n = 0; worst = 0
          for (s in ref) { if (!(s in got)) { print "FAIL: step " s " missing"; exit 1 }
                           d = (got[s] - ref[s]) / ref[s]; if (d < 0) d = -d; if (d > worst) worst = d; n++ }
          printf "%s: %d steps, worst relative loss difference to the undisturbed run %.2e\n", label, n, worst
          if (n != steps || worst > 1e-4) exit 1 }' "$1" "$2"
}
