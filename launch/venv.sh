#!/usr/bin/env bash
# Prints the project virtual environment's directory (created by launch/install-deps.sh):
# $CSKV_VENV, else ~/.cache/cskv/venv-<first 12 hex of sha256(launch/requirements.txt)> — outside
# the checkout, so a fresh clone with the same pins (CI's) reuses it. cmake/CskvDependencies.cmake
# derives the same path.
set -euo pipefail
if [[ -n "${CSKV_VENV:-}" ]]; then
  echo "$CSKV_VENV"
else
  key=$(sha256sum "$(dirname "$0")/requirements.txt" | cut -c1-12)
  echo "$HOME/.cache/cskv/venv-$key"
fi
