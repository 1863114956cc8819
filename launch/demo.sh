#!/usr/bin/env bash
# The main job on the built-in toy model, from a fresh machine: install what is missing, build,
# generate a toy Llama model and calibration tokens, and print the model summary.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
launch/install-deps.sh
launch/build.sh
cskv=${CSKV_BUILD_DIR:-build}/launch/cskv
out=${CSKV_DEMO_DIR:-demo}
mkdir -p "$out"
"$cskv" toy-model --arch llama --hidden 512 --layers 8 --heads 8 --kv-heads 4 \
  --intermediate 1376 --vocab 4096 --dtype f16 --seed 0 --out "$out/model"
"$cskv" toy-tokens --vocab 4096 --count 1000000 --seed 0 --dtype u16 --out "$out/tokens.bin"
"$cskv" inspect --model "$out/model"
