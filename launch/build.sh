#!/usr/bin/env bash
# Configures and builds cskv (Release, Ninja) into ${CSKV_BUILD_DIR:-build}; extra args go to cmake.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${CSKV_BUILD_DIR:-build}
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=${CSKV_BUILD_TYPE:-Release} "$@" >/dev/null
jobs=$(nproc)
echo "build: compiling into $build_dir with $jobs jobs (first build takes several minutes)"
cmake --build "$build_dir" -j "$jobs"
