#!/usr/bin/env bash
# Installs what cskv needs (idempotent): the Debian packages below, and the project virtual
# environment (launch/venv.sh says where: outside the checkout, keyed by launch/requirements.txt)
# with the pinned torch wheel — the build's LibTorch 2.x with CUDA — and the Python packages the
# tests use as independent references. Then checks that this LibTorch brings a fast BLAS.
#   launch/install-deps.sh            build + test dependencies
#   launch/install-deps.sh --check    only check, install nothing (exit 1 if something is missing)
# CSKV_VENV overrides the venv's directory; CSKV_BASE_PYTHON the interpreter that creates it.
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_PKGS=(cmake ninja-build g++ pkg-config
  libopenmpi-dev openmpi-bin libhdf5-dev
  libspdlog-dev libcxxopts-dev nlohmann-json3-dev libgtest-dev libsentencepiece-dev
  libpcre2-dev libutf8proc-dev  # tokenizer.json: Unicode regexes (PCRE2) and NFC (utf8proc)
  gnuplot-nox)  # gnuplot-nox: the PNG plots of `cskv analyze` (skipped with --no-plots)
# The libFuzzer toolchain and a real one-node Slurm cluster.
TEST_PKGS=(python3 clang libclang-rt-14-dev slurmctld slurmd slurm-client munge)

check_only=0
[[ "${1:-}" == "--check" ]] && check_only=1

base_python=${CSKV_BASE_PYTHON:-python3}
missing=()
if ! "$base_python" -m venv --help >/dev/null 2>&1; then
  base_python=/usr/bin/python3  # Debian's, whose venv module is the python3-venv package
  TEST_PKGS+=(python3-venv)
fi
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

# The project virtual environment. A directory without the completion stamp (an install that
# was killed) is removed and made again; concurrent installs wait for each other.
venv=$(launch/venv.sh)
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9
if ! cmp -s launch/requirements.txt "$venv/.cskv-complete"; then
  if ((check_only)); then
    echo "install-deps: the project venv $venv is missing or incomplete" >&2
    exit 1
  fi
  echo "install-deps: creating $venv (torch with CUDA and its libraries: ~5 GB, a few minutes)"
  rm -rf "$venv"
  "$base_python" -m venv "$venv"
  "$venv/bin/python" -m pip install --no-input --no-cache-dir -q -r launch/requirements.txt
  cp launch/requirements.txt "$venv/.cskv-complete"
fi

# LibTorch must be the pinned one and bring a fast BLAS (MKL or OpenBLAS): with the reference
# BLAS every matmul is ~10x slower.
"$venv/bin/python" - "$(awk -F'==' '$1=="torch"{print $2}' launch/requirements.txt)" "$venv" <<'EOF'
import re, sys
import torch
pinned, venv = sys.argv[1], sys.argv[2]
config = torch.__config__.show()
blas = re.search(r"BLAS_INFO=([^,\s]+)", config)
blas = blas.group(1) if blas else "none"
if torch.__version__.split("+")[0] != pinned:
    sys.exit(f"install-deps: FATAL: {venv} has torch {torch.__version__}, launch/requirements.txt pins {pinned}")
if blas not in ("mkl", "open", "openblas"):
    sys.exit(f"install-deps: FATAL: this LibTorch's BLAS is '{blas}', not MKL or OpenBLAS (~10x slower matmuls)")
print(f"install-deps: LibTorch {torch.__version__} (CUDA {torch.version.cuda}, BLAS {blas}) in {venv}")
EOF
