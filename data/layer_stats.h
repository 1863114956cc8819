// Per-layer calibration statistics: G = XᵀX and Σ|x| per channel in float64 plus the token
// count, accumulated batch by batch during capture and stored in acts/stats.h5.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "data/activation_shard.h"

namespace cskv::data {

// The raw sums of one layer: what ranks allreduce (sum) before writing stats.h5.
struct LayerSums {
  at::Tensor gram;         // [H, H] float64, Σ xᵀx
  at::Tensor abs_sum;      // [H] float64, Σ |x| per channel
  at::Tensor token_count;  // [1] float64 (exact up to 2^53 tokens), so it reduces like the rest
};

class LayerStats {
 public:
  // Batches are rounded to `stored` first, so the statistics describe exactly the values the
  // shards hold (float16 by default), and equal XᵀX recomputed from them.
  LayerStats(std::vector<int64_t> layers, int64_t hidden_size,
             ActivationDtype stored = ActivationDtype::kFloat16);

  // x: [n, H] float32 (any device; moved to CPU). Accumulates in call order (deterministic).
  void add(int64_t layer, const at::Tensor& x);

  const std::vector<int64_t>& layers() const { return layers_; }
  int64_t hidden_size() const { return hidden_size_; }
  LayerSums& sums(int64_t layer);
  const LayerSums& sums(int64_t layer) const;
  // Every sum tensor in a fixed order (layer ascending; gram, abs_sum, token_count), for an
  // in-place allreduce by the caller's communicator.
  std::vector<at::Tensor> reduction_tensors();

  int64_t token_count(int64_t layer) const;
  at::Tensor abs_mean(int64_t layer) const;  // abs_sum / token_count ([H] float64)

 private:
  std::vector<int64_t> layers_;
  int64_t hidden_size_;
  ActivationDtype stored_;
  std::map<int64_t, LayerSums> sums_;
};

// One layer as stored in stats.h5.
struct LayerStatistics {
  at::Tensor gram;      // [H, H] float64
  at::Tensor abs_mean;  // [H] float64, mean |x| per channel
};

struct StatsFile {
  std::string model_config_hash;
  std::string capture_identity;  // empty when the file records none (written before it existed)
  int64_t hidden_size = 0;
  int64_t token_count = 0;
  std::vector<int64_t> layers;
  std::map<int64_t, LayerStatistics> per_layer;  // empty from read_stats_header()
};

constexpr int64_t kStatsFormatVersion = 1;

// Writes /layers/<l>/gram [H,H] f64 and /layers/<l>/abs_mean [H] f64 with root attributes
// format_version, model_config_hash, hidden_size, layers, token_count (all layers must have the
// same count) and, when not empty, capture_identity (data/capture_identity.h), via
// "<path>.partial" + fsync + rename.
void write_stats(const std::string& path, const LayerStats& stats,
                 const std::string& model_config_hash, const std::string& capture_identity = "");

// Reads everything / only the attributes / one layer. A missing or truncated file gives
// "<path>: cannot open HDF5 file: ..."; a different model gives
// "<path>: model_config_hash is 'a', expected 'b'" when expected_hash is not empty; a NaN or Inf
// gives "<path>: layer 3 gram holds nan at [1, 2] (non-finite statistics; re-run cskv capture)".
StatsFile read_stats(const std::string& path, const std::string& expected_hash = "");
StatsFile read_stats_header(const std::string& path, const std::string& expected_hash = "");
LayerStatistics read_layer_stats(const std::string& path, int64_t layer);

// The header of <acts_dir>/stats.h5, checked against the capture it is read with (input errors):
// its capture_identity must be <acts_dir>/capture.json's, and it must hold every layer the
// capture's shards hold (the missing ones are named). A stats.h5 that records no identity (an
// older cskv wrote it) is accepted with a warning saying to re-run capture.
StatsFile read_capture_stats_header(const std::string& acts_dir, const std::string& expected_hash);

}  // namespace cskv::data
