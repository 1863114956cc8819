#!/usr/bin/env bash
# Issue 13's acceptance measurements: uniform (the paper's code) against --quant waterfill at the
# same cache bits per token, on the same capture, trained the same way, each evaluated by
# `cskv eval` (held-out errors per job, the Gaussian bound at the bits spent, end-to-end KL).
#   bench/waterfill_acceptance.sh [demo|mistral|stories|all] [OUT]   (default: all, bench-out/wf)
# Needs a built tree (launch/build.sh). stories260K needs ../shared (skipped without it).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
which=${1:-all}
out=${2:-bench-out/wf}
cskv=${CSKV_BUILD_DIR:-build}/launch/cskv
py="$(launch/venv.sh)/bin/python"
shared=../shared
mkdir -p "$out"

# train_and_eval NAME MODEL ACTS EVAL_ACTS DECODE "TRAIN FLAGS..."
train_and_eval() {
  local name=$1 model=$2 acts=$3 eval_acts=$4 decode=$5
  shift 5
  [[ -f "$out/$name/ckpt/compressor.safetensors" ]] ||
    "$cskv" train --model "$model" --acts "$acts" --ckpt-dir "$out/$name/ckpt" --log-level warn "$@"
  [[ -f "$out/$name/eval/report.json" ]] ||
    "$cskv" eval --model "$model" --acts "$eval_acts" --compressor \
      "$out/$name/ckpt/compressor.safetensors" --out "$out/$name/eval" --decode "$decode" \
      --no-plots --log-level warn >/dev/null
}

# compare UNIFORM WATERFILL: per job held-out errors (closed form and trained), bounds, KL.
compare() {
  "$py" - "$out/$1" "$out/$2" <<'EOF'
import json, sys
u, w = (json.load(open(d + "/eval/report.json")) for d in sys.argv[1:3])
um, wm = (json.load(open(d + "/ckpt/metrics.json")) for d in sys.argv[1:3])
init = {(j["layer"], j["kind"]): j["holdout_error_init_quantized"] for j in wm["jobs"]}
print(f"{'layer':>5} {'kind':>4} {'bits':>6} {'uniform':>9} {'waterfill':>9} {'ratio':>6}"
      f" {'closed':>9} {'bound':>9} {'x bound':>7}")
worst = 0
for lu, lw in zip(u["layers"], w["layers"]):
    for k in "kv":
        ratio = lw[f"{k}_error"] / lu[f"{k}_error"]
        xb = lw[f"{k}_error"] / lw[f"{k}_bound"]
        worst = max(worst, xb)
        print(f"{lu['layer']:>5} {k.upper():>4} {lw[f'{k}_bits_per_token']:>6.0f}"
              f" {lu[f'{k}_error']:>9.4g} {lw[f'{k}_error']:>9.4g} {ratio:>6.3f}"
              f" {init[(lu['layer'], k.upper())]:>9.4g} {lw[f'{k}_bound']:>9.4g} {xb:>7.2f}")
for k in "kv":
    r = w[f"mean_{k}_error"] / u[f"mean_{k}_error"]
    print(f"mean {k.upper()}: uniform {u[f'mean_{k}_error']:.4g} waterfill {w[f'mean_{k}_error']:.4g}"
          f" ({r:.3f}x)")
eu, ew = u["end_to_end"], w["end_to_end"]
print(f"KL: uniform {eu['kl_mean']:.4g} waterfill {ew['kl_mean']:.4g} "
      f"({ew['kl_mean'] / eu['kl_mean']:.3f}x); perplexity {eu['ppl_original']:.4g} -> "
      f"{eu['ppl_compressed']:.4g} / {ew['ppl_compressed']:.4g}; worst job {worst:.2f}x its bound")
print(f"compression: uniform {u['compression_ratio']:.3f}x, waterfill {w['compression_ratio']:.3f}x"
      f" at {u['compression_ratio_context']} tokens")
EOF
}

# toy_pair NAME "TOY-MODEL FLAGS" TOKENS "UNIFORM FLAGS" K_BITS V_BITS: a toy model and corpus,
# one capture, uniform and waterfill at the uniform run's bits per token.
toy_pair() {
  local name=$1 model_flags=$2 tokens=$3 uniform=$4 k_bits=$5 v_bits=$6 d=$out/$1
  mkdir -p "$d"
  # shellcheck disable=SC2086
  [[ -f $d/model/config.json ]] || "$cskv" toy-model $model_flags --seed 0 --out "$d/model"
  [[ -f $d/tokens.bin ]] ||
    "$cskv" toy-tokens --vocab 4096 --count "$tokens" --seed 0 --dtype u16 --out "$d/tokens.bin"
  [[ -f $d/acts/stats.h5 ]] || "$cskv" capture --model "$d/model" --tokens "$d/tokens.bin" \
    --num-seqs 64 --seq-len 256 --holdout-seqs 8 --batch 4 --out "$d/acts" --log-level warn
  local common=(--batch-tokens 2048 --epochs 8 --lr 2e-3)
  # shellcheck disable=SC2086
  train_and_eval "$name-uniform" "$d/model" "$d/acts" "$d/acts" 32 "${common[@]}" $uniform
  train_and_eval "$name-waterfill" "$d/model" "$d/acts" "$d/acts" 32 "${common[@]}" \
    --quant waterfill --k-bits-per-token "$k_bits" --v-bits-per-token "$v_bits"
  compare "$name-uniform" "$name-waterfill"
}

# The demo toy (launch/demo.sh's model and corpus; K density 0.25 @ 4 bits = 64·4 + 64 window
# scale/zero bits = 320 bits per token; V density 0.5 @ 4 bits = 128·4 + 4 groups·32 = 640).
demo() {
  echo "== demo toy (hidden 512, D 256), K 320 / V 640 bits per token"
  toy_pair demo "--arch llama --hidden 512 --layers 8 --heads 8 --kv-heads 4 --intermediate 1376 \
    --vocab 4096 --dtype f16" 1000000 \
    "--k-density 0.25 --v-density 0.5 --k-bits 4 --v-bits 4" 320 640
}

# The Mistral-shaped toy (D 64): K and V density 0.5 @ 4 bits = 32·4 + 32 = 160 and 32·4 + 64 = 192.
mistral() {
  echo "== Mistral-shaped toy (hidden 256, 8/2 heads, D 64), K 160 / V 192 bits per token"
  toy_pair mistral "--arch mistral --hidden 256 --layers 4 --heads 8 --kv-heads 2 --vocab 4096" \
    400000 "--k-density 0.5 --v-density 0.5 --k-bits 4 --v-bits 4" 160 192
}

# stories260K (D 32): calibration on calib.u16, held-out errors and KL on heldout.u16 (a capture
# of its own). Uniform K4/V4 density 0.5: K 16·4 + 16 = 80, V 16·4 + 4 groups·32 = 192 bits.
stories() {
  local m=$shared/models/stories260K t=$shared/data/tinystories d=$out/stories
  if [[ ! -f $m/config.json ]]; then
    echo "== stories260K: skipped ($m not found)"
    return
  fi
  mkdir -p "$d"
  [[ -f $d/acts/stats.h5 ]] || "$cskv" capture --model "$m" --tokens "$t/calib.u16" \
    --num-seqs 512 --seq-len 256 --holdout-seqs 1 --batch 8 --out "$d/acts" --log-level warn
  [[ -f $d/heldout/stats.h5 ]] || "$cskv" capture --model "$m" --tokens "$t/heldout.u16" \
    --sampling contiguous --num-seqs 1 --seq-len 256 --holdout-seqs 64 --batch 8 \
    --out "$d/heldout" --log-level warn
  local common=(--batch-tokens 2048 --epochs 4 --lr 1e-3)
  train_and_eval stories-uniform "$m" "$d/acts" "$d/heldout" 64 "${common[@]}" \
    --k-density 0.5 --v-density 0.5 --k-bits 4 --v-bits 4
  train_and_eval stories-waterfill "$m" "$d/acts" "$d/heldout" 64 "${common[@]}" \
    --quant waterfill --k-bits-per-token 80 --v-bits-per-token 192
  # 8x smaller than fp16 over all jobs: --cache-budget 0.125.
  train_and_eval stories-waterfill8x "$m" "$d/acts" "$d/heldout" 64 "${common[@]}" \
    --quant waterfill --cache-budget 0.125
  echo "== stories260K (D 32): held-out on heldout.u16, K 80 / V 192 bits per token"
  compare stories-uniform stories-waterfill
  echo "== stories260K: waterfill at 8x smaller (--cache-budget 0.125) vs uniform K4/V4 d0.5"
  compare stories-uniform stories-waterfill8x
}

case $which in
  demo) demo ;;
  mistral) mistral ;;
  stories) stories ;;
  all) mistral; demo; stories ;;
  *) echo "usage: $0 [demo|mistral|stories|all] [OUT]" >&2; exit 2 ;;
esac
