// Per-channel widths under a bit budget: the fitted codes against an explicit reference, the
// greedy allocation against brute force, and reverse water-filling's shape on Gaussian channels.
#include "trainer/waterfill.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <vector>

#include "tests/support/test_support.h"

namespace cskv::trainer {
namespace {

// The least summed error over every width vector with Σ bits <= budget (exhaustive).
double brute_force(const std::vector<ChannelCurve>& curves, int64_t budget, int max_bits) {
  double best = std::numeric_limits<double>::infinity();
  std::vector<int> b(curves.size(), 0);
  std::function<void(size_t, int64_t, double)> go = [&](size_t i, int64_t left, double err) {
    if (i == curves.size()) {
      best = std::min(best, err);
      return;
    }
    for (int k = 0; k <= max_bits && k <= left; ++k) go(i + 1, left - k, err + curves[i].error[k]);
  };
  go(0, budget, 0);
  return best;
}

double total(const std::vector<ChannelCurve>& curves, const std::vector<int>& bits) {
  double e = 0;
  for (size_t i = 0; i < curves.size(); ++i) e += curves[i].error[bits[i]];
  return e;
}

// A curve with errors e[0..max_bits] and nothing gained beyond.
ChannelCurve curve_of(const std::vector<double>& e) {
  ChannelCurve c;
  for (int b = 0; b <= kMaxChannelBits; ++b) c.error[b] = e[std::min<size_t>(b, e.size() - 1)];
  return c;
}

TEST(Waterfill, GreedyEqualsBruteForceOnConvexCurvesForEveryBudget) {
  at::manual_seed(3);
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<ChannelCurve> curves;
    for (int i = 0; i < 4; ++i) {  // variance λ, error λ·4^-b (the Gaussian high-rate law)
      const double lambda = std::exp(at::randn({1}).item<double>() * 2);
      std::vector<double> e;
      for (int b = 0; b <= 4; ++b) e.push_back(lambda * std::pow(4.0, -b) * (b ? 1.2 : 1.0));
      curves.push_back(curve_of(e));
    }
    for (int64_t budget = 0; budget <= 16; ++budget) {
      const auto bits = allocate_bits(curves, budget);
      int64_t spent = 0;
      for (int b : bits) spent += b;
      EXPECT_LE(spent, budget);
      EXPECT_NEAR(total(curves, bits), brute_force(curves, budget, 4), 1e-12)
          << "trial " << trial << " budget " << budget;
    }
  }
}

// Non-convex: a channel that gains nothing from its first bit and everything from its second.
// One-bit-at-a-time greedy would never start it; the hull jump takes both bits at once.
TEST(Waterfill, HullJumpsFindTheOptimumThatSingleStepsMiss) {
  const std::vector<ChannelCurve> curves = {curve_of({10, 10, 0}), curve_of({4, 3, 2.5})};
  const auto bits = allocate_bits(curves, 2);
  EXPECT_EQ(bits, (std::vector<int>{2, 0}));
  EXPECT_DOUBLE_EQ(total(curves, bits), brute_force(curves, 2, 2));
  // Where it may lose: budget 1 cannot take the jump; the optimum is channel 1's first bit.
  EXPECT_EQ(allocate_bits(curves, 1), (std::vector<int>{0, 1}));
  EXPECT_DOUBLE_EQ(total(curves, allocate_bits(curves, 1)), brute_force(curves, 1, 2));
}

// One budget over two jobs: what minimises the summed relative error, by brute force over the
// channels of both; a job of ten times the energy is worth ten times less per unit of error.
TEST(Waterfill, OneBudgetOverJobsMinimisesTheSummedRelativeError) {
  const std::vector<std::vector<ChannelCurve>> jobs = {
      {curve_of({8, 2, 0.5, 0.125}), curve_of({2, 0.5, 0.125})},
      {curve_of({80, 20, 5, 1.25}), curve_of({40, 10, 2.5, 0.6})}};
  const std::vector<double> energy = {10, 100};
  for (int64_t budget = 0; budget <= 8; ++budget) {
    const auto widths = allocate_jobs(jobs, energy, budget);
    ASSERT_EQ(widths.size(), 2u);
    std::vector<ChannelCurve> scaled;
    double got = 0;
    int64_t spent = 0;
    for (size_t j = 0; j < jobs.size(); ++j) {
      for (size_t i = 0; i < jobs[j].size(); ++i) {
        ChannelCurve c = jobs[j][i];
        for (double& e : c.error) e /= energy[j];
        scaled.push_back(c);
        got += c.error[widths[j][i]];
        spent += widths[j][i];
      }
    }
    EXPECT_LE(spent, budget);
    EXPECT_NEAR(got, brute_force(scaled, budget, 3), 1e-12) << "budget " << budget;
  }
  EXPECT_CSKV_ERROR(allocate_jobs(jobs, {10, 0}, 4), "allocate_jobs: job 1 has energy 0");
}

TEST(Waterfill, FittedCodesAreTheQuantizerAndClippingBeatsMinMax) {
  at::manual_seed(5);
  at::Tensor x = at::randn({4000});
  x[17] = 9.0f;  // one outlier: min–max wastes most levels on it
  const ChannelCurve c = fit_channel(x);
  const at::Tensor xd = x.to(at::kDouble);
  EXPECT_NEAR(c.error[0], xd.pow(2).sum().item<double>(), 1e-6 * c.error[0]);  // dropped
  EXPECT_EQ(c.code[0], (ChannelCode{0, 0.0f, 0.0f}));
  for (int b = 1; b <= kMaxChannelBits; ++b) {
    EXPECT_LE(c.error[b], c.error[b - 1]) << b;
    // The error recorded is the quantizer's on these values.
    const at::Tensor y = quantize_channels(x.unsqueeze(1), {c.code[b]}).squeeze(1);
    EXPECT_NEAR((y.to(at::kDouble) - xd).pow(2).sum().item<double>(), c.error[b],
                1e-9 * c.error[0] + 1e-6 * c.error[b]);
    // Explicit reference: the codes are integers in [0, 2^b − 1], half to even.
    const at::Tensor q = ((y - c.code[b].offset) / c.code[b].scale).round();
    EXPECT_GE(q.min().item<float>(), 0);
    EXPECT_LE(q.max().item<float>(), static_cast<float>((1 << b) - 1));
    // Min–max at the same width is never better.
    const float lo = x.min().item<float>(), hi = x.max().item<float>();
    const ChannelCode minmax{b, lo, (hi - lo) / static_cast<float>((1 << b) - 1)};
    const at::Tensor ym = quantize_channels(x.unsqueeze(1), {minmax}).squeeze(1);
    EXPECT_LE(c.error[b], (ym.to(at::kDouble) - xd).pow(2).sum().item<double>() * (1 + 1e-9));
  }
  // Clipping the outlier pays at 3 bits.
  const float lo = x.min().item<float>(), hi = x.max().item<float>();
  const ChannelCode minmax3{3, lo, (hi - lo) / 7.0f};
  const at::Tensor y3 = quantize_channels(x.unsqueeze(1), {minmax3}).squeeze(1);
  EXPECT_LT(c.error[3], 0.6 * (y3.to(at::kDouble) - xd).pow(2).sum().item<double>());
  EXPECT_LT(c.error[8], 1e-3 * c.error[0]);
}

// Gaussian channels of variances λ_i: widths fall with λ, the low-variance tail gets 0 bits (the
// water level), and each factor 4 of variance earns about one bit (½·log2(λ/θ)).
TEST(Waterfill, GaussianChannelsGetReverseWaterFillingWidths) {
  at::manual_seed(7);
  const std::vector<double> lambdas = {256, 64, 16, 4, 1, 0.25, 1.0 / 16, 1.0 / 64};
  std::vector<ChannelCurve> curves;
  for (double l : lambdas) curves.push_back(fit_channel(at::randn({8000}) * std::sqrt(l)));
  const auto bits = allocate_bits(curves, 16);
  int64_t spent = 0;
  for (size_t i = 0; i < bits.size(); ++i) {
    spent += bits[i];
    if (i > 0) {
      EXPECT_LE(bits[i], bits[i - 1]) << i;
    }
  }
  EXPECT_EQ(spent, 16);
  EXPECT_EQ(bits.back(), 0);
  EXPECT_GE(bits.front() - bits[3], 2);  // λ 256 vs 4: ½·log2(64) = 3 bits apart, give or take
  EXPECT_LE(bits.front() - bits[3], 4);
}

// The bound in closed form: one channel at R bits is 4^-R; equal channels share the bits; a
// channel below the water level gets none (θ from ½·log2(λ/θ) summing to the budget).
TEST(Waterfill, GaussianBoundIsReverseWaterFilling) {
  const auto t = [](std::vector<double> v) { return at::tensor(v, at::kDouble); };
  EXPECT_NEAR(gaussian_bound(t({1.0}), 3), std::pow(4.0, -3), 1e-9);
  EXPECT_NEAR(gaussian_bound(t({2.0, 2.0}), 4), std::pow(4.0, -2), 1e-9);
  // λ = {16, 1}, 1 bit: θ = 4 spends ½·log2(16/4) = 1 bit on the first; error (4 + 1) / 17.
  EXPECT_NEAR(gaussian_bound(t({16.0, 1.0}), 1), 5.0 / 17.0, 1e-9);
  // λ = {16, 1}, 4 bits: both active, θ² = 16/256 → θ = 1/4; error 2θ / 17.
  EXPECT_NEAR(gaussian_bound(t({16.0, 1.0}), 4), 0.5 / 17.0, 1e-9);
  EXPECT_DOUBLE_EQ(gaussian_bound(t({3.0, 1.0}), 0), 1.0);
  // Fixed-rate scalar codes of Gaussian channels stay above the bound by a known margin: Max's
  // optimal 3-bit quantizer reaches 0.0345 σ² against the bound's 4^-3 = 0.0156 (2.2x); ours,
  // uniform levels with a searched clip, land in the same place at 3 bits per channel.
  at::manual_seed(11);
  const std::vector<double> lambdas = {16, 4, 1, 0.25};
  std::vector<ChannelCurve> curves;
  double energy = 0;
  for (double l : lambdas) {
    const at::Tensor x = at::randn({20000}) * std::sqrt(l);
    curves.push_back(fit_channel(x));
    energy += x.to(at::kDouble).pow(2).sum().item<double>();
  }
  const auto bits = allocate_bits(curves, 12);
  const double ours = total(curves, bits) / energy;
  const double bound = gaussian_bound(t(lambdas), 12);
  EXPECT_GE(ours, bound);
  EXPECT_GT(ours, 2.0 * bound) << ours << " vs bound " << bound;
  EXPECT_LT(ours, 2.8 * bound) << ours << " vs bound " << bound;
}

TEST(Waterfill, EightBitsEverywhereReproducesTheLatent) {
  at::manual_seed(9);
  const at::Tensor lat = at::randn({500, 6}) * at::tensor({5.0f, 2.0f, 1.0f, 0.5f, 0.1f, 0.01f});
  std::vector<ChannelCode> codes;
  for (int64_t j = 0; j < 6; ++j)
    codes.push_back(fit_channel(lat.select(1, j).contiguous()).code[8]);
  const at::Tensor y = quantize_channels(lat, codes);
  const double rel = (y - lat).pow(2).sum().item<double>() / lat.pow(2).sum().item<double>();
  EXPECT_LT(rel, 1e-4);
}

}  // namespace
}  // namespace cskv::trainer
