// Memory accounting of the bi-branch compressed cache (DESIGN.md §2) and the per-job metrics
// a training run reports as JSON and as a markdown table.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"
#include "trainer/layer_trainer.h"

namespace cskv::trainer {

// Bytes one layer's cache holds for a context of `context` tokens.
struct LayerCacheBytes {
  double latent = 0;    // quantized latents of the compressed tokens, bit-packed per branch
  double overhead = 0;  // fp16 scale + zero per quantization group
  double window = 0;    // full-precision K and V (fp16) of the tokens inside the window
  double pending = 0;   // fp16 latents of the window's tokens, quantized when the window fills
  double total() const { return latent + overhead + window + pending; }
};

// Tokens older than the last window boundary are compressed (floor(context / window) * window,
// or all tokens when window is 0); the rest stay full precision. Groups: V per token of
// group_size latent channels; K per channel over `window` tokens (per token like V when window
// is 0). A branch's codes are packed back to back: ceil(tokens·r·bits/8) bytes. 16 bits stores
// fp16 latents without scale/zero. The window's tokens also keep their latents c = x·A (fp16)
// until their window is quantized: x is gone by then. eval's CompressedKvCache holds exactly
// these bytes (tests/eval/compressed_kv_cache_test.cpp).
LayerCacheBytes layer_cache_bytes(const model::ModelConfig& model, const TrainConfig& cfg,
                                  int64_t r_k, int64_t r_v, int64_t context);

// --quant waterfill: the latents are the channel codes, each width's channels packed on their own
// (Σ_b ceil(C·n_b·b/8) bytes per branch, no overhead); window and pending as above.
LayerCacheBytes layer_cache_bytes(const model::ModelConfig& model, const TrainConfig& cfg,
                                  const std::vector<ChannelCode>& k_codes,
                                  const std::vector<ChannelCode>& v_codes, int64_t context);

// 2 (K, V) · D · 2 bytes per token per layer.
double fp16_cache_bytes(const model::ModelConfig& model, int64_t context);

// The outcome of one job.
struct JobMetrics {
  LayerJob job;
  int bits = 16;                // uniform: the latent's bits (0 under waterfill)
  int64_t bits_per_token = 0;   // the code bits of one token's latent (Σ widths under waterfill)
  double floor = 0;             // 16-bit training-set floor
  double train_error_init = 0;  // relative error on the training split at 16 bits, step 0
  double train_error = 0;       // … after training
  double holdout_error_init_q = 0;  // held-out, quantized as configured, step 0
  double holdout_error_q = 0;       // held-out, quantized, after training
  double holdout_error = 0;         // held-out at 16 bits, after training
  int64_t steps = 0;
  double seconds = 0;
};

struct RunMetrics {
  std::vector<JobMetrics> jobs;
  int64_t context = 4096;
  double compressed_bytes = 0;  // all layers at `context`
  double fp16_bytes = 0;
};

RunMetrics summarize(const model::ModelConfig& model, const TrainConfig& cfg,
                     std::vector<JobMetrics> jobs, int64_t context);
std::string metrics_json(const RunMetrics& m);
std::string metrics_markdown(const RunMetrics& m);

}  // namespace cskv::trainer
