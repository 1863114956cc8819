// Model identity is the config hash and the weights fingerprint: two toy models with the same
// config.json and other seeds must not be mixed up by capture (resume), train, a train resume or
// eval. Every refusal is one exact line, exit 1, and leaves every pre-existing file as it was.
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/safetensors.h"
#include "model/toy_model.h"
#include "model/weights.h"
#include "tests/pipeline/capture_test_util.h"
#include "tests/support/test_support.h"

namespace cskv {
namespace {

namespace fs = std::filesystem;
using data::capture_testing::has_line;

// Every regular file under dir, recursively (relative path → bytes).
std::map<std::string, std::string> tree_bytes(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) {
      out[fs::relative(e.path(), dir).string()] = test::read_file(e.path().string());
    }
  }
  return out;
}

std::string fingerprint_of(const std::string& model_dir) {
  const auto config = model::load_config(model_dir);
  return model::weights_fingerprint(config, model::SafetensorsModel::open_dir(model_dir));
}

// Model "a" (seed 0) and model "b" (seed 1): the same config.json, other weights. acts/ is a's
// capture, acts-b/ b's, ckpt/ a's training run (checkpoints, compressor, metrics).
class ModelIdentity : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir();
    model::ToyModelSpec spec = data::capture_testing::tiny_toy_spec();
    model::write_toy_model(spec, *dir_ / "a");
    spec.seed = 1;
    model::write_toy_model(spec, *dir_ / "b");
    model::write_tokens(*dir_ / "tokens.bin", model::toy_tokens(256, 20000, 7), 256,
                        model::TokenDType::kU16);
    ASSERT_EQ(capture("a", *dir_ / "acts").exit_code, 0);
    ASSERT_EQ(capture("b", *dir_ / "acts-b").exit_code, 0);
    const auto r = train("a", *dir_ / "acts", *dir_ / "ckpt");
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }

  static std::string model(const std::string& name) { return *dir_ / name; }
  static test::CommandResult capture(const std::string& name, const std::string& out,
                                     const std::vector<std::string>& extra = {}) {
    std::vector<std::string> a{
        "capture",    "--model", model(name), "--tokens",    *dir_ / "tokens.bin",
        "--num-seqs", "8",       "--seq-len", "64",          "--holdout-seqs",
        "2",          "--out",   out,         "--log-level", "warn"};
    a.insert(a.end(), extra.begin(), extra.end());
    return test::run_cskv(a);
  }
  static test::CommandResult train(const std::string& name, const std::string& acts,
                                   const std::string& ckpt) {
    return test::run_cskv({"train", "--model", model(name), "--acts", acts, "--steps", "4",
                           "--batch-tokens", "128", "--save-every", "2", "--ckpt-dir", ckpt,
                           "--log-level", "warn"});
  }
  static test::CommandResult eval(const std::string& name, const std::string& acts,
                                  const std::string& compressor, const std::string& out) {
    return eval_dir(model(name), acts, compressor, out);
  }
  static test::CommandResult eval_dir(const std::string& model_dir, const std::string& acts,
                                      const std::string& compressor, const std::string& out) {
    return test::run_cskv({"eval",        "--model",
                           model_dir,     "--acts",
                           acts,          "--compressor",
                           compressor,    "--context",
                           "32",          "--decode",
                           "8",           "--sequences",
                           "1",           "--memory-contexts",
                           "128",         "--no-plots",
                           "--out",       out,
                           "--log-level", "warn"});
  }

  static test::TempDir* dir_;
  test::TempDir tmp_;
};
test::TempDir* ModelIdentity::dir_ = nullptr;

TEST_F(ModelIdentity, SameConfigOtherSeedGivesOtherFingerprint) {
  EXPECT_EQ(model::load_config(model("a")).hash(), model::load_config(model("b")).hash());
  EXPECT_NE(fingerprint_of(model("a")), fingerprint_of(model("b")));
  const auto capture_json = nlohmann::json::parse(test::read_file(*dir_ / "acts/capture.json"));
  EXPECT_EQ(capture_json.at("model_weights_fingerprint"), fingerprint_of(model("a")));
  const auto compressor = model::SafetensorsFile::open(*dir_ / "ckpt/compressor.safetensors");
  EXPECT_EQ(compressor->header().metadata.at("model_weights_fingerprint"),
            fingerprint_of(model("a")));
}

TEST_F(ModelIdentity, CaptureResumeWithOtherWeightsIsRefused) {
  const auto before = tree_bytes(*dir_ / "acts");
  const auto r = capture("b", *dir_ / "acts");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "cskv capture: error: " + (*dir_ / "acts") +
                       " holds a capture with other settings (model_weights_fingerprint: \"" +
                       fingerprint_of(model("a")) + "\" -> \"" + fingerprint_of(model("b")) +
                       "\"); use another --out or --overwrite\n");
  EXPECT_TRUE(before == tree_bytes(*dir_ / "acts"));
}

TEST_F(ModelIdentity, TrainOnOtherWeightsCaptureIsRefused) {
  const auto before = tree_bytes(*dir_ / "acts");
  const std::string ckpt = tmp_ / "ckpt";
  const auto r = train("b", *dir_ / "acts", ckpt);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "cskv train: error: " + (*dir_ / "acts") +
                       " holds activations of other weights (captured from weights " +
                       fingerprint_of(model("a")) + ", the model's are " +
                       fingerprint_of(model("b")) + "); capture this model into another --out\n");
  EXPECT_TRUE(before == tree_bytes(*dir_ / "acts"));
  EXPECT_FALSE(fs::exists(ckpt));
}

// a's run in ckpt/, then acts/ replaced by b's capture: a resume with b must not continue a's
// checkpoints (and rewrite metrics.json with b's errors).
TEST_F(ModelIdentity, TrainResumeWithOtherWeightsIsRefused) {
  const std::string acts = tmp_ / "acts", ckpt = tmp_ / "ckpt";
  fs::copy(*dir_ / "acts", acts);
  auto r = train("a", acts, ckpt);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  fs::remove_all(acts);
  fs::copy(*dir_ / "acts-b", acts);
  const auto before = tree_bytes(ckpt);
  r = train("b", acts, ckpt);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "cskv train: error: " + ckpt +
                       " holds a run with other settings (model_weights_fingerprint: " +
                       fingerprint_of(model("a")) + " -> " + fingerprint_of(model("b")) +
                       "); use another --ckpt-dir\n");
  EXPECT_TRUE(before == tree_bytes(ckpt));
}

TEST_F(ModelIdentity, EvalOfOtherWeightsCompressorIsRefused) {
  const std::string compressor = *dir_ / "ckpt/compressor.safetensors";
  const std::string out = tmp_ / "report";
  auto r = eval("b", *dir_ / "acts-b", compressor, out);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "cskv eval: error: " + compressor + ": trained on weights " +
                       fingerprint_of(model("a")) + ", but the weights of " + model("b") + " are " +
                       fingerprint_of(model("b")) +
                       " (same config.json, other weights: another model)\n");
  EXPECT_FALSE(fs::exists(out));
  // a's compressor and model with b's activations.
  r = eval("a", *dir_ / "acts-b", compressor, out);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "cskv eval: error: " + (*dir_ / "acts-b") +
                       " holds activations of other weights (captured from weights " +
                       fingerprint_of(model("b")) + ", the model's are " +
                       fingerprint_of(model("a")) + "); capture this model into another --out\n");
  EXPECT_FALSE(fs::exists(out));
}

TEST_F(ModelIdentity, AnalyzeOfOtherWeightsCaptureIsRefused) {
  const auto before = tree_bytes(*dir_ / "acts");
  const std::string out = tmp_ / "analysis";
  const auto r = test::run_cskv({"analyze", "--model", model("b"), "--acts", *dir_ / "acts",
                                 "--no-plots", "--out", out, "--log-level", "warn"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "cskv analyze: error: " + (*dir_ / "acts") +
                       " holds activations of other weights (captured from weights " +
                       fingerprint_of(model("a")) + ", the model's are " +
                       fingerprint_of(model("b")) + "); capture this model into another --out\n");
  EXPECT_TRUE(before == tree_bytes(*dir_ / "acts"));
  EXPECT_FALSE(fs::exists(out));
}

// max_position_embeddings is no part of the identity (it changes no activation), but it bounds
// eval's positions.
TEST_F(ModelIdentity, EvalContextBeyondMaxPositionEmbeddingsIsRefused) {
  const std::string m = tmp_ / "a";
  fs::copy(model("a"), m);
  auto j = nlohmann::json::parse(test::read_file(m + "/config.json"));
  j["max_position_embeddings"] = 40;
  test::write_file(m + "/config.json", j.dump(2) + "\n");
  const auto r = eval_dir(m, *dir_ / "acts", *dir_ / "ckpt/compressor.safetensors", tmp_ / "out");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.err,
            "cskv eval: usage error: --context 32 + --decode 8 + 1 = 41 positions exceed the "
            "model's max_position_embeddings 40 (" +
                m + "/config.json)\n");
  EXPECT_FALSE(fs::exists(tmp_ / "out"));
}

// capture.json from before the fingerprint: train and a capture rerun refuse with a hint;
// a compressor from before it is evaluated with a warning.
TEST_F(ModelIdentity, FilesWithoutTheFingerprint) {
  const std::string acts = tmp_ / "acts";
  fs::copy(*dir_ / "acts", acts);
  auto cj = nlohmann::json::parse(test::read_file(acts + "/capture.json"));
  cj.erase("model_weights_fingerprint");
  test::write_file(acts + "/capture.json", cj.dump(2) + "\n");
  const auto before = tree_bytes(acts);

  auto r = train("a", acts, tmp_ / "ckpt");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "cskv train: error: " + acts +
                       "/capture.json records no model_weights_fingerprint (a capture from before "
                       "cskv recorded the model's weights); capture again (cskv capture --out " +
                       acts + " --overwrite)\n");
  r = capture("a", acts);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "cskv capture: error: " + acts +
                       " holds a capture with other settings (model_weights_fingerprint: "
                       "(absent) -> \"" +
                       fingerprint_of(model("a")) + "\"); use another --out or --overwrite\n");
  fs::remove(acts + "/capture.json");
  r = train("a", acts, tmp_ / "ckpt");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "cskv train: error: " + acts +
                       "/capture.json is missing: cannot tell which model's weights the "
                       "activations come from; capture again (cskv capture --out " +
                       acts + " --overwrite)\n");
  EXPECT_FALSE(fs::exists(tmp_ / "ckpt"));

  // The compressor without the key: rewritten with the same tensors and the rest of the metadata.
  const auto file = model::SafetensorsFile::open(*dir_ / "ckpt/compressor.safetensors");
  model::NamedTensors tensors;
  for (const auto& [name, e] : file->header().tensors) tensors.emplace_back(name, file->get(name));
  model::Metadata meta = file->header().metadata;
  meta.erase("model_weights_fingerprint");
  const std::string old = tmp_ / "old.safetensors";
  model::write_safetensors(old, tensors, meta);
  r = eval("a", *dir_ / "acts", old, tmp_ / "report");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find(old +
                       ": records no model_weights_fingerprint (written before cskv recorded the "
                       "model's weights): cannot check that it was trained on the weights of " +
                       model("a")),
            std::string::npos)
      << r.err;
}

}  // namespace
}  // namespace cskv
