// run_training / plan_jobs on a captured toy model: the written factors (HF Linear layout) and
// metrics match the returned states, the budget plan keeps its width, cache bytes by hand; and
// --quant waterfill end to end: budgets kept, codes through rank checkpoints, the compressor file
// and eval's cache bit for bit, any number of ranks, the accounted bytes, sink tokens.
#include "pipeline/train.h"

#include "checkpoint/compressor_file.h"

#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "checkpoint/rank_checkpoint.h"
#include "data/layer_stats.h"
#include "eval/compressed_kv_cache.h"
#include "eval/compressor.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/toy_model.h"
#include "tests/pipeline/capture_test_util.h"
#include "tests/support/test_support.h"
#include "tests/support/thread_communicator.h"
#include "trainer/metrics.h"
#include "trainer/rank_allocation.h"
#include "trainer/spectrum.h"

namespace cskv::trainer {
namespace {

using namespace cskv::pipeline;  // the stage under test

// Toy model (hidden 128, 2 layers, n_kv 2 × hd 32 → D = 64) and a small capture, built once.
class TrainRunTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir();
    model::ToyModelSpec spec = data::capture_testing::trainer_toy_spec(11);
    model::write_toy_model(spec, model_dir());
    model::write_tokens(*dir_ / "tokens.bin", model::toy_tokens(512, 10000, 2), 512,
                        model::TokenDType::kU16);
    data::capture_testing::capture_fixture(model_dir(), *dir_ / "tokens.bin", 16, 64, 4, 4,
                                           acts_dir());
  }
  static void TearDownTestSuite() { delete dir_; }

  static std::string model_dir() { return *dir_ / "model"; }
  static std::string acts_dir() { return *dir_ / "acts"; }
  static TrainRunOptions options(const std::string& ckpt) {
    TrainRunOptions o;
    o.model_dir = model_dir();
    o.acts_dir = acts_dir();
    o.ckpt_dir = ckpt;
    o.cfg.k_bits = 4;
    o.cfg.v_bits = 4;
    o.cfg.lr = 1e-3;
    o.cfg.batch_tokens = 256;
    o.cfg.steps = 6;
    o.k_density = 0.25;
    o.v_density = 0.5;
    return o;
  }

  static test::TempDir* dir_;
};

test::TempDir* TrainRunTest::dir_ = nullptr;

TEST_F(TrainRunTest, WritesTheStatesFactorsAndMetrics) {
  test::TempDir ckpt;
  const TrainRunOptions o = options(ckpt.path());
  const TrainRunResult res = run_training(o);
  ASSERT_EQ(res.states.size(), 4u);
  ASSERT_EQ(res.metrics.jobs.size(), 4u);
  EXPECT_EQ(res.factors_path, ckpt / "compressor.safetensors");

  const auto file = model::SafetensorsFile::open(res.factors_path);
  const auto config = model::load_config(model_dir());
  EXPECT_EQ(file->header().metadata.at("model_config_hash"), config.hash());
  EXPECT_EQ(file->header().metadata.at("format"), "cskv-1");
  EXPECT_EQ(file->header().tensors.size(), 8u);
  const auto json = nlohmann::json::parse(test::read_file(ckpt / "metrics.json"));
  ASSERT_EQ(json["jobs"].size(), 4u);
  const int64_t want_rank[2] = {16, 32};  // floor(0.25·32)·2, floor(0.5·32)·2
  for (size_t i = 0; i < 4; ++i) {
    const JobState& s = res.states[i];
    const JobMetrics& m = res.metrics.jobs[i];
    EXPECT_EQ(s.job.layer, static_cast<int64_t>(i / 2));
    EXPECT_EQ(s.job.kind, i % 2 == 0 ? KvKind::kKey : KvKind::kValue);
    EXPECT_EQ(s.job.rank, want_rank[i % 2]);
    EXPECT_EQ(s.step, 6);
    // HF Linear layout: a = Aᵀ [r, H], b = Bᵀ [D, r], float32, bitwise the trained state.
    const at::Tensor a = file->get(checkpoint::factor_name(s.job.layer, s.job.kind, 'a'));
    const at::Tensor b = file->get(checkpoint::factor_name(s.job.layer, s.job.kind, 'b'));
    EXPECT_EQ(a.sizes(), at::IntArrayRef({s.job.rank, 128}));
    EXPECT_EQ(b.sizes(), at::IntArrayRef({64, s.job.rank}));
    EXPECT_EQ(a.scalar_type(), at::kFloat);
    EXPECT_TRUE(at::equal(a, s.A.t())) << s.job.name();
    EXPECT_TRUE(at::equal(b, s.B.t())) << s.job.name();
    // pca: the initial training error is the floor; the JSON holds the exact doubles.
    EXPECT_NEAR(m.train_error_init, s.floor, 1e-6 * s.floor) << s.job.name();
    const auto& j = json["jobs"][i];
    EXPECT_EQ(j["layer"].get<int64_t>(), s.job.layer);
    EXPECT_EQ(j["kind"].get<std::string>(), kv_kind_name(s.job.kind));
    EXPECT_EQ(j["rank"].get<int64_t>(), s.job.rank);
    EXPECT_EQ(j["bits"].get<int>(), 4);
    EXPECT_EQ(j["steps"].get<int64_t>(), 6);
    EXPECT_EQ(j["floor"].get<double>(), s.floor);
    EXPECT_EQ(j["train_error_init"].get<double>(), m.train_error_init);
    EXPECT_EQ(j["holdout_error_quantized"].get<double>(), m.holdout_error_q);
    EXPECT_EQ(j["holdout_error_16bit"].get<double>(), m.holdout_error);
    EXPECT_GT(m.holdout_error_q, m.holdout_error) << s.job.name();  // 4 bits cost something
  }
  // Cache bytes at context 4096 (window 32, nothing left in full precision), per layer:
  // K r 16 @ 4 bit: 4096·16/2 = 32768 + per-channel scale/zero 4096/32·16·4 = 8192;
  // V r 32 @ 4 bit: 4096·32/2 = 65536 + per-token groups of 16: 4096·2·4 = 32768.
  EXPECT_EQ(res.metrics.compressed_bytes, 2.0 * (32768 + 8192 + 65536 + 32768));
  EXPECT_EQ(res.metrics.fp16_bytes, 2.0 * 4096 * 2 * 64 * 2);
  EXPECT_EQ(json["compressed_cache_bytes"].get<double>(), res.metrics.compressed_bytes);
  const std::string md = test::read_file(ckpt / "metrics.md");
  char row[256];
  const JobMetrics& m = res.metrics.jobs[3];
  std::snprintf(row, sizeof row, "| 1 | V | 32 | 4 | %.4g | %.4g → %.4g |", m.floor,
                m.train_error_init, m.train_error);
  EXPECT_NE(md.find(row), std::string::npos) << md;
  EXPECT_NE(
      md.find(
          "Cache at context 4096: 278528 bytes compressed vs 2097152 bytes fp16 (7.53x smaller"),
      std::string::npos)
      << md;
}

TEST_F(TrainRunTest, CacheBytesCountTheFullPrecisionWindow) {
  const auto config = model::load_config(model_dir());
  TrainConfig cfg;
  cfg.k_bits = 2;
  cfg.v_bits = 3;
  // context 100, window 32: 96 compressed tokens, 4 in fp16 (2·64·2 bytes each).
  LayerCacheBytes b = layer_cache_bytes(config, cfg, 16, 32, 100);
  EXPECT_EQ(b.latent, 96 * 16 * 2 / 8.0 + 96 * 32 * 3 / 8.0);
  EXPECT_EQ(b.overhead, 96 / 32.0 * 16 * 4 + 96 * 2 * 4);
  EXPECT_EQ(b.window, 4 * 2 * 64 * 2);
  EXPECT_EQ(b.pending, 4 * (16 + 32) * 2);  // the window's fp16 latents, awaiting quantization
  // No window: every token compressed, K in per-token groups of r/n_kv = 8 channels.
  cfg.window = 0;
  b = layer_cache_bytes(config, cfg, 16, 32, 100);
  EXPECT_EQ(b.latent, 100 * 16 * 2 / 8.0 + 100 * 32 * 3 / 8.0);
  EXPECT_EQ(b.overhead, 100 * 2 * 4 + 100 * 2 * 4);
  EXPECT_EQ(b.window, 0);
  // 16 bits: fp16 latents, no scale/zero.
  cfg.k_bits = cfg.v_bits = 16;
  b = layer_cache_bytes(config, cfg, 16, 32, 100);
  EXPECT_EQ(b.total(), 100 * (16 + 32) * 2);
  EXPECT_EQ(fp16_cache_bytes(config, 100), 100 * 2 * 64 * 2);
}

TEST_F(TrainRunTest, BudgetPlanSpendsTheWidthWhereTheFloorDropsMost) {
  const auto config = model::load_config(model_dir());
  const auto weights = model::SafetensorsModel::open_dir(model_dir());
  TrainRunOptions o = options("unused");
  o.budget = 0.375;  // 0.375 · 2 · 2 · 64 = 96 channels
  o.rank_multiple = 8;
  const auto jobs = plan_jobs(o, config, weights);
  ASSERT_EQ(jobs.size(), 4u);
  std::vector<at::Tensor> k, v;
  for (int64_t l = 0; l < 2; ++l) {
    const auto st = data::read_layer_stats(acts_dir() + "/stats.h5", l);
    k.push_back(layer_spectrum(weights, l, KvKind::kKey, st.gram));
    v.push_back(layer_spectrum(weights, l, KvKind::kValue, st.gram));
  }
  int64_t total = 0;
  std::vector<LayerRanks> ranks(2);
  for (const auto& j : jobs) {
    EXPECT_EQ(j.rank % 8, 0) << j.name();
    EXPECT_GE(j.rank, 8) << j.name();
    total += j.rank;
    (j.kind == KvKind::kKey ? ranks[j.layer].k : ranks[j.layer].v) = j.rank;
  }
  EXPECT_EQ(total, 96);
  // The uniform plan of the same width: r = floor(0.375·32)·2 = 24 everywhere.
  const double budget_sum = expected_floor(k, v, ranks).sum;
  const double uniform_sum = expected_floor(k, v, {{24, 24}, {24, 24}}).sum;
  std::printf("[ numbers  ] summed floor: budget %.6f (ranks %lld/%lld %lld/%lld), uniform %.6f\n",
              budget_sum, static_cast<long long>(ranks[0].k), static_cast<long long>(ranks[0].v),
              static_cast<long long>(ranks[1].k), static_cast<long long>(ranks[1].v), uniform_sum);
  EXPECT_LT(budget_sum, 0.95 * uniform_sum);
  // Keys compress better than values (toy spectra), so the budget gives values more width.
  EXPECT_GT(ranks[0].v + ranks[1].v, ranks[0].k + ranks[1].k);
}

// ---- --quant waterfill (issue 13): budgets, codes in every file, ranks, the cache, sinks

// --quant waterfill at the bits of the uniform run above (K density 0.25 @ 4 bit: 80 bits per
// token with the window scales; V density 0.5 @ 4 bit: 192 with the per-token groups).
TrainRunOptions waterfill_options(TrainRunOptions o) {
  o.cfg.k_bits = 16;
  o.cfg.v_bits = 16;
  o.cfg.quant = QuantMode::kWaterfill;
  o.cfg.k_bits_per_token = 80;
  o.cfg.v_bits_per_token = 192;
  return o;
}

TEST_F(TrainRunTest, WaterfillKeepsTheBudgetsAndBeatsUniformAtItsBits) {
  test::TempDir wf_dir, uni_dir;
  const TrainRunResult wf = run_training(waterfill_options(options(wf_dir.path())));
  const TrainRunResult uni = run_training(options(uni_dir.path()));
  ASSERT_EQ(wf.states.size(), 4u);
  double wf_sum[2] = {0, 0}, uni_sum[2] = {0, 0};
  for (size_t i = 0; i < 4; ++i) {
    const JobState& s = wf.states[i];
    const bool key = s.job.kind == KvKind::kKey;
    EXPECT_EQ(s.job.bits_per_token(), key ? 80 : 192) << s.job.name();
    EXPECT_EQ(s.job.rank, static_cast<int64_t>(s.job.codes.size()));
    EXPECT_EQ(s.A.size(1), s.job.rank);
    EXPECT_EQ(wf.metrics.jobs[i].bits_per_token, s.job.bits_per_token());
    for (size_t j = 1; j < s.job.channels.size(); ++j) {
      EXPECT_LT(s.job.channels[j - 1], s.job.channels[j]);
    }
    // The pca floor of the kept channels: the training error at step 0, unquantized.
    EXPECT_NEAR(s.train_error_init, s.floor, 1e-5 * s.floor + 1e-9) << s.job.name();
    wf_sum[key ? 0 : 1] += s.holdout_error_q;
    uni_sum[key ? 0 : 1] += uni.states[i].holdout_error_q;
  }
  // Static per-channel widths at the same bits: well below the uniform code's error.
  EXPECT_LT(wf_sum[0], 0.8 * uni_sum[0]) << wf_sum[0] << " vs " << uni_sum[0];
  EXPECT_LT(wf_sum[1], 0.6 * uni_sum[1]) << wf_sum[1] << " vs " << uni_sum[1];
  // The accounted bytes: codes only, each width packed on its own (4096 tokens, window 32 → all
  // compressed): 4096·80/8 + 4096·192/8 per layer.
  EXPECT_EQ(wf.metrics.compressed_bytes, 2.0 * (4096.0 * 80 / 8 + 4096.0 * 192 / 8));
}

TEST_F(TrainRunTest, WaterfillOneBudgetOverAllJobsIsNeverExceeded) {
  test::TempDir ckpt;
  TrainRunOptions o = waterfill_options(options(ckpt.path()));
  o.cfg.k_bits_per_token = 0;
  o.cfg.v_bits_per_token = 0;
  o.cfg.cache_budget = 0.1;  // of 4 jobs · 64 channels · 16 bits: 409 bits per token in all
  o.cfg.steps = 0;
  o.cfg.epochs = 1;
  const TrainRunResult r = run_training(o);
  int64_t spent = 0;
  for (const JobState& s : r.states) spent += s.job.bits_per_token();
  EXPECT_LE(spent, 409);
  EXPECT_GE(spent, 400);  // greedy stops only when no width fits the rest
}

// Codes through every file they live in: rank checkpoint, compressor file, eval's compressor.
TEST_F(TrainRunTest, WaterfillCodesSurviveCheckpointCompressorAndEvalBitwise) {
  test::TempDir ckpt;
  const TrainRunResult r = run_training(waterfill_options(options(ckpt.path())));
  checkpoint::write_rank_checkpoint(ckpt / "x", 1, 0, r.states, "{}");
  const auto back = checkpoint::read_rank_checkpoint(checkpoint::rank_file_path(ckpt / "x", 1, 0));
  ASSERT_EQ(back.size(), r.states.size());
  const auto model = model::load_config(model_dir());
  const eval::Compressor c = eval::load_compressor(r.factors_path, model);
  EXPECT_EQ(c.quant.quant, QuantMode::kWaterfill);
  const auto file = model::SafetensorsFile::open(r.factors_path);
  EXPECT_EQ(file->header().metadata.at("quant"), "waterfill");
  for (size_t i = 0; i < r.states.size(); ++i) {
    const LayerJob& j = r.states[i].job;
    EXPECT_EQ(back[i].job.channels, j.channels);
    EXPECT_EQ(back[i].job.codes, j.codes);
    const auto& lf = c.layers.at(j.layer);
    EXPECT_EQ(j.kind == KvKind::kKey ? lf.k_codes : lf.v_codes, j.codes) << j.name();
    const at::Tensor bits = file->get(checkpoint::latent_code_name(j.layer, j.kind, "bits"));
    EXPECT_EQ(bits.scalar_type(), at::kByte);
    EXPECT_EQ(bits.to(at::kLong).sum().item<int64_t>(), j.bits_per_token());
  }
}

TEST_F(TrainRunTest, WaterfillAnyNumberOfRanksWritesTheSameFile) {
  test::TempDir one, three;
  run_training(waterfill_options(options(one.path())));
  test::run_ranks(3, [&](comm::Communicator& comm) {
    TrainRunOptions o = waterfill_options(options(three.path()));
    run_training(o, comm);
  });
  EXPECT_EQ(test::read_file(one / "compressor.safetensors"),
            test::read_file(three / "compressor.safetensors"));
}

TEST_F(TrainRunTest, WaterfillTheCacheHoldsTheAccountedBytesAndFoldedKeysMatchExplicitOnes) {
  test::TempDir ckpt;
  const TrainRunResult r = run_training(waterfill_options(options(ckpt.path())));
  const auto config = model::load_config(model_dir());
  const eval::Compressor c = eval::load_compressor(r.factors_path, config);
  const eval::LayerFactors& f = c.layers.at(1);
  eval::BranchFactors k{f.k_a, f.k_b, at::Tensor(), eval::branch_quant(c, config, KvKind::kKey, 1)};
  eval::BranchFactors v{f.v_a, f.v_b, at::Tensor(),
                        eval::branch_quant(c, config, KvKind::kValue, 1)};
  eval::CompressedKvCache cache(config, k, v, /*window=*/32, at::kFloat);
  at::manual_seed(4);
  const int64_t T = 100, n_kv = config.num_key_value_heads, hd = config.head_dim;
  const at::Tensor x = at::randn({T, config.hidden_size});
  for (int64_t t = 0; t < T; t += 25) {
    cache.append(x.narrow(0, t, 25), at::randn({n_kv, 25, hd}), at::randn({n_kv, 25, hd}));
  }
  ASSERT_EQ(cache.compressed_tokens(), 96);
  // Mixed widths round trip exactly: the stored latents are the channel quantizer's (latents
  // computed per appended block, as the cache does).
  const auto latents = [&](const at::Tensor& a) {
    std::vector<at::Tensor> parts;
    for (int64_t t = 0; t < T; t += 25) parts.push_back(at::mm(x.narrow(0, t, 25), a));
    return at::cat(parts, 0).narrow(0, 0, 96);
  };
  EXPECT_TRUE(at::equal(cache.key_latents(), quantize_channels(latents(f.k_a), f.k_codes)));
  EXPECT_TRUE(at::equal(cache.value_latents(), quantize_channels(latents(f.v_a), f.v_codes)));
  // Bytes: exactly the accounting formula (float32 window here: 4 bytes instead of 2).
  LayerCacheBytes want = layer_cache_bytes(config, c.quant, f.k_codes, f.v_codes, T);
  EXPECT_EQ(static_cast<double>(cache.bytes()), want.latent + 2 * (want.window + want.pending));
  // Folded (codes·B' + c) against explicit ((offset + scale·codes)·B), before RoPE: values.
  const at::Tensor explicit_v = at::mm(cache.value_latents(), f.v_b);  // [96, D]
  const at::Tensor folded_v =
      cache.values(at::kFloat).narrow(1, 0, 96).transpose(0, 1).reshape({96, -1});
  EXPECT_TRUE(
      at::allclose(folded_v, explicit_v, 1e-5, 1e-5 * explicit_v.abs().max().item<float>()));
}

// --sink-tokens: the first tokens stay full precision ahead of the compressed ones; the bytes are
// the formula's (sinks' K/V plus the cache of the rest) and the sinks' keys are the given ones.
TEST_F(TrainRunTest, WaterfillSinkTokensStayFullPrecisionAndAreCounted) {
  test::TempDir ckpt;
  const TrainRunResult r = run_training(waterfill_options(options(ckpt.path())));
  const auto config = model::load_config(model_dir());
  eval::Compressor c = eval::load_compressor(r.factors_path, config);
  c.sink_tokens = 5;
  const eval::LayerFactors& f = c.layers.at(0);
  eval::BranchFactors k{f.k_a, f.k_b, at::Tensor(), eval::branch_quant(c, config, KvKind::kKey, 0)};
  eval::BranchFactors v{f.v_a, f.v_b, at::Tensor(),
                        eval::branch_quant(c, config, KvKind::kValue, 0)};
  eval::CompressedKvCache cache(config, k, v, 32, at::kHalf, at::kCPU, c.sink_tokens);
  at::manual_seed(6);
  const int64_t T = 103, n_kv = config.num_key_value_heads, hd = config.head_dim;
  const at::Tensor x = at::randn({T, config.hidden_size});
  const at::Tensor kk = at::randn({n_kv, T, hd}), vv = at::randn({n_kv, T, hd});
  for (int64_t t = 0; t < T; t += 3) {
    const int64_t n = std::min<int64_t>(3, T - t);
    cache.append(x.narrow(0, t, n), kk.narrow(1, t, n), vv.narrow(1, t, n));
  }
  EXPECT_EQ(cache.sink_tokens(), 5);
  EXPECT_EQ(cache.compressed_tokens(), 96);  // (103 − 5) → 3 whole windows of 32
  EXPECT_EQ(cache.window_tokens(), 2);
  EXPECT_EQ(cache.bytes(), static_cast<int64_t>(eval::formula_layer_bytes(c, config, 0, T)));
  // Sink keys are stored after RoPE as given (fp16 storage), first in the key order.
  const at::Tensor cos = at::ones({T, hd}), sin = at::zeros({T, hd});
  const at::Tensor keys = cache.keys(cos, sin);
  ASSERT_EQ(keys.size(1), T);
  EXPECT_TRUE(at::equal(keys.narrow(1, 0, 5), kk.narrow(1, 0, 5).to(at::kHalf).to(at::kFloat)));
  EXPECT_TRUE(at::equal(keys.narrow(1, 101, 2), kk.narrow(1, 101, 2).to(at::kHalf).to(at::kFloat)));
  // The compressed tokens are x[5..100]'s latents (computed per appended piece, as the cache
  // does: token 5 alone, then blocks of 3; fp16 while they wait in the window).
  std::vector<at::Tensor> parts = {at::mm(x.narrow(0, 5, 1), f.k_a)};
  for (int64_t t = 6; t < 101; t += 3) parts.push_back(at::mm(x.narrow(0, t, 3), f.k_a));
  const at::Tensor ck = at::cat(parts, 0).narrow(0, 0, 96).to(at::kHalf).to(at::kFloat);
  EXPECT_TRUE(at::equal(cache.key_latents(), quantize_channels(ck, f.k_codes)));
}

TEST_F(TrainRunTest, WaterfillRefusalsNameTheFlag) {
  TrainRunOptions o;
  o.cfg.quant = QuantMode::kWaterfill;
  o.cfg.k_bits_per_token = 64;
  o.cfg.v_bits_per_token = 64;
  const auto config = model::load_config(model_dir());
  o.cfg.k_bits = 4;
  EXPECT_CSKV_ERROR(validate_train_settings(o, config, 64),
                    "--quant waterfill: --k-bits does not apply (every PCA channel gets its own "
                    "width and static range; give --k/v-bits-per-token or --cache-budget)");
  o.cfg.k_bits = 16;
  o.cfg.v_bits_per_token = 0;
  EXPECT_CSKV_ERROR(validate_train_settings(o, config, 64),
                    "--quant waterfill needs --cache-budget F or both --k-bits-per-token and "
                    "--v-bits-per-token");
  o.cfg.quant = QuantMode::kUniform;
  o.cfg.k_bits_per_token = 0;
  o.cfg.cache_budget = 0.2;
  EXPECT_CSKV_ERROR(validate_train_settings(o, config, 64),
                    "--cache-budget applies to --quant waterfill only");
}

}  // namespace
}  // namespace cskv::trainer
