// Latent ranks r_k, r_v per layer: the paper's density rule (`--k-density/--v-density`) or a global
// budget (`--budget F`) spent by greedy marginal gain on normalised eigenvalues (DESIGN.md §2).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

namespace cskv::trainer {

// r = floor(density · head_dim) · n_kv (paper rule). The product density · head_dim is floored
// with a 1e-9 allowance, so a density written in decimal (0.29 · 100) keeps the channels it says
// (29, not the 28 that binary rounding would give). `flag` ("--k-density") names the option in
// usage errors: density outside (0, 1] ("--k-density: expected a value in (0, 1], found 1.5"), or
// one that keeps no channel per head.
int64_t rank_from_density(double density, int64_t head_dim, int64_t n_kv, const std::string& flag);

// The default `--rank-multiple`: n_kv · 8 (8 latent channels per KV head).
int64_t default_rank_multiple(int64_t n_kv);

struct LayerRanks {
  int64_t k = 0;  // r_k
  int64_t v = 0;  // r_v
  bool operator==(const LayerRanks& o) const { return k == o.k && v == o.v; }
};

// Per layer l, K and V ranks within a global latent-width budget. k_eigs[l], v_eigs[l]: the
// descending, non-negative float64 eigenvalues [D] of layer l's C (trainer/spectrum.h).
// The total width Σ_l (r_k + r_v) is exactly floor(F · 2 · L · D) rounded down to a multiple of
// `multiple`; every r is a multiple of `multiple` in [multiple, D]. Each layer/kind's eigenvalues
// are divided by their own trace, so the objective is the summed relative error Σ floor; starting
// from one multiple each, the rest is handed out one multiple at a time to the factor whose next
// block of normalised eigenvalues is largest (ties: lower layer first, K before V). Because the
// eigenvalues descend, the gains decrease, and the greedy choice is the exact optimum.
// Usage errors: F outside (0, 1] ("--budget: expected a value in (0, 1], found 0"), a budget below
// one multiple per factor, `multiple` not in [1, D] or not dividing D. Input errors: eigenvalue
// lists that are empty, of different lengths, or not [D] float64 descending and non-negative.
std::vector<LayerRanks> allocate_budget(const std::vector<at::Tensor>& k_eigs,
                                        const std::vector<at::Tensor>& v_eigs,
                                        double budget_fraction, int64_t d, int64_t multiple);

// The 16-bit relative error floors the chosen ranks imply (floor_for_rank per layer and kind).
struct FloorSummary {
  std::vector<double> k, v;  // per layer
  double mean_k = 0.0, mean_v = 0.0;
  double sum = 0.0;  // Σ_l (floor_k + floor_v): the objective allocate_budget minimises
};
FloorSummary expected_floor(const std::vector<at::Tensor>& k_eigs,
                            const std::vector<at::Tensor>& v_eigs,
                            const std::vector<LayerRanks>& ranks);

}  // namespace cskv::trainer
