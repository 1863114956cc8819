// The model-side refusals at the CLI: a config.json field the forward does not implement, a size
// beyond the limits, --seq-len beyond max_position_embeddings, a FIFO as config.json, toy-model
// sizes beyond the generator's limit. One line, its exit status, nothing written or changed.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/toy_model.h"
#include "tests/pipeline/capture_test_util.h"
#include "tests/support/test_support.h"

namespace cskv {
namespace {

namespace fs = std::filesystem;

class ModelLimits : public ::testing::Test {
 protected:
  void SetUp() override {
    data::capture_testing::write_tiny_model_and_tokens(dir_.path());
    files_before_ = data::capture_testing::dir_bytes(dir_ / "model");
  }

  // config.json of the model with `key` set to value (the weights stay).
  void set_config(const std::string& key, const nlohmann::json& value) {
    auto j = nlohmann::json::parse(test::read_file(dir_ / "model/config.json"));
    j[key] = value;
    test::write_file(dir_ / "model/config.json", j.dump(2) + "\n");
    files_before_ = data::capture_testing::dir_bytes(dir_ / "model");
  }

  test::CommandResult capture(const std::vector<std::string>& extra = {}) {
    std::vector<std::string> a{
        "capture",    "--model", dir_ / "model", "--tokens",    dir_ / "tokens.bin",
        "--num-seqs", "4",       "--seq-len",    "64",          "--holdout-seqs",
        "0",          "--out",   dir_ / "acts",  "--log-level", "warn"};
    a.insert(a.end(), extra.begin(), extra.end());
    return test::run_cskv(a);
  }

  // Nothing was created next to the model, and the model's files are as they were.
  void expect_untouched() {
    EXPECT_FALSE(fs::exists(dir_ / "acts"));
    EXPECT_TRUE(files_before_ == data::capture_testing::dir_bytes(dir_ / "model"));
  }

  test::TempDir dir_;
  std::map<std::string, std::string> files_before_;
};

TEST_F(ModelLimits, HiddenActGeluIsRefusedByName) {
  set_config("hidden_act", "gelu");
  const auto r = capture();
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "cskv capture: error: " + (dir_ / "model/config.json") +
                       ": hidden_act 'gelu' is not implemented (cskv computes silu)\n");
  expect_untouched();
}

TEST_F(ModelLimits, ModelTypeContradictingArchitecturesIsRefused) {
  set_config("model_type", "qwen2");
  const auto r = capture();
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "cskv capture: error: " + (dir_ / "model/config.json") +
                       ": model_type 'qwen2' contradicts architectures [LlamaForCausalLM] "
                       "(expected model_type 'llama')\n");
  expect_untouched();
}

TEST_F(ModelLimits, SeqLenBeyondMaxPositionEmbeddingsIsRefused) {
  set_config("max_position_embeddings", 32);
  auto r = capture();
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.err,
            "cskv capture: usage error: --seq-len 64 exceeds the model's "
            "max_position_embeddings 32 (" +
                (dir_ / "model") + "/config.json)\n");
  expect_untouched();
  set_config("max_position_embeddings", -4);
  r = capture();
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "cskv capture: error: " + (dir_ / "model/config.json") +
                       ": key 'max_position_embeddings': expected a positive integer, found -4\n");
  expect_untouched();
}

TEST_F(ModelLimits, HugeLayerCountIsRefusedAtOnce) {
  set_config("num_hidden_layers", int64_t{1} << 40);
  const auto t0 = std::chrono::steady_clock::now();
  const auto r = capture();
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 30.0);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "cskv capture: error: " + (dir_ / "model/config.json") +
                       ": key 'num_hidden_layers': 1099511627776 exceeds cskv's limit of 4096\n");
  expect_untouched();
  // Within the limit but more than the files hold: the safetensors header speaks.
  set_config("num_hidden_layers", 4096);
  const auto r2 = capture();
  EXPECT_EQ(r2.exit_code, 1);
  EXPECT_EQ(r2.err, "cskv capture: error: " + (dir_ / "model") +
                        ": config.json has num_hidden_layers 4096, but the safetensors hold 2 "
                        "layer(s) (tensors model.layers.<n>.*)\n");
  expect_untouched();
}

TEST_F(ModelLimits, FifoAndDevZeroConfigAreRefusedWithoutBlocking) {
  fs::remove(dir_ / "model/config.json");
  ASSERT_EQ(::mkfifo((dir_ / "model/config.json").c_str(), 0644), 0);
  const auto t0 = std::chrono::steady_clock::now();
  auto r = capture();
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 30.0);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "cskv capture: error: " + (dir_ / "model/config.json") +
                       ": expected a regular config, found a FIFO\n");
  EXPECT_FALSE(fs::exists(dir_ / "acts"));
  fs::remove(dir_ / "model/config.json");
  fs::create_symlink("/dev/zero", dir_ / "model/config.json");
  r = capture();
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "cskv capture: error: " + (dir_ / "model/config.json") +
                       ": expected a regular config, found a character device\n");
  EXPECT_FALSE(fs::exists(dir_ / "acts"));
  // model.safetensors as a FIFO: refused at open, not waited on.
  fs::remove(dir_ / "model/config.json");
  fs::remove(dir_ / "model/model.safetensors");
  ASSERT_EQ(::mkfifo((dir_ / "model/model.safetensors").c_str(), 0644), 0);
  model::write_toy_model(data::capture_testing::tiny_toy_spec(), dir_ / "tmp-model");
  fs::copy_file(dir_ / "tmp-model/config.json", dir_ / "model/config.json");
  r = capture();
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "cskv capture: error: " + (dir_ / "model/model.safetensors") +
                       ": not a regular file\n");
  EXPECT_FALSE(fs::exists(dir_ / "acts"));
}

TEST_F(ModelLimits, ToyModelSizesBeyondTheGeneratorAreOneLine) {
  const std::string out = dir_ / "toy";
  // Each size has its own bound first, then their product is bounded.
  auto r = test::run_cskv({"toy-model", "--hidden", "1000000", "--out", out});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.err,
            "cskv toy-model: usage error: toy model: --hidden must be at most 16384, found "
            "1000000\n");
  EXPECT_FALSE(fs::exists(out));
  r = test::run_cskv({"toy-model", "--vocab", "9223372036854775807", "--out", out});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.err,
            "cskv toy-model: usage error: toy model: --vocab must be at most 1048576, found "
            "9223372036854775807\n");
  EXPECT_FALSE(fs::exists(out));
  r = test::run_cskv({"toy-model", "--hidden", "16384", "--layers", "256", "--out", out});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.err,
            "cskv toy-model: usage error: toy model: --hidden 16384, --layers 256, --intermediate "
            "688 and --vocab 1024 make about 2.83589e+11 parameters, more than the toy "
            "generator's limit of 2147483648\n");
  EXPECT_FALSE(fs::exists(out));
}

}  // namespace
}  // namespace cskv
