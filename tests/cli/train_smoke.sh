#!/usr/bin/env bash
# `ringworld train` as a user runs it: the main job (shortened with --set) writes one metrics line per
# step with every field, the loss falls, and a bad job file exits 2 naming the key.
set -euo pipefail
bin=$1
cfg=$2
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

"$bin" train "$cfg" --set output_dir="$out" --set checkpoint.dir="$out/ck" --set stages.0.steps=40 \
  --set stages.1.steps=4 > "$out/log"
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

# A dataset from JSONL, and eval of the run's last checkpoint on it over a ring of 2.
printf '{"text": "abc|abc"}\n{"text": "hello|hello"}\n{"tokens": [1, 2, 3], "modality": "vision"}\n' > "$out/d.jsonl"
"$bin" data prepare --input "$out/d.jsonl" --output "$out/ds" | tee "$out/prep"
grep -q '"documents": 3' "$out/prep" || { echo "FAIL: data prepare"; exit 1; }
"$bin" eval --checkpoint "$out/ck/step-44" --data "$out/ds" --ring 2 --seq-len 64 | tee "$out/eval"
grep -q '"loss": [0-9]' "$out/eval" || { echo "FAIL: eval printed no loss"; exit 1; }
# A SentencePiece tokenizer and LWM vision records.
fixtures=$(dirname "$0")/../fixtures
"$bin" data prepare --input "$out/d.jsonl" --output "$out/ds_sp" --tokenizer "$fixtures/spm_tiny/tiny.model" > /dev/null
grep -q '"vocab_size": 320' "$out/ds_sp/meta.json" || { echo "FAIL: SentencePiece dataset"; exit 1; }
[ -s "$out/ds_sp/tokenizer.model" ] || { echo "FAIL: the SentencePiece dataset does not keep its tokenizer"; exit 1; }
# Trained on it, the checkpoint carries the tokenizer; generate decodes with it.
"$bin" train "$cfg" --set output_dir="$out/fs" --set checkpoint.dir="$out/fs/ck" --set data.source=files \
  --set data.path="$out/ds_sp" --set model.vocab_size=320 --set stages.0.steps=2 --set stages.1.steps=1 > /dev/null
grep -q '^tokenizer.model ' "$out/fs/ck/step-3/MANIFEST" || { echo "FAIL: checkpoint without tokenizer.model"; exit 1; }
gs=$("$bin" generate --checkpoint "$out/fs/ck/step-3" --prompt "ring attention" --max-tokens 4)
[ "${gs:0:14}" = "ring attention" ] || { echo "FAIL: generate with the checkpoint's tokenizer: '$gs'"; exit 1; }
# Exported as a plain Hugging Face directory (the SentencePiece tokenizer goes with it), bf16 in files of at
# most 200 KB (nine of them) with an index; generate reads the export as it reads the checkpoint. A bad --dtype exits 2.
"$bin" export --checkpoint "$out/fs/ck" --to "$out/hf" --dtype bfloat16 --max-shard-size 200KB | tee "$out/export"
for f in model.safetensors.index.json model-00001-of-00009.safetensors config.json tokenizer.model tokenizer_config.json; do
  [ -s "$out/hf/$f" ] || { echo "FAIL: export wrote no $f ($(ls "$out/hf" | tr '\n' ' '))"; exit 1; }
done
grep -q '"torch_dtype": "bfloat16"' "$out/hf/config.json" || { echo "FAIL: export's config.json dtype"; exit 1; }
ge=$("$bin" generate --checkpoint "$out/hf" --prompt "ring attention" --max-tokens 4)
[ "${ge:0:14}" = "ring attention" ] || { echo "FAIL: generate on the export: '$ge'"; exit 1; }
rc=0; msg=$("$bin" export --checkpoint "$out/fs/ck" --to "$out/hf2" --dtype fp8 2>&1) || rc=$?
[ "$rc" -eq 2 ] && [[ "$msg" == *"--dtype: 'fp8'"* ]] || { echo "FAIL: export --dtype fp8: exit $rc, '$msg'"; exit 1; }
# A flipped bit in a checkpoint's weights: generate, eval and init_from refuse it naming the file (they used
# to load it), and a resume whose every checkpoint is corrupt fails instead of starting again at step 0 over
# them; the files are left as they were.
flip() {  # file offset: xor one byte with 0x10
  local b
  b=$(od -An -tu1 -j"$2" -N1 "$1" | tr -d ' ')
  # shellcheck disable=SC2059
  printf "\\$(printf %o $((b ^ 16)))" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}
cp -r "$out/fs/ck" "$out/badck"
for d in "$out"/badck/step-*; do flip "$d/model.safetensors" 3000; done
sums=$(cat "$out"/badck/step-*/* | md5sum)
for cmd in "generate --checkpoint $out/badck/step-3 --prompt x --max-tokens 2" \
           "eval --checkpoint $out/badck/step-3 --data $out/ds_sp --seq-len 64"; do
  rc=0
  # shellcheck disable=SC2086
  msg=$("$bin" $cmd 2>&1) || rc=$?
  [ "$rc" -ne 0 ] && grep -q "step-3/model.safetensors: CRC32C mismatch" <<< "$msg" ||
    { echo "FAIL: ${cmd%% *} on a corrupt checkpoint: exit $rc, '$msg'"; exit 1; }
done
rc=0
"$bin" train "$cfg" --set output_dir="$out/fs2" --set init_from="$out/badck/step-3" --set model.vocab_size=320 --set data.source=files \
  --set data.path="$out/ds_sp" --set stages.0.steps=1 --set stages.1.steps=1 > /dev/null 2> "$out/init_err" || rc=$?
[ "$rc" -ne 0 ] && grep -q "CRC32C mismatch" "$out/init_err" ||
  { echo "FAIL: init_from a corrupt checkpoint: exit $rc, $(cat "$out/init_err")"; exit 1; }
rc=0
"$bin" train "$cfg" --set output_dir="$out/fs3" --set checkpoint.dir="$out/badck" --set data.source=files \
  --set data.path="$out/ds_sp" --set model.vocab_size=320 --set stages.0.steps=2 --set stages.1.steps=3 \
  > /dev/null 2> "$out/resume_err" || rc=$?
[ "$rc" -eq 1 ] && grep -q "every checkpoint of the run .* fails verification" "$out/resume_err" ||
  { echo "FAIL: resume over corrupt checkpoints: exit $rc, $(cat "$out/resume_err")"; exit 1; }
[ "$(cat "$out"/badck/step-*/* | md5sum)" = "$sums" ] && [ ! -e "$out/fs3/metrics.jsonl" ] ||
  { echo "FAIL: a refused resume changed the checkpoints or trained"; exit 1; }
echo "corrupt checkpoint: $(head -c 300 "$out/resume_err")"
# A config.json of 5e11 parameters (2 TB of weights): generate fails with the reason instead of hanging
# after an unhandled exception in its device actors.
mkdir -p "$out/huge"
cat > "$out/huge/config.json" <<'JSON'
{"model_type": "llama", "hidden_size": 65536, "intermediate_size": 262144, "num_hidden_layers": 8,
 "num_attention_heads": 512, "num_key_value_heads": 512, "vocab_size": 32000, "max_position_embeddings": 4096,
 "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu"}
JSON
rc=0
msg=$(timeout 60 "$bin" generate --checkpoint "$out/huge" --prompt-ids 1,2 --max-tokens 2 2>&1) || rc=$?
[ "$rc" -eq 1 ] && grep -q "internal error: std::bad_alloc" <<< "$msg" ||
  { echo "FAIL: generate on a 2 TB model: exit $rc (124: it hung), '$msg'"; exit 1; }
# Out-of-range sizes are refused by name before anything is loaded (they used to be taken as they came).
for bad in "--ring 100000" "--ring 0" "--max-tokens 9999999999" "--top-p 0"; do
  # shellcheck disable=SC2086
  if msg=$("$bin" generate --checkpoint "$out/fs/ck/step-3" --prompt x $bad 2>&1); then
    echo "FAIL: generate $bad was accepted"; exit 1
  fi
  grep -q -- "${bad%% *}: Value" <<< "$msg" || { echo "FAIL: generate $bad: '$msg' does not name the option"; exit 1; }
done
# The needle config (its own SentencePiece tokenizer, a 3-stage context curriculum), a few steps a stage,
# then needle over a ring of 2 with the tokenizer the checkpoint carries.
configs=$(dirname "$cfg")
"$bin" train "$configs/needle-cpu.yaml" --set output_dir="$out/nd" --set checkpoint.dir="$out/nd/ck" \
  --set data.tokenizer="$configs/needle-tokenizer.model" --set stages.0.steps=2 --set stages.1.steps=1 \
  --set stages.2.steps=1 > /dev/null
grep -q '"stage": 2, "seq_len": 512' "$out/nd/metrics.jsonl" || { echo "FAIL: needle-cpu's third stage"; exit 1; }
"$bin" needle --checkpoint "$out/nd/ck/step-4" --lengths 64,128 --depths 0,1 --trials 1 --ring 2 --output "$out/nn" \
  > /dev/null
[ "$(grep -c '"expected": "[0-9]\{7\}"' "$out/nn/needle.json")" -eq 4 ] || { echo "FAIL: needle with a tokenizer"; exit 1; }
printf '{"vision": [[1, 2], [3]], "text": "a cat"}\n' > "$out/v.jsonl"
"$bin" data prepare --input "$out/v.jsonl" --output "$out/ds_v" --vision-codes 8192 > /dev/null
grep -q '"eov": 8454' "$out/ds_v/meta.json" || { echo "FAIL: vision dataset"; cat "$out/ds_v/meta.json"; exit 1; }
# Pre-tokenized ids of another vocabulary (--vocab-size 48, below the byte tokenizer's 259): an id past it is
# refused naming it and leaves no dataset; a model of that vocabulary trains on them; generate takes the
# prompt as ids and prints every id (a text prompt is refused: no tokenizer describes the model).
printf '{"tokens": [3, 9, 27, 40, 11, 3, 9, 27]}\n{"tokens": [5, 6, 7, 8, 5, 6, 7, 8, 5, 6]}\n' > "$out/ids.jsonl"
"$bin" data prepare --input "$out/ids.jsonl" --output "$out/ds_ids" --vocab-size 48 > /dev/null
grep -q '"vocab_size": 48' "$out/ds_ids/meta.json" || { echo "FAIL: --vocab-size not in meta.json"; exit 1; }
set +e
"$bin" data prepare --input "$out/ids.jsonl" --output "$out/ds_ids30" --vocab-size 30 2> "$out/ids_err"
rc=$?
set -e
[ $rc -eq 2 ] && grep -q "ids.jsonl:1: token 3 has id 40, outside the vocabulary of 30" "$out/ids_err" && [ ! -e "$out/ds_ids30" ] ||
  { echo "FAIL: an id past --vocab-size: rc $rc, $(cat "$out/ids_err")"; exit 1; }
"$bin" train "$cfg" --set output_dir="$out/ids" --set checkpoint.dir="$out/ids/ck" --set data.source=files \
  --set data.path="$out/ds_ids" --set model.vocab_size=48 --set stages.0.steps=2 --set stages.1.steps=1 > /dev/null
gi=$("$bin" generate --checkpoint "$out/ids/ck/step-3" --prompt-ids 3,9,27 --max-tokens 4)
[[ "$gi" =~ ^\<3\>\<9\>\<27\>(\<[0-9]+\>){4}$ ]] || { echo "FAIL: generate --prompt-ids: '$gi'"; exit 1; }
set +e
"$bin" generate --checkpoint "$out/ids/ck/step-3" --prompt "abc" 2> "$out/gen_err"
rc=$?
set -e
[ $rc -eq 2 ] && grep -q -- "--prompt-ids" "$out/gen_err" || { echo "FAIL: a text prompt to an id model: rc $rc"; exit 1; }
echo "pre-tokenized vocabulary of 48: trained; generate --prompt-ids 3,9,27 -> $gi"
# Training on the prepared dataset (data.source: files).
"$bin" train "$cfg" --set output_dir="$out/f" --set checkpoint.dir= --set data.source=files --set data.path="$out/ds" \
  --set stages.0.steps=3 --set stages.1.steps=1 > /dev/null
[ "$(wc -l < "$out/f/metrics.jsonl")" -eq 4 ] || { echo "FAIL: training on a prepared dataset"; exit 1; }
set +e
"$bin" eval --checkpoint "$out/ck/step-44" --data "$out/nope" 2> "$out/eval_err"
rc=$?
set -e
[ "$rc" -eq 2 ] && grep -q "nope is not a prepared dataset" "$out/eval_err" || { echo "FAIL: eval of a missing dataset"; exit 1; }

printf 'name: bad\nmodel: {hiden_size: 3}\nstages: [{seq_len: 8, steps: 1}]\n' > "$out/bad.yaml"
set +e
"$bin" train "$out/bad.yaml" 2> "$out/err"
rc=$?
set -e
[ "$rc" -eq 2 ] || { echo "FAIL: bad job file exited $rc, expected 2"; exit 1; }
grep -q "bad.yaml: model.hiden_size: unknown key" "$out/err" || { echo "FAIL: message: $(cat "$out/err")"; exit 1; }
echo "bad job file: $(cat "$out/err")"
# Preemption: SIGTERM finishes the step, commits a checkpoint, exits 75; the same command resumes.
job=(train "$cfg" --set output_dir="$out/p" --set checkpoint.dir="$out/p/ck" --set stages.0.steps=60
     --set stages.1.steps=4)
"$bin" "${job[@]}" > "$out/p.log" 2>&1 &
pid=$!
for _ in $(seq 1 600); do
  [ -f "$out/p/metrics.jsonl" ] && [ "$(wc -l < "$out/p/metrics.jsonl")" -ge 5 ] && break
  sleep 0.05
done
kill -TERM "$pid"
set +e
wait "$pid"
rc=$?
set -e
[ "$rc" -eq 75 ] || { echo "FAIL: SIGTERM exit code $rc, expected 75"; cat "$out/p.log"; exit 1; }
stopped=$(wc -l < "$out/p/metrics.jsonl")
ls "$out/p/ck" | grep -q "step-$stopped" || { echo "FAIL: no checkpoint step-$stopped"; ls "$out/p/ck"; exit 1; }
"$bin" "${job[@]}" > "$out/p2.log" 2>&1 || { echo "FAIL: resume"; cat "$out/p2.log"; exit 1; }
grep -q "resumed from the checkpoint of step $stopped" "$out/p2.log" || { echo "FAIL: no resume"; cat "$out/p2.log"; exit 1; }
first=$(sed -n "$((stopped + 1))p" "$out/p/metrics.jsonl" | sed 's/{"step": \([0-9]*\),.*/\1/')
total=$(wc -l < "$out/p/metrics.jsonl")
[ "$total" -eq 64 ] || { echo "FAIL: $total metrics lines after resume, expected 64 (appended)"; exit 1; }
[ "$first" -eq $((stopped + 1)) ] || { echo "FAIL: resumed run started at step $first"; exit 1; }
echo "preempted after step $stopped (exit 75), resumed at step $first"
# generate from the trained checkpoint: greedy is deterministic and continues the prompt.
g1=$("$bin" generate --checkpoint "$out/ck/step-44" --prompt "abc|" --max-tokens 8)
g2=$("$bin" generate --checkpoint "$out/ck/step-44" --prompt "abc|" --max-tokens 8)
[ "$g1" = "$g2" ] && [ "${g1:0:4}" = "abc|" ] || { echo "FAIL: generate: '$g1' vs '$g2'"; exit 1; }
# The prompt prefilled over a ring of 3 (KV cache sharded) continues it the same way.
g3=$("$bin" generate --checkpoint "$out/ck/step-44" --prompt "abc|" --max-tokens 8 --ring 3 --layout striped)
[ "$g3" = "$g1" ] || { echo "FAIL: generate over a ring of 3: '$g3' vs '$g1'"; exit 1; }
"$bin" generate --checkpoint "$out/ck/step-44" --prompt "abc|" --temperature 0.8 --top-k 5 --top-p 0.9 > /dev/null
echo "generate: '$g1'"
# needle retrieval over rings of 1 and 3 (prefill over the ring, sharded KV cache): the same answers, a JSON
# with a cell per length x depth, and a PNG heatmap; a bad depth is named.
"$bin" needle --checkpoint "$out/ck/step-44" --lengths 96,160 --depths 0,1 --trials 2 --ring 1 --output "$out/n1" > /dev/null
"$bin" needle --checkpoint "$out/ck/step-44" --lengths 96,160 --depths 0,1 --trials 2 --ring 3 --layout striped \
  --output "$out/n3" | tee "$out/needle.log"
grep -q '"accuracy": \[' "$out/n3/needle.json" || { echo "FAIL: needle.json has no accuracy"; exit 1; }
[ "$(grep -c '"got"' "$out/n3/needle.json")" -eq 8 ] || { echo "FAIL: needle.json lacks samples"; exit 1; }
cmp <(grep '"got"' "$out/n1/needle.json") <(grep '"got"' "$out/n3/needle.json") ||
  { echo "FAIL: needle answers differ between rings of 1 and 3"; exit 1; }
# The heatmap is a valid PNG (chunk CRCs, the deflate stream inflates to the image), grid and labels drawn.
pngcheck "$out/n3/needle.png" > "$out/png" && grep -q "^OK: .*24-bit RGB" "$out/png" ||
  { echo "FAIL: needle.png"; cat "$out/png"; exit 1; }
set +e
"$bin" needle --checkpoint "$out/ck/step-44" --lengths 96 --depths 2 2> "$out/needle_err"
rc=$?
set -e
[ "$rc" -eq 2 ] && grep -q -- "--depths: 2 is not in \[0, 1\]" "$out/needle_err" || { echo "FAIL: bad needle depth"; exit 1; }

# --processes: every device in its own process, the ring over UCX; the same numbers as in-process.
short=(--set checkpoint.dir= --set stages.0.steps=6 --set stages.1.steps=1)
"$bin" train "$cfg" --set output_dir="$out/in" "${short[@]}" > /dev/null
"$bin" train "$cfg" --processes --set output_dir="$out/pr" "${short[@]}" > "$out/pr.log" 2>&1 || { cat "$out/pr.log"; exit 1; }
loss() { sed 's/.*"loss": \([0-9.]*\).*/\1/' "$1"; }
# same_losses A B WHAT: the two runs printed the same losses.
same_losses() {
  [ "$(loss "$1")" = "$(loss "$2")" ] || { echo "FAIL: $3: losses differ"; paste <(loss "$1") <(loss "$2"); exit 1; }
}
# near_losses A B WHAT: within 1e-5 relative, step by step.
near_losses() {
  paste <(loss "$1") <(loss "$2") | awk -v what="$3" '{ d = $1 - $2; if (d < 0) d = -d;
    if (d > 1e-5 * $1) { print "FAIL: " what ": loss " $1 " vs " $2; bad = 1 } } END { exit bad }'
}
same_losses "$out/in/metrics.jsonl" "$out/pr/metrics.jsonl" "--processes"
pgrep -f "$out/pr/.hosts" > /dev/null && { echo "FAIL: device hosts left running"; exit 1; }
echo "--processes: 7 steps over UCX between 2 processes, losses identical to in-process"
# The optimizer sharded over the ring (ZeRO-1) between processes: the replicated run's losses.
"$bin" train "$cfg" --processes --set output_dir="$out/zs" --set optimizer.shard=true "${short[@]}" > "$out/zs.log" 2>&1 ||
  { cat "$out/zs.log"; exit 1; }
same_losses "$out/in/metrics.jsonl" "$out/zs/metrics.jsonl" "optimizer.shard over UCX"
echo "optimizer.shard=true over UCX: losses identical to the replicated in-process run"
# A stage that asks for a bigger ring: the ring is re-formed from 2 to 4 at the stage change, resuming from
# the stage's checkpoint; the loss curve continues as with a constant ring (within 1e-5).
seg=(--set stages.0.steps=6 --set stages.1.steps=3)
"$bin" train "$cfg" --set output_dir="$out/s2" --set checkpoint.dir="$out/s2/ck" "${seg[@]}" > /dev/null
"$bin" train "$cfg" --set output_dir="$out/s4" --set checkpoint.dir="$out/s4/ck" "${seg[@]}" --set stages.1.devices=4 \
  > "$out/s4.log"
grep -q "ring of 4 devices (epoch 2) from step 6" "$out/s4.log" || { echo "FAIL: no re-formed ring"; cat "$out/s4.log"; exit 1; }
near_losses "$out/s2/metrics.jsonl" "$out/s4/metrics.jsonl" "ring 2 -> 4"
echo "stage ring sizes: 2 -> 4 at step 6, losses equal to the constant ring"
# The same with the optimizer sharded: the ring of 4 takes its chunks of the moments the ring of 2 wrote.
"$bin" train "$cfg" --set output_dir="$out/z4" --set checkpoint.dir="$out/z4/ck" "${seg[@]}" --set stages.1.devices=4 \
  --set optimizer.shard=true > "$out/z4.log"
near_losses "$out/s2/metrics.jsonl" "$out/z4/metrics.jsonl" "optimizer.shard, ring 2 -> 4"
echo "optimizer.shard: the same across the re-formation from 2 to 4"
# Mixed precision: the log names the bf16 GEMM path; a bf16 run over UCX between processes gives the same
# losses as in one process; its checkpoint is fp32 safetensors (HF-compatible), as an fp32 run's.
b16=(--set precision=bf16 --set stages.0.steps=4 --set stages.1.steps=1)
"$bin" train "$cfg" --set output_dir="$out/b1" --set checkpoint.dir="$out/b1/ck" "${b16[@]}" > "$out/b1.log"
grep -q "precision bf16: GEMMs by " "$out/b1.log" || { echo "FAIL: no bf16 GEMM path in the log"; cat "$out/b1.log"; exit 1; }
"$bin" train "$cfg" --processes --set output_dir="$out/b2" --set checkpoint.dir= "${b16[@]}" > "$out/b2.log" 2>&1 ||
  { cat "$out/b2.log"; exit 1; }
same_losses "$out/b1/metrics.jsonl" "$out/b2/metrics.jsonl" "bf16 --processes"
head -c 20000 "$out/b1/ck/step-5/model.safetensors" > "$out/b1.hdr"  # the JSON header, and then some
grep -q '"dtype":"F32"' "$out/b1.hdr" && ! grep -q 'BF16' "$out/b1.hdr" ||
  { echo "FAIL: a bf16 run's checkpoint is not fp32 safetensors"; exit 1; }
echo "bf16: $(grep -o 'precision bf16: GEMMs by .*' "$out/b1.log"); --processes losses identical; checkpoint F32"
# plan: bytes per device before a run. The main job fits in 1 GiB a device (exit 0); so do the 7B recipes on
# 80 GiB GPUs, their weights sharded 4 ways (mesh.fsdp); replicated, with whole moments, they do not (exit
# 1), and the plan names the smallest mesh that would; a size that is not one is refused.
"$bin" plan "$cfg" --device-memory 1GiB > "$out/plan" || { echo "FAIL: plan of the main job"; cat "$out/plan"; exit 1; }
grep -q '^1  *512  *2  *256 |.* yes$' "$out/plan" || { echo "FAIL: plan's stage 1 row"; cat "$out/plan"; exit 1; }
set +e
"$bin" plan "$(dirname "$cfg")/lwm-text-1m.yaml" --device cuda --device-memory 80GiB > "$out/plan7b_fits"; rc_fits=$?
"$bin" plan "$(dirname "$cfg")/lwm-vision.yaml" --device cuda --device-memory 80GiB > "$out/plan7bv_fits"; rc_vfits=$?
"$bin" plan "$(dirname "$cfg")/lwm-text-1m.yaml" --device cuda --device-memory 80GiB --set mesh.fsdp=1 \
  --set optimizer.shard=false > "$out/plan7b"; rc=$?
"$bin" plan "$cfg" --device-memory 80parsecs 2> "$out/plan_err"; rc_bad=$?
set -e
[ "$rc_fits" -eq 0 ] || { echo "FAIL: the 7B recipe does not plan to fit 80 GiB (exit $rc_fits)"; cat "$out/plan7b_fits"; exit 1; }
[ "$rc_vfits" -eq 0 ] || { echo "FAIL: the 7B vision recipe does not plan to fit 80 GiB (exit $rc_vfits)"; cat "$out/plan7bv_fits"; exit 1; }
grep -q "mesh (dp x fsdp x sp) of each stage: 0: dp 1 x fsdp 4 x sp 4;" "$out/plan7b_fits" ||
  { echo "FAIL: the 7B recipe's plan does not name its mesh"; cat "$out/plan7b_fits"; exit 1; }
[ "$rc" -eq 1 ] && grep -q 'smallest mesh that does: dp 1, fsdp' "$out/plan7b" || { echo "FAIL: 7B plan (exit $rc)"; cat "$out/plan7b"; exit 1; }
[ "$rc_bad" -eq 2 ] && grep -q -- "--device-memory: '80parsecs' is not a size" "$out/plan_err" || { echo "FAIL: bad size (exit $rc_bad)"; exit 1; }
echo "plan: $(grep -c '^[0-9]' "$out/plan") stages fit in 1 GiB; 7B: $(grep -m1 'smallest mesh' "$out/plan7b")"
echo "1 passed, 0 failed"
