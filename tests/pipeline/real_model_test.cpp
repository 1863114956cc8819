// The real trained model in ../shared (stories260K: a Llama, GQA 8/4, head_dim 8, TinyStories) end
// to end through the CLI: capture from text through its SentencePiece tokenizer, train the uniform
// code (K4/V4, density 0.5) and --quant waterfill at the same bits, evaluate both on a capture of
// held-out TinyStories tokens; the KL stays within the bounds README's "On a real model" states.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/token_source.h"
#include "tests/support/test_support.h"

namespace cskv {
namespace {

namespace fs = std::filesystem;

const std::string kShared = std::string(CSKV_SOURCE_DIR) + "/../shared";
const std::string kModel = kShared + "/models/stories260K";
const std::string kData = kShared + "/data/tinystories";

void run_ok(std::vector<std::string> args) {
  args.insert(args.end(), {"--log-level", "warn"});
  const auto r = test::run_cskv(args);
  ASSERT_EQ(r.exit_code, 0) << args[0] << ": " << r.err;
}

// train + eval of one code; the eval report.
nlohmann::json train_and_eval(const test::TempDir& w, const std::string& name,
                              std::vector<std::string> code) {
  std::vector<std::string> train = {
      "train",          "--model", kModel,     "--acts", w / "acts", "--ckpt-dir", w / name,
      "--batch-tokens", "2048",    "--epochs", "2",      "--lr",     "1e-3"};
  train.insert(train.end(), code.begin(), code.end());
  run_ok(train);
  run_ok({"eval", "--model", kModel, "--acts", w / "heldout", "--compressor",
          w / name + "/compressor.safetensors", "--out", w / name + "-eval", "--decode", "32",
          "--memory-contexts", "1024", "--no-plots"});
  return nlohmann::json::parse(test::read_file(w / name + "-eval/report.json"));
}

TEST(RealModel, Stories260KFromTextTrainsAndEvaluatesWithinItsKlBounds) {
  if (!fs::exists(kModel + "/config.json") || !fs::exists(kData + "/calib.txt")) {
    GTEST_SKIP() << kShared << " is not here (it holds the real model; a user's clone lacks it)";
  }
  test::TempDir w;
  run_ok({"capture", "--model", kModel, "--text", kData + "/calib.txt", "--tokenizer",
          kModel + "/tokenizer.model", "--num-seqs", "64", "--seq-len", "128", "--holdout-seqs",
          "1", "--batch", "8", "--out", w / "acts"});
  run_ok({"capture", "--model", kModel, "--tokens", kData + "/heldout.u16", "--sampling",
          "contiguous", "--num-seqs", "1", "--seq-len", "128", "--holdout-seqs", "16", "--batch",
          "8", "--out", w / "heldout"});
  const auto uniform = train_and_eval(
      w, "uniform", {"--k-density", "0.5", "--v-density", "0.5", "--k-bits", "4", "--v-bits", "4"});
  const auto waterfill = train_and_eval(
      w, "waterfill",
      {"--quant", "waterfill", "--k-bits-per-token", "80", "--v-bits-per-token", "192"});
  const double kl_u = uniform.at("end_to_end").at("kl_mean");
  const double kl_w = waterfill.at("end_to_end").at("kl_mean");
  // The same bytes (3.76x smaller than fp16 at 1024 tokens), a fraction of the KL.
  EXPECT_NEAR(uniform.at("compression_ratio").get<double>(), 3.76, 0.01);
  // With the window of 32 half full (1040 tokens) and one token short of full (1055).
  const auto& mem = uniform.at("memory");
  ASSERT_EQ(mem.size(), 3u);
  EXPECT_EQ(mem[1].at("context"), 1040);
  EXPECT_NEAR(mem[1].at("ratio").get<double>(), 133120.0 / 37888.0, 1e-12);  // 3.51
  EXPECT_EQ(mem[2].at("context"), 1055);
  EXPECT_NEAR(mem[2].at("ratio").get<double>(), 135040.0 / 40768.0, 1e-12);  // 3.31
  EXPECT_EQ(waterfill.at("compression_ratio"), uniform.at("compression_ratio"));
  EXPECT_LT(kl_u, 0.06) << kl_u;
  EXPECT_LT(kl_w, 0.012) << kl_w;
  EXPECT_LT(kl_w, 0.3 * kl_u) << kl_w << " vs " << kl_u;
  EXPECT_GT(waterfill.at("end_to_end").at("top1_agreement").get<double>(),
            uniform.at("end_to_end").at("top1_agreement").get<double>());
}

// realtext.txt holds 260 TinyStories separated by blank lines; realtext.u16 is its reference
// token stream, BOS (1) before every story. --text's default layout gives exactly those ids.
TEST(RealModel, TinyStoriesTextTokenizesToItsReferenceStreamStoryByStory) {
  if (!fs::exists(kModel + "/tokenizer.model") || !fs::exists(kData + "/realtext.txt")) {
    GTEST_SKIP() << kShared << " is not here (it holds the real model; a user's clone lacks it)";
  }
  const auto ids = data::tokenize_text_file(kData + "/realtext.txt", kModel + "/tokenizer.model",
                                            true, data::TextDocs::kBlankLines);
  const data::TokenFile reference(kData + "/realtext.u16", data::TokenDtype::kU16, 512);
  ASSERT_EQ(static_cast<int64_t>(ids.size()), reference.size());
  for (int64_t i = 0; i < reference.size(); ++i) ASSERT_EQ(ids[i], reference[i]) << "token " << i;
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 1u), 260);
}

}  // namespace
}  // namespace cskv
