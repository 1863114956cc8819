// Tests of the rank rules: the paper's density rule, the greedy budget allocation against uniform
// densities and against an exhaustive search on tiny cases, the floor summary and exact errors.
#include "trainer/rank_allocation.h"

#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <limits>
#include <vector>

#include "tests/support/test_support.h"
#include "trainer/spectrum.h"

namespace cskv::trainer {
namespace {

at::Tensor eig_tensor(const std::vector<double>& v) {
  return at::tensor(at::ArrayRef<double>(v), at::TensorOptions().dtype(at::kDouble));
}

// λ_i = scale · (i + 1)^-p, i < d: descending power-law spectrum.
at::Tensor power_law(int64_t d, double p, double scale = 1.0) {
  return (scale * at::arange(1, d + 1, at::kDouble).pow(-p)).contiguous();
}

int64_t total_width(const std::vector<LayerRanks>& ranks) {
  int64_t t = 0;
  for (const LayerRanks& r : ranks) t += r.k + r.v;
  return t;
}

TEST(RankAllocation, DensityFollowsThePaperRule) {
  EXPECT_EQ(rank_from_density(0.5, 128, 8, "--k-density"), 512);
  EXPECT_EQ(rank_from_density(0.1, 128, 2, "--k-density"), 24);  // floor(12.8) = 12 per head
  EXPECT_EQ(rank_from_density(1.0, 64, 4, "--v-density"), 256);
  EXPECT_EQ(rank_from_density(1.0 / 64, 64, 4, "--v-density"), 4);
  // 0.29 · 100 is 28.999999999999996 in binary; the user asked for 29 channels per head.
  EXPECT_EQ(rank_from_density(0.29, 100, 1, "--k-density"), 29);
  EXPECT_EQ(rank_from_density(0.57, 100, 3, "--k-density"), 171);
}

TEST(RankAllocation, BadDensitiesHaveExactMessages) {
  EXPECT_CSKV_ERROR(rank_from_density(1.5, 128, 8, "--k-density"),
                    "--k-density: expected a value in (0, 1], found 1.5");
  EXPECT_CSKV_ERROR(rank_from_density(0.0, 128, 8, "--v-density"),
                    "--v-density: expected a value in (0, 1], found 0");
  EXPECT_CSKV_ERROR(rank_from_density(-0.25, 128, 8, "--k-density"),
                    "--k-density: expected a value in (0, 1], found -0.25");
  EXPECT_CSKV_ERROR(
      rank_from_density(std::numeric_limits<double>::quiet_NaN(), 128, 8, "--k-density"),
      "--k-density: expected a value in (0, 1], found nan");
  EXPECT_CSKV_ERROR(rank_from_density(0.01, 64, 2, "--v-density"),
                    "--v-density: 0.01 keeps floor(0.01 * 64) = 0 channels per head; the "
                    "smallest density is 1/64 = 0.015625");
  EXPECT_EQ(default_rank_multiple(8), 64);
}

// Layers whose K and V spectra decay at different rates (keys steeper, as in real models).
struct Spectra {
  std::vector<at::Tensor> k, v;
};
Spectra mixed_spectra(int64_t d) {
  Spectra s;
  const std::vector<double> pk = {0.5, 1.0, 1.5, 2.0}, pv = {0.3, 0.4, 0.6, 0.8};
  for (size_t l = 0; l < pk.size(); ++l) {
    s.k.push_back(power_law(d, pk[l], 10.0 * static_cast<double>(l + 1)));
    s.v.push_back(power_law(d, pv[l], 0.5));
  }
  return s;
}

TEST(RankAllocation, BudgetBeatsUniformDensitiesOfTheSameWidth) {
  const int64_t d = 64, m = 8;
  const Spectra s = mixed_spectra(d);
  for (double f : {0.125, 0.25, 0.5, 0.75}) {
    SCOPED_TRACE(f);
    const std::vector<LayerRanks> ranks = allocate_budget(s.k, s.v, f, d, m);
    ASSERT_EQ(ranks.size(), 4u);
    const int64_t per_factor = static_cast<int64_t>(f * d);  // uniform: same total width
    EXPECT_EQ(total_width(ranks), 8 * per_factor);
    for (const LayerRanks& r : ranks) {
      for (int64_t x : {r.k, r.v}) {
        EXPECT_EQ(x % m, 0);
        EXPECT_GE(x, m);
        EXPECT_LE(x, d);
      }
    }
    const std::vector<LayerRanks> uniform(4, LayerRanks{per_factor, per_factor});
    const double budget = expected_floor(s.k, s.v, ranks).sum;
    const double flat = expected_floor(s.k, s.v, uniform).sum;
    if (f == 0.125) {  // only one multiple each: nothing to choose
      EXPECT_EQ(ranks, uniform);
    } else {
      // Summed floors over the 8 factors: 2.94 vs 3.07 (F 0.25), 1.33 vs 1.76, 0.26 vs 0.80.
      EXPECT_GT(flat - budget, 0.1) << "budget " << budget << " uniform " << flat;
    }
  }
  // Flat value spectra get more width than steep key spectra.
  const std::vector<LayerRanks> half = allocate_budget(s.k, s.v, 0.5, d, m);
  EXPECT_LT(half[3].k, half[3].v);
  EXPECT_LT(half[3].k, half[0].k);
}

TEST(RankAllocation, IdenticalSpectraGiveUniformRanks) {
  const at::Tensor e = power_law(32, 1.0);
  const std::vector<at::Tensor> same(3, e);
  EXPECT_EQ(allocate_budget(same, same, 0.5, 32, 4), std::vector<LayerRanks>(3, {16, 16}));
  // The trace normalisation makes the allocation blind to each factor's scale.
  const std::vector<at::Tensor> scaled = {e, e * 1000.0, e * 1e-3};
  EXPECT_EQ(allocate_budget(scaled, same, 0.25, 32, 4), std::vector<LayerRanks>(3, {8, 8}));
}

TEST(RankAllocation, TiesGoToTheLowerLayerAndKeyFirst) {
  const at::Tensor e = power_law(16, 1.0);
  const std::vector<at::Tensor> same(2, e);
  // One block beyond the minimum (4 · 4 = 16) to hand out: layer 0 K wins the four-way tie.
  EXPECT_EQ(allocate_budget(same, same, 20.0 / 64.0, 16, 4),
            (std::vector<LayerRanks>{{8, 4}, {4, 4}}));
  EXPECT_EQ(allocate_budget(same, same, 28.0 / 64.0, 16, 4),
            (std::vector<LayerRanks>{{8, 8}, {8, 4}}));
}

// Every allocation of multiples in [m, d] with the given total, by exhaustive search over 2 layers.
double exhaustive_optimum(const Spectra& s, int64_t d, int64_t m, int64_t total) {
  double best = std::numeric_limits<double>::infinity();
  for (int64_t k0 = m; k0 <= d; k0 += m)
    for (int64_t v0 = m; v0 <= d; v0 += m)
      for (int64_t k1 = m; k1 <= d; k1 += m) {
        const int64_t v1 = total - k0 - v0 - k1;
        if (v1 < m || v1 > d || v1 % m != 0) continue;
        const double sum = floor_for_rank(s.k[0], k0) + floor_for_rank(s.v[0], v0) +
                           floor_for_rank(s.k[1], k1) + floor_for_rank(s.v[1], v1);
        best = std::min(best, sum);
      }
  return best;
}

TEST(RankAllocation, GreedyEqualsTheExhaustiveOptimum) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(7);
  for (const auto& [d, m] : std::vector<std::pair<int64_t, int64_t>>{{8, 2}, {6, 1}, {12, 3}}) {
    for (int trial = 0; trial < 6; ++trial) {
      Spectra s;
      for (int i = 0; i < 2; ++i) {
        // Random descending spectra of random steepness, some with exact zeros in the tail.
        auto random_spectrum = [&] {
          const double p = 3.0 * at::rand({1}, gen, at::kDouble).item<double>();
          at::Tensor e = at::rand({d}, gen, at::kDouble) * power_law(d, p);
          e = std::get<0>(e.sort(0, /*descending=*/true)).contiguous();
          if (trial % 3 == 2) e.narrow(0, d - 2, 2).zero_();
          return e;
        };
        s.k.push_back(random_spectrum());
        s.v.push_back(random_spectrum());
      }
      for (int64_t total = 4 * m; total <= 4 * d; total += m) {
        const double f = static_cast<double>(total) / static_cast<double>(4 * d);
        const std::vector<LayerRanks> ranks = allocate_budget(s.k, s.v, f, d, m);
        ASSERT_EQ(total_width(ranks), total) << "d " << d << " m " << m;
        EXPECT_NEAR(expected_floor(s.k, s.v, ranks).sum, exhaustive_optimum(s, d, m, total), 1e-12)
            << "d " << d << " m " << m << " trial " << trial << " total " << total;
      }
    }
  }
}

TEST(RankAllocation, BudgetIsRoundedDownToAMultiple) {
  const Spectra s = mixed_spectra(64);
  // 0.3 · 512 = 153.6 → 153 → 152 (a multiple of 8).
  EXPECT_EQ(total_width(allocate_budget(s.k, s.v, 0.3, 64, 8)), 152);
  EXPECT_EQ(total_width(allocate_budget(s.k, s.v, 1.0, 64, 8)), 512);
  EXPECT_EQ(allocate_budget(s.k, s.v, 1.0, 64, 8), std::vector<LayerRanks>(4, {64, 64}));
}

TEST(RankAllocation, ExpectedFloorSumsTheRelativeTails) {
  const std::vector<at::Tensor> k = {eig_tensor({4, 3, 2, 1}), eig_tensor({1, 1, 1, 1})};
  const std::vector<at::Tensor> v = {eig_tensor({1, 1, 0, 0}), eig_tensor({0, 0, 0, 0})};
  const FloorSummary f = expected_floor(k, v, {{1, 2}, {3, 1}});
  EXPECT_EQ(f.k, (std::vector<double>{0.6, 0.25}));
  EXPECT_EQ(f.v, (std::vector<double>{0.0, 0.0}));
  EXPECT_DOUBLE_EQ(f.mean_k, 0.425);
  EXPECT_EQ(f.mean_v, 0.0);
  EXPECT_DOUBLE_EQ(f.sum, 0.85);
}

TEST(RankAllocation, BadBudgetsHaveExactMessages) {
  const Spectra s = mixed_spectra(64);
  EXPECT_CSKV_ERROR(allocate_budget(s.k, s.v, 0.0, 64, 8),
                    "--budget: expected a value in (0, 1], found 0");
  EXPECT_CSKV_ERROR(allocate_budget(s.k, s.v, 1.5, 64, 8),
                    "--budget: expected a value in (0, 1], found 1.5");
  const std::vector<at::Tensor> k2(s.k.begin(), s.k.begin() + 2), v2(s.v.begin(), s.v.begin() + 2);
  EXPECT_CSKV_ERROR(allocate_budget(k2, v2, 0.2, 64, 16),
                    "--budget: 0.2 keeps 48 of the 256 latent channels (K and V of 2 layers, D = "
                    "64), fewer than one multiple of 16 for each of the 4 factors (64); the "
                    "smallest budget is 0.25");
  EXPECT_CSKV_ERROR(allocate_budget(s.k, s.v, 0.5, 64, 12),
                    "--rank-multiple: expected a divisor of D = 64, found 12");
  EXPECT_CSKV_ERROR(allocate_budget(s.k, s.v, 0.5, 64, 0),
                    "--rank-multiple: expected a divisor of D = 64, found 0");
  EXPECT_CSKV_ERROR(allocate_budget(s.k, v2, 0.5, 64, 8),
                    "rank allocation: expected K and V eigenvalues for the same layers (at least "
                    "one), found 4 K and 2 V");
  EXPECT_CSKV_ERROR(allocate_budget({}, {}, 0.5, 64, 8),
                    "rank allocation: expected K and V eigenvalues for the same layers (at least "
                    "one), found 0 K and 0 V");
  std::vector<at::Tensor> short_v = s.v;
  short_v[1] = power_law(10, 1.0);
  EXPECT_CSKV_ERROR(allocate_budget(s.k, short_v, 0.5, 64, 8),
                    "rank allocation: layer 1 V eigenvalues: expected [64] float64, found [10] "
                    "Double");
  std::vector<at::Tensor> rising = s.k;
  rising[2] = power_law(64, 1.0).flip(0).contiguous();
  EXPECT_CSKV_ERROR(allocate_budget(rising, s.v, 0.5, 64, 8),
                    "rank allocation: layer 2 K eigenvalues must be finite, non-negative and "
                    "descending; element 1 is 0.015873");
  EXPECT_CSKV_ERROR(expected_floor(s.k, s.v, {{8, 8}}),
                    "expected_floor: 1 layer ranks for 4 layers");
}

}  // namespace
}  // namespace cskv::trainer
