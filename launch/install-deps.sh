#!/usr/bin/env bash
# Installs exactly the Debian packages cskv needs (idempotent) and checks that LibTorch will load
# OpenBLAS, not the reference BLAS (which makes every matmul ~10x slower).
#   launch/install-deps.sh            build + test dependencies
#   launch/install-deps.sh --check    only check, install nothing (exit 1 if something is missing)
set -euo pipefail

BUILD_PKGS=(cmake ninja-build g++ pkg-config
  libtorch-dev libopenblas0-pthread libopenmpi-dev openmpi-bin libhdf5-dev
  libspdlog-dev libcxxopts-dev nlohmann-json3-dev libgtest-dev libsentencepiece-dev
  gnuplot-nox)  # gnuplot-nox: the PNG plots of `cskv analyze` (skipped with --no-plots)
# Independent readers of what we write, the libFuzzer toolchain, a real one-node Slurm cluster.
TEST_PKGS=(python3 python3-numpy python3-torch python3-h5py clang libclang-rt-14-dev
  slurmctld slurmd slurm-client munge)

check_only=0
[[ "${1:-}" == "--check" ]] && check_only=1

missing=()
for p in "${BUILD_PKGS[@]}" "${TEST_PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  if ((check_only)); then
    echo "install-deps: missing Debian packages: ${missing[*]}" >&2
    exit 1
  fi
  if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps: missing packages (${missing[*]}); run as root or: sudo $0" >&2
    exit 1
  fi
  echo "install-deps: installing ${#missing[@]} package(s): ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "install-deps: all ${#BUILD_PKGS[@]} build and ${#TEST_PKGS[@]} test packages present"
fi

# Which BLAS/LAPACK will libtorch_cpu.so actually load? Resolve through the alternatives links.
torch_lib=$(ls /usr/lib/x86_64-linux-gnu/libtorch_cpu.so* 2>/dev/null | head -n 1 || true)
if [[ -z "$torch_lib" ]]; then
  echo "install-deps: FATAL: libtorch_cpu.so not found after installing libtorch-dev" >&2
  exit 1
fi
bad=0
for lib in libblas.so.3 liblapack.so.3; do
  resolved=$(ldd "$torch_lib" | awk -v l="$lib" '$1==l {print $3}')
  real=$(readlink -f "${resolved:-/nonexistent}" || true)
  if [[ "$real" != *openblas* ]]; then
    echo "install-deps: FATAL: LibTorch loads $lib from '$real', not OpenBLAS." >&2
    echo "  Reference BLAS makes cskv ~10x slower. Fix with:" >&2
    echo "  update-alternatives --set $lib-x86_64-linux-gnu /usr/lib/x86_64-linux-gnu/openblas-pthread/$lib" >&2
    bad=1
  else
    echo "install-deps: LibTorch loads $lib -> $real"
  fi
done
exit $bad
