#!/usr/bin/env bash
# ThreadSanitizer over the actor tests (device actors, rings formed by messages, devices in a second
# process) and the daemon's API tests (the HTTP server, the job table, jobs driven to their end). Debian's
# CAF is built without TSan, so every message through its lock-free mailboxes reads as a race there; this
# script builds the same CAF (0.17.6, Debian's source tarball, checked against its SHA-256) with
# -fsanitize=thread into $CAF_TSAN_DIR/prefix once, points the TSan build of ops/test.sh (build-tsan/) at
# it, builds rw_test_actors and rw_test_api and runs them. Any report fails the run (exit 66).
#
# About 5 minutes for CAF on 2 cores and 3 for the tests' build, so it is a `long` stage: ops/test.sh runs
# it when RW_LONG_TESTS=1 or RW_TSAN_ACTORS=1, CI does not.
#
#   ops/tsan-actors.sh [GTEST_FILTER]
set -euo pipefail
cd "$(dirname "$0")/.."
caf_dir=$PWD/${CAF_TSAN_DIR:-build-caf-tsan}
tsan_dir=${TSAN_BUILD_DIR:-build-tsan}
san="-fsanitize=thread -fno-omit-frame-pointer"
caf_version=0.17.6
caf_sha256=e2bf5bd243f08bb7d8adde197cfe3e6d71314ed3378fe0692f8932f4c3b3928c
if [ ! -f "$caf_dir/prefix/lib/libcaf_core.so" ]; then
  mkdir -p "$caf_dir"
  tarball=$caf_dir/actor-framework_$caf_version.orig.tar.gz
  [ -f "$tarball" ] ||
    curl -sSfL -o "$tarball" \
      "http://deb.debian.org/debian/pool/main/a/actor-framework/actor-framework_$caf_version.orig.tar.gz"
  echo "$caf_sha256  $tarball" | sha256sum -c --quiet -
  rm -rf "$caf_dir/src" "$caf_dir/build"
  mkdir -p "$caf_dir/src"
  tar xzf "$tarball" -C "$caf_dir/src" --strip-components=1
  # Debian's own configuration (log level quiet, its memory management), with TSan. The upstream tarball
  # misses an #include <limits> in libcaf_io (Debian patches it), hence -include.
  cmake -S "$caf_dir/src" -B "$caf_dir/build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCAF_NO_EXAMPLES=ON -DCAF_NO_TOOLS=ON -DCAF_NO_UNIT_TESTS=ON -DCAF_NO_OPENCL=ON -DCAF_NO_PYTHON=ON \
    -DCAF_NO_SUMMARY=ON -DCMAKE_CXX_FLAGS="$san -include limits" -DCMAKE_INSTALL_PREFIX="$caf_dir/prefix" \
    > "$caf_dir/configure.log"
  cmake --build "$caf_dir/build" -j "$(nproc)" > "$caf_dir/build.log" || { tail -30 "$caf_dir/build.log"; exit 1; }
  cmake --install "$caf_dir/build" > /dev/null
fi

if [ ! -f "$tsan_dir/build.ninja" ]; then
  cmake -S . -B "$tsan_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DRINGWORLD_CUDA=OFF \
    -DCMAKE_DISABLE_FIND_PACKAGE_OpenMP=ON \
    -DCMAKE_CXX_FLAGS="$san" -DCMAKE_EXE_LINKER_FLAGS="$san" -DCMAKE_SHARED_LINKER_FLAGS="$san"
fi
# UCX's memory hooks (libucm) intercept the madvise of a thread's exit before TSan knows the thread (the
# build runs the tests too, to list them).
export UCX_MEM_EVENTS=no
# Only actors/ and what links it use CAF: the runtime tests of the TSan stage are not rebuilt by this.
cmake "$tsan_dir" -DRINGWORLD_CAF_PREFIX="$caf_dir/prefix" -UCAF_CORE_LIBRARY -UCAF_IO_LIBRARY \
  -UCAF_OPENSSL_LIBRARY > /dev/null
cmake --build "$tsan_dir" -j "$(nproc)" --target rw_test_actors rw_device_host rw_test_api
# One library thread each (oneDNN and OpenBLAS run their own, unseen by TSan).
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
export TSAN_OPTIONS="halt_on_error=1 exitcode=66 second_deadlock_stack=1 suppressions=$PWD/ops/sanitizers/tsan.supp"
"$tsan_dir/tests/actors/rw_test_actors" --gtest_filter="${1:-*}" --gtest_brief=1
"$tsan_dir/tests/scheduler/rw_test_api" --gtest_filter="${1:-*}" --gtest_brief=1
