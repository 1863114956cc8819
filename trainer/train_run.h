// A training run in one process: plan the (layer, K|V) jobs and their ranks, initialise, train
// and evaluate each job, and write the factors (HF Linear layout) and the metrics.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "trainer/layer_trainer.h"
#include "trainer/metrics.h"

namespace cskv::trainer {

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
};

// Jobs in (layer, K, V) order with their ranks: from the densities, or from the budget
// allocation over the layers' spectra. Logs the chosen ranks and the expected 16-bit floor.
std::vector<LayerJob> plan_jobs(const TrainRunOptions& options, const model::ModelConfig& model,
                                const model::SafetensorsModel& weights);

struct TrainRunResult {
  std::vector<JobState> states;
  RunMetrics metrics;
  std::string factors_path;  // <ckpt_dir>/compressor.safetensors
};

// Layer-parallel over comm: jobs are assigned by cost (LPT, trainer/schedule.h), each rank trains
// its own, then every finished state is broadcast from its owner so all ranks return every job;
// rank 0 writes <ckpt_dir>/compressor.safetensors, metrics.json and metrics.md. The numbers do not
// depend on the number of ranks. The one-argument form runs in this process alone.
TrainRunResult run_training(const TrainRunOptions& options, comm::Communicator& comm);
TrainRunResult run_training(const TrainRunOptions& options);

// The settings that decide a run's numbers, as JSON (what checkpoints and the merged file record,
// and what a resume must match): model hash, ranks rule, init, quantization, optimizer, seed.
std::string resolved_config_json(const TrainRunOptions& options, const model::ModelConfig& model,
                                 int threads);

// Tensor names of the merged checkpoint (DESIGN.md §3): a = Aᵀ [r, H], b = Bᵀ [D, r].
std::string factor_name(int64_t layer, KvKind kind, char which /* 'a' | 'b' */);

}  // namespace cskv::trainer
