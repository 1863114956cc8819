#!/usr/bin/env bash
# Packs what bench/gpu_check.sh needs on a lent GPU machine (torch 2.11 + CUDA 13 in a Python
# venv, no Debian packages, no network) into build-gpu/: the cskv and cskv_bench_train binaries,
# the SentencePiece plugin, every shared library they load that is not LibTorch's, CUDA's or
# glibc's (the lent machine's venv provides those), and Open MPI's MCA components (MPI_Init of a
# singleton, for comm-check --backend nccl). Fails above 60 MiB (the carry limit is 64 MiB).
#   bench/gpu_pack.sh            from ${CSKV_BUILD_DIR:-build}
set -euo pipefail
cd "$(dirname "$0")/.."
build=${CSKV_BUILD_DIR:-build}
out=build-gpu
for f in "$build/launch/cskv" "$build/bench/cskv_bench_train" "$build/data/libcskv_sentencepiece.so"; do
  [[ -x "$f" || -f "$f" ]] || { echo "gpu_pack: $f missing: build first (launch/build.sh)" >&2; exit 1; }
done
rm -rf "$out"
mkdir -p "$out/bin" "$out/lib" "$out/openmpi"
cp "$build/launch/cskv" "$build/bench/cskv_bench_train" "$out/bin/"
cp "$build/data/libcskv_sentencepiece.so" "$out/lib/"
# Not carried: LibTorch and CUDA (the venv's), glibc and the loader (the machine's own).
skip='/(torch|nvidia)/|/cuda|/lib(c|m|dl|rt|pthread|util|resolv)\.so|/ld-linux'
for exe in "$out/bin/"* "$out/lib/libcskv_sentencepiece.so"; do ldd "$exe"; done |
  awk '$3 ~ /^\// {print $3}' | sort -u | grep -v -E "$skip" |
  while read -r lib; do cp -L "$lib" "$out/lib/"; done
cp -L /usr/lib/x86_64-linux-gnu/openmpi/lib/openmpi3/*.so "$out/openmpi/"
size=$(du -sm "$out" | cut -f1)
echo "gpu_pack: $out holds $(ls "$out/lib" | wc -l) libraries, $(ls "$out/openmpi" | wc -l) MCA components, ${size} MiB"
((size <= 60)) || { echo "gpu_pack: ${size} MiB is above the 60 MiB the carry allows" >&2; exit 1; }
