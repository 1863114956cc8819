#!/usr/bin/env bash
# The main job on the built-in toy model, from a fresh machine: install what is missing, build,
# generate a toy Llama model and calibration tokens, capture activations on 2 MPI ranks, analyze
# the K/V spectra, train 4-bit channel-shrinking factors on 2 ranks, print the summary, and merge
# them into demo/compressor.safetensors (+ the reference .ckpt export), and evaluate the compressed
# cache (demo/eval/report.md; the headline is printed).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
launch/install-deps.sh
launch/build.sh
cskv=${CSKV_BUILD_DIR:-build}/launch/cskv
out=${CSKV_DEMO_DIR:-demo}
ranks=${CSKV_DEMO_RANKS:-2}
mkdir -p "$out"
start=$(date +%s)
"$cskv" toy-model --arch llama --hidden 512 --layers 8 --heads 8 --kv-heads 4 \
  --intermediate 1376 --vocab 4096 --dtype f16 --seed 0 --out "$out/model"
"$cskv" toy-tokens --vocab 4096 --count 1000000 --seed 0 --dtype u16 --out "$out/tokens.bin"
# --oversubscribe: more ranks than cores is fine for the demo.
mpirun --oversubscribe -np "$ranks" "$cskv" capture --model "$out/model" \
  --tokens "$out/tokens.bin" --token-dtype u16 --num-seqs 64 --seq-len 256 --holdout-seqs 8 \
  --batch 4 --out "$out/acts"
"$cskv" analyze --model "$out/model" --acts "$out/acts" --out "$out/analyze"
mpirun --oversubscribe -np "$ranks" "$cskv" train --model "$out/model" --acts "$out/acts" --ckpt-dir "$out/ckpt" \
  --k-density 0.25 --v-density 0.5 --k-bits 4 --v-bits 4 --batch-tokens 2048 --epochs 8 \
  --lr 2e-3 --log-level warn
"$cskv" merge --ckpt-dir "$out/ckpt" --out "$out/compressor.safetensors" \
  --export-cskv "$out/export" --name toy-llama --log-level warn
# What the compressed cache costs and saves: held-out errors, KL/perplexity of decoding with it,
# measured memory; prints the headline.
"$cskv" eval --model "$out/model" --acts "$out/acts" --compressor "$out/compressor.safetensors" \
  --sequences 4 --decode 32 --out "$out/eval" --log-level warn
echo "demo: done in $(( $(date +%s) - start )) s; outputs in $out/ (analyze/analyze.md, ckpt/metrics.md, eval/report.md)"
