#!/usr/bin/env bash
# Issue 14 item 3's measurements: capture on a hidden-1024, 16-head (2 kv heads), 2-layer f16 toy
# at --seq-len 2048, 16384 and 32768 (wall, tokens/s, peak RSS by /usr/bin/time -v), then
# `cskv eval` at a 32768-token context (a capture whose held-out sequence is 32768 + decode + 1
# tokens long, trained briefly).
#   bench/long_context.sh [capture|eval|all] [OUT]   (default: all, bench-out/long)
# Needs a built tree (launch/build.sh) and /usr/bin/time. Takes ~15-25 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
which=${1:-all}
out=${2:-bench-out/long}
cskv=$(realpath "${CSKV_BUILD_DIR:-build}/launch/cskv")
mkdir -p "$out"
cd "$out"

[[ -f toy1024/config.json ]] ||
  "$cskv" toy-model --out toy1024 --hidden 1024 --heads 16 --kv-heads 2 --layers 2 \
    --intermediate 2816 --vocab 512 --dtype f16 --seed 1 --log-level warn >/dev/null
[[ -f tok.u16 ]] ||
  "$cskv" toy-tokens --out tok.u16 --vocab 512 --count 300000 --seed 3 --log-level warn >/dev/null

# timed NAME COMMAND...: runs it under /usr/bin/time -v; prints wall seconds and peak RSS (GB).
timed() {
  local name=$1
  shift
  /usr/bin/time -v "$@" >"$name.log" 2>"$name.time"
  local wall rss
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n = split($2, p, ":"); s = 0;
    for (i = 1; i <= n; ++i) s = s * 60 + p[i]; print s}' "$name.time")
  rss=$(awk -F': ' '/Maximum resident set size/ {printf "%.2f", $2 / 1048576}' "$name.time")
  echo "$wall $rss"
}

if [[ $which == capture || $which == all ]]; then
  echo "| T | sequences | tokens | wall s | tokens/s | tokens/s ÷ T=2048's | peak RSS GB |"
  echo "|---|---|---|---|---|---|---|"
  base=""
  for spec in 2048:16 16384:2 32768:1; do
    t=${spec%:*} n=${spec#*:}
    read -r wall rss < <(timed "capture$t" "$cskv" capture --model toy1024 --tokens tok.u16 \
      --token-dtype u16 --num-seqs "$n" --seq-len "$t" --holdout-seqs 0 --out "acts$t" \
      --overwrite --log-level warn)
    rate=$(awk -v a="$n" -v b="$t" -v w="$wall" 'BEGIN {printf "%.0f", a * b / w}')
    [[ -n $base ]] || base=$rate
    echo "| $t | $n | $((n * t)) | $wall | $rate | $(awk -v r="$rate" -v b="$base" \
      'BEGIN {printf "%.3f", r / b}') | $rss |"
  done
fi

if [[ $which == eval || $which == all ]]; then
  seq_len=$((32768 + 32))  # >= context + decode + 1, a multiple of the 32-token key windows
  [[ -f acts32k/manifest.json ]] ||
    timed capture32k "$cskv" capture --model toy1024 --tokens tok.u16 --token-dtype u16 \
      --num-seqs 1 --seq-len "$seq_len" --holdout-seqs 1 --out acts32k --overwrite \
      --log-level warn >/dev/null
  [[ -f ckpt32k/compressor.safetensors ]] ||
    "$cskv" train --model toy1024 --acts acts32k --ckpt-dir ckpt32k --steps 20 \
      --k-bits 4 --v-bits 4 --log-level warn >/dev/null
  read -r wall rss < <(timed eval32k "$cskv" eval --model toy1024 --acts acts32k \
    --compressor ckpt32k/compressor.safetensors --out eval32k --context 32768 --decode 16 \
    --memory-contexts 32768 --no-plots --overwrite --log-level warn)
  echo "eval at a 32768-token context (16 decode steps, 1 held-out sequence): wall ${wall} s," \
    "peak RSS ${rss} GB"
  python3 - eval32k/report.json <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
e = r["end_to_end"]
print(f"KL {e['kl_mean']:.4g} (fp16 cache {e['kl_fp16_cache']:.4g}), "
      f"compression {r['compression_ratio']:.3f}x at {r['compression_ratio_context']} tokens")
EOF
fi
