// waterfill: a job's kept channels and their codes from its channels' width curves and the widths
// allocated to them (the train stage's plan and eval's budget sweep build jobs the same way).
#pragma once

#include <vector>

#include "trainer/layer_trainer.h"
#include "trainer/waterfill.h"

namespace cskv::trainer {

// `job` with channels = the indices of the nonzero widths (ascending), codes = curves[i].code at
// widths[i] for those, rank = their count. widths: one per curve, each in [0, kMaxChannelBits].
LayerJob with_widths(LayerJob job, const std::vector<ChannelCurve>& curves,
                     const std::vector<int>& widths);

}  // namespace cskv::trainer
