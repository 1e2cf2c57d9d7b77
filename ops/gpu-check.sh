#!/usr/bin/env bash
# GPU check of the kernel library, on a bare GPU machine (CUDA toolkit, CMake, PyTorch; none of our Debian
# packages): builds kernels/ alone (-DRINGWORLD_KERNELS_ONLY=ON), runs the kernel tests (the CUDA ones
# included) and the CUDA benchmark, and prints our attention beside PyTorch's scaled_dot_product_attention
# on the same shapes in the same run.
#
#   ops/gpu-check.sh --prepare   (here, on a machine with libgtest-dev) copies the GoogleTest sources into
#                                .carry/ (git-ignored) so they can travel to the GPU machine.
#   ops/gpu-check.sh [OUT_DIR]   (on the GPU machine) build, test, benchmark; results land in OUT_DIR.
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
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
gtest_args=()
[ -d .carry/googletest ] && gtest_args=(-DRINGWORLD_GTEST_SOURCE="$PWD/.carry/googletest")
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DRINGWORLD_KERNELS_ONLY=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90 "${gtest_args[@]}" 2>&1 | tail -3
cmake --build build-gpu -j "$(nproc)" 2>&1 | tail -3

set +e
./build-gpu/tests/kernels/rw_test_kernels 2>&1 | tee "$out/tests.txt"
test_rc=${PIPESTATUS[0]}
set -e
./build-gpu/bench/rw_bench_kernels --cuda-only --s 2048,8192,32768 --d 64,128 --reps 5 \
  --json "$out/ours.jsonl" 2>&1 | tee "$out/bench.txt"
python3 bench/sdpa_reference.py "$out/ours.jsonl" --markdown "$out/vs_torch.md"
echo "gpu-check: tests exit code $test_rc"
exit "$test_rc"
