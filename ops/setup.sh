#!/usr/bin/env bash
# Sets up a fresh Debian machine for RingWorld and builds it: installs the system packages that are
# missing (nothing when all are there), then configures and builds with CMake + Ninja into build/.
# Idempotent: a second run only re-runs the (incremental) build.
#   ops/setup.sh                 full build (CUDA sources too when nvcc is found)
#   BUILD_DIR=dir ops/setup.sh   build elsewhere;  CMAKE_ARGS="-D..." adds configure options
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  build-essential cmake ninja-build pkg-config git procps curl
  libcaf-dev libssl-dev libucx-dev ucx-utils librocksdb-dev prometheus-cpp-dev libfmt-dev
  libgtest-dev libgmock-dev libbenchmark-dev libopenblas-dev libdnnl-dev
  libyaml-cpp-dev nlohmann-json3-dev libcpp-httplib-dev libcli11-dev libsentencepiece-dev zlib1g-dev
  prometheus pngcheck
  libavformat-dev libavcodec-dev libswscale-dev libavutil-dev ffmpeg  # runtime/media.h; tests make videos with ffmpeg
  slurm-wlm munge   # tests/cli/slurm_drill.sh runs ops/slurm/ringworld.sbatch on a real Slurm on loopback
  iproute2          # tests/scheduler/partition_drill.sh: workers in their own network namespaces (ip netns)
  python3-venv      # tests/cli/k8s_validate.sh: kubernetes-validate (PyPI) in a venv under the build directory
  python3-numpy     # ops/convert_lwm_vqgan.py (LWM's pickled VQGAN parameters), run by test_vqgan
  python3-msgpack   # ops/convert_lwm_checkpoint.py (LWM's streaming checkpoints), run by test_hf_interop
  clang libclang-rt-14-dev  # ops/test.sh's fuzz stage: libFuzzer targets (tests/fuzz) with ASan + UBSan
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "setup: all ${#packages[@]} system packages present"
fi

build_dir=${BUILD_DIR:-build}

# The Kubernetes schema validator for tests/cli/k8s_validate.sh, pinned (its schemas change with versions).
k8s_validate=kubernetes-validate==1.37.0
kv=$build_dir/k8s-validate
if [ "$("$kv/bin/kubernetes-validate" --version 2> /dev/null)" != "${k8s_validate#*==}" ]; then
  rm -rf "$kv"
  if python3 -m venv "$kv" && "$kv/bin/pip" install -q --disable-pip-version-check "$k8s_validate"; then
    echo "setup: $k8s_validate in $kv"
  else
    echo "setup: warning: cannot install $k8s_validate into $kv (PyPI unreachable?): tests/cli/k8s_validate.sh will be skipped"
  fi
fi
if [ ! -f "$build_dir/build.ninja" ]; then
  # shellcheck disable=SC2086
  cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release ${CMAKE_ARGS:-}
fi
# Two cores and CUDA compiles: keep the job count at the core count.
cmake --build "$build_dir" -j "$(nproc)"
echo "setup: built into $build_dir"
