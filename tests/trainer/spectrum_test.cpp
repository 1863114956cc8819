// Tests of the K/V cache spectra: W G Wᵀ eigenvalues against squared singular values of K = X Wᵀ
// (float64 SVD), exact energy ranks and floors on hand-made eigenvalues, and input checks.
#include "trainer/spectrum.h"

#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <memory>
#include <vector>

#include "model/config.h"
#include "model/safetensors.h"
#include "model/toy_model.h"
#include "tests/support/test_support.h"

namespace cskv::trainer {
namespace {

at::Tensor eig_tensor(const std::vector<double>& v) {
  return at::tensor(at::ArrayRef<double>(v), at::TensorOptions().dtype(at::kDouble));
}

double rel_diff(const at::Tensor& a, const at::Tensor& b) {
  return ((a - b).norm() / b.norm()).item<double>();
}

// Eigenvalues of C = W G Wᵀ equal the squared singular values of K = X Wᵀ.
void expect_matches_svd(int64_t n, int64_t h, int64_t d, at::ScalarType weight_dtype,
                        uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  // Columns of very different scale, as real activations have (outlier channels).
  const at::Tensor scale = at::exp(2.0 * at::randn({h}, gen, at::kDouble));
  const at::Tensor x = at::randn({n, h}, gen, at::kDouble) * scale;
  const at::Tensor w = at::randn({d, h}, gen, at::kDouble).to(weight_dtype);
  const at::Tensor gram = at::matmul(x.t(), x);

  const at::Tensor eigs = spectrum(kv_covariance(w, gram));
  ASSERT_EQ(eigs.scalar_type(), at::kDouble);
  ASSERT_EQ(eigs.numel(), d);
  const at::Tensor k = at::matmul(x, w.to(at::kDouble).t());  // [n, d]
  at::Tensor ref = at::zeros({d}, at::kDouble);
  const at::Tensor sv = at::linalg_svdvals(k);  // descending, min(n, d) values
  ref.narrow(0, 0, sv.numel()).copy_(sv * sv);
  EXPECT_LE(rel_diff(eigs, ref), 1e-9) << "n " << n << " h " << h << " d " << d;
  // Descending and non-negative, also where C is rank-deficient (n < d).
  EXPECT_TRUE(at::equal(eigs, std::get<0>(eigs.sort(0, /*descending=*/true))));
  EXPECT_GE(eigs.min().item<double>(), 0.0);
  // Largest eigenvalues individually.
  for (int64_t i = 0; i < std::min<int64_t>(4, sv.numel()); ++i) {
    EXPECT_NEAR(eigs[i].item<double>() / ref[i].item<double>(), 1.0, 1e-9) << "index " << i;
  }
}

TEST(Spectrum, EigenvaluesEqualSquaredSingularValuesOfTheCache) {
  expect_matches_svd(300, 48, 16, at::kFloat, 1);
  expect_matches_svd(300, 48, 48, at::kDouble, 2);
  expect_matches_svd(200, 32, 24, at::kBFloat16, 3);
  expect_matches_svd(200, 32, 24, at::kHalf, 4);
}

TEST(Spectrum, RankDeficientCacheHasZeroTail) {
  // 10 tokens, D = 24: at most 10 non-zero eigenvalues; the rest are clamped rounding noise.
  expect_matches_svd(10, 32, 24, at::kFloat, 5);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(6);
  const at::Tensor x = at::randn({10, 32}, gen, at::kDouble);
  const at::Tensor w = at::randn({24, 32}, gen, at::kDouble);
  const at::Tensor eigs = spectrum(kv_covariance(w, at::matmul(x.t(), x)));
  const double top = eigs[0].item<double>();
  EXPECT_GT(eigs[9].item<double>(), 1e-6 * top);
  EXPECT_LE(eigs.narrow(0, 10, 14).max().item<double>(), 1e-12 * top);
  EXPECT_EQ(rank_for_energy(eigs, 1.0), rank_for_energy(eigs.narrow(0, 0, 10).contiguous(), 1.0));
}

TEST(Spectrum, CovarianceIsExactlySymmetricWithTheRightShape) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(7);
  const at::Tensor x = at::randn({50, 20}, gen, at::kDouble);
  const at::Tensor w = at::randn({12, 20}, gen, at::kFloat);
  const at::Tensor c = kv_covariance(w, at::matmul(x.t(), x));
  EXPECT_EQ(c.sizes(), (at::IntArrayRef{12, 12}));
  EXPECT_EQ(c.scalar_type(), at::kDouble);
  EXPECT_TRUE(at::equal(c, c.t()));
  const at::Tensor k = at::matmul(x, w.to(at::kDouble).t());
  EXPECT_LE(rel_diff(c, at::matmul(k.t(), k)), 1e-12);
}

TEST(Spectrum, RankForEnergyIsTheSmallestSufficientRank) {
  // Powers of two: every partial sum and target is exact in binary.
  const at::Tensor e = eig_tensor({8, 4, 2, 1, 1, 0});  // total 16
  EXPECT_EQ(rank_for_energy(e, 0.0), 0);
  EXPECT_EQ(rank_for_energy(e, 0.25), 1);
  EXPECT_EQ(rank_for_energy(e, 0.5), 1);  // 8 >= 8: equality suffices
  EXPECT_EQ(rank_for_energy(e, 0.5000001), 2);
  EXPECT_EQ(rank_for_energy(e, 0.75), 2);
  EXPECT_EQ(rank_for_energy(e, 0.875), 3);
  EXPECT_EQ(rank_for_energy(e, 0.9), 4);
  EXPECT_EQ(rank_for_energy(e, 0.9375), 4);
  EXPECT_EQ(rank_for_energy(e, 0.99), 5);
  EXPECT_EQ(rank_for_energy(e, 1.0), 5);  // the trailing zero is never needed
  EXPECT_EQ(rank_for_energy(eig_tensor({0, 0, 0}), 0.9), 0);
  EXPECT_EQ(rank_for_energy(eig_tensor({}), 0.9), 0);
  // Fractions that are not dyadic: 0.9 of 10 equal eigenvalues is 9 of them.
  EXPECT_EQ(rank_for_energy(at::ones({10}, at::kDouble), 0.9), 9);
  EXPECT_EQ(rank_for_energy(at::ones({10}, at::kDouble), 0.95), 10);
}

TEST(Spectrum, FloorForRankIsTheRelativeTailEnergy) {
  const at::Tensor e = eig_tensor({8, 4, 2, 1, 1, 0});
  EXPECT_EQ(floor_for_rank(e, 0), 1.0);
  EXPECT_EQ(floor_for_rank(e, 1), 0.5);
  EXPECT_EQ(floor_for_rank(e, 2), 0.25);
  EXPECT_EQ(floor_for_rank(e, 3), 0.125);
  EXPECT_EQ(floor_for_rank(e, 4), 0.0625);
  EXPECT_EQ(floor_for_rank(e, 5), 0.0);
  EXPECT_EQ(floor_for_rank(e, 6), 0.0);
  EXPECT_EQ(floor_for_rank(eig_tensor({0, 0}), 1), 0.0);
  // floor(rank_for_energy(f)) <= 1 - f, and one rank less is above it.
  const at::Tensor p = at::pow(at::arange(1, 65, at::kDouble), -1.3).contiguous();
  for (double f : {0.5, 0.9, 0.95, 0.99}) {
    const int64_t r = rank_for_energy(p, f);
    EXPECT_LE(floor_for_rank(p, r), 1.0 - f + 1e-15) << f;
    EXPECT_GT(floor_for_rank(p, r - 1), 1.0 - f) << f;
  }
}

TEST(Spectrum, BadInputsHaveExactMessages) {
  EXPECT_CSKV_ERROR(kv_covariance(at::zeros({4, 8}), at::zeros({6, 6}, at::kDouble)),
                    "kv_covariance: expected weight [D, H] and Gram [H, H], found weight [4, 8] "
                    "and Gram [6, 6]");
  EXPECT_CSKV_ERROR(kv_covariance(at::zeros({4, 6}), at::zeros({6, 6})),
                    "kv_covariance: expected a float64 Gram matrix, found Float");
  EXPECT_CSKV_ERROR(spectrum(at::zeros({3, 4}, at::kDouble)),
                    "spectrum: expected a square matrix, found [3, 4]");
  EXPECT_CSKV_ERROR(spectrum(eig_tensor({1, 0, 0, -1}).reshape({2, 2})),
                    "spectrum: the matrix is not positive semidefinite (eigenvalue -1 against a "
                    "largest of 1)");
  EXPECT_CSKV_ERROR(rank_for_energy(eig_tensor({1, 2}), 0.9),
                    "rank_for_energy: eigenvalues must be descending; element 1 (2) exceeds "
                    "element 0 (1)");
  EXPECT_CSKV_ERROR(floor_for_rank(eig_tensor({1, -0.5}), 1),
                    "floor_for_rank: eigenvalues must be non-negative; element 1 is -0.5");
  EXPECT_CSKV_ERROR(rank_for_energy(eig_tensor({1}), 1.5),
                    "rank_for_energy: fraction must be in [0, 1], found 1.5");
  EXPECT_CSKV_ERROR(rank_for_energy(at::ones({2}, at::kFloat), 0.5),
                    "rank_for_energy: expected contiguous 1-D float64 CPU eigenvalues, found 1-d "
                    "Float tensor");
  EXPECT_CSKV_ERROR(floor_for_rank(eig_tensor({2, 1}), 3),
                    "floor_for_rank: rank must be in [0, 2], found 3");
}

TEST(Spectrum, LayerSpectrumReadsTheProjectionOfTheModel) {
  test::TempDir dir;
  model::ToyModelSpec spec;
  spec.arch = model::Arch::kQwen2;  // has k/v biases, which must not enter
  spec.hidden = 32;
  spec.layers = 2;
  spec.heads = 4;
  spec.kv_heads = 2;
  spec.intermediate = 48;
  spec.vocab = 40;
  spec.dtype = model::StDType::kBF16;
  model::write_toy_model(spec, dir.path());
  const auto st = model::SafetensorsModel::open_dir(dir.path());
  auto gen = at::make_generator<at::CPUGeneratorImpl>(8);
  const at::Tensor x = at::randn({100, 32}, gen, at::kDouble);
  const at::Tensor gram = at::matmul(x.t(), x);
  EXPECT_EQ(kv_weight_name(1, KvKind::kValue), "model.layers.1.self_attn.v_proj.weight");
  EXPECT_STREQ(kv_kind_name(KvKind::kKey), "K");
  for (KvKind kind : {KvKind::kKey, KvKind::kValue}) {
    const at::Tensor w = st.get(kv_weight_name(1, kind));
    const at::Tensor got = layer_spectrum(st, 1, kind, gram);
    EXPECT_TRUE(at::equal(got, spectrum(kv_covariance(w, gram))));
    EXPECT_EQ(got.numel(), 16);
  }
  EXPECT_CSKV_ERROR(layer_spectrum(st, 2, KvKind::kKey, gram),
                    "layer 2: tensor 'model.layers.2.self_attn.k_proj.weight' not found in the "
                    "model");
  EXPECT_CSKV_ERROR(layer_spectrum(st, 0, KvKind::kKey, at::zeros({8, 8}, at::kDouble)),
                    dir.path() +
                        "/model.safetensors: tensor 'model.layers.0.self_attn.k_proj."
                        "weight' has shape [16, 32], the statistics have hidden size 8");
}

}  // namespace
}  // namespace cskv::trainer
