// End-to-end tests of `cskv analyze`: toy model → `cskv capture` → `cskv analyze`, checked against
// spectra and ranks recomputed here from stats.h5 with trainer/spectrum, its refusals, and
// pipeline::run_analyze on in-process ranks.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "comm/local_communicator.h"
#include "common/error.h"
#include "data/layer_stats.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/toy_model.h"
#include "pipeline/analyze.h"
#include "tests/pipeline/capture_test_util.h"
#include "tests/support/flag_overrides.h"
#include "tests/support/test_support.h"
#include "tests/support/thread_communicator.h"
#include "trainer/spectrum.h"

namespace cskv {
namespace {

namespace fs = std::filesystem;

// Generous: the ranks share two busy cores.
constexpr double kRankTimeoutS = 300.0;

using test::run_cskv;

constexpr const char* kPngSignature = "\x89PNG\r\n\x1a\n";

std::vector<std::vector<std::string>> read_csv(const std::string& path) {
  std::vector<std::vector<std::string>> rows;
  std::istringstream in(test::read_file(path));
  std::string line;
  while (std::getline(in, line)) {
    std::vector<std::string> cells;
    std::istringstream cs(line);
    std::string cell;
    while (std::getline(cs, cell, ',')) cells.push_back(cell);
    rows.push_back(cells);
  }
  return rows;
}

std::string percent(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f%%", 100.0 * v);
  return buf;
}

// One toy model, its token file and captures, shared by the tests of this suite (built once).
class Analyze : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir();
    model::ToyModelSpec spec;
    spec.hidden = 64;
    spec.layers = 3;
    spec.heads = 4;
    spec.kv_heads = 2;
    spec.intermediate = 96;
    spec.vocab = 200;
    spec.seed = 4;
    model::write_toy_model(spec, model_dir());
    spec.vocab = 201;  // another config, hence another config hash
    model::write_toy_model(spec, other_model_dir());
    model::write_tokens(*dir_ / "tokens.bin", model::toy_tokens(200, 5000, 1), 200,
                        model::TokenDType::kU16);
    const std::string tokens = *dir_ / "tokens.bin";
    data::capture_testing::capture_fixture(model_dir(), tokens, 4, 16, 1, 1, acts_dir());
    data::capture_testing::capture_fixture(model_dir(), tokens, 4, 16, 1, 1, partial_acts_dir(),
                                           {1});
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }

  static test::CommandResult analyze(const std::string& out, std::vector<std::string> extra = {},
                                     const std::string& model = model_dir(),
                                     const std::string& acts = acts_dir()) {
    std::vector<std::string> args = {"analyze", "--model", model,         "--acts", acts,
                                     "--out",   out,       "--log-level", "warn"};
    args = test::with_overrides(args, extra);
    return run_cskv(args);
  }

  static std::string model_dir() { return *dir_ / "model"; }
  static std::string other_model_dir() { return *dir_ / "other"; }
  static std::string acts_dir() { return *dir_ / "acts"; }
  static std::string partial_acts_dir() { return *dir_ / "acts-layer1"; }

  static test::TempDir* dir_;
};

test::TempDir* Analyze::dir_ = nullptr;

TEST_F(Analyze, WritesSpectraRanksReportAndPlots) {
  test::TempDir out;
  const auto r = analyze(out.path());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err, "");

  // The expected numbers, from stats.h5 and the weights with the library.
  const auto config = model::load_config(model_dir());
  const auto stats = data::read_stats(acts_dir() + "/stats.h5", config.hash());
  const auto weights = model::SafetensorsModel::open_dir(model_dir());
  const int64_t d = config.kv_dim();
  ASSERT_EQ(d, 32);
  ASSERT_EQ(stats.layers, (std::vector<int64_t>{0, 1, 2}));
  EXPECT_EQ(stats.token_count, 4 * 16);
  std::map<std::pair<int64_t, std::string>, at::Tensor> eigs;
  std::string ranks = "layer,kind,D,r90,r95,r99\n";
  double r90_share[2] = {0, 0};
  for (int64_t l : stats.layers) {
    for (auto kind : {trainer::KvKind::kKey, trainer::KvKind::kValue}) {
      const std::string name = trainer::kv_kind_name(kind);
      const at::Tensor e = trainer::layer_spectrum(weights, l, kind, stats.per_layer.at(l).gram);
      eigs[{l, name}] = e;
      const int64_t r90 = trainer::rank_for_energy(e, 0.90);
      ranks += std::to_string(l) + "," + name + "," + std::to_string(d) + "," +
               std::to_string(r90) + "," + std::to_string(trainer::rank_for_energy(e, 0.95)) + "," +
               std::to_string(trainer::rank_for_energy(e, 0.99)) + "\n";
      r90_share[kind == trainer::KvKind::kKey ? 0 : 1] += static_cast<double>(r90) / d / 3.0;
      EXPECT_GT(r90, 0);
      EXPECT_LE(r90, d);
    }
  }
  EXPECT_EQ(test::read_file(out / "ranks.csv"), ranks);

  const auto rows = read_csv(out / "spectrum.csv");
  ASSERT_EQ(rows.size(), 1u + 3u * 2u * static_cast<size_t>(d));
  EXPECT_EQ(rows[0], (std::vector<std::string>{"layer", "kind", "index", "eigenvalue", "normalized",
                                               "cumulative"}));
  for (size_t i = 1; i < rows.size(); ++i) {
    const auto& row = rows[i];
    ASSERT_EQ(row.size(), 6u) << "row " << i;
    const int64_t layer = std::stoll(row[0]), index = std::stoll(row[2]);
    EXPECT_EQ(index, static_cast<int64_t>((i - 1) % d)) << "row " << i;
    const at::Tensor& e = eigs.at({layer, row[1]});
    const double want = e[index].item<double>(), total = e.sum().item<double>();
    const double want_cumulative = e.narrow(0, 0, index + 1).sum().item<double>() / total;
    EXPECT_NEAR(std::stod(row[3]), want, 1e-12 * e[0].item<double>()) << "row " << i;
    EXPECT_NEAR(std::stod(row[4]), want / total, 1e-9) << "row " << i;
    EXPECT_NEAR(std::stod(row[5]), want_cumulative, 1e-9) << "row " << i;
  }
  EXPECT_NEAR(std::stod(rows.back()[5]), 1.0, 1e-9);

  const std::string finding = "K needs on average " + percent(r90_share[0]) +
                              " of D channels for 90% energy, V " + percent(r90_share[1]);
  const std::string md = test::read_file(out / "analyze.md");
  EXPECT_NE(md.find("**Finding:** " + finding + ".\n"), std::string::npos) << md;
  EXPECT_NE(md.find("| layer | D | K r90 | K r95 | K r99 | V r90 | V r95 | V r99 |"),
            std::string::npos);
  const auto rank_rows = read_csv(out / "ranks.csv");  // K and V rows of layer 2
  EXPECT_NE(
      md.find("| 2 | 32 | " + rank_rows[5][3] + " | " + rank_rows[5][4] + " | " + rank_rows[5][5] +
              " | " + rank_rows[6][3] + " | " + rank_rows[6][4] + " | " + rank_rows[6][5] + " |"),
      std::string::npos)
      << md;
  EXPECT_NE(r.out.find(finding + "\n"), std::string::npos) << r.out;
  // The toy model's keys are more compressible than its values, as the paper reports.
  EXPECT_LT(r90_share[0], r90_share[1]);

  for (const char* png : {"spectrum_k.png", "spectrum_v.png", "ranks.png"}) {
    const std::string bytes = test::read_file(out / png);
    EXPECT_GT(bytes.size(), 1000u) << png;
    EXPECT_EQ(bytes.substr(0, 8), std::string(kPngSignature, 8)) << png;
  }
  EXPECT_TRUE(fs::exists(out / "plots.gp"));
  EXPECT_FALSE(fs::exists(out / "plots.log"));
}

TEST_F(Analyze, LayerSubsetWithoutPlots) {
  test::TempDir out;
  const auto r = analyze(out.path(), {"--layers", "0,2", "--no-plots"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto rows = read_csv(out / "ranks.csv");
  ASSERT_EQ(rows.size(), 5u);
  EXPECT_EQ(rows[1][0] + rows[1][1] + rows[2][0] + rows[2][1], "0K0V");
  EXPECT_EQ(rows[3][0] + rows[3][1] + rows[4][0] + rows[4][1], "2K2V");
  EXPECT_EQ(read_csv(out / "spectrum.csv").size(), 1u + 2u * 2u * 32u);
  for (const char* f : {"spectrum_k.png", "spectrum_v.png", "ranks.png", "plots.gp"}) {
    EXPECT_FALSE(fs::exists(out / f)) << f;
  }
  EXPECT_EQ(test::read_file(out / "analyze.md").find(".png"), std::string::npos);
}

TEST_F(Analyze, OnlyCapturedLayersCanBeAnalysed) {
  test::TempDir out;
  auto r = analyze(out.path(), {"--no-plots"}, model_dir(), partial_acts_dir());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto rows = read_csv(out / "ranks.csv");
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[1][0], "1");
  r = analyze(out / "again", {"--layers", "0-1"}, model_dir(), partial_acts_dir());
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "cskv analyze: error: " + partial_acts_dir() +
                       "/stats.h5: layer 0 was not captured (--layers 0-1)\n");
  EXPECT_FALSE(fs::exists(out / "again"));
}

TEST_F(Analyze, StatisticsOfAnotherModelAreRefused) {
  test::TempDir out;
  const std::string want = model::load_config(other_model_dir()).hash();
  const std::string have = model::load_config(model_dir()).hash();
  ASSERT_NE(want, have);
  const auto r = analyze(out / "report", {}, other_model_dir());
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "cskv analyze: error: " + acts_dir() + "/stats.h5: model_config_hash is '" +
                       have + "', expected '" + want + "'\n");
  EXPECT_FALSE(fs::exists(out / "report"));
}

TEST_F(Analyze, MissingGnuplotIsNamedUnlessNoPlots) {
  test::TempDir out, empty_bin;
  const std::string saved = std::getenv("PATH") ? std::getenv("PATH") : "";
  ::setenv("PATH", empty_bin.path().c_str(), 1);
  const auto r = analyze(out / "plots");
  const auto no_plots = analyze(out / "no-plots", {"--no-plots"});
  ::setenv("PATH", saved.c_str(), 1);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err,
            "cskv analyze: error: gnuplot not found: install gnuplot-nox or pass --no-plots\n");
  EXPECT_FALSE(fs::exists(out / "plots"));
  EXPECT_EQ(no_plots.exit_code, 0) << no_plots.err;
  EXPECT_TRUE(fs::exists(out / "no-plots/ranks.csv"));
}

TEST_F(Analyze, RanksShareTheLayersAndAgreeOnGnuplot) {
  test::TempDir one, two;
  pipeline::AnalyzeOptions o;
  o.model_dir = model_dir();
  o.acts_dir = acts_dir();
  o.plots = false;
  o.out_dir = one.path();
  comm::LocalCommunicator local;
  const pipeline::AnalyzeReport alone = pipeline::run_analyze(o, local);
  ASSERT_EQ(alone.layers.size(), 3u);
  EXPECT_EQ(alone.kv_dim, 32);
  EXPECT_EQ(alone.token_count, 4 * 16);

  // Two ranks: the layers are shared, rank 0 alone writes the same bytes and reports.
  o.out_dir = two.path();
  std::vector<size_t> reported(2, 99);
  test::run_ranks(
      2,
      [&](comm::Communicator& comm) {
        reported[static_cast<size_t>(comm.rank())] = pipeline::run_analyze(o, comm).layers.size();
      },
      {}, kRankTimeoutS);
  EXPECT_EQ(reported, (std::vector<size_t>{3, 0}));
  for (const char* f : {"spectrum.csv", "ranks.csv", "analyze.md"}) {
    EXPECT_EQ(test::read_file(two / f), test::read_file(one / f)) << f;
  }
  const std::string summary = pipeline::analyze_summary(o, alone);
  const std::string last = "\nwrote " + two.path() + "/{spectrum.csv, ranks.csv, analyze.md}";
  EXPECT_EQ(summary.substr(0, 9), "analyze: ");
  ASSERT_GT(summary.size(), last.size());
  EXPECT_EQ(summary.substr(summary.size() - last.size()), last);

  // No gnuplot on rank 0: every rank fails with its message, before any file is written.
  test::TempDir empty_bin;
  const std::string saved = std::getenv("PATH") ? std::getenv("PATH") : "";
  ::setenv("PATH", empty_bin.path().c_str(), 1);
  o.plots = true;
  o.out_dir = two / "plots";
  std::vector<std::string> errors(2);
  test::run_ranks(
      2,
      [&](comm::Communicator& comm) {
        try {
          pipeline::run_analyze(o, comm);
        } catch (const Error& e) {
          errors[static_cast<size_t>(comm.rank())] = e.message();
        }
      },
      {}, kRankTimeoutS);
  ::setenv("PATH", saved.c_str(), 1);
  EXPECT_EQ(errors[0], "gnuplot not found: install gnuplot-nox or pass --no-plots");
  EXPECT_EQ(errors[1], errors[0]);
  EXPECT_FALSE(fs::exists(two / "plots"));
}

}  // namespace
}  // namespace cskv
