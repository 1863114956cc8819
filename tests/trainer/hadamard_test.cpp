// Tests of the randomized Hadamard rotation: orthogonality for any width, structure, determinism,
// unchanged factor products, and lower 2-/3-bit quantization error on latents with outliers.
#include "trainer/hadamard.h"

#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <string>
#include <vector>

#include "tests/support/test_support.h"
#include "trainer/quantizer.h"

namespace cskv::trainer {
namespace {

double max_abs(const at::Tensor& t) { return t.abs().max().item<double>(); }

TEST(HadamardTest, SylvesterMatrixAndBlocks) {
  const std::vector<double> h4 = {1, 1, 1, 1, 1, -1, 1, -1, 1, 1, -1, -1, 1, -1, -1, 1};
  EXPECT_TRUE(at::equal(sylvester_hadamard(4),
                        at::tensor(at::ArrayRef<double>(h4), at::kDouble).reshape({4, 4})));
  EXPECT_EQ(hadamard_blocks(64), (std::vector<int64_t>{64}));
  EXPECT_EQ(hadamard_blocks(96), (std::vector<int64_t>{64, 32}));
  EXPECT_EQ(hadamard_blocks(100), (std::vector<int64_t>{64, 32, 4}));
  EXPECT_EQ(hadamard_blocks(7), (std::vector<int64_t>{4, 2, 1}));
  EXPECT_EQ(hadamard_blocks(1), (std::vector<int64_t>{1}));
}

TEST(HadamardTest, OrthogonalForAnyWidth) {
  for (const int64_t r : {1, 7, 8, 64, 96, 100, 128}) {
    SCOPED_TRACE(r);
    const at::Tensor R = randomized_hadamard(r, 1234);
    ASSERT_EQ(R.scalar_type(), at::kDouble);
    ASSERT_EQ(R.sizes(), at::IntArrayRef({r, r}));
    const at::Tensor eye = at::eye(r, at::kDouble);
    EXPECT_LE(max_abs(at::mm(R, R.t()) - eye), 1e-12);
    EXPECT_LE(max_abs(at::mm(R.t(), R) - eye), 1e-12);
    const at::Tensor R32 = R.to(at::kFloat);
    EXPECT_LE(max_abs(at::mm(R32, R32.t()) - eye.to(at::kFloat)), 1e-6);
  }
}

// For a power of two, R = H_r·diag(s)/√r: every column is ± the Hadamard column.
TEST(HadamardTest, PowerOfTwoIsSignedSylvester) {
  const int64_t r = 64;
  const at::Tensor R = randomized_hadamard(r, 42);
  const at::Tensor ratio = R * std::sqrt(static_cast<double>(r)) / sylvester_hadamard(r);
  const at::Tensor signs = ratio[0];
  EXPECT_TRUE(at::equal(signs.abs(), at::ones({r}, at::kDouble)));
  EXPECT_LE(max_abs(ratio - signs.unsqueeze(0)), 1e-15);
  // The signs are random: both occur.
  EXPECT_GT((signs > 0).sum().item<int64_t>(), 10);
  EXPECT_GT((signs < 0).sum().item<int64_t>(), 10);
}

// r = 96: rows with 64 entries of magnitude 1/8 and rows with 32 of 1/√32, in permuted order.
TEST(HadamardTest, NonPowerOfTwoIsPermutedBlockDiagonal) {
  const at::Tensor R = randomized_hadamard(96, 7);
  const at::Tensor nonzero = (R != 0).sum(1);
  int64_t big = 0, big_in_first_64 = 0;
  for (int64_t i = 0; i < 96; ++i) {
    const int64_t k = nonzero[i].item<int64_t>();
    ASSERT_TRUE(k == 64 || k == 32) << "row " << i << " has " << k;
    const at::Tensor row = R[i].index({R[i] != 0}).abs();
    EXPECT_LE(max_abs(row - 1.0 / std::sqrt(static_cast<double>(k))), 1e-15);
    if (k == 64) {
      ++big;
      if (i < 64) ++big_in_first_64;
    }
  }
  EXPECT_EQ(big, 64);
  // The permutation spreads the first (largest, for a pca latent) channels over both blocks.
  EXPECT_LT(big_in_first_64, 56);
  EXPECT_GT(big_in_first_64, 30);
}

TEST(HadamardTest, DeterministicInSeed) {
  for (const int64_t r : {64, 100}) {
    EXPECT_TRUE(at::equal(randomized_hadamard(r, 99), randomized_hadamard(r, 99)));
    EXPECT_FALSE(at::equal(randomized_hadamard(r, 99), randomized_hadamard(r, 100)));
  }
  // Pinned values: the generator is our own SplitMix64 (seed 0: 0xe220a8397b1dcdaf,
  // 0x6e789e6aa1b965f4, 0x06c45d188009454f, 0xf88bb8a8724c81ec → signs from the top bit
  // −, +, +, −), so these never change with the platform or LibTorch.
  const std::vector<double> r4 = {-1, 1, 1, -1, -1, -1, 1, 1, -1, 1, -1, 1, -1, -1, -1, -1};
  EXPECT_TRUE(at::equal(randomized_hadamard(4, 0) * 2.0,
                        at::tensor(at::ArrayRef<double>(r4), at::kDouble).reshape({4, 4})));
  // r = 3: blocks {2, 1} with signs (−, +), (+), then Fisher–Yates gives row order (0, 2, 1).
  const double a = 1.0 / std::sqrt(2.0);
  const std::vector<double> r3 = {-a, a, 0, 0, 0, 1, -a, -a, 0};
  EXPECT_TRUE(at::equal(randomized_hadamard(3, 0),
                        at::tensor(at::ArrayRef<double>(r3), at::kDouble).reshape({3, 3})));
}

TEST(HadamardTest, RotatedFactorsKeepTheProduct) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
  for (const int64_t r : {64, 96}) {
    const at::Tensor A = at::randn({32, r}, gen, at::kFloat);
    const at::Tensor B = at::randn({r, 48}, gen, at::kFloat);
    const RotatedFactors f = rotate_factors(A, B, randomized_hadamard(r, 5));
    ASSERT_EQ(f.A.scalar_type(), at::kFloat);
    ASSERT_EQ(f.B.scalar_type(), at::kFloat);
    const at::Tensor ab = at::mm(A.to(at::kDouble), B.to(at::kDouble));
    const at::Tensor rot = at::mm(f.A.to(at::kDouble), f.B.to(at::kDouble));
    EXPECT_LE(((rot - ab).norm() / ab.norm()).item<double>(), 1e-6) << r;
    EXPECT_GT(max_abs(f.A - A), 0.1);  // it did rotate
  }
}

// A latent with a few outlier channels (×6..×12; for r = 96 also pca-like decreasing channel
// scales): per-token quantization error relative to ‖c‖² is lower after the rotation. (With far
// stronger outliers, ×25, the 2-bit error can rise instead: min–max groups already hold an outlier
// exactly, and spreading its energy over every channel costs more than it saves.)
double quant_error(const at::Tensor& c, const QuantConfig& cfg, const at::Tensor& R) {
  const at::Tensor Rf = R.to(at::kFloat);
  const at::Tensor back = at::mm(fake_quantize(at::mm(c, Rf), cfg), Rf.t());
  return ((back - c).pow(2).sum() / c.pow(2).sum()).item<double>();
}

TEST(HadamardTest, RotationLowersLowBitErrorWithOutliers) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(17);
  for (const int64_t r : {64, 96}) {
    at::Tensor c = at::randn({512, r}, gen, at::kFloat);
    if (r == 96) c = c * at::exp(-at::arange(r, at::kFloat) / 32.0);  // sorted by scale
    c.select(1, 3).mul_(10);
    c.select(1, 17).mul_(-8);
    c.select(1, 40).mul_(12);
    c.select(1, r - 5).mul_(6);
    for (const int bits : {2, 3}) {
      QuantConfig cfg;
      cfg.bits = bits;
      cfg.group_size = r / 4;  // n_kv = 4
      const double plain = quant_error(c, cfg, at::eye(r, at::kDouble));
      const double rotated = quant_error(c, cfg, randomized_hadamard(r, 2024));
      SCOPED_TRACE(::testing::Message() << "r " << r << " bits " << bits << " plain " << plain
                                        << " rotated " << rotated);
      RecordProperty("r" + std::to_string(r) + "_bits" + std::to_string(bits) + "_plain_rotated",
                     std::to_string(plain) + " " + std::to_string(rotated));
      EXPECT_LT(rotated, 0.75 * plain);
    }
  }
}

TEST(HadamardTest, BadInputs) {
  EXPECT_CSKV_ERROR(randomized_hadamard(0, 1),
                    "hadamard rotation: expected a latent width >= 1, found 0");
  EXPECT_CSKV_ERROR(rotate_factors(at::zeros({4, 8}), at::zeros({6, 3}), randomized_hadamard(8, 1)),
                    "rotate_factors: expected A [H, r], B [r, D] and R [r, r], found A [4, 8], B "
                    "[6, 3], R [8, 8]");
}

}  // namespace
}  // namespace cskv::trainer
