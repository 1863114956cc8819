#!/usr/bin/env bash
# The main job on the built-in toy model, from a fresh machine: install what is missing, build,
# generate a toy Llama model and calibration tokens, then capture + 4-bit training +
# merge + evaluation as ONE `cskv run` on 2 MPI ranks (demo/job.json), print its summary and the
# evaluation headline, then the K/V spectra (`cskv analyze`). Rerunning finds every stage
# complete and does nothing.
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
[[ -f "$out/model/config.json" ]] ||
  "$cskv" toy-model --arch llama --hidden 512 --layers 8 --heads 8 --kv-heads 4 \
    --intermediate 1376 --vocab 4096 --dtype f16 --seed 0 --out "$out/model"
[[ -f "$out/tokens.bin" ]] ||
  "$cskv" toy-tokens --vocab 4096 --count 1000000 --seed 0 --dtype u16 --out "$out/tokens.bin"
# The job: every key is also a `cskv run` flag (flags override the file).
cat >"$out/job.json" <<JSON
{
  "model": "$out/model",
  "tokens": "$out/tokens.bin", "token_dtype": "u16",
  "num_seqs": 64, "seq_len": 256, "holdout_seqs": 8, "batch": 4,
  "k_density": 0.25, "v_density": 0.5, "k_bits": 4, "v_bits": 4,
  "batch_tokens": 2048, "epochs": 8, "lr": 2e-3,
  "export_cskv": true, "name": "toy-llama",
  "eval_sequences": 4, "eval_decode": 32
}
JSON
# --oversubscribe: more ranks than cores is fine for the demo.
mpirun --oversubscribe -np "$ranks" "$cskv" run --config "$out/job.json" --out "$out/run" \
  --log-level warn
"$cskv" analyze --model "$out/model" --acts "$out/run/acts" --out "$out/analyze" --log-level warn
echo "demo: done in $(( $(date +%s) - start )) s; outputs in $out/ (run/summary.json," \
  "run/ckpt/metrics.md, run/eval/report.md, analyze/analyze.md)"
