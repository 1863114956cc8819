// Quantization groupings whose fp16 scale and zero cost more than they save: a group of g codes
// at b bits stores g·b bits plus 32 bits of scale/zero, more than g·16 bits of 16-bit latents.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"
#include "trainer/layer_trainer.h"

namespace cskv::trainer {

// One grouping (branch, latent width, bits, group) that is larger than 16-bit latents, and the
// layers that use it. Bytes are per cached token of one layer's branch.
struct CostlyGrouping {
  KvKind kind = KvKind::kValue;
  int64_t rank = 0;           // latent channels r
  int bits = 16;              // bits per code
  int64_t group = 0;          // codes per scale/zero: channels (per token) or tokens (per channel)
  bool per_channel = false;   // keys over a window: each channel's `group` tokens share them
  double code_bytes = 0;      // r·b/8
  double overhead_bytes = 0;  // fp16 scale + zero of every group
  double fp16_bytes = 0;      // 16-bit latents: 2·r
  std::vector<int64_t> layers;
  double quantized_bytes() const { return code_bytes + overhead_bytes; }
};

// The uniform-mode jobs whose grouping (cfg.group_size, 0: r/n_kv; keys per channel over
// cfg.window tokens) stores more per token than 16-bit latents, one entry per distinct grouping
// in job order. Waterfill codes and 16-bit latents have no scale/zero: never listed.
std::vector<CostlyGrouping> costly_groupings(const model::ModelConfig& model,
                                             const TrainConfig& cfg,
                                             const std::vector<LayerJob>& jobs);

// One line for the log: "V of layers 0-4: groups of 2 latent channels at 4 bits store 20 bytes
// per token (4 of codes, 16 of fp16 scale/zero), more than the 16 bytes of 16-bit latents
// (8 channels); a --group-size of 4 (dividing 8) stores less".
std::string costly_grouping_message(const CostlyGrouping& g);

}  // namespace cskv::trainer
