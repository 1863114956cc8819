// The bi-branch compressed cache: the bytes it holds equal trainer::layer_cache_bytes exactly
// (ranks, bits, windows, group sizes, contexts; prefill and token-by-token appends), tokens move
// to the compressed branch a whole window at a time, and its stored latents are the training
// quantizer's values (bitwise with float32 storage, within a rounded step with float16).
#include "eval/compressed_kv_cache.h"

#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <vector>

#include "model/kv_cache.h"
#include "model/llama.h"
#include "model/toy_model.h"
#include "tests/support/test_support.h"
#include "trainer/layer_trainer.h"
#include "trainer/metrics.h"

namespace cskv::eval {
namespace {

// hidden 128, 4 heads / 2 KV heads of 32: D = 64.
model::ModelConfig toy_config() {
  model::ToyModelSpec spec;
  spec.hidden = 128;
  spec.layers = 1;
  spec.heads = 4;
  spec.kv_heads = 2;
  spec.intermediate = 256;
  spec.vocab = 256;
  return model::toy_config(spec);
}

BranchFactors factors(const model::ModelConfig& m, const trainer::TrainConfig& cfg,
                      trainer::KvKind kind, int64_t r, uint64_t seed) {
  at::manual_seed(seed);
  trainer::LayerJob job;
  job.kind = kind;
  job.rank = r;
  return {at::randn({m.hidden_size, r}) / 10.0, at::randn({r, m.kv_dim()}), at::Tensor(),
          trainer::job_quant_config(cfg, m, job)};
}

// Appends `n` random tokens (x, k, v) to the cache.
void append_tokens(model::KvCache& cache, const model::ModelConfig& m, int64_t n) {
  const at::Tensor x = at::randn({n, m.hidden_size});
  const at::Tensor k = at::randn({m.num_key_value_heads, n, m.head_dim});
  const at::Tensor v = at::randn({m.num_key_value_heads, n, m.head_dim});
  cache.append(x, k, v);
}

TEST(EvalCompressedKvCache, MeasuredBytesEqualTheAccountingFormula) {
  const auto m = toy_config();
  struct Bits {
    int k, v;
  };
  struct Ranks {
    int64_t k, v;
  };
  const std::vector<Ranks> ranks = {{8, 16}, {24, 40}, {64, 64}, {6, 10}};
  const std::vector<Bits> bits = {{2, 3}, {4, 8}, {3, 16}, {16, 16}, {8, 2}};
  const std::vector<int64_t> windows = {0, 16, 32, 5};
  // Prefill, then single tokens, blocks and single tokens again.
  const std::vector<int64_t> appends = {10, 1, 1, 1, 21, 1, 60, 1, 1, 1, 1, 1, 157};
  int checked = 0;
  for (const auto& rk : ranks) {
    for (const auto& b : bits) {
      for (const int64_t w : windows) {
        for (const int64_t group : {int64_t{0}, int64_t{2}}) {
          trainer::TrainConfig cfg;
          cfg.k_bits = b.k;
          cfg.v_bits = b.v;
          cfg.window = w;
          cfg.group_size = group;
          CompressedKvCache cache(m, factors(m, cfg, trainer::KvKind::kKey, rk.k, 1),
                                  factors(m, cfg, trainer::KvKind::kValue, rk.v, 2), w);
          int64_t t = 0;
          for (const int64_t n : appends) {
            append_tokens(cache, m, n);
            t += n;
            ASSERT_EQ(cache.size(), t);
            const int64_t compressed = w > 0 ? t / w * w : t;
            ASSERT_EQ(cache.compressed_tokens(), compressed);
            const auto f = trainer::layer_cache_bytes(m, cfg, rk.k, rk.v, t);
            ASSERT_EQ(static_cast<double>(cache.bytes()), f.total())
                << "r_k " << rk.k << " r_v " << rk.v << " bits " << b.k << "/" << b.v << " window "
                << w << " group " << group << " context " << t << ": latent " << f.latent
                << " overhead " << f.overhead << " window " << f.window << " pending " << f.pending;
            ++checked;
          }
        }
      }
    }
  }
  EXPECT_EQ(checked, 4 * 5 * 4 * 2 * 13);
  // A plain fp16 cache holds 2·D·2 bytes per token, with or without reserve().
  model::FullKvCache full(m);
  append_tokens(full, m, 37);
  append_tokens(full, m, 1);
  EXPECT_EQ(static_cast<double>(full.bytes()), trainer::fp16_cache_bytes(m, 38));
  model::FullKvCache reserved(m);
  reserved.reserve(300);
  append_tokens(reserved, m, 299);
  append_tokens(reserved, m, 1);
  EXPECT_EQ(static_cast<double>(reserved.bytes()), trainer::fp16_cache_bytes(m, 300));
}

TEST(EvalCompressedKvCache, StoredLatentsAreTheTrainingQuantizersValues) {
  const auto m = toy_config();
  for (const bool compat : {false, true}) {
    for (const int bits : {2, 3, 4, 8}) {
      trainer::TrainConfig cfg;
      cfg.k_bits = cfg.v_bits = bits;
      cfg.window = 16;
      cfg.quant_compat_cskv = compat;
      const BranchFactors kf = factors(m, cfg, trainer::KvKind::kKey, 16, 3);
      const BranchFactors vf = factors(m, cfg, trainer::KvKind::kValue, 24, 4);
      at::manual_seed(5);
      const at::Tensor x = at::randn({70, m.hidden_size});
      // float32 storage: the dequantized latents are fake_quantize's, bitwise (window by window).
      CompressedKvCache exact(m, kf, vf, 16, at::kFloat);
      exact.append(x.narrow(0, 0, 40), at::zeros({2, 40, 32}), at::zeros({2, 40, 32}));
      for (int64_t i = 40; i < 70; ++i) {
        exact.append(x.narrow(0, i, 1), at::zeros({2, 1, 32}), at::zeros({2, 1, 32}));
      }
      ASSERT_EQ(exact.compressed_tokens(), 64);
      // The latents as the cache computed them: one product per append (a GEMM's rows may round
      // differently with the number of rows, e.g. OpenBLAS on AMD EPYC).
      auto latents = [&](const at::Tensor& A) {
        std::vector<at::Tensor> parts = {at::mm(x.narrow(0, 0, 40), A)};
        for (int64_t i = 40; i < 64; ++i) parts.push_back(at::mm(x.narrow(0, i, 1), A));
        return at::cat(parts, 0);
      };
      const at::Tensor ck = latents(kf.A);
      const at::Tensor cv = latents(vf.A);
      EXPECT_TRUE(
          at::equal(exact.key_latents(), trainer::fake_quantize_with_mask(ck, kf.quant).values))
          << bits << " bits, compat " << compat;
      EXPECT_TRUE(
          at::equal(exact.value_latents(), trainer::fake_quantize_with_mask(cv, vf.quant).values))
          << bits << " bits, compat " << compat;
      // float16 storage: latents, scale and zero rounded to fp16; each value stays within
      // (half a step + the fp16 rounding of the group's ends) of the exact latent.
      CompressedKvCache half(m, kf, vf, 16, at::kHalf);
      half.append(x.narrow(0, 0, 64), at::zeros({2, 64, 32}), at::zeros({2, 64, 32}));
      const at::Tensor ck16 = ck.to(at::kHalf).to(at::kFloat);
      const at::Tensor step = (ck16.view({4, 16, 16}).amax(1) - ck16.view({4, 16, 16}).amin(1)) /
                              static_cast<double>((1 << bits) - 1);
      const at::Tensor bound = step.repeat_interleave(16, 0) * 0.5 + ck16.abs().max() * 1e-3;
      const at::Tensor err = (half.key_latents() - ck16).abs();
      if (!compat) {  // the clamped zero point of the compat quantizer has no such bound
        EXPECT_TRUE((err <= bound).all().item<bool>())
            << bits << " bits: max excess " << (err - bound).max().item<double>();
      }
    }
  }
}

TEST(EvalCompressedKvCache, WindowMovesAWholeWindowAndKeysAreRebuiltWithRope) {
  const auto m = toy_config();
  trainer::TrainConfig cfg;  // 16 bits: the latents are stored as they are
  cfg.window = 8;
  // Exact factors at full rank: A = Wᵀ Q, B = Qᵀ with Q orthogonal, so (x·A)·B + b = x·Wᵀ + b.
  at::manual_seed(9);
  const at::Tensor W = at::randn({m.kv_dim(), m.hidden_size}, at::kDouble);
  const at::Tensor Q = std::get<0>(at::linalg_qr(at::randn({64, 64}, at::kDouble)));
  trainer::LayerJob job;
  job.rank = 64;
  BranchFactors kf{(W.t().mm(Q)).to(at::kFloat), Q.t().to(at::kFloat).contiguous(), at::Tensor(),
                   trainer::job_quant_config(cfg, m, job)};
  job.kind = trainer::KvKind::kValue;
  kf.bias = at::randn({64});  // a k/v_proj bias (Qwen2) is added after the reconstruction
  BranchFactors vf = kf;
  vf.quant = trainer::job_quant_config(cfg, m, job);
  CompressedKvCache cache(m, kf, vf, 8, at::kFloat);
  const at::Tensor x = at::randn({11, m.hidden_size});
  const at::Tensor kv = at::mm(x, W.t().to(at::kFloat)) + kf.bias;  // pre-RoPE keys = values
  const at::Tensor heads = kv.view({11, 2, 32}).transpose(0, 1);
  // RoPE tables of an arbitrary angle pattern: the window stores keys as given (after RoPE).
  at::Tensor cos = at::cos(at::arange(11 * 32, at::kFloat).view({11, 32}) / 50.0);
  at::Tensor sin = at::sin(at::arange(11 * 32, at::kFloat).view({11, 32}) / 50.0);
  const at::Tensor roped = model::apply_rope(heads, cos, sin);
  for (int64_t i = 0; i < 11; ++i) {
    cache.append(x.narrow(0, i, 1), roped.narrow(1, i, 1), heads.narrow(1, i, 1));
    EXPECT_EQ(cache.compressed_tokens(), (i + 1) / 8 * 8) << "after token " << i;
    EXPECT_EQ(cache.window_tokens(), (i + 1) % 8) << "after token " << i;
  }
  const at::Tensor keys = cache.keys(cos, sin);
  const at::Tensor values = cache.values(at::kFloat);
  // Attention weights applied without rebuilding the values give the same output.
  const at::Tensor probs = at::softmax(at::randn({2, 3, 11}), -1);
  EXPECT_TRUE(at::allclose(cache.weighted_values(probs), at::matmul(probs, values), 1e-5, 1e-4));
  ASSERT_EQ(keys.sizes(), (at::IntArrayRef{2, 11, 32}));
  // Compressed tokens: rebuilt from latents and rotated at their positions; window: as stored.
  EXPECT_TRUE(at::allclose(keys, roped, 1e-5, 1e-4))
      << "max |diff| " << (keys - roped).abs().max().item<float>();
  EXPECT_TRUE(at::allclose(values, heads, 1e-5, 1e-4));
  EXPECT_TRUE(at::equal(keys.narrow(1, 8, 3), roped.narrow(1, 8, 3)));
}

}  // namespace
}  // namespace cskv::eval
