// End-to-end tests of `cskv train`: toy model → `cskv capture` → `cskv train`, checked against the
// Eckart–Young optimum computed here, the budget vs uniform ranks, refusals, and determinism.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/device.h"
#include "data/capture_identity.h"
#include "data/checksum.h"
#include "data/hdf5_util.h"
#include "data/manifest.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/toy_model.h"
#include "tests/pipeline/capture_test_util.h"
#include "tests/support/flag_overrides.h"
#include "tests/support/test_support.h"
#include "trainer/spectrum.h"

namespace cskv {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test::run_cskv;

// Toy model (hidden 128, 2 layers, n_kv 2 × hd 32 → D = 64) with 32 + 4 captured sequences of 64
// tokens; the same model with another vocabulary (another config hash) and its capture.
class TrainCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir();
    model::ToyModelSpec spec = data::capture_testing::trainer_toy_spec(7);
    model::write_toy_model(spec, model_dir());
    spec.vocab = 513;
    model::write_toy_model(spec, other_model_dir());
    model::write_tokens(*dir_ / "tokens.bin", model::toy_tokens(512, 10000, 1), 512,
                        model::TokenDType::kU16);
    capture(model_dir(), acts_dir(), "32");
    capture(other_model_dir(), other_acts_dir(), "8");
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static void capture(const std::string& model, const std::string& out, const std::string& seqs) {
    const auto r = run_cskv({"capture", "--model", model, "--tokens", *dir_ / "tokens.bin",
                             "--num-seqs", seqs, "--seq-len", "64", "--holdout-seqs", "4",
                             "--batch", "4", "--out", out, "--log-level", "warn"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  // `cskv train` on the toy capture with 256-token batches; extra flags are appended.
  static test::CommandResult train(const std::string& ckpt, std::vector<std::string> extra,
                                   const std::string& acts = acts_dir()) {
    std::vector<std::string> args = {"train", "--model",    model_dir(), "--acts",
                                     acts,    "--ckpt-dir", ckpt,        "--batch-tokens",
                                     "256",   "--steps",    "4"};
    return run_cskv(test::with_overrides(args, extra));
  }
  static json metrics(const std::string& ckpt) {
    return json::parse(test::read_file(ckpt + "/metrics.json"));
  }

  static std::string model_dir() { return *dir_ / "model"; }
  static std::string other_model_dir() { return *dir_ / "other-model"; }
  static std::string acts_dir() { return *dir_ / "acts"; }
  static std::string other_acts_dir() { return *dir_ / "other-acts"; }

  static test::TempDir* dir_;
};

test::TempDir* TrainCli::dir_ = nullptr;

std::string format6g(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

TEST_F(TrainCli, FloorIsTheEckartYoungOptimumAndIsPrinted) {
  test::TempDir ckpt;
  const auto r = train(ckpt.path(), {"--k-density", "0.25", "--v-density", "0.5"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json m = metrics(ckpt.path());
  ASSERT_EQ(m["jobs"].size(), 4u);

  const auto split = data::capture_testing::read_split(acts_dir(), "train");
  const auto weights = model::SafetensorsModel::open_dir(model_dir());
  for (const auto& job : m["jobs"]) {
    const int64_t layer = job["layer"].get<int64_t>();
    const auto kind = job["kind"] == "K" ? trainer::KvKind::kKey : trainer::KvKind::kValue;
    const int64_t rank = job["rank"].get<int64_t>();
    EXPECT_EQ(rank, kind == trainer::KvKind::kKey ? 16 : 32);
    std::vector<at::Tensor> rows;
    for (const auto& [id, layers] : split.x) rows.push_back(layers.at(layer));
    const at::Tensor x = at::cat(rows, 0).to(at::kDouble);
    ASSERT_EQ(x.size(0), 32 * 64);
    const at::Tensor w = weights.get(trainer::kv_weight_name(layer, kind)).to(at::kDouble);
    const at::Tensor sq = at::linalg_svdvals(at::mm(x, w.t())).pow(2);
    const double optimum =
        sq.narrow(0, rank, 64 - rank).sum().item<double>() / sq.sum().item<double>();
    const double floor = job["floor"].get<double>();
    const double init = job["train_error_init"].get<double>();
    EXPECT_NEAR(floor, optimum, 1e-9 * optimum) << layer << " " << job["kind"];
    EXPECT_NEAR(init, optimum, 1e-6 * optimum) << layer << " " << job["kind"];
    // The log line prints the same floor.
    const std::string line = "layer " + std::to_string(layer) + " " +
                             job["kind"].get<std::string>() + " (rank " + std::to_string(rank) +
                             "): 16-bit floor " + format6g(floor) + ", init train error " +
                             format6g(init);
    EXPECT_NE(r.err.find(line), std::string::npos) << line << "\n" << r.err;
  }
}

// --device cuda with no GPU visible: one line naming what the CUDA runtime said, before any work
// (train, eval and run share the flag and the message).
TEST_F(TrainCli, CudaWithoutAGpuIsOneLineNamingWhatWasFound) {
  if (device::visible_gpus() > 0) GTEST_SKIP() << "a GPU is visible; bench/gpu_check.sh runs it";
  std::string why;
  device::visible_gpus(&why);
  const std::string cause = device::cuda_compiled()
                                ? "no CUDA GPU is visible to this process (" + why + ")"
                                : std::string("this cskv was built without CUDA");
  test::TempDir ckpt;
  auto r = train(ckpt.path(), {"--device", "cuda"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.err, "cskv train: usage error: --device cuda: " + cause + "\n");
  EXPECT_TRUE(fs::is_empty(ckpt.path()));
  r = test::run_cskv({"eval", "--model", model_dir(), "--acts", acts_dir(), "--compressor",
                      ckpt / "compressor.safetensors", "--out", ckpt / "eval", "--device", "cuda",
                      "--no-plots"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.err, "cskv eval: usage error: --device cuda: " + cause + "\n");
  r = train(ckpt.path(), {"--device", "tpu"});
  EXPECT_EQ(r.err, "cskv train: usage error: --device: expected cpu|cuda, found 'tpu'\n");
  r = train(ckpt.path(), {"--precision", "fp16"});
  EXPECT_EQ(r.err, "cskv train: usage error: --precision: expected fp32|tf32|bf16, found 'fp16'\n");
  r = train(ckpt.path(), {"--precision", "tf32"});
  EXPECT_EQ(r.err,
            "cskv train: usage error: --precision tf32: TF32 is a CUDA tensor-core format; on the "
            "CPU use fp32 or bf16\n");
}

TEST_F(TrainCli, BudgetBeatsUniformRanksOfTheSameWidth) {
  // 0.5 of 2 layers × (K + V) × D 64 = 128 channels, as density 0.5 (32 per factor) spends them.
  test::TempDir uniform, budget;
  // --lr 1e-12: the initialisations compared (--lr 0 is refused: it trains nothing).
  const std::vector<std::string> common = {"--k-bits", "4", "--v-bits", "4", "--lr", "1e-12"};
  auto args = common;
  args.insert(args.end(), {"--k-density", "0.5", "--v-density", "0.5"});
  auto r = train(uniform.path(), args);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  args = common;
  args.insert(args.end(), {"--budget", "0.5"});
  r = train(budget.path(), args);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  struct Sums {
    int64_t width = 0;
    double floor = 0, holdout = 0, holdout_q = 0;
  };
  auto sums = [](const json& m) {
    Sums s;
    for (const auto& j : m["jobs"]) {
      s.width += j["rank"].get<int64_t>();
      s.floor += j["floor"].get<double>();
      s.holdout += j["holdout_error_16bit"].get<double>();
      s.holdout_q += j["holdout_error_quantized"].get<double>();
    }
    return s;
  };
  const Sums u = sums(metrics(uniform.path())), b = sums(metrics(budget.path()));
  std::printf(
      "[ numbers  ] summed error, uniform vs budget: floor %.5f vs %.5f, held-out 16-bit %.5f vs "
      "%.5f, held-out 4-bit %.5f vs %.5f\n",
      u.floor, b.floor, u.holdout, b.holdout, u.holdout_q, b.holdout_q);
  EXPECT_EQ(u.width, 128);
  EXPECT_EQ(b.width, 128);
  EXPECT_LT(b.floor, 0.9 * u.floor);
  EXPECT_LT(b.holdout, 0.9 * u.holdout);
  EXPECT_LT(b.holdout_q, 0.95 * u.holdout_q);
}

TEST_F(TrainCli, BadInputsGiveExactMessages) {
  test::TempDir ckpt;
  auto expect_error = [&](const std::vector<std::string>& extra, int code, const std::string& msg,
                          const std::string& acts) {
    test::TempDir fresh;  // a failed run may leave a checkpoint that the next one would resume
    const auto r = train(fresh.path(), extra, acts);
    EXPECT_FALSE(fs::exists(fresh / "compressor.safetensors")) << msg;
    EXPECT_EQ(r.exit_code, code) << r.err;
    EXPECT_TRUE(data::capture_testing::has_line(r.err, msg)) << "expected: " << msg << "\n"
                                                             << r.err;
  };
  const std::string acts = acts_dir();
  expect_error({"--k-density", "0"}, 2,
               "cskv train: usage error: --k-density: expected a value in (0, 1], found 0", acts);
  expect_error({"--v-density", "1.5"}, 2,
               "cskv train: usage error: --v-density: expected a value in (0, 1], found 1.5", acts);
  expect_error({"--budget", "0.5", "--rank-multiple", "128"}, 2,
               "cskv train: usage error: --rank-multiple: expected a divisor of D = 64, found 128",
               acts);
  expect_error({"--k-bits", "5"}, 2,
               "cskv train: usage error: --k-bits: expected one of 2, 3, 4, 8, 16, found 5", acts);
  expect_error({"--v-bits", "1"}, 2,
               "cskv train: usage error: --v-bits: expected one of 2, 3, 4, 8, 16, found 1", acts);
  expect_error({"--batch-tokens", "100", "--k-bits", "4"}, 2,
               "cskv train: usage error: --batch-tokens 100 is not a multiple of --window 32",
               acts);

  // Density 1 keeps every channel (r = D): the floor is 0. Batches that do not fill a window are
  // fine at 16 key bits.
  auto r = train(ckpt.path(), {"--k-density", "1", "--batch-tokens", "100"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const auto& j : metrics(ckpt.path())["jobs"]) {
    if (j["kind"] == "K") {
      EXPECT_EQ(j["rank"].get<int64_t>(), 64);
      EXPECT_EQ(j["floor"].get<double>(), 0.0);
    }
  }

  // Activations of another model: stats.h5 is refused first; this model's stats.h5 belongs to
  // another capture (its capture_identity); with this capture's stats.h5 and capture.json the
  // shards are refused.
  const std::string hash = model::load_config(model_dir()).hash();
  const std::string other_hash = model::load_config(other_model_dir()).hash();
  ASSERT_NE(hash, other_hash);
  expect_error({}, 1,
               "cskv train: error: " + other_acts_dir() + "/stats.h5: model_config_hash is '" +
                   other_hash + "', expected '" + hash + "'",
               other_acts_dir());
  test::TempDir mixed;
  fs::copy(other_acts_dir(), mixed.path(), fs::copy_options::recursive);
  fs::copy_file(acts_dir() + "/stats.h5", mixed / "stats.h5", fs::copy_options::overwrite_existing);
  std::string shard;
  for (const auto& e : data::read_manifest(mixed.path())) {
    if (e.split == "train") shard = mixed / e.file;
  }
  expect_error({}, 1,
               "cskv train: error: " + mixed / "stats.h5" + ": capture_identity is " +
                   *data::read_capture_identity(acts_dir()) + ", but " + mixed / "capture.json" +
                   " gives " + *data::read_capture_identity(other_acts_dir()) +
                   " (stats.h5 belongs to another capture; re-run cskv capture)",
               mixed.path());
  fs::copy_file(acts_dir() + "/capture.json", mixed / "capture.json",
                fs::copy_options::overwrite_existing);
  expect_error({}, 1,
               "cskv train: error: " + shard + ": model_config_hash is '" + other_hash +
                   "', expected '" + hash + "' (activations captured from another model or config)",
               mixed.path());
}

TEST_F(TrainCli, NonFiniteActivationIsNamedWithLayerAndShard) {
  test::TempDir nan;
  fs::copy(acts_dir(), nan.path(), fs::copy_options::recursive);
  const auto entries = data::read_manifest(nan.path());
  const data::ManifestEntry* train_entry = nullptr;
  for (const auto& e : entries) {
    if (e.split == "train") train_entry = &e;
  }
  ASSERT_NE(train_entry, nullptr);
  const std::string shard = nan / train_entry->file;
  {
    // One float16 NaN (0x7e00) at layer 1, row 1000, channel 77, written in place.
    data::h5::Guard g;
    data::h5::Handle file(H5Fopen(shard.c_str(), H5F_ACC_RDWR, H5P_DEFAULT),
                          data::h5::Handle::Kind::kFile);
    ASSERT_TRUE(file.valid());
    data::h5::Handle ds(H5Dopen2(file.get(), "/layers/1/x", H5P_DEFAULT),
                        data::h5::Handle::Kind::kDataset);
    ASSERT_TRUE(ds.valid());
    data::h5::Handle space(H5Dget_space(ds.get()), data::h5::Handle::Kind::kDataspace);
    const hsize_t start[2] = {1000, 77}, count[2] = {1, 1};
    ASSERT_GE(H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, start, nullptr, count, nullptr), 0);
    data::h5::Handle mem(H5Screate_simple(2, count, nullptr), data::h5::Handle::Kind::kDataspace);
    const uint16_t nan16 = 0x7e00;
    ASSERT_GE(
        H5Dwrite(ds.get(), data::h5::float16_type(), mem.get(), space.get(), H5P_DEFAULT, &nan16),
        0);
    ds.close(shard, "/layers/1/x");
    file.close(shard, "");
  }
  ASSERT_EQ(fs::file_size(shard), train_entry->bytes);  // the size still matches
  // As if the capture had stored the NaN: the manifest records the file's checksum (a changed
  // file with the old checksum is refused before any row is read).
  std::vector<data::ManifestEntry> updated = entries;
  for (auto& e : updated) {
    if (e.file == train_entry->file) e.checksum = data::format_checksum(data::xxh64_file(shard));
  }
  data::write_manifest(nan.path(), updated);
  const auto r = train(nan.path() + "/ckpt", {}, nan.path());
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_TRUE(data::capture_testing::has_line(
      r.err, "cskv train: error: " + shard +
                 ": layer 1 row 1000 channel 77 is nan (non-finite activation)"))
      << r.err;
  // Layer 0 is clean and trains.
  const auto ok = train(nan.path() + "/ckpt-layer0", {"--layers", "0"}, nan.path());
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
}

TEST_F(TrainCli, RunsAreBitwiseReproducibleAcrossRunsAndThreadCounts) {
  test::TempDir a, b, c;
  const std::vector<std::string> args = {"--k-bits", "4",       "--v-bits", "3",        "--lr",
                                         "1e-3",     "--steps", "24",       "--rotate", "hadamard"};
  auto with_threads = [&](const std::string& threads) {
    auto v = args;
    v.insert(v.end(), {"--threads", threads});
    return v;
  };
  ASSERT_EQ(train(a.path(), with_threads("1")).exit_code, 0);
  ASSERT_EQ(train(b.path(), with_threads("1")).exit_code, 0);
  ASSERT_EQ(train(c.path(), with_threads("2")).exit_code, 0);
  const std::string fa = test::read_file(a / "compressor.safetensors");
  EXPECT_GT(fa.size(), 2u * 2 * (32 * 128 + 64 * 32) * 4);  // 4 float32 factor pairs
  EXPECT_TRUE(fa == test::read_file(b / "compressor.safetensors"));
  // Another thread count is another resolved config (README): OpenBLAS's threaded kernels may
  // round differently (float64 LAPACK everywhere; float32 GEMM too on some CPUs, e.g. AMD EPYC),
  // so the factors agree to float32 rounding, not bitwise.
  const auto file_a = model::SafetensorsFile::open(a / "compressor.safetensors");
  const auto file_c = model::SafetensorsFile::open(c / "compressor.safetensors");
  ASSERT_EQ(file_a->header().tensors.size(), file_c->header().tensors.size());
  for (const auto& [name, entry] : file_a->header().tensors) {
    const at::Tensor ta = file_a->get(name).to(at::kDouble);
    const at::Tensor tc = file_c->get(name).to(at::kDouble);
    EXPECT_LE((ta - tc).abs().max().item<double>(), 1e-4 * ta.abs().max().item<double>()) << name;
  }
  // The metrics of a repeated run agree bitwise, apart from the timings; with 2 threads to the
  // rounding of the factors above.
  const json ma = metrics(a.path()), mb = metrics(b.path()), mc = metrics(c.path());
  ASSERT_EQ(ma["jobs"].size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    for (const auto& [key, value] : ma["jobs"][i].items()) {
      if (key == "seconds") continue;
      EXPECT_EQ(value, mb["jobs"][i][key]) << key << " of job " << i;
      if (value.is_number_float()) {
        EXPECT_NEAR(value.get<double>(), mc["jobs"][i][key].get<double>(),
                    1e-4 * std::abs(value.get<double>()))
            << key << " of job " << i;
      } else {
        EXPECT_EQ(value, mc["jobs"][i][key]) << key << " of job " << i;
      }
    }
  }
}

}  // namespace
}  // namespace cskv
