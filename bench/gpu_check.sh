#!/usr/bin/env bash
# The prepared GPU check of issue 12, for a lent machine with one GPU, torch 2.11 + CUDA 13 in a
# Python venv and no Debian packages or network. It runs from the carried build of
# bench/gpu_pack.sh (build-gpu/: cskv, cskv_bench_train, the non-torch libraries) with LibTorch
# and CUDA from that machine's venv, and writes everything it measured to one file,
# $OUT/gpu_check.md (or /tmp/cskv-gpu-check/), the logs beside it:
#   1. cskv --version, nvidia-smi
#   2. comm-check on the NCCL backend (one rank: MPI singleton + NCCL on the GPU)
#   3. capture, train, eval with --device cuda on a model of Llama-3-8B layer shapes (hidden 4096,
#      32 heads / 8 KV heads, intermediate 14336; 2 layers, toy weights), 128 x 2048 = 262144
#      calibration tokens + 8 held-out sequences; 4-bit K/V at density 0.5, 1 epoch
#   4. the same training of layer 0 on the CPU: held-out errors GPU vs CPU (tolerance below)
#   5. cskv_bench_train part g: the step's TFLOP/s next to fp32 and bf16 at::mm of the same
#      shapes in the same process, streamed and resident (busy share)
# Budget: ~8 minutes on an H200. CSKV_GPU_CHECK_DEVICE=cpu CSKV_GPU_CHECK_SCALE=small runs the
# same steps on a small model on the CPU (a dry run of this script on any machine).
set -uo pipefail
cd "$(dirname "$0")/.."
carry=${CSKV_GPU_CARRY:-build-gpu}
dev=${CSKV_GPU_CHECK_DEVICE:-cuda}
scale=${CSKV_GPU_CHECK_SCALE:-full}
python=${CSKV_GPU_PYTHON:-python3}
out=${OUT:-/tmp/cskv-gpu-check}
work=${CSKV_GPU_CHECK_WORK:-/tmp/cskv-gpu-work}
mkdir -p "$out" "$work"
report="$out/gpu_check.md"

# LibTorch, CUDA and NCCL from the machine's venv; the rest from the carry.
torch_dir=$("$python" -c 'import os, torch; print(os.path.dirname(torch.__file__))') || {
  echo "gpu_check: $python cannot import torch" >&2; exit 1; }
site=$(dirname "$torch_dir")
libs="$PWD/$carry/lib:$torch_dir/lib"
for d in "$site"/nvidia/*/lib; do [[ -d "$d" ]] && libs+=":$d"; done
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export CSKV_SENTENCEPIECE_PLUGIN="$PWD/$carry/lib/libcskv_sentencepiece.so"
export OMPI_MCA_mca_base_component_path="$PWD/$carry/openmpi"
export OMPI_MCA_mca_base_component_show_load_errors=0 OMPI_MCA_ess_singleton_isolated=1
export OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,vader OMPI_ALLOW_RUN_AS_ROOT=1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cskv="$PWD/$carry/bin/cskv"
bench="$PWD/$carry/bin/cskv_bench_train"
threads=$(nproc)

if [[ $scale == full ]]; then
  model_flags=(--hidden 4096 --layers 2 --heads 32 --kv-heads 8 --intermediate 14336 --vocab 32000)
  capture_flags=(--num-seqs 128 --seq-len 2048 --holdout-seqs 8 --batch 4)
  bench_flags=(--rows 65536 --steps 20)
else
  model_flags=(--hidden 256 --layers 2 --heads 8 --kv-heads 2 --intermediate 512 --vocab 512)
  capture_flags=(--num-seqs 16 --seq-len 256 --holdout-seqs 4 --batch 2)
  bench_flags=(--rows 8192 --steps 2)
fi
train_flags=(--k-density 0.5 --v-density 0.5 --k-bits 4 --v-bits 4 --batch-tokens 4096
  --epochs 1 --lr 1e-3 --threads "$threads")

{
  echo "# GPU check ($(date -u +%Y-%m-%dT%H:%MZ), device $dev, scale $scale)"
  echo
  echo '```'
  "$cskv" --version 2>&1
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  echo '```'
  echo
  echo "| step | exit | seconds |"
  echo "|---|---|---|"
} >"$report"

# step NAME CMD...: runs CMD with its output in NAME.log, adds a row to the report.
step() {
  local name=$1
  shift
  local t0 t1 rc
  t0=$(date +%s.%N)
  "$@" >"$out/$name.log" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  printf '| %s | %d | %.1f |\n' "$name" "$rc" "$(echo "$t1 - $t0" | bc)" >>"$report"
  return $rc
}

step comm-check "$cskv" comm-check --backend nccl --sizes 1024,1048576,67108864 --iters 5
step toy-model "$cskv" toy-model --arch llama "${model_flags[@]}" --dtype f16 --seed 0 \
  --out "$work/model"
step toy-tokens "$cskv" toy-tokens --vocab "$(grep -o '"vocab_size": *[0-9]*' "$work/model/config.json" | grep -o '[0-9]*$')" \
  --count 2000000 --seed 0 --dtype u32 --out "$work/tokens.bin"
step capture "$cskv" capture --model "$work/model" --tokens "$work/tokens.bin" --token-dtype u32 \
  "${capture_flags[@]}" --device "$dev" --threads "$threads" --out "$work/acts" --overwrite
step train "$cskv" train --model "$work/model" --acts "$work/acts" --ckpt-dir "$work/ckpt" \
  "${train_flags[@]}" --device "$dev" --overwrite
step train-cpu-layer0 "$cskv" train --model "$work/model" --acts "$work/acts" \
  --ckpt-dir "$work/ckpt-cpu" --layers 0 "${train_flags[@]}" --device cpu --overwrite
step eval "$cskv" eval --model "$work/model" --acts "$work/acts" \
  --compressor "$work/ckpt/compressor.safetensors" --out "$work/eval" --device "$dev" \
  --sequences 4 --decode 32 --memory-contexts 1024,4096,16384 --no-plots --overwrite \
  --threads "$threads"
step bench-step "$bench" --parts g --device "$dev" --threads "$threads" --dir "$work/bench" \
  "${bench_flags[@]}"

# Held-out errors of layer 0: the GPU run against the CPU run of the same job. Tolerance: 1e-3
# relative (both fp32, different summation orders in cuBLAS and MKL, 64 AdamW steps apart).
"$python" - "$work/ckpt/metrics.json" "$work/ckpt-cpu/metrics.json" >>"$report" 2>&1 <<'PY'
import json, sys
gpu, cpu = (json.load(open(p)) for p in sys.argv[1:3])
def jobs(m):
    return {(j["layer"], j["kind"]): j for j in m["jobs"]}
g, c = jobs(gpu), jobs(cpu)
print("\n| job | held-out error GPU | CPU | relative difference | within 1e-3 |\n|---|---|---|---|---|")
for key in sorted(c):
    a, b = g[key]["holdout_error_quantized"], c[key]["holdout_error_quantized"]
    d = abs(a - b) / abs(b)
    print(f"| layer {key[0]} {key[1]} | {a:.6g} | {b:.6g} | {d:.2e} | {'yes' if d <= 1e-3 else 'NO'} |")
PY
{
  echo
  for name in comm-check capture train eval; do
    echo "### $name (last lines)"
    echo '```'
    tail -n 12 "$out/$name.log"
    echo '```'
  done
  echo "### cskv_bench_train --parts g"
  grep '^|\|^##' "$out/bench-step.log"
} >>"$report"
echo "gpu_check: wrote $report"
