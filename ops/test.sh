#!/usr/bin/env bash
# Sets up (ops/setup.sh) and runs every test with CTest. Tests labelled `long` are the full forms of
# slow tests; they run when RW_LONG_TESTS=1 and are left out otherwise (CI runs their short forms).
# Then the sanitizer stage (RW_SANITIZERS=0 skips it): the unit, ring, actor, scheduler and storage tests
# again in a build with AddressSanitizer and UndefinedBehaviorSanitizer (build-asan/, no CUDA); any
# report fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ops/setup.sh
build_dir=${BUILD_DIR:-build}
args=(--test-dir "$build_dir" --output-on-failure --timeout 600 -j "$(nproc)")
[ "${RW_LONG_TESTS:-0}" = 1 ] || args+=(-LE long)
ctest "${args[@]}"

[ "${RW_SANITIZERS:-1}" = 1 ] || exit 0
asan_dir=${ASAN_BUILD_DIR:-build-asan}
san="-fsanitize=address,undefined -fno-omit-frame-pointer"
if [ ! -f "$asan_dir/build.ninja" ]; then
  cmake -S . -B "$asan_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DRINGWORLD_CUDA=OFF \
    -DCMAKE_CXX_FLAGS="$san" -DCMAKE_EXE_LINKER_FLAGS="$san" -DCMAKE_SHARED_LINKER_FLAGS="$san"
fi
targets=(rw_test_runtime rw_test_alloc rw_test_actors rw_test_scheduler rw_test_placement rw_test_api rw_test_storage)
cmake --build "$asan_dir" -j "$(nproc)" --target "${targets[@]}"
# detect_leaks: CAF's and OpenMP's threads keep what they hold until exit. UBSan stops at its first report
# (halt_on_error), but for those in ops/sanitizers/ubsan.supp (third-party headers, each with its reason).
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:suppressions=$PWD/ops/sanitizers/ubsan.supp
ctest --test-dir "$asan_dir" --output-on-failure --timeout 900 -j "$(nproc)" -L 'runtime|actors|scheduler|storage' \
  -LE 'long|processes|ucx'
