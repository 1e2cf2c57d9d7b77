#!/usr/bin/env bash
# Sets up (ops/setup.sh) and runs every test with CTest. Tests labelled `long` are the full forms of
# slow tests; they run when RW_LONG_TESTS=1 and are left out otherwise (CI runs their short forms).
# Then, in this order:
# - the sanitizer stage (RW_SANITIZERS=0 skips it): the unit, ring, actor, scheduler and storage tests
#   again in a build with AddressSanitizer and UndefinedBehaviorSanitizer (build-asan/, no CUDA); any
#   report fails the run;
# - the TSan stage (RW_TSAN=0 skips it): the runtime tests (the rings over the in-process transport, the
#   model, training, decoding) in a ThreadSanitizer build (build-tsan/, without OpenMP, whose runtime TSan
#   cannot see into); any report fails the run. The actor and API tests need a CAF built with TSan
#   (Debian's is not: every message through its lock-free mailboxes would read as a race), which
#   ops/tsan-actors.sh builds; that takes about 8 minutes, so that part runs only with RW_LONG_TESTS=1 or
#   RW_TSAN_ACTORS=1 (and not with RW_TSAN=0);
# - the fuzz stage (RW_FUZZ=0 skips it): the libFuzzer targets of tests/fuzz, built by clang with ASan +
#   UBSan (build-fuzz/), each replaying its corpus and fuzzing RW_FUZZ_SECONDS (default 20) from it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ops/setup.sh
build_dir=${BUILD_DIR:-build}
args=(--test-dir "$build_dir" --output-on-failure --timeout 600 -j "$(nproc)")
[ "${RW_LONG_TESTS:-0}" = 1 ] || args+=(-LE long)
ctest "${args[@]}"

if [ "${RW_SANITIZERS:-1}" = 1 ]; then
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
fi

if [ "${RW_TSAN:-1}" = 1 ]; then
  tsan_dir=${TSAN_BUILD_DIR:-build-tsan}
  san="-fsanitize=thread -fno-omit-frame-pointer"
  # UCX's memory hooks (libucm) intercept the madvise of a thread's exit before TSan knows the thread.
  export UCX_MEM_EVENTS=no
  if [ ! -f "$tsan_dir/build.ninja" ]; then
    cmake -S . -B "$tsan_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DRINGWORLD_CUDA=OFF \
      -DCMAKE_DISABLE_FIND_PACKAGE_OpenMP=ON \
      -DCMAKE_CXX_FLAGS="$san" -DCMAKE_EXE_LINKER_FLAGS="$san" -DCMAKE_SHARED_LINKER_FLAGS="$san"
  fi
  cmake --build "$tsan_dir" -j "$(nproc)" --target rw_test_runtime
  # One library thread each (oneDNN and OpenBLAS run their own, unseen by TSan); the crash-point sweep
  # forks and SIGKILLs children, which it checks in the other stages.
  OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 \
    TSAN_OPTIONS="halt_on_error=1 exitcode=66 second_deadlock_stack=1 suppressions=$PWD/ops/sanitizers/tsan.supp" \
    "$tsan_dir/tests/runtime/rw_test_runtime" --gtest_filter='-CrashPoints.*' --gtest_brief=1
  unset UCX_MEM_EVENTS
fi
if [ "${RW_TSAN:-1}" = 1 ] && [ "${RW_TSAN_ACTORS:-${RW_LONG_TESTS:-0}}" = 1 ]; then
  bash ops/tsan-actors.sh
fi

[ "${RW_FUZZ:-1}" = 1 ] || exit 0
# Leaks count here (an input that leaks fails); UBSan stops at its first report.
export ASAN_OPTIONS=detect_leaks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
fuzz_dir=${FUZZ_BUILD_DIR:-build-fuzz}
fuzz_seconds=${RW_FUZZ_SECONDS:-20}
if [ ! -f "$fuzz_dir/build.ninja" ]; then
  cmake -S . -B "$fuzz_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DRINGWORLD_CUDA=OFF -DRINGWORLD_FUZZ=ON \
    -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
    -DCMAKE_CXX_FLAGS="-fsanitize=address,undefined,fuzzer-no-link -fno-omit-frame-pointer" \
    -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined"
fi
cmake "$fuzz_dir" -DRW_FUZZ_SECONDS="$fuzz_seconds" > /dev/null
fuzzers=(fuzz_job_config fuzz_api_requests fuzz_safetensors fuzz_dataset fuzz_tokenizer fuzz_msg_header)
cmake --build "$fuzz_dir" -j "$(nproc)" --target "${fuzzers[@]}"
ctest --test-dir "$fuzz_dir" --output-on-failure -j "$(nproc)" -L fuzz
