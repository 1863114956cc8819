// LayerTrainer on a captured toy model: the pca init attains the Eckart–Young optimum computed here
// in float64, training from svd approaches the floor from above, QAT and the Hadamard rotation pay.
#include "trainer/layer_trainer.h"

#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>

#include <ATen/ATen.h>

#include <cstdio>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "common/log.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/toy_model.h"
#include "tests/pipeline/capture_test_util.h"
#include "tests/support/test_support.h"
#include "trainer/rank_allocation.h"

namespace cskv::trainer {
namespace {

constexpr KvKind kKinds[] = {KvKind::kKey, KvKind::kValue};

// Toy model (hidden 128, 2 layers, n_kv 2 × hd 32 → D = 64, outlier norm channels) captured
// once: 64 training sequences of 64 tokens (4096 rows per layer) and 8 held-out ones.
class LayerTrainerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir();
    model::ToyModelSpec spec = data::capture_testing::trainer_toy_spec(3);
    model::write_toy_model(spec, model_dir());
    model::write_tokens(*dir_ / "tokens.bin", model::toy_tokens(512, 20000, 5), 512,
                        model::TokenDType::kU16);
    data::capture_testing::capture_fixture(model_dir(), *dir_ / "tokens.bin", 64, 64, 8, 8,
                                           acts_dir());
    config_ = new model::ModelConfig(model::load_config(model_dir()));
    weights_ = new std::shared_ptr<const model::SafetensorsModel>(
        std::make_shared<model::SafetensorsModel>(model::SafetensorsModel::open_dir(model_dir())));
  }
  static void TearDownTestSuite() {
    delete weights_;
    delete config_;
    delete dir_;
  }

  static std::string model_dir() { return *dir_ / "model"; }
  static std::string acts_dir() { return *dir_ / "acts"; }

  static LayerTrainer trainer(const TrainConfig& cfg) {
    return LayerTrainer(cfg, *config_, *weights_, acts_dir());
  }
  // r = floor(density · hd) · n_kv, as `cskv train` plans it.
  static LayerJob job(int64_t layer, KvKind kind, double density) {
    return {
        layer, kind,
        rank_from_density(density, config_->head_dim, config_->num_key_value_heads, "--density")};
  }

  static test::TempDir* dir_;
  static model::ModelConfig* config_;
  static std::shared_ptr<const model::SafetensorsModel>* weights_;
};

test::TempDir* LayerTrainerTest::dir_ = nullptr;
model::ModelConfig* LayerTrainerTest::config_ = nullptr;
std::shared_ptr<const model::SafetensorsModel>* LayerTrainerTest::weights_ = nullptr;

double rel_diff(double a, double b) { return std::abs(a - b) / std::abs(b); }

TEST_F(LayerTrainerTest, PcaInitAttainsTheEckartYoungOptimum) {
  const auto train = data::capture_testing::read_split(acts_dir(), "train");
  ASSERT_EQ(train.x.size(), 64u);
  TrainConfig cfg;
  cfg.batch_tokens = 1024;
  const LayerTrainer t = trainer(cfg);
  for (int64_t layer = 0; layer < 2; ++layer) {
    std::vector<at::Tensor> rows;
    for (const auto& [id, layers] : train.x) rows.push_back(layers.at(layer));
    const at::Tensor x = at::cat(rows, 0).to(at::kDouble);  // the stored fp16 rows, exactly
    ASSERT_EQ(x.size(0), 4096);
    for (const KvKind kind : kKinds) {
      const at::Tensor w = (*weights_)->get(kv_weight_name(layer, kind)).to(at::kDouble);
      const at::Tensor sq = at::linalg_svdvals(at::mm(x, w.t())).pow(2);  // σ_i² of K [4096, 64]
      ASSERT_EQ(sq.size(0), 64);
      for (const double density : {0.25, 0.5}) {
        const LayerJob j = job(layer, kind, density);
        const double optimum =
            sq.narrow(0, j.rank, 64 - j.rank).sum().item<double>() / sq.sum().item<double>();
        const JobState s = t.init(j);
        const double err = t.relative_error(s, "train", false);
        EXPECT_LE(rel_diff(err, optimum), 1e-6)
            << j.name() << " r " << j.rank << ": error " << err << ", optimum " << optimum;
        EXPECT_LE(rel_diff(s.floor, optimum), 1e-9)
            << j.name() << " r " << j.rank << ": floor " << s.floor << ", optimum " << optimum;
        // The toy spectra put these floors in a range where 1e-6 relative is a real check.
        EXPECT_GT(optimum, density == 0.25 ? 0.03 : 0.01) << j.name();
        EXPECT_LT(optimum, density == 0.25 ? 0.25 : 0.1) << j.name();
      }
    }
  }
}

// What a GPU runs — batches converted and NaN-checked where they are used, the layer's splits
// resident in device memory, the state moved to the device and back around train() — is the
// same arithmetic: on the CPU every path gives the default path's bits, across epochs and a stop.
TEST_F(LayerTrainerTest, DevicePathsGiveTheSameBitsOnTheCpu) {
  TrainConfig cfg;
  cfg.batch_tokens = 1024;
  cfg.steps = 10;  // 4096 training rows: 2.5 epochs
  cfg.k_bits = 4;
  cfg.lr = 1e-3;
  const LayerJob j = job(1, KvKind::kKey, 0.5);
  auto run = [&](const TrainDevice& dev) {
    const LayerTrainer t(cfg, *config_, *weights_, acts_dir(), dev);
    JobState s = t.init(j);
    t.train(s, 3);  // stopped, then continued as after a resume
    t.train(s, s.total_steps);
    s.holdout_error_q = t.relative_error(s, "holdout", true);
    s.train_error = t.relative_error(s, "train", false);
    return s;
  };
  const JobState ref = run({});
  const TrainDevice paths[] = {{at::kCPU, Residency::kOn, 0.5, std::nullopt},
                               {at::kCPU, Residency::kOff, 0.5, false},
                               {at::kCPU, Residency::kOn, 0.5, false}};
  for (const TrainDevice& dev : paths) {
    SCOPED_TRACE(std::string("resident ") + residency_name(dev.resident) + ", host convert " +
                 (dev.host_convert.value_or(true) ? "yes" : "no"));
    const JobState s = run(dev);
    for (const auto& [got, want] : {std::pair{s.A, ref.A},
                                    {s.B, ref.B},
                                    {s.m_A, ref.m_A},
                                    {s.v_A, ref.v_A},
                                    {s.m_B, ref.m_B},
                                    {s.v_B, ref.v_B}}) {
      EXPECT_TRUE(got.device().is_cpu());
      EXPECT_TRUE(at::equal(got, want));
    }
    EXPECT_EQ(s.data_position, ref.data_position);
    EXPECT_EQ(s.last_loss, ref.last_loss);
    EXPECT_EQ(s.holdout_error_q, ref.holdout_error_q);
    EXPECT_EQ(s.train_error, ref.train_error);
  }
}

// K and V jobs of one layer read its activations once when resident: one load per split of the
// layer, whatever the number of jobs and error passes that use it.
TEST_F(LayerTrainerTest, ResidentSplitsAreReadOncePerLayer) {
  TrainConfig cfg;
  cfg.batch_tokens = 1024;
  cfg.steps = 3;
  const LayerTrainer t(cfg, *config_, *weights_, acts_dir(),
                       TrainDevice{at::kCPU, Residency::kOn, 0.5, std::nullopt});
  auto logger = log::get("trainer");
  std::ostringstream out;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out);
  sink->set_pattern("%v");
  logger->sinks().push_back(sink);
  const auto level = logger->level();
  logger->set_level(spdlog::level::debug);
  for (const KvKind kind : kKinds) {
    JobState s = t.init(job(1, kind, 0.5));
    t.train(s, s.total_steps);
    (void)t.relative_error(s, "train", false);
    (void)t.relative_error(s, "holdout", true);
  }
  logger->set_level(level);
  logger->sinks().pop_back();
  const std::string text = out.str();
  const auto count = [&](const std::string& what) {
    size_t n = 0;
    for (size_t p = text.find(what); p != std::string::npos; p = text.find(what, p + 1)) ++n;
    return n;
  };
  EXPECT_EQ(count("layer 1 train: 4096 rows resident on cpu"), 1u) << text;
  EXPECT_EQ(count("layer 1 holdout: 512 rows resident on cpu"), 1u) << text;
}

// bf16 operands are a real, recorded choice: close to fp32 at this size, not the same numbers.
TEST_F(LayerTrainerTest, Bf16PrecisionRoundsTheMatmulOperands) {
  TrainConfig cfg;
  cfg.batch_tokens = 1024;
  cfg.steps = 4;
  cfg.lr = 1e-3;
  const LayerJob j = job(0, KvKind::kValue, 0.5);
  const LayerTrainer fp32 = trainer(cfg);
  cfg.precision = device::Precision::kBf16;
  const LayerTrainer bf16 = trainer(cfg);
  JobState a = fp32.init(j), b = bf16.init(j);
  fp32.train(a, a.total_steps);
  bf16.train(b, b.total_steps);
  const double ea = fp32.relative_error(a, "holdout", false);
  const double eb = bf16.relative_error(b, "holdout", false);
  EXPECT_NE(ea, eb);
  EXPECT_LT(rel_diff(eb, ea), 0.05) << ea << " vs " << eb;
  EXPECT_FALSE(at::equal(a.A, b.A));
}

TEST_F(LayerTrainerTest, TrainingFromSvdApproachesTheFloorFromAbove) {
  TrainConfig cfg;
  cfg.init = InitMethod::kSvd;
  cfg.lr = 3e-3;
  cfg.batch_tokens = 512;
  cfg.steps = 160;  // 20 epochs of 8 batches
  const LayerTrainer t = trainer(cfg);
  for (const KvKind kind : kKinds) {
    const LayerJob j = job(1, kind, 0.5);
    JobState s = t.init(j);
    const double floor = s.floor;
    const double first = t.relative_error(s, "train", false);
    EXPECT_GT(first, 1.5 * floor) << j.name();  // svd ignores X: far from the optimum
    std::vector<double> errors{first};
    while (s.step < s.total_steps) {
      t.train(s, s.step + 20);
      const double e = t.relative_error(s, "train", false);
      EXPECT_GE(e, floor * (1 - 1e-6)) << j.name() << " step " << s.step;
      errors.push_back(e);
    }
    ASSERT_EQ(s.step, 160);
    ASSERT_EQ(errors.size(), 9u);
    // Most of the gap to the floor closes, and the last quarter of the run never undoes it.
    const double last = errors.back();
    EXPECT_LT(last - floor, 0.2 * (first - floor))
        << j.name() << ": " << first << " → " << last << ", floor " << floor;
    for (size_t i = 1; i < errors.size(); ++i) {
      EXPECT_LT(errors[i], first) << j.name() << " after " << 20 * i << " steps";
    }
    EXPECT_LE(errors[8], errors[6]) << j.name();
    std::printf("[ numbers  ] %s svd→train 16-bit: floor %.6f, error %.6f → %.6f (every 20 steps:",
                j.name().c_str(), floor, first, last);
    for (const double e : errors) std::printf(" %.5f", e);
    std::printf(")\n");
  }
}

TEST_F(LayerTrainerTest, QuantizationAwareTrainingLowersHeldOutErrorAt4Bits) {
  TrainConfig cfg;  // pca init, default window 32 for K, r/n_kv groups for V
  cfg.k_bits = 4;
  cfg.v_bits = 4;
  cfg.lr = 3e-3;
  cfg.batch_tokens = 512;
  cfg.steps = 1280;  // 160 epochs of the 4096 training rows
  const LayerTrainer t = trainer(cfg);
  for (int64_t layer = 0; layer < 2; ++layer) {
    for (const KvKind kind : kKinds) {
      const LayerJob j = job(layer, kind, 0.5);
      JobState s = t.init(j);
      const double before = t.relative_error(s, "holdout", true);
      const double before_16 = t.relative_error(s, "holdout", false);
      EXPECT_GT(before, before_16) << j.name();  // 4 bits costs something to win back
      t.train(s, s.total_steps);
      const double after = t.relative_error(s, "holdout", true);
      const double gap_closed = (before - after) / (before - before_16);
      std::printf(
          "[ numbers  ] %s 4-bit held-out: %.6f → %.6f after QAT (16-bit init %.6f; %.1f%% lower, "
          "%.0f%% of the quantization gap closed)\n",
          j.name().c_str(), before, after, before_16, 100 * (1 - after / before), 100 * gap_closed);
      // Keys (per-channel windows) gain most; values still close a fifth of their gap.
      EXPECT_LT(after, before * (kind == KvKind::kKey ? 0.95 : 0.99)) << j.name();
      EXPECT_GT(gap_closed, kind == KvKind::kKey ? 0.3 : 0.2) << j.name();
    }
  }
}

TEST_F(LayerTrainerTest, HadamardRotationIsOrthogonalAndHelpsPerTokenGroups) {
  // Per-token groups (V, and K with --window 0) hold pca channels of very different variance;
  // the rotation evens them out. At 16 bits it changes nothing beyond float32 rounding.
  for (const int bits : {16, 3, 2}) {
    TrainConfig plain;
    plain.k_bits = bits;
    plain.v_bits = bits;
    plain.window = 0;
    plain.batch_tokens = 1024;
    TrainConfig rotated = plain;
    rotated.rotate_hadamard = true;
    const LayerTrainer tp = trainer(plain), tr = trainer(rotated);
    for (int64_t layer = 0; layer < 2; ++layer) {
      for (const KvKind kind : kKinds) {
        const LayerJob j = job(layer, kind, 0.5);
        const JobState sp = tp.init(j), sr = tr.init(j);
        EXPECT_FALSE(at::allclose(sp.A, sr.A)) << j.name();
        const double ep = tp.relative_error(sp, "holdout", true);
        const double er = tr.relative_error(sr, "holdout", true);
        std::printf("[ numbers  ] %s %d bits held-out: %.7f plain, %.7f hadamard\n",
                    j.name().c_str(), bits, ep, er);
        if (bits == 16) {
          EXPECT_LE(rel_diff(er, ep), 1e-6) << j.name();
          EXPECT_EQ(sr.floor, sp.floor) << j.name();
        } else {
          EXPECT_LT(er, ep * (bits == 2 ? 0.9 : 0.95)) << j.name() << " at " << bits << " bits";
        }
      }
    }
  }
}

}  // namespace
}  // namespace cskv::trainer
