// Tests of the latent fake quantizer: hand-computed codes for every bit width and grouping, ties,
// the compat mode's collapse and gradient mask, the straight-through gradient, and input checks.
#include "trainer/quantizer.h"

#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "tests/support/test_support.h"

namespace cskv::trainer {
namespace {

using Rows = std::vector<std::vector<double>>;

at::Tensor mat(const Rows& rows, at::ScalarType dtype = at::kFloat) {
  std::vector<double> flat;
  for (const auto& r : rows) flat.insert(flat.end(), r.begin(), r.end());
  return at::tensor(at::ArrayRef<double>(flat), at::kDouble)
      .reshape({static_cast<int64_t>(rows.size()), static_cast<int64_t>(rows[0].size())})
      .to(dtype);
}

QuantConfig per_token(int bits, int64_t group_size, bool compat = false) {
  QuantConfig q;
  q.bits = bits;
  q.group_size = group_size;
  q.compat_cskv = compat;
  return q;
}

QuantConfig per_channel(int bits, int64_t window, bool compat = false) {
  QuantConfig q;
  q.bits = bits;
  q.window = window;
  q.per_channel = true;
  q.compat_cskv = compat;
  return q;
}

// Hand-computed: every scale is a power of two, so every intermediate is exact in float32.
struct HandCase {
  const char* name;
  QuantConfig cfg;
  Rows input, codes, scale, offset, xhat;
};

std::vector<HandCase> hand_cases() {
  return {
      // 2 bits, M = 3. Group (0, 0.5, 1.5, 3): scale 1, ties 0.5 → 0 and 1.5 → 2 (half to even).
      // Constant group (4, 4, 4, 4): scale 0, codes 0, x̂ = x. (10, 13, 11.5, 12.5): ties 1.5 → 2,
      // 2.5 → 2.
      {"2 bits per token",
       per_token(2, 4),
       {{0, 0.5, 1.5, 3, -1, 2, 0.25, -0.5}, {4, 4, 4, 4, 10, 13, 11.5, 12.5}},
       {{0, 0, 2, 3, 0, 3, 1, 0}, {0, 0, 0, 0, 0, 3, 2, 2}},
       {{1, 1}, {0, 1}},
       {{0, -1}, {4, 10}},
       {{0, 0, 2, 3, -1, 2, 0, -1}, {4, 4, 4, 4, 10, 13, 12, 12}}},
      // 3 bits, M = 7, range 3.5 → scale 0.5: (x − mn)/0.5 = (0, 1.5, 5, 7) and (0, 1.5, 2.5, 7).
      {"3 bits per token",
       per_token(3, 4),
       {{-2, -1.25, 0.5, 1.5, 5, 5.75, 6.25, 8.5}},
       {{0, 2, 5, 7, 0, 2, 2, 7}},
       {{0.5, 0.5}},
       {{-2, 5}},
       {{-2, -1, 0.5, 1.5, 5, 6, 6, 8.5}}},
      // 4 bits, M = 15, range 3.75 → scale 0.25: (0, 15, 0.5, 1.5) and (0, 15, 7.5, 12.5).
      {"4 bits per token",
       per_token(4, 4),
       {{0, 3.75, 0.125, 0.375, -3.75, 0, -1.875, -0.625}},
       {{0, 15, 0, 2, 0, 15, 8, 12}},
       {{0.25, 0.25}},
       {{0, -3.75}},
       {{0, 3.75, 0, 0.5, -3.75, 0, -1.75, -0.75}}},
      // 8 bits, M = 255, range 255/64 → scale 1/64: (0, 255, 100.5, 37.5).
      {"8 bits per token",
       per_token(8, 4),
       {{1, 4.984375, 2.5703125, 1.5859375}},
       {{0, 255, 100, 38}},
       {{0.015625}},
       {{1}},
       {{1, 4.984375, 2.5625, 1.59375}}},
      // 2 bits, per channel, windows of 3 tokens over 8 tokens: (0..2), (3..5) and the partial
      // window (6, 7) on its own. Channel 0: (0, 3, 1.5) scale 1; constant (2, 2, 2); (−1, 0.5)
      // scale 0.5. Channel 1: (1, −2, 0.5) scale 1, tie 2.5 → 2; (0, 6, 1.5) scale 2, 0.75 → 1;
      // (4, 4.75) scale 0.25.
      {"2 bits per channel, window 3",
       per_channel(2, 3),
       {{0, 1}, {3, -2}, {1.5, 0.5}, {2, 0}, {2, 6}, {2, 1.5}, {-1, 4}, {0.5, 4.75}},
       {{0, 3}, {3, 0}, {2, 2}, {0, 0}, {0, 3}, {0, 1}, {0, 0}, {3, 3}},
       {{1, 1}, {0, 2}, {0.5, 0.25}},
       {{0, -2}, {2, 0}, {-1, 4}},
       {{0, 1}, {3, -2}, {2, 0}, {2, 0}, {2, 6}, {2, 2}, {-1, 4}, {0.5, 4.75}}},
      // 4 bits per channel, window 2 over 3 tokens (partial window of one token: constant, exact).
      // Channel 0: (−1, 2.75) scale 0.25, channel 1: (0.5, 0.5) constant.
      {"4 bits per channel, partial window of one token",
       per_channel(4, 2),
       {{-1, 0.5}, {2.75, 0.5}, {7, -3}},
       {{0, 0}, {15, 0}, {0, 0}},
       {{0.25, 0}, {0, 0}},
       {{-1, 0.5}, {7, -3}},
       {{-1, 0.5}, {2.75, 0.5}, {7, -3}}},
      // compat, 2 bits: (−1, 0, 0.5, 2): scale 1, zero round(1) = 1, q = round(x) + 1 = (0, 1, 1,
      // 3)
      // (round(0.5) = 0), x̂ = q − 1 = (−1, 0, 0, 2) where the default gives (−1, 0, 1, 2).
      // (−0.25, 2.75, 1, 1): scale 1, zero clamp(−round(−0.25)) = 0: −0.25 is clipped up to 0.
      {"compat 2 bits straddling zero",
       per_token(2, 4, true),
       {{-1, 0, 0.5, 2, -0.25, 2.75, 1, 1}},
       {{0, 1, 1, 3, 0, 3, 1, 1}},
       {{1, 1}},
       {{1, 0}},
       {{-1, 0, 0, 2, 0, 3, 1, 1}}},
  };
}

TEST(QuantizerTest, HandComputedCodesScalesAndValues) {
  for (const HandCase& hc : hand_cases()) {
    SCOPED_TRACE(hc.name);
    const at::Tensor c = mat(hc.input);
    const QuantizedCodes q = quantize_codes(c, hc.cfg);
    ASSERT_EQ(q.codes.scalar_type(), at::kByte);
    EXPECT_TRUE(at::equal(q.codes, mat(hc.codes, at::kByte))) << q.codes;
    EXPECT_TRUE(at::equal(q.scale, mat(hc.scale))) << q.scale;
    EXPECT_TRUE(at::equal(q.offset, mat(hc.offset))) << q.offset;
    const at::Tensor xhat = fake_quantize_with_mask(c, hc.cfg).values;
    EXPECT_TRUE(at::equal(xhat, mat(hc.xhat))) << xhat;
    EXPECT_TRUE(at::equal(dequantize(q.codes, q.scale, q.offset, hc.cfg), xhat));
    EXPECT_TRUE(at::equal(fake_quantize(c, hc.cfg), xhat));
  }
}

TEST(QuantizerTest, AtenRoundIsHalfToEven) {
  const at::Tensor r = at::round(mat({{0.5, 1.5, 2.5, 3.5, -0.5, -1.5, -2.5, 254.5}}));
  EXPECT_TRUE(at::equal(r, mat({{0, 2, 2, 4, 0, -2, -2, 254}})));
}

TEST(QuantizerTest, SixteenBitsIsTheIdentity) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
  const at::Tensor c = at::randn({5, 12}, gen, at::kFloat) * 1e3;
  for (const QuantConfig& cfg : {per_token(16, 4), per_channel(16, 2)}) {
    const QuantizedLatent q = fake_quantize_with_mask(c, cfg);
    EXPECT_TRUE(at::equal(q.values, c));
    EXPECT_FALSE(q.mask.defined());
    EXPECT_TRUE(at::equal(fake_quantize(c, cfg), c));
  }
}

// A group in [5, 6] does not straddle zero: the default keeps its resolution, compat collapses it.
TEST(QuantizerTest, GroupAwayFromZeroKeptByDefaultCollapsedByCompat) {
  const at::Tensor pos = mat({{5, 5.25, 5.5, 6, 5.75, 5.125, 5.875, 5.625}});
  const at::Tensor neg = -pos;
  for (const int bits : {2, 3, 4, 8}) {
    SCOPED_TRACE(bits);
    const double m = std::pow(2.0, bits) - 1;
    const float scale = 1.0f / static_cast<float>(m);  // (6 − 5)/M, as computed in float32
    for (const at::Tensor& c : {pos, neg}) {
      const at::Tensor err = (fake_quantize_with_mask(c, per_token(bits, 8)).values - c).abs();
      EXPECT_LE(err.max().item<float>(), scale / 2 * (1 + 1e-5f));
    }
    // compat: zero = clamp(−round(5/scale), 0, M) = 0, every code clamps to M: x̂ = M·scale ≈ 1;
    // for (−6, −5): zero clamps to M, every code to 0: x̂ = −M·scale ≈ −1.
    const float collapsed = static_cast<float>(m) * scale;
    EXPECT_NEAR(collapsed, 1.0f, 1e-6f);
    const QuantizedLatent p = fake_quantize_with_mask(pos, per_token(bits, 8, true));
    EXPECT_TRUE(at::equal(p.values, at::full_like(pos, collapsed))) << p.values;
    EXPECT_TRUE(at::equal(p.mask, at::zeros_like(pos)));  // everything is at or beyond the top
    const QuantizedLatent n = fake_quantize_with_mask(neg, per_token(bits, 8, true));
    EXPECT_TRUE(at::equal(n.values, at::full_like(neg, -collapsed))) << n.values;
    EXPECT_TRUE(at::equal(n.mask, at::zeros_like(neg)));
    const QuantizedCodes pc = quantize_codes(pos, per_token(bits, 8, true));
    EXPECT_TRUE(at::equal(pc.codes, at::full_like(pc.codes, static_cast<int64_t>(m))));
    EXPECT_EQ(pc.offset.item<float>(), 0.0f);
    const QuantizedCodes nc = quantize_codes(neg, per_token(bits, 8, true));
    EXPECT_TRUE(at::equal(nc.codes, at::zeros_like(nc.codes)));
    EXPECT_EQ(nc.offset.item<float>(), static_cast<float>(m));
  }
}

TEST(QuantizerTest, ConstantGroupExactByDefaultAndAsReferenceUnderCompat) {
  const at::Tensor c = mat({{5, 5, 5, 5, 0, 0, 0, 0, -2.5, -2.5, -2.5, -2.5}});
  for (const int bits : {2, 3, 4, 8}) {
    SCOPED_TRACE(bits);
    const QuantizedLatent d = fake_quantize_with_mask(c, per_token(bits, 4));
    EXPECT_TRUE(at::equal(d.values, c));
    EXPECT_FALSE(d.values.isnan().any().item<bool>());
    const QuantizedLatent w = fake_quantize_with_mask(c.t().contiguous(), per_channel(bits, 4));
    EXPECT_TRUE(at::equal(w.values, c.t()));
    // compat: scale = 1e-5/M (the reference's clamp), x̂ = ±M·scale ≈ ±1e-5, and 0 stays 0.
    const float m = static_cast<float>(std::pow(2.0, bits) - 1);
    const float tiny = m * (1e-5f / m);
    const at::Tensor got = fake_quantize_with_mask(c, per_token(bits, 4, true)).values;
    EXPECT_TRUE(
        at::equal(got, mat({{tiny, tiny, tiny, tiny, 0, 0, 0, 0, -tiny, -tiny, -tiny, -tiny}})))
        << got;
  }
}

// The default straight-through gradient is the identity: d(Σ w ⊙ Q(c))/dc = w exactly.
TEST(QuantizerTest, StraightThroughGradientIsIdentityByDefault) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(7);
  for (const int bits : {2, 3, 4, 8, 16}) {
    for (const QuantConfig& cfg : {per_token(bits, 4), per_channel(bits, 3)}) {
      SCOPED_TRACE(bits);
      const at::Tensor c = (at::randn({7, 12}, gen, at::kFloat) * 3).requires_grad_(true);
      const at::Tensor w = at::randn({7, 12}, gen, at::kFloat);
      const at::Tensor out = fake_quantize(c, cfg);
      EXPECT_TRUE(at::equal(out.detach(), fake_quantize_with_mask(c.detach(), cfg).values));
      (out * w).sum().backward();
      ASSERT_TRUE(c.grad().defined());
      EXPECT_TRUE(at::equal(c.grad(), w));
    }
  }
}

// Through a factor: c = X A, L = Σ w ⊙ Q(c) gives dL/dA = Xᵀ w (the quantizer is transparent).
TEST(QuantizerTest, StraightThroughGradientReachesTheFactor) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(8);
  const at::Tensor x = at::randn({16, 6}, gen, at::kDouble);
  const at::Tensor a = at::randn({6, 8}, gen, at::kDouble).requires_grad_(true);
  const at::Tensor w = at::randn({16, 8}, gen, at::kDouble);
  (fake_quantize(at::mm(x, a), per_channel(3, 5)) * w).sum().backward();
  EXPECT_LE((a.grad() - at::mm(x.t(), w)).abs().max().item<double>(), 1e-12);
}

// compat: the reference's backward zeroes the gradient at and beyond the clip bounds
// −zero·scale and (M − zero)·scale, which for (−1, 0, 0.5, 2) at 2 bits are −1 and 2 themselves.
TEST(QuantizerTest, CompatGradientMaskedWhereClipped) {
  const at::Tensor c = mat({{-1, 0, 0.5, 2, -0.25, 2.75, 1, 1}}).requires_grad_(true);
  const at::Tensor w = mat({{1, 2, 3, 4, 5, 6, 7, 8}});
  const QuantConfig cfg = per_token(2, 4, true);
  const at::Tensor mask = mat({{0, 1, 1, 0, 0, 1, 1, 1}});
  EXPECT_TRUE(at::equal(fake_quantize_with_mask(c.detach(), cfg).mask, mask));
  (fake_quantize(c, cfg) * w).sum().backward();
  EXPECT_TRUE(at::equal(c.grad(), mat({{0, 2, 3, 0, 0, 6, 7, 8}}))) << c.grad();
}

// Float64 reference written out element by element, against the ATen implementation.
at::Tensor reference(const at::Tensor& c, const QuantConfig& cfg) {
  const at::Tensor x = c.to(at::kDouble).contiguous();
  at::Tensor out = at::empty_like(x);
  const int64_t n = x.size(0), r = x.size(1);
  const double m = std::pow(2.0, cfg.bits) - 1;
  const auto* px = x.data_ptr<double>();
  auto* po = out.data_ptr<double>();
  auto quantize_group = [&](const std::vector<int64_t>& idx) {
    double mn = px[idx[0]], mx = px[idx[0]];
    for (const int64_t i : idx) mn = std::min(mn, px[i]), mx = std::max(mx, px[i]);
    for (const int64_t i : idx) {
      if (!cfg.compat_cskv) {
        const double s = (mx - mn) / m;
        const double q = std::clamp(std::nearbyint((px[i] - mn) / (s > 0 ? s : 1.0)), 0.0, m);
        po[i] = q * s + mn;
      } else {
        const double s = std::max(mx - mn, 1e-5) / m;
        const double z = std::clamp(-std::nearbyint(mn / s), 0.0, m);
        const double q = std::clamp(std::nearbyint(px[i] / s) + z, 0.0, m);
        po[i] = (q - z) * s;
      }
    }
  };
  if (uses_channel_windows(cfg)) {
    for (int64_t ch = 0; ch < r; ++ch) {
      for (int64_t t0 = 0; t0 < n; t0 += cfg.window) {
        std::vector<int64_t> idx;
        for (int64_t t = t0; t < std::min(n, t0 + cfg.window); ++t) idx.push_back(t * r + ch);
        quantize_group(idx);
      }
    }
  } else {
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t g0 = 0; g0 < r; g0 += cfg.group_size) {
        std::vector<int64_t> idx;
        for (int64_t ch = g0; ch < g0 + cfg.group_size; ++ch) idx.push_back(t * r + ch);
        quantize_group(idx);
      }
    }
  }
  return out;
}

TEST(QuantizerTest, MatchesElementwiseFloat64Reference) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(11);
  // Channels of different scale and offset, some groups entirely positive.
  const at::Tensor c =
      at::randn({37, 24}, gen, at::kDouble) * at::linspace(0.1, 4, 24) + at::linspace(-3, 6, 24);
  for (const bool compat : {false, true}) {
    for (const int bits : {2, 3, 4, 8}) {
      for (const QuantConfig& cfg :
           {per_token(bits, 6, compat), per_token(bits, 24, compat), per_channel(bits, 8, compat),
            per_channel(bits, 37, compat), per_channel(bits, 64, compat)}) {
        SCOPED_TRACE(::testing::Message()
                     << "bits " << bits << " compat " << compat << " window " << cfg.window);
        EXPECT_TRUE(at::equal(fake_quantize_with_mask(c, cfg).values, reference(c, cfg)));
        const QuantizedCodes q = quantize_codes(c, cfg);
        EXPECT_LE(q.codes.max().item<int>(), static_cast<int>(std::pow(2, bits) - 1));
        EXPECT_TRUE(at::equal(dequantize(q.codes, q.scale, q.offset, cfg),
                              fake_quantize_with_mask(c, cfg).values));
      }
    }
  }
}

TEST(QuantizerTest, DefaultErrorIsAtMostHalfAStep) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
  const at::Tensor c = at::randn({64, 32}, gen, at::kDouble) * 2 + 7;
  for (const int bits : {2, 3, 4, 8}) {
    const QuantConfig cfg = per_token(bits, 8);
    const QuantizedCodes q = quantize_codes(c, cfg);
    const at::Tensor half_step = q.scale.repeat_interleave(8, -1) / 2;
    const at::Tensor err = (fake_quantize_with_mask(c, cfg).values - c).abs();
    EXPECT_TRUE((err <= half_step * (1 + 1e-12)).all().item<bool>()) << bits;
    // float32: the same bound up to float32 rounding of values around 7.
    const at::Tensor c32 = c.to(at::kFloat);
    const QuantizedCodes q32 = quantize_codes(c32, cfg);
    const at::Tensor err32 = (fake_quantize_with_mask(c32, cfg).values - c32).abs();
    EXPECT_TRUE((err32 <= q32.scale.repeat_interleave(8, -1) / 2 + 1e-5).all().item<bool>())
        << bits;
  }
}

// Windows run along dim −2 of [..., tokens, r] and never cross a sequence.
TEST(QuantizerTest, WindowsStayInsideEachSequence) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(9);
  const at::Tensor c = at::randn({3, 10, 8}, gen, at::kFloat);
  const QuantConfig cfg = per_channel(3, 4);
  const at::Tensor all = fake_quantize_with_mask(c, cfg).values;
  const QuantizedCodes q = quantize_codes(c, cfg);
  EXPECT_EQ(q.scale.sizes(), at::IntArrayRef({3, 3, 8}));
  for (int64_t s = 0; s < 3; ++s) {
    EXPECT_TRUE(at::equal(all[s], fake_quantize_with_mask(c[s], cfg).values));
  }
  const QuantizedCodes t = quantize_codes(c, per_token(3, 2));
  EXPECT_EQ(t.scale.sizes(), at::IntArrayRef({3, 10, 4}));
}

TEST(QuantizerTest, BytesPerToken) {
  EXPECT_DOUBLE_EQ(quant_code_bytes_per_token(96, per_token(4, 12)), 48.0);
  EXPECT_DOUBLE_EQ(quant_overhead_bytes_per_token(96, per_token(4, 12)), 32.0);  // 8 groups · 4 B
  EXPECT_DOUBLE_EQ(quant_code_bytes_per_token(96, per_channel(3, 32)), 36.0);
  EXPECT_DOUBLE_EQ(quant_overhead_bytes_per_token(96, per_channel(3, 32)), 12.0);  // 96·4 B / 32
  EXPECT_DOUBLE_EQ(quant_code_bytes_per_token(96, per_token(16, 12)), 192.0);
  EXPECT_DOUBLE_EQ(quant_overhead_bytes_per_token(96, per_token(16, 12)), 0.0);
}

TEST(QuantizerTest, BadConfigurationsHaveExactMessages) {
  EXPECT_CSKV_ERROR(check_quant_bits(5, "--k-bits"),
                    "--k-bits: expected one of 2, 3, 4, 8, 16, found 5");
  EXPECT_CSKV_ERROR(check_quant_bits(1, "--v-bits"),
                    "--v-bits: expected one of 2, 3, 4, 8, 16, found 1");
  EXPECT_CSKV_ERROR(validate_quant_config(per_token(4, 40), 96, "layer 3 V"),
                    "layer 3 V: --group-size: expected a divisor of the latent width 96, found 40");
  EXPECT_CSKV_ERROR(validate_quant_config(per_token(4, 0), 96),
                    "--group-size: expected a divisor of the latent width 96, found 0");
  EXPECT_CSKV_ERROR(validate_quant_config(per_token(5, 12), 96, "layer 3 K"),
                    "layer 3 K: quantization bits: expected one of 2, 3, 4, 8, 16, found 5");
  QuantConfig bad_window = per_channel(4, -1);
  EXPECT_CSKV_ERROR(validate_quant_config(bad_window, 96, "layer 0 K"),
                    "layer 0 K: --window: expected a number of tokens >= 0, found -1");
  // Per-channel windows do not use the group size; per token it must divide r.
  validate_quant_config(per_channel(4, 32), 96, "layer 0 K");
  const at::Tensor c = at::zeros({4, 12});
  EXPECT_CSKV_ERROR(fake_quantize(c, per_token(4, 5)),
                    "--group-size: expected a divisor of the latent width 12, found 5");
  EXPECT_CSKV_ERROR(fake_quantize(c, per_token(6, 4)),
                    "quantization bits: expected one of 2, 3, 4, 8, 16, found 6");
  try {
    check_quant_bits(5, "--k-bits");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUsage);
  }
}

}  // namespace
}  // namespace cskv::trainer
