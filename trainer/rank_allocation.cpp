// Rank rules: floor(density · head_dim) · n_kv, and the greedy budget allocation over layers and
// K/V on trace-normalised eigenvalues (exact for concave gains), with its expected 16-bit floor.
#include "trainer/rank_allocation.h"

#include <cmath>

#include "common/error.h"
#include "trainer/spectrum.h"

namespace cskv::trainer {
namespace {

// floor(x) for x ≥ 0 that forgives binary rounding just below an integer (0.29 · 100).
int64_t decimal_floor(double x) { return static_cast<int64_t>(std::floor(x + 1e-9)); }

// The eigenvalues of one factor as a vector, checked: [d] float64, finite, non-negative and
// descending.
std::vector<double> checked_eigs(const at::Tensor& eigs, int64_t d, int64_t layer,
                                 const char* kind) {
  CSKV_CHECK_INPUT(eigs.defined() && eigs.dim() == 1 && eigs.numel() == d &&
                       eigs.scalar_type() == at::kDouble,
                   "rank allocation: layer "
                       << layer << " " << kind << " eigenvalues: expected [" << d
                       << "] float64, found " << (eigs.defined() ? eigs.sizes() : at::IntArrayRef{})
                       << " " << (eigs.defined() ? eigs.scalar_type() : at::ScalarType::Undefined));
  const at::Tensor c = eigs.cpu().contiguous();
  std::vector<double> v(c.data_ptr<double>(), c.data_ptr<double>() + d);
  for (int64_t i = 0; i < d; ++i) {
    CSKV_CHECK_INPUT(std::isfinite(v[i]) && v[i] >= 0.0 && (i == 0 || v[i] <= v[i - 1]),
                     "rank allocation: layer "
                         << layer << " " << kind
                         << " eigenvalues must be finite, non-negative and descending; element "
                         << i << " is " << v[i]);
  }
  return v;
}

void check_lists(const std::vector<at::Tensor>& k_eigs, const std::vector<at::Tensor>& v_eigs) {
  CSKV_CHECK_INPUT(!k_eigs.empty() && k_eigs.size() == v_eigs.size(),
                   "rank allocation: expected K and V eigenvalues for the same layers (at least "
                   "one), found "
                       << k_eigs.size() << " K and " << v_eigs.size() << " V");
}

}  // namespace

int64_t rank_from_density(double density, int64_t head_dim, int64_t n_kv, const std::string& flag) {
  CSKV_CHECK_USAGE(density > 0.0 && density <= 1.0,
                   flag << ": expected a value in (0, 1], found " << density);
  CSKV_CHECK_INPUT(head_dim >= 1 && n_kv >= 1, flag << ": the model has head_dim " << head_dim
                                                    << " and " << n_kv << " KV heads");
  const int64_t per_head =
      std::min(decimal_floor(density * static_cast<double>(head_dim)), head_dim);
  CSKV_CHECK_USAGE(per_head >= 1, flag << ": " << density << " keeps floor(" << density << " * "
                                       << head_dim << ") = 0 channels per head; the smallest "
                                       << "density is 1/" << head_dim << " = "
                                       << 1.0 / static_cast<double>(head_dim));
  return per_head * n_kv;
}

int64_t default_rank_multiple(int64_t n_kv) { return n_kv * 8; }

std::vector<LayerRanks> allocate_budget(const std::vector<at::Tensor>& k_eigs,
                                        const std::vector<at::Tensor>& v_eigs,
                                        double budget_fraction, int64_t d, int64_t multiple) {
  CSKV_CHECK_USAGE(budget_fraction > 0.0 && budget_fraction <= 1.0,
                   "--budget: expected a value in (0, 1], found " << budget_fraction);
  CSKV_CHECK_USAGE(multiple >= 1 && multiple <= d && d % multiple == 0,
                   "--rank-multiple: expected a divisor of D = " << d << ", found " << multiple);
  check_lists(k_eigs, v_eigs);
  const int64_t layers = static_cast<int64_t>(k_eigs.size());
  const int64_t factors = 2 * layers;  // index 2·l + (0: K, 1: V)
  const int64_t full = factors * d;
  const int64_t total =
      decimal_floor(budget_fraction * static_cast<double>(full)) / multiple * multiple;
  CSKV_CHECK_USAGE(total >= factors * multiple,
                   "--budget: " << budget_fraction << " keeps " << total << " of the " << full
                                << " latent channels (K and V of " << layers << " layers, D = " << d
                                << "), fewer than one multiple of " << multiple
                                << " for each of the " << factors << " factors ("
                                << factors * multiple << "); the smallest budget is "
                                << static_cast<double>(multiple) / static_cast<double>(d));

  // gains[f][j]: normalised eigenvalue mass of block j (channels j·m … (j+1)·m − 1) of factor f.
  const int64_t blocks = d / multiple;
  std::vector<std::vector<double>> gains(factors, std::vector<double>(blocks, 0.0));
  for (int64_t f = 0; f < factors; ++f) {
    const int64_t layer = f / 2;
    const std::vector<double> eigs =
        checked_eigs(f % 2 == 0 ? k_eigs[layer] : v_eigs[layer], d, layer, f % 2 == 0 ? "K" : "V");
    double trace = 0.0;
    for (double e : eigs) trace += e;
    if (trace == 0.0) continue;  // nothing to reconstruct: every block gains 0
    for (int64_t j = 0; j < blocks; ++j) {
      double block = 0.0;
      for (int64_t i = j * multiple; i < (j + 1) * multiple; ++i) block += eigs[i];
      gains[f][j] = block / trace;
    }
  }

  std::vector<int64_t> taken(factors, 1);  // blocks per factor; one multiple each to start
  for (int64_t left = total / multiple - factors; left > 0; --left) {
    int64_t best = -1;
    for (int64_t f = 0; f < factors; ++f) {
      if (taken[f] < blocks && (best < 0 || gains[f][taken[f]] > gains[best][taken[best]])) {
        best = f;
      }
    }
    // total ≤ factors · d, so while blocks are left to hand out some factor has room.
    ++taken[best];
  }

  std::vector<LayerRanks> ranks(layers);
  for (int64_t l = 0; l < layers; ++l) {
    ranks[l].k = taken[2 * l] * multiple;
    ranks[l].v = taken[2 * l + 1] * multiple;
  }
  return ranks;
}

FloorSummary expected_floor(const std::vector<at::Tensor>& k_eigs,
                            const std::vector<at::Tensor>& v_eigs,
                            const std::vector<LayerRanks>& ranks) {
  check_lists(k_eigs, v_eigs);
  CSKV_CHECK_INPUT(ranks.size() == k_eigs.size(), "expected_floor: " << ranks.size()
                                                                     << " layer ranks for "
                                                                     << k_eigs.size() << " layers");
  FloorSummary s;
  for (size_t l = 0; l < ranks.size(); ++l) {
    s.k.push_back(floor_for_rank(k_eigs[l], ranks[l].k));
    s.v.push_back(floor_for_rank(v_eigs[l], ranks[l].v));
    s.mean_k += s.k.back();
    s.mean_v += s.v.back();
  }
  s.sum = s.mean_k + s.mean_v;
  s.mean_k /= static_cast<double>(ranks.size());
  s.mean_v /= static_cast<double>(ranks.size());
  return s;
}

}  // namespace cskv::trainer
