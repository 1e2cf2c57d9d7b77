#!/usr/bin/env bash
# Sets up (ops/setup.sh) and runs every test with CTest. Tests labelled `long` are the full forms of
# slow tests; they run when RW_LONG_TESTS=1 and are left out otherwise (CI runs their short forms).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ops/setup.sh
build_dir=${BUILD_DIR:-build}
args=(--test-dir "$build_dir" --output-on-failure --timeout 600 -j "$(nproc)")
[ "${RW_LONG_TESTS:-0}" = 1 ] || args+=(-LE long)
ctest "${args[@]}"
