// `cskv eval --pareto`: held-out error against cache bits per token over a sweep of budgets, for
// the paper's uniform code and for per-channel widths (--quant waterfill), each in the closed form
// `cskv train` starts from, with the Gaussian rate–distortion bound at the same bits.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "eval/report.h"
#include "model/config.h"
#include "model/safetensors.h"

namespace cskv::eval {

// The sweep: the uniform code at every density × bits (ranks by the paper's density rule, keys in
// per-channel groups of 32-token windows, values in per-token groups of r/n_kv channels: the
// defaults of `cskv train`), and the waterfill code at the bits per token of each uniform point.
inline constexpr int64_t kParetoKeyWindow = 32;  // the uniform points' key windows (tokens)

struct ParetoGrid {
  std::vector<double> densities = {0.125, 0.25, 0.5, 1.0};
  std::vector<int> bits = {2, 4, 8};
};

// Every job (layer, K and V) of `layers`, in that order, K before V; job i on rank i mod W, every
// rank returns all. The training split fits the codes (as `cskv train` does), the held-out split
// measures them. Grid points whose density keeps no channel are left out.
std::vector<JobPareto> pareto_sweep(std::shared_ptr<const model::SafetensorsModel> weights,
                                    const model::ModelConfig& config, const std::string& acts_dir,
                                    const std::vector<int64_t>& layers, const ParetoGrid& grid,
                                    comm::Communicator& comm);

}  // namespace cskv::eval
