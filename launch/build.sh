#!/usr/bin/env bash
# Configures and builds cskv (Release, Ninja) into ${CSKV_BUILD_DIR:-build}; extra args go to cmake.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${CSKV_BUILD_DIR:-build}
# A build directory configured before the move to LibTorch 2.x remembers Debian's 1.13.
if grep -qs '^Torch_DIR:PATH=/usr/' "$build_dir/CMakeCache.txt"; then
  echo "build: $build_dir was configured with Debian's LibTorch 1.13; configuring it afresh"
  rm -rf "$build_dir"
fi
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=${CSKV_BUILD_TYPE:-Release} "$@" >/dev/null
jobs=$(nproc)
echo "build: compiling into $build_dir with $jobs jobs (first build takes several minutes)"
cmake --build "$build_dir" -j "$jobs"
