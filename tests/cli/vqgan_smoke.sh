#!/usr/bin/env bash
# `ringworld vqgan` and `data prepare --vqgan` from the command line, on the tiny fixture VQGAN (32x32 frames,
# 8x8 codes): a video made by ffmpeg -> 5 frames of codes -> decoded to an mp4 that ffprobe counts 5 frames of
# 32x32 in, and to a PNG; the codes JSON is a record data prepare reads; bad inputs exit non-zero naming
# the file.
set -euo pipefail
bin=$1
root=$2
vq=$root/tests/fixtures/vqgan_tiny
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
ffmpeg -hide_banner -loglevel error -y -f lavfi -i testsrc=size=80x60:rate=5:d=3 -c:v libx264 -pix_fmt yuv420p "$out/in.mp4"
"$bin" vqgan encode --vqgan "$vq" --input "$out/in.mp4" --max-frames 5 --output "$out/codes.json"
python3 -c "
import json, sys
r = json.load(open('$out/codes.json'))
assert len(r['vision']) == 5 and all(len(f) == 64 for f in r['vision']), r
assert r['source_frames'] == [0, 3, 7, 10, 14], r['source_frames']
assert all(0 <= c < 64 for f in r['vision'] for c in f)
"
"$bin" vqgan decode --vqgan "$vq" --codes "$out/codes.json" --output "$out/back.mp4" --fps 5
frames=$(ffprobe -v error -count_frames -select_streams v:0 -show_entries stream=nb_read_frames,width,height -of csv=p=0 "$out/back.mp4")
[ "$frames" = "32,32,5" ] || { echo "FAIL: decoded video is '$frames' (width,height,frames), expected 32,32,5"; exit 1; }
python3 -c "
import json
r = json.load(open('$out/codes.json')); r['vision'] = r['vision'][:1]
json.dump(r, open('$out/one.json', 'w'))"
"$bin" vqgan decode --vqgan "$vq" --codes "$out/one.json" --output "$out/one.png"
pngcheck -q "$out/one.png" > /dev/null || { echo "FAIL: one.png is not a valid PNG"; exit 1; }
# The codes are a record data prepare reads.
# (BOS, <vision>, 5 x (64 codes + <eof>/<eov>), </vision>, EOS: 329 tokens.)
cp "$out/codes.json" "$out/codes.jsonl"
"$bin" data prepare --input "$out/codes.jsonl" --output "$out/ds" --vision-codes 64 > /dev/null
grep -q '"tokens": 329' "$out/ds/meta.json" || { echo "FAIL: data prepare on the codes record: $(cat "$out/ds/meta.json")"; exit 1; }
# Bad inputs.
echo "not a video" > "$out/bad.mp4"
rc=0; msg=$("$bin" vqgan encode --vqgan "$vq" --input "$out/bad.mp4" 2>&1) || rc=$?
[ "$rc" -eq 1 ] && [[ "$msg" == *"$out/bad.mp4: cannot open as an image or video"* ]] ||
  { echo "FAIL: encode of a bad file: exit $rc, '$msg'"; exit 1; }
echo '{"vision": [[1, 2, 3]]}' > "$out/short.json"
rc=0; msg=$("$bin" vqgan decode --vqgan "$vq" --codes "$out/short.json" --output "$out/x.png" 2>&1) || rc=$?
[ "$rc" -eq 2 ] && [[ "$msg" == *"frame 0 does not hold 64 codes"* ]] ||
  { echo "FAIL: decode of a short frame: exit $rc, '$msg'"; exit 1; }
[ ! -e "$out/x.png" ] || { echo "FAIL: a refused decode wrote x.png"; exit 1; }
# The whole path (issue 15, point 6): videos -> data prepare --vqgan -> a tiny model trained a few steps on
# text + vision -> generate --video: an mp4 of the frames asked for, at the VQGAN's size; and --image.
for i in 1 2 3 4 5 6; do
  echo "{\"video\": \"in.mp4\", \"max_frames\": 3, \"text\": \"test pattern $i\", \"order\": \"text_vision\"}"
done > "$out/videos.jsonl"
"$bin" data prepare --input "$out/videos.jsonl" --output "$out/vds" --vqgan "$vq" > /dev/null
grep -q '"vocab_size": 327' "$out/vds/meta.json" || { echo "FAIL: 259 bytes + 64 codes + 4 markers: $(cat "$out/vds/meta.json")"; exit 1; }
"$bin" train "$root/configs/tiny-cpu.yaml" --set output_dir="$out/run" --set checkpoint.dir="$out/ck" \
  --set data.source=files --set data.path="$out/vds" --set model.vocab_size=327 --set stages.0.steps=4 \
  --set stages.1.steps=2 > /dev/null
"$bin" generate --checkpoint "$out/ck/step-6" --vqgan "$vq" --video "$out/gen.mp4" --frames 3 --prompt "test pattern" \
  --cfg-scale 2 --temperature 1 --top-k 16 --fps 3
got=$(ffprobe -v error -count_frames -select_streams v:0 -show_entries stream=nb_read_frames,width,height -of csv=p=0 "$out/gen.mp4")
[ "$got" = "32,32,3" ] || { echo "FAIL: generated video is '$got' (width,height,frames), expected 32,32,3"; exit 1; }
"$bin" generate --checkpoint "$out/ck/step-6" --vqgan "$vq" --image "$out/gen.png" --prompt "test pattern"
pngcheck -q "$out/gen.png" > /dev/null || { echo "FAIL: gen.png is not a valid PNG"; exit 1; }
# A guidance scale out of range is refused.
rc=0; msg=$("$bin" generate --checkpoint "$out/ck/step-6" --vqgan "$root/tests/fixtures/vqgan_tiny" --image "$out/x.png" \
  --prompt "x" --cfg-scale 200 2>&1) || rc=$?
[ "$rc" -ne 0 ] || { echo "FAIL: --cfg-scale 200 was accepted"; exit 1; }
# LWM's layout: the same videos as LWM's ids (a vision vocabulary of 66 = 64 codes + end of frame/vision,
# <vision> as text), a model with model.vision_vocab_size, then generation through its vision head; the
# one-vocabulary model is refused the dataset by name. That generation runs on a ring of 2 devices.
"$bin" data prepare --input "$out/videos.jsonl" --output "$out/lds" --vqgan "$vq" --vision-layout lwm > /dev/null
python3 -c "
import json
m = json.load(open('$out/lds/meta.json'))
assert m['vision_layout'] == 'lwm' and m['vocab_size'] == 259 + 66 and m['vision_vocab_size_min'] == 66, m
t = m['vision_tokens']
assert t['first_code'] == 259 and t['eof'] == 259 + 64 and t['eov'] == 259 + 65, t
assert t['vision'] == list(b'<vision>') and t['/vision'] == list(b'</vision>'), t
"
rc=0; msg=$("$bin" train "$root/configs/tiny-cpu.yaml" --set output_dir="$out/lrun0" --set data.source=files \
  --set data.path="$out/lds" --set model.vocab_size=325 --set stages.0.steps=1 --set stages.1.steps=1 2>&1) || rc=$?
[ "$rc" -ne 0 ] && [[ "$msg" == *"data.path: the dataset lays vision out as LWM does"* ]] ||
  { echo "FAIL: a one-vocabulary model on LWM's layout: exit $rc, '$msg'"; exit 1; }
"$bin" train "$root/configs/tiny-cpu.yaml" --set output_dir="$out/lrun" --set checkpoint.dir="$out/lck" \
  --set data.source=files --set data.path="$out/lds" --set model.vision_vocab_size=72 --set stages.0.steps=4 \
  --set stages.1.steps=2 > /dev/null
grep -q '"vision_vocab_size": 72' "$out/lck/step-6/config.json" || { echo "FAIL: config.json lacks vision_vocab_size"; exit 1; }
"$bin" generate --checkpoint "$out/lck/step-6" --vqgan "$vq" --video "$out/lgen.mp4" --frames 2 --prompt "test pattern" --ring 2 \
  --cfg-scale 2 --temperature 1 --top-k 16 --fps 2 > /dev/null
lgot=$(ffprobe -v error -count_frames -select_streams v:0 -show_entries stream=nb_read_frames,width,height -of csv=p=0 "$out/lgen.mp4")
[ "$lgot" = "32,32,2" ] || { echo "FAIL: LWM-layout video is '$lgot', expected 32,32,2"; exit 1; }
echo "vqgan smoke: 5 frames -> $frames (w,h,n) mp4, a PNG, a dataset record; bad inputs refused;"
echo "  trained on 6 videos, generated a 3-frame mp4 ($got) and a PNG; in LWM's layout a 2-frame mp4 ($lgot)"
