// Training of one (layer, K|V) job: closed-form initialisation, then quantization-aware AdamW on
// the layer-wise reconstruction loss MSE(K, Q(XA)B), with X streamed from the activation shards.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "common/device.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "trainer/init.h"
#include "trainer/quantizer.h"
#include "trainer/spectrum.h"
#include "trainer/train_device.h"
#include "trainer/waterfill.h"

namespace cskv::trainer {

// How the cached latent is coded: `uniform`, the paper's scheme (r channels at k_bits/v_bits with
// min–max groups), or `waterfill` (trainer/waterfill.h: the job's full PCA basis, every channel
// at its own width 0..8 with a static range, widths allocated under a bits-per-token budget).
enum class QuantMode { kUniform, kWaterfill };
QuantMode parse_quant_mode(const std::string& text);  // usage error naming --quant
const char* quant_mode_name(QuantMode mode);          // "uniform" | "waterfill"

// Everything that decides the numbers a job produces (part of a run's resolved config).
struct TrainConfig {
  QuantMode quant = QuantMode::kUniform;
  // waterfill budgets: bits per token of every K (V) job, or one budget over all jobs as a share
  // of their fp16 bytes (cache_budget > 0 wins).
  int64_t k_bits_per_token = 0;
  int64_t v_bits_per_token = 0;
  double cache_budget = 0;
  InitMethod init = InitMethod::kPca;
  double asvd_alpha = 0.5;
  bool rotate_hadamard = false;
  int k_bits = 16;
  int v_bits = 16;
  int64_t group_size = 0;  // latent channels per V (and window-less K) group; 0: r / n_kv
  int64_t window = 32;     // K: per-channel groups of this many tokens; 0: per-token groups
  bool quant_compat_cskv = false;
  double lr = 5e-5;
  int64_t warmup = 0;
  int64_t steps = 0;   // optimizer steps per job; 0: epochs × batches per epoch
  int64_t epochs = 1;  // used when steps == 0
  int64_t batch_tokens = 4096;
  double clip = 1.0;  // grad-norm clip
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
  uint64_t seed = 0;
  // The matmuls of the step and of the errors: fp32 (default; exact on every device) | tf32 |
  // bf16 operands (GPU opt-ins).
  device::Precision precision = device::Precision::kFp32;
};

// One unit of work: the factors of one layer's key or value projection at a given rank.
struct LayerJob {
  LayerJob() = default;
  LayerJob(int64_t layer_, KvKind kind_, int64_t rank_) : layer(layer_), kind(kind_), rank(rank_) {}
  int64_t layer = 0;
  KvKind kind = KvKind::kKey;
  int64_t rank = 0;
  // waterfill: the kept channels of the job's PCA basis (indices in eigenvalue order, ascending,
  // rank of them) and their codes — fitted on the training latents when the run is planned,
  // re-fitted at the same widths once the job has trained. Empty in uniform mode.
  std::vector<int64_t> channels;
  std::vector<ChannelCode> codes;
  std::string name() const;        // "layer 3 K"
  int64_t bits_per_token() const;  // Σ widths of the codes (0 in uniform mode)
};

inline constexpr double kNotEvaluated = std::numeric_limits<double>::quiet_NaN();

// The whole state of a job: what a checkpoint stores and a resume continues from.
struct JobState {
  LayerJob job;
  // [H, r], [r, D] float32, and the AdamW moments: on the CPU, except on the training device
  // while LayerTrainer::train runs (checkpoints save them from there).
  at::Tensor A, B;
  at::Tensor m_A, v_A, m_B, v_B;
  int64_t step = 0;           // optimizer steps done
  int64_t total_steps = 0;    // of the whole job
  int64_t data_position = 0;  // ActivationReader position of the next batch
  double floor = 0;           // 16-bit training-set floor Σ_{i≥r}λ_i/Σλ_i
  at::Tensor eigenvalues;     // [D] float64, descending
  double last_loss = 0;       // loss of the last step
  // Evaluation (NaN until computed): relative errors at step 0 and once the job has finished.
  double train_error_init = kNotEvaluated;      // training split, 16 bits
  double holdout_error_init_q = kNotEvaluated;  // held-out split, quantized as configured
  double train_error = kNotEvaluated;
  double holdout_error_q = kNotEvaluated;
  double holdout_error = kNotEvaluated;  // held-out at 16 bits
  double seconds = 0;                    // wall time spent on this job so far, all sessions

  // All steps done and the final errors computed.
  bool finished() const { return step >= total_steps && !std::isnan(holdout_error); }
};

// Seed of everything random in one job, from (global seed, layer, K|V) only — never the rank.
uint64_t job_seed(uint64_t global_seed, int64_t layer, KvKind kind);

// The quantizer a job's latent goes through.
QuantConfig job_quant_config(const TrainConfig& cfg, const model::ModelConfig& model,
                             const LayerJob& job);

// Data parallelism inside one job: `count` ranks train the same job in lock step; rank `index`
// takes its slice of every batch (whole key-quantization windows, so no window straddles two
// ranks), and the partial gradient sums (and loss) go through `allreduce_sum` (a float32 sum over
// the group). The update is then the same on every member. count 1: the whole batch, no calls.
struct DataParallelSlice {
  int index = 0;
  int count = 1;
  std::function<void(at::Tensor&)> allreduce_sum;
};

class BatchStream;
struct ResidentSplit;

class LayerTrainer {
 public:
  LayerTrainer(TrainConfig cfg, model::ModelConfig model,
               std::shared_ptr<const model::SafetensorsModel> weights, std::string acts_dir,
               TrainDevice device = {});

  // Initialisation from stats.h5 (+ the Hadamard rotation when configured); step 0.
  JobState init(const LayerJob& job) const;

  // Trains until state.step == until_step (or the job's total). on_step is called after every
  // optimizer step (for progress, checkpoints and signals); returning false stops early.
  void train(JobState& state, int64_t until_step,
             const std::function<bool(const JobState&)>& on_step = {},
             const DataParallelSlice& dp = {}) const;

  // waterfill planning: the width curves of every channel of the job's full PCA basis, fitted on
  // at most kCurveTokens tokens of the training split (the first ones), and their energy Σ‖K‖²
  // over the same tokens.
  struct Curves {
    std::vector<ChannelCurve> channels;
    double energy = 0;
  };
  static constexpr int64_t kCurveTokens = 16384;
  Curves channel_curves(const LayerJob& job) const;

  // waterfill: re-fits the range of every kept channel at its width on the trained factors'
  // training latents (the same tokens as channel_curves); a code changes only where the new one
  // has the smaller error.
  void refit_codes(JobState& state) const;

  // Relative error ‖K − K̂‖²/‖K‖² (float64 accumulation) over a split ("train" | "holdout"),
  // with the job's quantizer (quantize = false: at 16 bits).
  double relative_error(const JobState& state, const std::string& split, bool quantize) const;

  // The weight [D, H] of the job's projection in float32 (on the CPU).
  at::Tensor weight(const LayerJob& job) const;
  int64_t total_steps(const LayerJob& job) const;
  const TrainDevice& device() const { return dev_; }

 private:
  // The batches of one split of job's layer on the device; resident splits are kept for the
  // layer last used (its K and V jobs and their errors read them once).
  BatchStream stream(const LayerJob& job, const std::string& split, int64_t num_epochs) const;
  // The first kCurveTokens training rows of job's layer, [n, H] float32 on the device.
  at::Tensor curve_rows(const LayerJob& job) const;

  TrainConfig cfg_;
  model::ModelConfig model_;
  std::shared_ptr<const model::SafetensorsModel> weights_;
  std::string acts_dir_;
  TrainDevice dev_;
  mutable std::vector<std::shared_ptr<const ResidentSplit>> resident_;
};

}  // namespace cskv::trainer
