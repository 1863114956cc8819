// run_training / plan_jobs on a captured toy model: the written factors (HF Linear layout) and
// metrics match the returned states, the budget plan keeps its width, cache bytes by hand.
#include "pipeline/train.h"

#include "checkpoint/compressor_file.h"

#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/layer_stats.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/toy_model.h"
#include "tests/pipeline/capture_test_util.h"
#include "tests/support/test_support.h"
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

}  // namespace
}  // namespace cskv::trainer
