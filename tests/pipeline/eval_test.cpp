// End-to-end evaluation on a captured toy model: at density 1.0 and 16 bits the compressed-cache
// model reproduces the original's logits over 64 decode steps; the KL grows as density and bits
// fall; `cskv eval` writes a report.json holding every number report.md shows; bad inputs are
// refused with messages that name what was expected and found.
#include "pipeline/eval.h"
#include "eval/evaluation.h"
#include "eval/pareto.h"

#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "checkpoint/compressor_file.h"
#include "comm/local_communicator.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/toy_model.h"
#include "model/weights.h"
#include "pipeline/train.h"
#include "tests/pipeline/capture_test_util.h"
#include "tests/support/test_support.h"
#include "tests/support/thread_communicator.h"
#include "trainer/layer_trainer.h"

namespace cskv::eval {
namespace {

namespace fs = std::filesystem;

// Generous: the ranks share two busy cores.
constexpr double kRankTimeoutS = 300.0;

using trainer::KvKind;

// Toy model (hidden 128, 2 layers, n_kv 2 × hd 32 → D = 64) and a capture with 4 held-out
// sequences of 128 tokens, built once.
class EvalRunTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir();
    model::write_toy_model(data::capture_testing::trainer_toy_spec(21), model_dir());
    model::write_tokens(*dir_ / "tokens.bin", model::toy_tokens(512, 20000, 5), 512,
                        model::TokenDType::kU16);
    data::capture_testing::capture_fixture(model_dir(), *dir_ / "tokens.bin", 16, 128, 4, 4,
                                           acts_dir());
  }
  static void TearDownTestSuite() { delete dir_; }

  static std::string model_dir() { return *dir_ / "model"; }
  static std::string acts_dir() { return *dir_ / "acts"; }

  // Writes a compressor whose factors are A = Wᵀ Q, B = Qᵀ (Q a random orthogonal D × D per
  // layer and kind): at 16 bits it reconstructs K and V up to float32 rounding.
  static std::string write_exact_compressor(const std::string& path) {
    const auto config = model::load_config(model_dir());
    const auto weights = model::SafetensorsModel::open_dir(model_dir());
    model::NamedTensors tensors;
    at::manual_seed(3);
    for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
      for (const KvKind kind : {KvKind::kKey, KvKind::kValue}) {
        const at::Tensor w = weights.get(trainer::kv_weight_name(l, kind)).to(at::kDouble);
        const at::Tensor q = std::get<0>(at::linalg_qr(at::randn({64, 64}, at::kDouble)));
        tensors.emplace_back(checkpoint::factor_name(l, kind, 'a'),
                             q.t().mm(w).to(at::kFloat).contiguous());  // (Wᵀ Q)ᵀ
        tensors.emplace_back(checkpoint::factor_name(l, kind, 'b'), q.to(at::kFloat).contiguous());
      }
    }
    model::write_safetensors(
        path, tensors,
        {{"model_config_hash", config.hash()},
         {"model_weights_fingerprint", model::weights_fingerprint(config, weights)},
         {"k_bits", "16"},
         {"v_bits", "16"},
         {"group_size", "0"},
         {"window", "32"},
         {"quant_compat", "none"}});
    return path;
  }

  // pca factors (the 16-bit optimum) of every layer at these densities and bits, in memory.
  static Compressor pca_compressor(double density_k, double density_v, int bits) {
    const auto config = model::load_config(model_dir());
    auto weights =
        std::make_shared<model::SafetensorsModel>(model::SafetensorsModel::open_dir(model_dir()));
    Compressor c;
    c.model_config_hash = config.hash();
    c.quant.k_bits = c.quant.v_bits = bits;
    c.quant.window = 32;
    const trainer::LayerTrainer trainer(c.quant, config, weights, acts_dir());
    for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
      const auto k = trainer.init({l, KvKind::kKey, static_cast<int64_t>(density_k * 32) * 2});
      const auto v = trainer.init({l, KvKind::kValue, static_cast<int64_t>(density_v * 32) * 2});
      c.layers[l] = {k.A, k.B, v.A, v.B, {}, {}};
    }
    return c;
  }

  static test::TempDir* dir_;
};

test::TempDir* EvalRunTest::dir_ = nullptr;

TEST_F(EvalRunTest, DensityOneAtSixteenBitsGivesTheOriginalLogits) {
  const auto config = model::load_config(model_dir());
  const Compressor c = load_compressor(write_exact_compressor(*dir_ / "exact.safetensors"), config);
  ASSERT_EQ(c.layers.size(), 2u);
  EXPECT_EQ(c.layers.at(1).r_k(), 64);
  auto weights =
      std::make_shared<model::SafetensorsModel>(model::SafetensorsModel::open_dir(model_dir()));
  const model::LlamaModel model(config, weights);
  const at::Tensor tokens = read_holdout_tokens(acts_dir(), config.hash())[1].unsqueeze(0);
  const int64_t context = 40, steps = 64;
  const at::Tensor ref =
      model.forward(tokens.narrow(1, 0, context + steps))[0].narrow(0, context, steps);

  // float32 storage: nothing is rounded below float32.
  auto caches = make_caches(c, model, at::kFloat);
  const at::Tensor got = decode_logits(model, raw(caches), tokens, context, steps);
  const auto* first = dynamic_cast<const CompressedKvCache*>(caches[0].get());
  ASSERT_NE(first, nullptr);
  EXPECT_EQ(first->compressed_tokens(), 96);  // 104 tokens, window 32: 96 only as latents
  EXPECT_EQ(first->window_tokens(), 8);
  ASSERT_EQ(got.sizes(), ref.sizes());
  const double scale = ref.abs().max().item<double>();
  const double diff = (got - ref).abs().max().item<double>();
  std::printf("density 1.0, 16 bits, float32 storage: max |logit diff| %.3g (max |logit| %.3g)\n",
              diff, scale);
  EXPECT_LE(diff, 1e-5 * scale);

  // The same with the default float16 storage differs by fp16 rounding, far above float32's.
  auto half = make_caches(c, model, at::kHalf);
  const double diff16 =
      (decode_logits(model, raw(half), tokens, context, steps) - ref).abs().max().item<double>();
  EXPECT_GT(diff16, 10 * diff);
}

TEST_F(EvalRunTest, KlGrowsAsDensityAndBitsFall) {
  const auto config = model::load_config(model_dir());
  auto weights =
      std::make_shared<model::SafetensorsModel>(model::SafetensorsModel::open_dir(model_dir()));
  const model::LlamaModel model(config, weights);
  const at::Tensor sequences = read_holdout_tokens(acts_dir(), config.hash());
  comm::LocalCommunicator local;
  auto kl = [&](double density, int bits) {
    const auto e = evaluate_end_to_end(model, pca_compressor(density, density, bits), sequences, 64,
                                       32, at::kHalf, local);
    std::printf("density %.3g, %d bits: mean KL %.6g, ppl %.6g -> %.6g\n", density, bits, e.kl_mean,
                e.ppl_original, e.ppl_compressed);
    EXPECT_EQ(e.positions, 4 * 32);
    return e.kl_mean;
  };
  std::vector<double> by_density;
  for (const double d : {1.0, 0.75, 0.5, 0.25}) by_density.push_back(kl(d, 16));
  for (size_t i = 1; i < by_density.size(); ++i) {
    EXPECT_GT(by_density[i], by_density[i - 1]) << "density step " << i;
  }
  std::vector<double> by_bits;
  for (const int b : {16, 4, 3, 2}) by_bits.push_back(kl(0.5, b));
  for (size_t i = 1; i < by_bits.size(); ++i) {
    EXPECT_GT(by_bits[i], by_bits[i - 1]) << "bits step " << i;
  }
  // 8 bits is all but lossless here: its KL is within 1% of 16 bits' (either side).
  EXPECT_NEAR(kl(0.5, 8), by_bits[0], 0.01 * by_bits[0]);
}

std::string f4(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.4g", v);
  return std::string(buf);
}

void expect_in_report(const std::string& md, const std::string& s) {
  EXPECT_NE(md.find(s), std::string::npos) << "report.md lacks '" << s << "'";
}

// (a) of a report of the CLI test's run (r_k 16 @ 4 bits, r_v 32 @ 3 bits): every layer row of
// report.json and report.md, and the means.
void expect_layer_rows(const nlohmann::json& j, const std::string& md) {
  const auto has = [&](const std::string& s) { expect_in_report(md, s); };
  ASSERT_EQ(j.at("layers").size(), 2u);
  for (const auto& l : j.at("layers")) {
    EXPECT_EQ(l.at("r_k"), 16);
    EXPECT_EQ(l.at("r_v"), 32);
    EXPECT_EQ(l.at("k_spectrum").size(), 64u);
    EXPECT_GT(l.at("k_error").get<double>(), l.at("k_error_16bit").get<double>());
    EXPECT_GT(l.at("v_error").get<double>(), 0.0);
    // Bits per compressed token: K 16·4 codes + 16 scale/zero bits (per 32-token window); V
    // 32·3 codes + 2 groups · 32 bits. The Gaussian bound at those bits lies below the error.
    EXPECT_EQ(l.at("k_bits_per_token"), 80.0);
    EXPECT_EQ(l.at("v_bits_per_token"), 160.0);
    EXPECT_GT(l.at("k_bound").get<double>(), 0.0);
    EXPECT_LT(l.at("k_bound").get<double>(), l.at("k_error").get<double>());
    EXPECT_LT(l.at("v_bound").get<double>(), l.at("v_error").get<double>());
    has("| " + std::to_string(l.at("layer").get<int>()) + " | 16 | " + f4(l.at("k_floor")) + " | " +
        f4(l.at("k_error_16bit")) + " | " + f4(l.at("k_error")) + " | 80 | " + f4(l.at("k_bound")) +
        " | 32 | " + f4(l.at("v_floor")) + " | " + f4(l.at("v_error_16bit")) + " | " +
        f4(l.at("v_error")) + " | 160 | " + f4(l.at("v_bound")) + " |");
  }
  has("| mean | | " + f4(j.at("mean_k_floor")) + " | | " + f4(j.at("mean_k_error")) + " | | | | " +
      f4(j.at("mean_v_floor")) + " | | " + f4(j.at("mean_v_error")) + " | | |");
}

// (b) of the CLI test's report: the end-to-end numbers in report.json and report.md.
void expect_end_to_end(const nlohmann::json& j, const std::string& md) {
  const auto has = [&](const std::string& s) { expect_in_report(md, s); };
  const auto& e = j.at("end_to_end");
  EXPECT_EQ(e.at("context"), 80);
  EXPECT_EQ(e.at("decode"), 16);
  EXPECT_EQ(e.at("sequences"), 2);
  EXPECT_EQ(e.at("positions"), 32);
  EXPECT_EQ(e.at("kl_per_step").size(), 16u);
  EXPECT_GT(e.at("kl_mean").get<double>(), e.at("kl_fp16_cache").get<double>());
  EXPECT_GE(e.at("kl_max").get<double>(), e.at("kl_mean").get<double>());
  double per_step = 0;
  for (const auto& v : e.at("kl_per_step")) per_step += v.get<double>() / 16.0;
  EXPECT_NEAR(per_step, e.at("kl_mean").get<double>(), 1e-12);
  const double ppl_o = e.at("ppl_original"), ppl_c = e.at("ppl_compressed");
  EXPECT_NEAR(e.at("ppl_change_percent").get<double>(), 100.0 * (ppl_c / ppl_o - 1.0), 1e-9);
  has("a prompt of 80 tokens is prefilled at full precision, then 16 teacher-forced decode steps");
  has("| plain fp16 cache | " + f4(e.at("kl_fp16_cache")) + " | | " + f4(e.at("ppl_fp16_cache")));
  has("| compressed bi-branch cache | " + f4(e.at("kl_mean")) + " | " + f4(e.at("kl_max")) + " | " +
      f4(ppl_c) + " (");
  char top1[32];
  std::snprintf(top1, sizeof top1, "%.1f%%", 100.0 * e.at("top1_agreement").get<double>());
  has(top1);
}

// (c) of the CLI test's report (--memory-contexts 1000,100,4096): the memory rows.
void expect_memory_rows(const nlohmann::json& j, const std::string& md) {
  const auto has = [&](const std::string& s) { expect_in_report(md, s); };
  // (c) memory: sorted contexts, measured = formula, the ratio; next to the smallest (100: the
  // window of 32 holds 4 tokens after the boundary at 96), the window half full (112) and one
  // token short of full (127), where the ratio is at its worst.
  const auto& mem = j.at("memory");
  ASSERT_EQ(mem.size(), 5u);
  const std::vector<int64_t> contexts = {100, 112, 127, 1000, 4096}, in_window = {4, 16, 31, 8, 0};
  for (size_t i = 0; i < contexts.size(); ++i) {
    EXPECT_EQ(mem[i].at("context"), contexts[i]) << i;
    EXPECT_EQ(mem[i].at("window_tokens"), in_window[i]) << i;
    has("x | " + std::to_string(in_window[i]) + " |");
  }
  EXPECT_LT(mem[2].at("ratio").get<double>(), mem[1].at("ratio").get<double>());
  EXPECT_LT(mem[1].at("ratio").get<double>(), mem[0].at("ratio").get<double>());
  for (const auto& m : mem) {
    const auto measured = m.at("compressed_bytes_measured").get<int64_t>();
    EXPECT_EQ(static_cast<double>(measured), m.at("compressed_bytes_formula").get<double>());
    EXPECT_EQ(m.at("fp16_bytes_measured").get<int64_t>(),
              m.at("context").get<int64_t>() * 2 * 2 * 64 * 2);  // 2 layers · K,V · D · fp16
    EXPECT_DOUBLE_EQ(m.at("ratio").get<double>(),
                     m.at("fp16_bytes_measured").get<double>() / static_cast<double>(measured));
    has("| " + std::to_string(m.at("context").get<int64_t>()) + " | " + std::to_string(measured) +
        " B");
  }
}

TEST_F(EvalRunTest, CliReportJsonHoldsEveryFieldTheReportShows) {
  test::TempDir out;
  auto r = test::run_cskv(
      {"train",      "--model",     model_dir(), "--acts",         acts_dir(), "--ckpt-dir",
       out / "ckpt", "--k-density", "0.25",      "--v-density",    "0.5",      "--k-bits",
       "4",          "--v-bits",    "3",         "--batch-tokens", "256",      "--steps",
       "4",          "--lr",        "1e-3",      "--log-level",    "warn"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = test::run_cskv({"eval", "--model", model_dir(), "--acts", acts_dir(), "--compressor",
                      out / "ckpt/compressor.safetensors", "--context", "80", "--decode", "16",
                      "--sequences", "2", "--memory-contexts", "1000,100,4096", "--out",
                      out / "report", "--log-level", "warn"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(test::read_file(out / "report/report.json"));
  const std::string md = test::read_file(out / "report/report.md");
  const auto has = [&](const std::string& s) { expect_in_report(md, s); };
  // Configuration.
  EXPECT_EQ(j.at("quantization").at("k_bits"), 4);
  EXPECT_EQ(j.at("quantization").at("v_bits"), 3);
  EXPECT_EQ(j.at("quantization").at("window"), 32);
  EXPECT_EQ(j.at("quantization").at("cache_dtype"), "float16");
  EXPECT_EQ(j.at("num_layers"), 2);
  EXPECT_TRUE(j.at("uncompressed_layers").empty());
  has("K 4 bits, V 3 bits, group size 0 (0 = r/n_kv), window 32");
  expect_layer_rows(j, md);
  expect_end_to_end(j, md);
  expect_memory_rows(j, md);
  const auto& mem = j.at("memory");
  ASSERT_EQ(mem.size(), 5u);
  EXPECT_EQ(j.at("compression_ratio").get<double>(), mem[4].at("ratio").get<double>());
  EXPECT_EQ(j.at("compression_ratio_context"), 4096);
  // The headline, in the report and on stdout.
  const std::string headline = j.at("headline");
  has("**Headline:** " + headline);
  EXPECT_NE(r.out.find("headline: " + headline), std::string::npos) << r.out;
  EXPECT_NE(headline.find("compression " + std::string([&] {
                            char b[32];
                            std::snprintf(b, sizeof b, "%.2fx at 4096 tokens",
                                          j.at("compression_ratio").get<double>());
                            return std::string(b);
                          }())),
            std::string::npos)
      << headline;
  for (const char* png : {"errors.png", "spectrum_k.png", "spectrum_v.png", "memory.png"}) {
    EXPECT_GT(fs::file_size(out / ("report/" + std::string(png))), 1000u) << png;
  }
}

// Bits per token of the uniform points of the fixture (D 64 = 2 kv heads of 32): K r·b codes and
// one fp16 scale/zero pair per channel per 32-token window (r bits); V r·b codes and a pair per
// group of r/2 channels (64 bits).
double uniform_bits(const std::string& kind, int64_t r, int bits) {
  return static_cast<double>(r * bits + (kind == "K" ? r : 64));
}

TEST_F(EvalRunTest, ParetoSweepKeepsItsBudgetsAndMeasuresTheClosedForms) {
  const auto config = model::load_config(model_dir());
  auto weights =
      std::make_shared<model::SafetensorsModel>(model::SafetensorsModel::open_dir(model_dir()));
  comm::LocalCommunicator local;
  const ParetoGrid grid{{0.25, 1.0}, {2, 4}};
  const auto jobs = pareto_sweep(weights, config, acts_dir(), {0, 1}, grid, local);
  ASSERT_EQ(jobs.size(), 4u);
  for (const JobPareto& j : jobs) {
    ASSERT_EQ(j.points.size(), 8u) << j.layer << j.kind;
    const bool key = j.kind == "K";
    trainer::TrainConfig cfg;
    for (size_t i = 0; i < 4; ++i) {
      const ParetoPoint &u = j.points[i], &w = j.points[4 + i];
      const int64_t r = static_cast<int64_t>(u.density * 32) * 2;
      std::printf(
          "layer %lld %s d %.3g b %d: uniform %.0f bits %.5g | waterfill %.0f bits %.5g "
          "(%.3fx) | bound %.5g\n",
          static_cast<long long>(j.layer), j.kind.c_str(), u.density, u.bits, u.bits_per_token,
          u.error, w.bits_per_token, w.error, w.error / u.error, w.bound);
      EXPECT_EQ(u.code, "uniform");
      EXPECT_EQ(w.code, "waterfill");
      EXPECT_EQ(u.density, grid.densities[i / 2]);
      EXPECT_EQ(u.bits, grid.bits[i % 2]);
      EXPECT_EQ(u.bits_per_token, uniform_bits(j.kind, r, u.bits));
      // The uniform point is the closed form `cskv train` starts from at that rank and bits.
      (key ? cfg.k_bits : cfg.v_bits) = u.bits;
      const trainer::LayerTrainer t(cfg, config, weights, acts_dir());
      const trainer::LayerJob job(j.layer, key ? KvKind::kKey : KvKind::kValue, r);
      EXPECT_EQ(u.error, t.relative_error(t.init(job), "holdout", true));
      // Per-channel widths spend at most the uniform point's bits (and leave less than a
      // channel's widest code unspent) and do better with them.
      EXPECT_LE(w.bits_per_token, u.bits_per_token);
      EXPECT_GT(w.bits_per_token, u.bits_per_token - 8);
      EXPECT_LT(w.error, u.error);
      EXPECT_GT(w.bound, 0.0);
      EXPECT_LT(w.bound, w.error);
    }
    EXPECT_LT(j.points[1].error, j.points[0].error);  // more bits, same rank
    EXPECT_LT(j.points[5].error, j.points[4].error);
  }
}

TEST_F(EvalRunTest, CliParetoWritesItsJsonTableAndPlot) {
  test::TempDir out;
  const std::string exact = write_exact_compressor(out / "exact.safetensors");
  auto r = test::run_cskv({"eval", "--model", model_dir(), "--acts", acts_dir(), "--compressor",
                           exact, "--decode", "8", "--sequences", "1", "--memory-contexts", "128",
                           "--pareto", "--out", out / "report", "--log-level", "warn"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(test::read_file(out / "report/report.json"));
  const std::string md = test::read_file(out / "report/report.md");
  ASSERT_EQ(j.at("pareto").size(), 4u);  // layers 0, 1 × K, V
  for (const auto& job : j.at("pareto")) {
    ASSERT_EQ(job.at("points").size(), 24u);  // densities 1/8..1 × 2, 4, 8 bits, both codes
    EXPECT_EQ(job.at("points")[0].at("code"), "uniform");
    EXPECT_EQ(job.at("points")[0].at("density"), 0.125);
    EXPECT_EQ(job.at("points")[12].at("code"), "waterfill");
  }
  const auto& k0 = j.at("pareto")[0].at("points");
  EXPECT_EQ(j.at("pareto")[0].at("kind"), "K");
  EXPECT_EQ(k0[1].at("bits_per_token"), uniform_bits("K", 8, 4));
  expect_in_report(md, "## Budget sweep: closed-form codes against the bound (--pareto)");
  expect_in_report(md, "| K | 0.125 | 4 | 40.0 | ");
  expect_in_report(md, "![pareto](pareto.png)");
  EXPECT_GT(fs::file_size(out / "report/pareto.png"), 1000u);
  EXPECT_NE(r.out.find("memory.png, pareto.png}"), std::string::npos) << r.out;
  // Sequences whose length is not a multiple of the key window are refused before any work.
  test::TempDir odd;
  data::capture_testing::capture_fixture(model_dir(), *dir_ / "tokens.bin", 2, 100, 1, 4,
                                         odd / "acts");
  r = test::run_cskv({"eval", "--model", model_dir(), "--acts", odd / "acts", "--compressor", exact,
                      "--decode", "8", "--pareto", "--out", out / "odd", "--log-level", "warn"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("--pareto: its uniform points group keys in 32-token windows, so the "
                       "captured sequences must be a multiple of 32 tokens long; those of " +
                       odd / "acts" + " have 100"),
            std::string::npos)
      << r.err;
}

TEST_F(EvalRunTest, BadInputsAreRefusedNamingWhatDiffers) {
  test::TempDir out;
  const std::string exact = write_exact_compressor(out / "exact.safetensors");
  // A compressor trained for another model (another config: another hash).
  model::ToyModelSpec other = data::capture_testing::trainer_toy_spec(21);
  other.intermediate = 320;
  model::write_toy_model(other, out / "other");
  const auto mine = model::load_config(model_dir()), theirs = model::load_config(out / "other");
  auto r = test::run_cskv({"eval", "--model", out / "other", "--acts", acts_dir(), "--compressor",
                           exact, "--out", out / "r1", "--log-level", "warn"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "cskv eval: error: " + exact + ": trained for a model with config hash " +
                       mine.hash() + ", but the model's config hash is " + theirs.hash() +
                       " (a different model or config.json)\n");
  // A context the held-out sequences cannot hold.
  r = test::run_cskv({"eval", "--model", model_dir(), "--acts", acts_dir(), "--compressor", exact,
                      "--context", "100", "--decode", "64", "--out", out / "r2", "--log-level",
                      "warn"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err,
            "cskv eval: error: --context 100 + --decode 64 + 1 = 165 tokens per sequence "
            "needed, but the held-out sequences of " +
                acts_dir() +
                " have 128 tokens (capture with a larger --seq-len, or lower "
                "--context/--decode)\n");
  // A factor file without the quantization settings.
  const auto f = model::SafetensorsFile::open(exact);
  model::NamedTensors tensors;
  for (const auto& [name, e] : f->header().tensors) tensors.emplace_back(name, f->get(name));
  model::write_safetensors(out / "bare.safetensors", tensors, {{"model_config_hash", mine.hash()}});
  r = test::run_cskv({"eval", "--model", model_dir(), "--acts", acts_dir(), "--compressor",
                      out / "bare.safetensors", "--out", out / "r3", "--log-level", "warn"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "cskv eval: error: " + (out / "bare.safetensors") +
                       ": __metadata__ has no 'k_bits' (the quantization settings the factors "
                       "were trained with); expected a file written by `cskv merge` or `cskv "
                       "train`\n");
  // Only layer 0's K factors: a compressed layer needs both.
  tensors.resize(2);  // layer 0 K a, b (sorted by name)
  model::write_safetensors(out / "half.safetensors", tensors,
                           {{"model_config_hash", mine.hash()},
                            {"k_bits", "4"},
                            {"v_bits", "4"},
                            {"group_size", "0"},
                            {"window", "32"},
                            {"quant_compat", "none"}});
  EXPECT_CSKV_ERROR(load_compressor(out / "half.safetensors", mine),
                    out / "half.safetensors" +
                        ": layer 0 has K factors but no V factors; a compressed layer needs both");
}

TEST_F(EvalRunTest, TwoRanksReportWhatOneRankReports) {
  pipeline::EvalOptions o;
  o.model_dir = model_dir();
  o.acts_dir = acts_dir();
  o.compressor_path = write_exact_compressor(*dir_ / "exact-ranks.safetensors");
  o.context = 40;
  o.decode = 8;
  o.max_sequences = 2;  // one per rank: the sums add in the same order
  o.memory_contexts = {64, 128};
  o.pareto = true;  // its jobs are shared among the ranks too
  o.plots = false;
  o.write_files = false;
  EvalReport alone = pipeline::run_eval(o);
  alone.seconds = 0;
  std::vector<EvalReport> reports(2);
  test::run_ranks(
      2,
      [&](comm::Communicator& comm) {
        reports[static_cast<size_t>(comm.rank())] = pipeline::run_eval(o, comm);
      },
      {}, kRankTimeoutS);
  for (EvalReport& r : reports) {
    r.seconds = 0;
    EXPECT_EQ(report_json(r), report_json(alone));
  }
  EXPECT_GT(alone.end_to_end.kl_max, 0.0);
  EXPECT_EQ(alone.end_to_end.sequences, 2);
  EXPECT_EQ(alone.pareto.size(), 4u);
}

}  // namespace
}  // namespace cskv::eval
