// Layer-parallel `cskv train` under mpirun: 1, 2 and 3 ranks give bitwise the same factors,
// metrics and merged checkpoint (a job's numbers never depend on which or how many ranks).
#include <gtest/gtest.h>

#include <cstdlib>

#include "model/toy_model.h"
#include "tests/pipeline/capture_test_util.h"
#include "tests/support/test_support.h"

namespace cskv {
namespace {

TEST(TrainMpi, OneTwoAndThreeRanksGiveIdenticalResults) {
  test::allow_mpirun_as_root();
  test::TempDir dir;
  const model::ToyModelSpec spec = data::capture_testing::tiny_toy_spec();
  model::write_toy_model(spec, dir / "model");
  model::write_tokens(dir / "tokens.bin", model::toy_tokens(256, 8000, 5), 256,
                      model::TokenDType::kU16);
  auto r = test::run_cskv({"capture", "--model", dir / "model", "--tokens", dir / "tokens.bin",
                           "--num-seqs", "8", "--seq-len", "64", "--holdout-seqs", "2", "--out",
                           dir / "acts", "--log-level", "warn"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::vector<std::string> train = {CSKV_BINARY_FOR_TESTS,
                                          "train",
                                          "--model",
                                          dir / "model",
                                          "--acts",
                                          dir / "acts",
                                          "--k-bits",
                                          "4",
                                          "--v-bits",
                                          "3",
                                          "--batch-tokens",
                                          "128",
                                          "--steps",
                                          "6",
                                          "--lr",
                                          "1e-3",
                                          "--rotate",
                                          "hadamard",
                                          "--log-level",
                                          "warn",
                                          "--ckpt-dir"};
  for (const int np : {1, 2, 3}) {
    std::vector<std::string> argv;
    if (np > 1) argv = {CSKV_MPIEXEC, "--oversubscribe", "-np", std::to_string(np)};
    argv.insert(argv.end(), train.begin(), train.end());
    argv.push_back(dir / ("ckpt" + std::to_string(np)));
    const auto t = test::run_command(argv);
    ASSERT_EQ(t.exit_code, 0) << "np " << np << ": " << t.err;
    // The sharded final checkpoint (one file per rank) merges into the same bits, too.
    const std::string ckpt = dir / ("ckpt" + std::to_string(np));
    const auto m =
        test::run_cskv({"merge", "--ckpt-dir", ckpt, "--out", ckpt + "/merged.safetensors"});
    ASSERT_EQ(m.exit_code, 0) << "np " << np << ": " << m.err;
  }
  for (const std::string file : {"compressor.safetensors", "metrics.md", "merged.safetensors"}) {
    const std::string one = test::read_file(dir / ("ckpt1/" + file));
    EXPECT_GT(one.size(), 100u) << file;
    EXPECT_TRUE(one == test::read_file(dir / ("ckpt2/" + file))) << file << ": np 2 differs";
    EXPECT_TRUE(one == test::read_file(dir / ("ckpt3/" + file))) << file << ": np 3 differs";
  }
}

}  // namespace
}  // namespace cskv
