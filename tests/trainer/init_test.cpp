// Tests of svd / asvd / pca factor initialisation against float64 references computed here
// (Eckart–Young on K = X Wᵀ, on W and on S W), determinism, dtypes and exact error messages.
#include "trainer/init.h"

#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <limits>

#include "tests/support/test_support.h"
#include "trainer/spectrum.h"

namespace cskv::trainer {
namespace {

// Σ_{i≥r} σ_i² / Σ σ_i² of a float64 matrix: the best rank-r relative error (Eckart–Young).
double svd_tail(const at::Tensor& m, int64_t r) {
  const at::Tensor s2 = at::linalg_svdvals(m).square();
  return s2.narrow(0, r, s2.numel() - r).sum().item<double>() / s2.sum().item<double>();
}

double sq(const at::Tensor& t) { return t.square().sum().item<double>(); }

// A layer with LLM-like structure: activations X [n, h] with a few outlier channels (×30), a
// weight [d, h] (HF layout) with power-law singular values, and their Gram / mean |x|.
struct Layer {
  at::Tensor x, weight, gram, abs_mean;
};

Layer make_layer(int64_t n, int64_t h, int64_t d, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  Layer l;
  at::Tensor scale = at::ones({h}, at::kDouble);
  scale.narrow(0, 3, 3).fill_(30.0);
  l.x = at::randn({n, h}, gen, at::kDouble) * scale;
  const at::Tensor q1 = std::get<0>(at::linalg_qr(at::randn({d, d}, gen, at::kDouble)));
  const at::Tensor q2 = std::get<0>(at::linalg_qr(at::randn({h, d}, gen, at::kDouble)));
  const at::Tensor s = at::arange(1, d + 1, at::kDouble).pow(-0.7);
  l.weight = at::matmul(q1 * s.unsqueeze(0), q2.t()).to(at::kFloat);  // [d, h]
  l.gram = at::matmul(l.x.t(), l.x);
  l.abs_mean = l.x.abs().mean(0);
  return l;
}

at::Tensor cache(const Layer& l) { return at::matmul(l.x, l.weight.to(at::kDouble).t()); }

InitResult init(InitMethod m, const Layer& l, int64_t r, double alpha = 0.5) {
  return init_factors(m, l.weight, r, l.gram, l.abs_mean, "layer 3 K", alpha);
}

TEST(Init, PcaAttainsTheEckartYoungOptimumOfTheCache) {
  const Layer l = make_layer(512, 64, 32, 11);
  const at::Tensor k = cache(l);
  for (int64_t r : {1, 4, 8, 20, 31}) {
    const double optimum = svd_tail(k, r);
    const InitResult res = init(InitMethod::kPca, l, r);
    const double err = relative_error(l.x, l.weight, res.A, res.B);
    EXPECT_NEAR(err / optimum, 1.0, 1e-6) << "r " << r;
    EXPECT_NEAR(res.floor / optimum, 1.0, 1e-9) << "r " << r;
    EXPECT_NEAR(err / res.floor, 1.0, 1e-6) << "r " << r;
    EXPECT_NEAR(relative_error_from_gram(l.gram, l.weight, res.A, res.B) / err, 1.0, 1e-9);
    // The reconstruction is the projection of K onto its top-r right singular subspace.
    EXPECT_LE(
        sq(at::matmul(res.B.to(at::kDouble), res.B.to(at::kDouble).t()) - at::eye(r, at::kDouble)),
        1e-12);
  }
  const InitResult full = init(InitMethod::kPca, l, 32);
  EXPECT_EQ(full.floor, 0.0);
  EXPECT_LE(relative_error(l.x, l.weight, full.A, full.B), 1e-12);
}

TEST(Init, SvdIsTheBestRankRApproximationOfTheWeight) {
  const Layer l = make_layer(256, 48, 16, 12);
  const at::Tensor w = l.weight.to(at::kDouble).t();  // [H, D]
  for (int64_t r : {1, 5, 12}) {
    const InitResult res = init(InitMethod::kSvd, l, r);
    const at::Tensor a = res.A.to(at::kDouble), b = res.B.to(at::kDouble);
    EXPECT_NEAR(sq(w - at::matmul(a, b)) / sq(w), svd_tail(w, r), 1e-7) << "r " << r;
    // Σ^½ on both sides: column i of A and row i of B have the same norm √σ_i.
    const at::Tensor sv = at::linalg_svdvals(w).narrow(0, 0, r);
    EXPECT_LE(sq(a.norm(2, {0}) - sv.sqrt()), 1e-10);
    EXPECT_LE(sq(b.norm(2, {1}) - sv.sqrt()), 1e-10);
    EXPECT_NEAR(res.floor, floor_for_rank(res.eigenvalues, r), 0.0);
  }
}

TEST(Init, AsvdIsTheBestRankRApproximationOfTheScaledWeight) {
  const Layer l = make_layer(256, 48, 16, 13);
  const at::Tensor w = l.weight.to(at::kDouble).t();
  for (double alpha : {0.5, 1.0}) {
    const at::Tensor s = l.abs_mean.pow(alpha).unsqueeze(1);  // S = diag(s^α)
    for (int64_t r : {2, 7}) {
      const InitResult res = init(InitMethod::kAsvd, l, r, alpha);
      const at::Tensor approx = at::matmul(res.A.to(at::kDouble), res.B.to(at::kDouble));
      EXPECT_NEAR(sq(s * (w - approx)) / sq(s * w), svd_tail(s * w, r), 1e-7)
          << "alpha " << alpha << " r " << r;
    }
  }
}

TEST(Init, AsvdWithAlphaZeroIsSvd) {
  const Layer l = make_layer(128, 40, 16, 14);
  const InitResult svd = init(InitMethod::kSvd, l, 6);
  const InitResult asvd = init(InitMethod::kAsvd, l, 6, 0.0);
  EXPECT_TRUE(at::equal(svd.A, asvd.A));
  EXPECT_TRUE(at::equal(svd.B, asvd.B));
  EXPECT_EQ(svd.floor, asvd.floor);
}

TEST(Init, PcaBeatsSvdAndAsvdOnOutlierChannels) {
  const Layer l = make_layer(1024, 64, 32, 15);
  for (int64_t r : {4, 8, 16}) {
    const double pca = relative_error(l.x, l.weight, init(InitMethod::kPca, l, r).A,
                                      init(InitMethod::kPca, l, r).B);
    const InitResult s = init(InitMethod::kSvd, l, r);
    const InitResult a = init(InitMethod::kAsvd, l, r);
    const double svd = relative_error(l.x, l.weight, s.A, s.B);
    const double asvd = relative_error(l.x, l.weight, a.A, a.B);
    // Weighting by activation scale helps, but only pca sees the full input covariance.
    EXPECT_GT(svd, 1.1 * pca) << "r " << r;
    EXPECT_GT(asvd, 1.05 * pca) << "r " << r;
    EXPECT_LT(asvd, svd) << "r " << r;
  }
}

TEST(Init, ShapesDtypesSignsAndDeterminism) {
  const Layer l = make_layer(200, 40, 24, 16);
  const at::Tensor eigs = spectrum(kv_covariance(l.weight, l.gram));
  for (InitMethod m : {InitMethod::kSvd, InitMethod::kAsvd, InitMethod::kPca}) {
    const InitResult r1 = init(m, l, 8);
    const InitResult r2 = init(m, l, 8);
    SCOPED_TRACE(init_method_name(m));
    EXPECT_EQ(r1.A.sizes(), (at::IntArrayRef{40, 8}));
    EXPECT_EQ(r1.B.sizes(), (at::IntArrayRef{8, 24}));
    EXPECT_EQ(r1.A.scalar_type(), at::kFloat);
    EXPECT_EQ(r1.B.scalar_type(), at::kFloat);
    EXPECT_EQ(r1.eigenvalues.scalar_type(), at::kDouble);
    EXPECT_TRUE(at::equal(r1.eigenvalues, eigs));
    EXPECT_EQ(r1.floor, floor_for_rank(eigs, 8));
    EXPECT_TRUE(at::equal(r1.A, r2.A));
    EXPECT_TRUE(at::equal(r1.B, r2.B));
    // Every row of B has its largest-magnitude entry positive.
    const at::Tensor idx = r1.B.abs().argmax(1, true);
    EXPECT_GT(r1.B.gather(1, idx).min().item<float>(), 0.0f);
  }
}

TEST(Init, AcceptsHalfPrecisionWeights) {
  Layer l = make_layer(300, 32, 16, 17);
  l.weight = l.weight.to(at::kBFloat16);
  const at::Tensor k = cache(l);  // K of the bf16 weight, exactly as stored
  const InitResult res = init(InitMethod::kPca, l, 5);
  EXPECT_NEAR(relative_error(l.x, l.weight, res.A, res.B) / svd_tail(k, 5), 1.0, 1e-6);
}

TEST(Init, AsvdSurvivesChannelsThatAreAlwaysZero) {
  Layer l = make_layer(200, 32, 16, 18);
  l.x.narrow(1, 10, 2).zero_();
  l.gram = at::matmul(l.x.t(), l.x);
  l.abs_mean = l.x.abs().mean(0);
  const InitResult res = init(InitMethod::kAsvd, l, 6);
  EXPECT_TRUE(at::isfinite(res.A).all().item<bool>());
  const double err = relative_error(l.x, l.weight, res.A, res.B);
  EXPECT_GE(err, res.floor);
  EXPECT_LT(err, 1.0);
  // All-zero activations: the scale is the identity, so asvd equals svd.
  const InitResult svd = init_factors(InitMethod::kSvd, l.weight, 6, l.gram, {}, "");
  const InitResult flat =
      init_factors(InitMethod::kAsvd, l.weight, 6, l.gram, at::zeros({32}, at::kDouble), "");
  EXPECT_TRUE(at::equal(svd.A, flat.A));
}

TEST(Init, RelativeErrorFromTokensAndFromGramAgree) {
  const Layer l = make_layer(100, 12, 6, 19);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(20);
  const at::Tensor a = at::randn({12, 3}, gen, at::kFloat);
  const at::Tensor b = at::randn({3, 6}, gen, at::kFloat);
  const at::Tensor k = cache(l);
  const double ref =
      sq(k - at::matmul(l.x, at::matmul(a.to(at::kDouble), b.to(at::kDouble)))) / sq(k);
  EXPECT_NEAR(relative_error(l.x, l.weight, a, b) / ref, 1.0, 1e-12);
  EXPECT_NEAR(relative_error_from_gram(l.gram, l.weight, a, b) / ref, 1.0, 1e-9);
  const at::Tensor zero_x = at::zeros({4, 12}, at::kDouble);
  EXPECT_EQ(relative_error(zero_x, l.weight, a, b), 0.0);
  EXPECT_EQ(relative_error(at::ones({4, 12}), at::zeros({6, 12}), a, b),
            std::numeric_limits<double>::infinity());
}

TEST(Init, ParsesMethodNames) {
  EXPECT_EQ(parse_init_method("svd"), InitMethod::kSvd);
  EXPECT_EQ(parse_init_method("asvd"), InitMethod::kAsvd);
  EXPECT_EQ(parse_init_method("pca"), InitMethod::kPca);
  EXPECT_STREQ(init_method_name(InitMethod::kAsvd), "asvd");
  EXPECT_CSKV_ERROR(parse_init_method("PCA"), "--init: expected svd|asvd|pca, found 'PCA'");
  EXPECT_CSKV_ERROR(parse_init_method(""), "--init: expected svd|asvd|pca, found ''");
}

TEST(Init, BadInputsHaveExactMessages) {
  const Layer l = make_layer(64, 16, 8, 21);
  const auto pca = InitMethod::kPca;
  EXPECT_CSKV_ERROR(init_factors(pca, l.weight, 9, l.gram, {}, "layer 3 K"),
                    "rank 9 is larger than D = 8 (layer 3 K)");
  EXPECT_CSKV_ERROR(init_factors(pca, l.weight, 0, l.gram, {}, "layer 0 V"),
                    "rank 0 is smaller than 1 (layer 0 V)");
  EXPECT_CSKV_ERROR(init_factors(pca, l.weight, 9, l.gram, {}, ""), "rank 9 is larger than D = 8");
  at::Tensor bad_gram = l.gram.clone();
  bad_gram[2][5] = std::numeric_limits<double>::quiet_NaN();
  bad_gram[5][2] = std::numeric_limits<double>::infinity();
  EXPECT_CSKV_ERROR(init_factors(pca, l.weight, 4, bad_gram, {}, "layer 3 K"),
                    "layer 3 K: the Gram matrix has 2 non-finite values (NaN or Inf)");
  at::Tensor bad_weight = l.weight.clone();
  bad_weight[0][0] = std::numeric_limits<float>::infinity();
  EXPECT_CSKV_ERROR(init_factors(pca, bad_weight, 4, l.gram, {}, "layer 1 V"),
                    "layer 1 V: the weight has 1 non-finite value (NaN or Inf)");
  EXPECT_CSKV_ERROR(init_factors(pca, l.weight, 4, l.gram.to(at::kFloat), {}, "layer 3 K"),
                    "layer 3 K: expected a float64 Gram matrix [16, 16], found Float [16, 16]");
  EXPECT_CSKV_ERROR(init_factors(pca, l.weight, 4, l.gram.narrow(0, 0, 8), {}, "layer 3 K"),
                    "layer 3 K: expected a float64 Gram matrix [16, 16], found Double [8, 16]");
  EXPECT_CSKV_ERROR(init_factors(InitMethod::kAsvd, l.weight, 4, l.gram, {}, "layer 3 K"),
                    "layer 3 K: asvd needs the mean |x| per channel, found none");
  EXPECT_CSKV_ERROR(
      init_factors(InitMethod::kAsvd, l.weight, 4, l.gram, at::ones({15}, at::kDouble), "l2 K"),
      "l2 K: asvd needs the float64 mean |x| per channel [16], found Double [15]");
  at::Tensor negative = l.abs_mean.clone();
  negative[4] = -0.25;
  EXPECT_CSKV_ERROR(init_factors(InitMethod::kAsvd, l.weight, 4, l.gram, negative, "layer 3 K"),
                    "layer 3 K: the mean |x| per channel must be non-negative, found -0.25");
  EXPECT_CSKV_ERROR(init_factors(InitMethod::kAsvd, l.weight, 4, l.gram, l.abs_mean, "", -1.0),
                    "--asvd-alpha: expected a finite value >= 0, found -1");
  EXPECT_CSKV_ERROR(
      relative_error(at::ones({4, 15}), l.weight, at::ones({16, 2}), at::ones({2, 8})),
      "relative_error: expected X [N, 16], found X [4, 15]");
  EXPECT_CSKV_ERROR(
      relative_error(at::ones({4, 16}), l.weight, at::ones({16, 2}), at::ones({3, 8})),
      "relative_error: expected weight [D, H], A [H, r], B [r, D], found weight "
      "[8, 16], A [16, 2], B [3, 8]");
}

}  // namespace
}  // namespace cskv::trainer
