#!/usr/bin/env bash
# The Slurm integration test: starts a one-node Slurm cluster on this machine
# (tests/slurm/slurm_cluster.sh), submits the toy pipeline with a batch template from
# launch/slurm/ and 2 tasks, interrupts it mid-training, and requires that the job requeues,
# finishes, and that its merged checkpoint is bitwise identical to an uninterrupted
# single-process run outside Slurm.
#
#   slurm_test.sh CSKV_BINARY TRIAL
#     requeue        cskv.sbatch (srun --mpi=pmix); `scontrol requeue JOB` (Slurm sends SIGTERM
#                    to every process of the job and puts it back in the queue)
#     signal         cskv.sbatch; `scancel --signal=USR1 --batch JOB`, which is what
#                    --signal=B:USR1@120 does before the time limit: the batch shell must forward
#                    it, the ranks checkpoint and exit 75, the shell requeues the job
#     mpirun-signal  the same with cskv-mpirun.sbatch (ranks started by mpirun)
#
# Exit 0: passed; 77: skipped (Slurm cannot run here; the reason is printed); else failed.
# Every wait is bounded and the whole run stops after CSKV_SLURM_TEST_DEADLINE_S (default 270) s,
# so the daemons are always stopped (by PID, on exit) before CTest's own timeout could hit.
set -euo pipefail

readonly SKIP=77
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cskv=${1:?usage: slurm_test.sh CSKV_BINARY TRIAL}
trial=${2:?usage: slurm_test.sh CSKV_BINARY TRIAL}
cskv=$(realpath "$cskv")
case "$trial" in
  requeue | signal) template=$repo/launch/slurm/cskv.sbatch ;;
  mpirun-signal) template=$repo/launch/slurm/cskv-mpirun.sbatch ;;
  *)
    echo "unknown trial '$trial' (requeue | signal | mpirun-signal)" >&2
    exit 2
    ;;
esac
deadline=$((SECONDS + ${CSKV_SLURM_TEST_DEADLINE_S:-270}))
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

work=$(mktemp -d "${TMPDIR:-/tmp}/cskv-slurm-$trial.XXXXXX")
cluster=$work/cluster
keep_work=1  # until the test passes or is skipped: a failure leaves its files for a look
cleanup() {
  "$here/slurm_cluster.sh" stop "$cluster" || true
  if ((!keep_work)); then
    rm -rf "$work"
  else
    echo "slurm test: work files kept in $work" >&2
  fi
}
trap cleanup EXIT
trap 'echo "slurm test: interrupted" >&2; exit 1' INT TERM

say() { echo "[slurm test $trial $(date +%T)] $*"; }
fail() {
  say "FAILED: $*"
  exit 1
}
remaining() { echo $((deadline - SECONDS)); }

# ---- The pipeline under test: the one place to change once `cskv run` exists. -----------------
# pipeline_args DIR: the cskv arguments that produce the pipeline's outputs in DIR. The same
# arguments run the uninterrupted 1-process reference and the 2-task Slurm job: `cskv run`
# (capture → train → merge; eval off to keep the trial short), each from scratch — the whole
# pipeline is bitwise independent of the number of ranks.
capture_flags=(--model "$work/model" --tokens "$work/tokens.bin" --token-dtype u16 --num-seqs 32
  --seq-len 128 --holdout-seqs 4 --batch 4)
pipeline_args() {
  pipeline=(run "${capture_flags[@]}" --out "$1" --k-density 0.25 --v-density 0.5 --k-bits 4
    --v-bits 4 --batch-tokens 512 --steps 1000 --lr 2e-3 --threads 1 --eval=false)
}
# merged DIR: the trained factors of a finished run (ckpt/compressor.safetensors: the factors and
# quantization settings, no paths — the merged file's metadata names DIR).
merged() {
  [[ -f "$1/compressor.safetensors" ]] || fail "$1/compressor.safetensors is missing"
  echo "$1/ckpt/compressor.safetensors"
}
# A line the job prints once training has started; the interruption comes after it.
readonly training_started='init train error'
# A line it prints when training is over: if it is there before the interruption, the trial
# proved nothing (the machine was too fast or too slow) and fails saying so.
readonly training_done='trained [0-9]* job(s)'
# ----------------------------------------------------------------------------------------------

# 1. The cluster; skip (exit 77) with the harness's reason when it cannot run here.
set +e
"$here/slurm_cluster.sh" start "$cluster" 2>"$work/cluster-start.log"
rc=$?
set -e
cat "$work/cluster-start.log" >&2
if ((rc == SKIP)); then
  echo "SKIPPED: $(grep -h 'cannot start:' "$work/cluster-start.log" | tail -n 1)"
  keep_work=0
  exit $SKIP
fi
((rc == 0)) || fail "slurm_cluster.sh start exited with $rc"
eval "$("$here/slurm_cluster.sh" env "$cluster")"

# 2. Inputs, outside Slurm: a toy Llama and a token corpus.
say "preparing the toy model and tokens"
"$cskv" toy-model --arch llama --hidden 256 --layers 4 --heads 4 --kv-heads 2 --intermediate 688 \
  --vocab 1024 --dtype f16 --seed 0 --out "$work/model" --log-level warn >/dev/null
"$cskv" toy-tokens --vocab 1024 --count 200000 --seed 0 --dtype u16 --out "$work/tokens.bin" \
  --log-level warn >/dev/null

# 3. The reference: the same pipeline, 1 process, uninterrupted, no Slurm.
say "reference run (1 process, no Slurm)"
pipeline_args "$work/ref"
env -u SLURM_CONF "$cskv" "${pipeline[@]}" --log-level warn >"$work/ref.log" 2>&1 ||
  fail "reference run exited with $? (see $work/ref.log)"
reference=$(merged "$work/ref")

# 4. The job: 2 tasks on the template; sbatch flags override only what this machine lacks.
pipeline_args "$work/job"
out=$work/job.out
job=$(CSKV=$cskv sbatch --parsable --chdir="$work" --output="$out" --job-name="cskv-$trial" \
  --nodes=1 --ntasks-per-node=2 --cpus-per-task=1 --gpus-per-task=0 --time=10 \
  "$template" "${pipeline[@]}")
say "submitted job $job: $(basename "$template") ${pipeline[*]}"

# job_field NAME: a field of `scontrol show job` (JobState, Restarts, ExitCode, ...).
job_field() { scontrol -o show job "$job" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$1=//p"; }
show_output() {
  say "job output ($out), last 40 lines:"
  tail -n 40 "$out" 2>/dev/null || true
}

# Wait for the training to start.
limit=$((SECONDS + 120 < deadline ? SECONDS + 120 : deadline))
until grep -q "$training_started" "$out" 2>/dev/null; do
  state=$(job_field JobState)
  [[ "$state" == PENDING || "$state" == RUNNING ]] ||
    { show_output; fail "job $job is $state before training started"; }
  ((SECONDS < limit)) || { show_output; fail "training did not start within 120 s"; }
  sleep 0.2
done
sleep 1
grep -q "$training_done" "$out" &&
  { show_output; fail "training was over before the interruption; make the job longer"; }

case "$trial" in
  requeue)
    say "training runs; scontrol requeue $job"
    scontrol requeue "$job"
    ;;
  signal | mpirun-signal)
    say "training runs; scancel --signal=USR1 --batch $job (the time-limit warning)"
    scancel --signal=USR1 --batch "$job"
    ;;
esac

# Wait for the job to end: COMPLETED after at least one restart.
limit=$((SECONDS + 180 < deadline ? SECONDS + 180 : deadline))
while :; do
  state=$(job_field JobState)
  case "$state" in
    COMPLETED) break ;;
    PENDING | RUNNING | REQUEUED | REQUEUE_FED | REQUEUE_HOLD | CONFIGURING | COMPLETING) ;;
    *)
      show_output
      code=$(job_field ExitCode)
      code=${code%%:*}
      why=""
      ((code > 128)) && why="; status $code = a rank killed by SIG$(kill -l $((code - 128)))"
      why+="; a rank that checkpoints on the signal exits with 75, which requeues the job"
      fail "job $job ended $state (exit status $code, restarts $(job_field Restarts)$why)"
      ;;
  esac
  ((SECONDS < limit)) || { show_output; fail "job $job still $state after $((180)) s"; }
  sleep 0.5
done
restarts=$(job_field Restarts)
((restarts >= 1)) || { show_output; fail "job $job completed without being requeued"; }
say "job $job COMPLETED after $restarts restart(s)"

# 5. Same bytes as the reference.
result=$(merged "$work/job")
if ! cmp "$reference" "$result"; then
  show_output
  fail "merged checkpoint differs from the uninterrupted single-process run"
fi
say "PASSED: $(basename "$result") ($(stat -c %s "$result") bytes) is bitwise identical to the" \
  "uninterrupted 1-process run; $(remaining) s of the deadline left"
keep_work=0
