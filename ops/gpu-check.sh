#!/usr/bin/env bash
# GPU check of the kernel library, on a bare GPU machine (CUDA toolkit, CMake, PyTorch; none of our Debian
# packages): builds kernels/ alone (-DRINGWORLD_KERNELS_ONLY=ON), runs the CUDA kernel tests (under
# compute-sanitizer's memcheck too when they fail), the CUDA benchmark, and our attention beside PyTorch's
# scaled_dot_product_attention (flash backend) on the same shapes in the same run. Each stage has a time
# limit so that one hung kernel cannot eat the machine's lease; the whole check is meant to end inside 8
# minutes on an H100/H200 with 16 cores.
#
#   ops/gpu-check.sh --prepare   (here, on a machine with libgtest-dev) copies the GoogleTest sources into
#                                .carry/ (git-ignored) so they can travel to the GPU machine.
#   ops/gpu-check.sh [OUT_DIR]   (on the GPU machine) build, test, benchmark; results land in OUT_DIR.
#   GPU_CHECK_S=8192,32768 GPU_CHECK_D=128 ops/gpu-check.sh   other benchmark shapes.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--prepare" ]; then
  mkdir -p .carry
  rm -rf .carry/googletest
  cp -r /usr/src/googletest .carry/googletest
  echo "gpu-check: GoogleTest sources in .carry/googletest; carry .carry to the GPU machine"
  exit 0
fi

out=${1:-${OUT:-gpu-check-out}}
mkdir -p "$out"
start=$SECONDS
stage() { echo "gpu-check: [$((SECONDS - start)) s] $*" | tee -a "$out/stages.txt"; }

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$out/gpu.txt"
lscpu | grep -E '^Model name|^CPU\(s\)' | tee -a "$out/gpu.txt"
gtest_args=()
[ -d .carry/googletest ] && gtest_args=(-DRINGWORLD_GTEST_SOURCE="$PWD/.carry/googletest")
stage "configure"
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DRINGWORLD_KERNELS_ONLY=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90 "${gtest_args[@]}" > "$out/build.txt" 2>&1 || { tail -30 "$out/build.txt"; exit 1; }
stage "build"
timeout 300 cmake --build build-gpu -j "$(nproc)" >> "$out/build.txt" 2>&1 || { tail -40 "$out/build.txt"; exit 1; }

set +e
stage "CUDA kernel tests"
timeout 180 ./build-gpu/tests/kernels/rw_test_kernels --gtest_filter='*Cuda*' 2>&1 | tee "$out/tests.txt" |
  grep -E '^\[  (FAILED|PASSED|SKIPPED) |^\[ +(OK|FAILED) \]|max abs|Failure|error' | head -200
test_rc=${PIPESTATUS[0]}
stage "tests exit code $test_rc"
if [ "$test_rc" -ne 0 ] && command -v compute-sanitizer > /dev/null; then
  stage "compute-sanitizer memcheck on the CUDA tests"
  timeout 150 compute-sanitizer --tool memcheck --print-limit 20 ./build-gpu/tests/kernels/rw_test_kernels \
    --gtest_filter='*Cuda*' > "$out/memcheck.txt" 2>&1
  grep -E '=========|FAILED' "$out/memcheck.txt" | head -60
fi
stage "benchmark"
timeout 240 ./build-gpu/bench/rw_bench_kernels --cuda-only --s "${GPU_CHECK_S:-2048,8192,32768}" \
  --d "${GPU_CHECK_D:-64,128}" --reps 5 --json "$out/ours.jsonl" 2>&1 | tee "$out/bench.txt"
bench_rc=${PIPESTATUS[0]}
stage "benchmark exit code $bench_rc; PyTorch SDPA on the same shapes"
[ -s "$out/ours.jsonl" ] && timeout 180 python3 bench/sdpa_reference.py "$out/ours.jsonl" --markdown "$out/vs_torch.md"
stage "done: tests $test_rc, bench $bench_rc"
exit "$test_rc"
