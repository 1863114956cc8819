#!/usr/bin/env bash
# The whole test suite on a fresh machine: install what is missing, build, run every CTest test
# (unit tests, mpirun tests, fuzzing, python interop, Slurm). Extra args go to ctest (e.g. -R Config).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
launch/install-deps.sh
start=$(date +%s)
launch/build.sh
echo "test: build took $(( $(date +%s) - start )) s"
start=$(date +%s)
status=0
ctest --test-dir "${CSKV_BUILD_DIR:-build}" --output-on-failure -j "$(nproc)" "$@" || status=$?
echo "test: ctest took $(( $(date +%s) - start )) s"
# CTest does not show a skipped test's output; print why (e.g. the Slurm tests on a machine
# without munge/slurm or root).
grep -h '^SKIPPED:' "${CSKV_BUILD_DIR:-build}/Testing/Temporary/LastTest.log" 2>/dev/null |
  sed 's/^/test: /' || true
exit "$status"
