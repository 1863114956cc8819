// The train stage: a distributed run that trains every (layer, K|V) job with sharded checkpoints
// (save, stop on a signal, resume on any world size) and writes the factors and the metrics.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "pipeline/stage_outputs.h"
#include "trainer/layer_trainer.h"
#include "trainer/metrics.h"

namespace cskv::pipeline {

using trainer::JobState;
using trainer::KvKind;
using trainer::LayerJob;
using trainer::RunMetrics;
using trainer::TrainConfig;

struct TrainRunOptions {
  std::string model_dir;
  std::string acts_dir;
  std::string ckpt_dir;
  TrainConfig cfg;
  double k_density = 0.5;
  double v_density = 0.5;
  double budget = 0;            // > 0: global budget mode (keep this share of the K+V width)
  int64_t rank_multiple = 0;    // budget granularity; 0: n_kv * 8
  std::vector<int64_t> layers;  // empty: every layer in stats.h5
  int64_t context = 4096;       // the context the memory accounting is stated at
  int threads = 1;              // intra-op threads (set by the caller); in the resolved config
  // "cpu" | "cuda" (GPU local rank mod visible GPUs); in the resolved config, as cfg.precision.
  std::string device = "cpu";
  // Activations in device memory (read once per layer, every epoch from there) or streamed.
  trainer::Residency resident = trainer::Residency::kAuto;
  double resident_share = 0.5;  // auto: resident when the split fits in this share of free memory

  // Checkpoints (DESIGN.md §3): a collective save every `save_every` optimizer steps of any rank
  // (0: only when a job finishes and on a stop signal), when a job finishes, on SIGTERM/SIGUSR1/
  // SIGINT (then the run returns interrupted). The newest `keep` complete steps are kept.
  int64_t save_every = 500;
  int64_t keep = 2;
  // A ckpt_dir holding a complete step of the same resolved config is always resumed (another
  // config is refused, naming the keys); require_resume additionally fails when there is none.
  bool require_resume = false;
  // --overwrite: start over where the run would otherwise refuse — checkpoint steps of other
  // settings, or no readable step but unreadable ones (all are deleted, training starts at step
  // 0) — and replace compressor.safetensors / metrics.* that cskv did not write.
  bool overwrite = false;
  // Ranks per job (data parallelism inside a job). 0: 1, or size / jobs when ranks > jobs.
  int dp = 0;
  // How often (seconds) the ranks agree on saves and stops: one small allreduce per round.
  double round_seconds = 1.0;
};

// Jobs in (layer, K, V) order with their ranks: from the densities, or from the budget
// allocation over the layers' spectra. Logs the chosen ranks and the expected 16-bit floor.
std::vector<LayerJob> plan_jobs(const TrainRunOptions& options, const model::ModelConfig& model,
                                const model::SafetensorsModel& weights);

struct TrainRunResult {
  // Every job in plan order (empty when interrupted); the AdamW moments only on the rank that
  // trained the job (undefined elsewhere; the checkpoint holds them).
  std::vector<JobState> states;
  RunMetrics metrics;
  std::string factors_path;   // <ckpt_dir>/compressor.safetensors
  bool interrupted = false;   // a stop signal: the state is saved, nothing else written
  int64_t resumed_from = -1;  // the checkpoint step this run continued from (-1: none)
  int64_t last_step = -1;     // the newest complete checkpoint step written
  int saves = 0;              // checkpoint saves this run
  double save_seconds = 0;    // wall time in them (this rank)
  double train_seconds = 0;   // wall time of the whole job loop (this rank)
};

// Layer-parallel over comm: jobs are assigned to groups of `dp` ranks by cost (LPT,
// trainer/schedule.h), each group trains its own (a data-parallel group splits every batch and
// allreduces gradients), saving sharded checkpoints as described above and resuming from the
// newest complete one; then every finished state is broadcast from its owner so all ranks return
// every job; rank 0 writes <ckpt_dir>/compressor.safetensors, metrics.json and metrics.md. With
// dp = 1 the numbers do not depend on the number of ranks, nor on interruptions. The one-argument
// form runs in this process alone.
TrainRunResult run_training(const TrainRunOptions& options, comm::Communicator& comm);
TrainRunResult run_training(const TrainRunOptions& options);

// The checks of the settings against the model and a capture of captured_seq_len tokens per
// sequence, made before anything is read (`cskv run` calls it before its capture runs): the
// options, the densities' ranks, every job's quantization, and a key window against
// --batch-tokens and the captured seq_len, with the messages the trainer uses. Usage errors.
void validate_train_settings(const TrainRunOptions& options, const model::ModelConfig& model,
                             int64_t captured_seq_len);

// The files a run writes into its ckpt_dir besides the steps, with how each is recognised as
// cskv's.
std::vector<OwnedOutput> train_outputs();

// The settings that decide a run's numbers, as JSON (what checkpoints and the merged file record,
// and what a resume must match): model hash and weights fingerprint (model::weights_fingerprint),
// ranks rule, init, quantization, optimizer, seed.
std::string resolved_config_json(const TrainRunOptions& options, const model::ModelConfig& model,
                                 const std::string& weights_fingerprint);

}  // namespace cskv::pipeline
