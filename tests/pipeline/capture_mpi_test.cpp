// Multi-rank tests of `cskv capture` (spawn `mpirun -np N`, oversubscribed): stored activations
// bitwise independent of the world size and --batch, statistics vs the shards, resume after kill.
#include <cstdlib>

#include "tests/pipeline/capture_test_util.h"

namespace cskv::data {
namespace {

using namespace capture_testing;

class CaptureMpiTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    test::allow_mpirun_as_root();
    dir_ = new test::TempDir();
    make_model_and_tokens(dir_->path(), toy_spec(2, 48, 4, 2, 100, 512), 50000);
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  void SetUp() override {
    const std::string mpiexec = CSKV_MPIEXEC;
    ASSERT_FALSE(mpiexec.empty()) << "MPIEXEC_EXECUTABLE was not found at configure time";
    ASSERT_TRUE(fs::exists(mpiexec)) << "mpirun not found at " << mpiexec;
  }
  // `cskv capture` as one process (np 0) or under `mpirun -np np`.
  static std::vector<std::string> command(int np, const std::string& out,
                                          const std::vector<std::string>& sizes) {
    std::vector<std::string> a;
    if (np > 0) a = {CSKV_MPIEXEC, "--oversubscribe", "-np", std::to_string(np)};
    const std::vector<std::string> cap{cskv_binary(),   "capture",  "--model",
                                       *dir_ / "model", "--tokens", *dir_ / "tokens.bin",
                                       "--out",         out};
    a.insert(a.end(), cap.begin(), cap.end());
    a.insert(a.end(), sizes.begin(), sizes.end());
    return a;
  }

  test::TempDir tmp_;

 private:
  static test::TempDir* dir_;
};
test::TempDir* CaptureMpiTest::dir_ = nullptr;

TEST_F(CaptureMpiTest, WorldSizesOneTwoThreeStoreBitwiseIdenticalActivations) {
  // 7 training + 3 held-out sequences in batches of 2: every world size batches them differently.
  const std::vector<std::string> sizes{"--num-seqs",     "7", "--seq-len", "16",
                                       "--holdout-seqs", "3", "--batch",   "2"};
  std::map<int, std::string> dirs;
  for (const int np : {0, 2, 3}) {
    dirs[np] = tmp_ / ("np" + std::to_string(np));
    const auto r = test::run_command(command(np, dirs[np], sizes));
    ASSERT_EQ(r.exit_code, 0) << "np " << np << ":\n" << r.out << r.err;
    expect_stats_match_shards(dirs[np], 7 * 16);
  }
  EXPECT_EQ(read_split(dirs[3], "train").files,
            (std::vector<std::string>{"shard-00000-of-00003.h5", "shard-00001-of-00003.h5",
                                      "shard-00002-of-00003.h5"}));
  for (const std::string split : {"train", "holdout"}) {
    const SplitContents one = read_split(dirs[0], split);
    EXPECT_EQ(one.x.size(), split == "train" ? 7u : 3u);
    for (const int np : {2, 3}) {
      expect_same_sequences(one, read_split(dirs[np], split),
                            split + ": 1 process vs np " + std::to_string(np));
    }
  }
  // Statistics are summed in a fixed order (per sequence, in id order), so they are bitwise the
  // same for every world size and batching.
  const StatsFile s1 = read_stats(dirs[0] + "/stats.h5");
  for (const int np : {2, 3}) {
    const StatsFile sn = read_stats(dirs[np] + "/stats.h5");
    for (const int64_t l : s1.layers) {
      EXPECT_TRUE(at::equal(sn.per_layer.at(l).gram, s1.per_layer.at(l).gram))
          << "np " << np << " layer " << l;
      EXPECT_TRUE(at::equal(sn.per_layer.at(l).abs_mean, s1.per_layer.at(l).abs_mean))
          << "np " << np << " layer " << l;
    }
  }
}

TEST_F(CaptureMpiTest, HoldoutSmallerThanRanksIsAUsageError) {
  const std::string out = tmp_ / "acts";
  const auto r = test::run_command(command(
      2, out, {"--num-seqs", "4", "--seq-len", "16", "--holdout-seqs", "1", "--batch", "2"}));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_TRUE(has_line(r.err,
                       "cskv capture: usage error: --holdout-seqs 1 is smaller than the number of "
                       "ranks 2 (use 0 or at least 2)"))
      << r.err;
  EXPECT_FALSE(fs::exists(out + "/manifest.json"));
}

// SIGKILLs mpirun and its ranks once some but not all shards are listed, resumes with -np 2 and
// expects exactly the bytes of an uninterrupted -np 2 run.
TEST_F(CaptureMpiTest, ResumeAfterSigkillOfMpirunEqualsUninterruptedRun) {
  // Per rank: 1 training sequence, then 6 held-out ones of 512 tokens (the window to kill in).
  const std::vector<std::string> sizes{"--num-seqs",     "2",  "--seq-len", "512",
                                       "--holdout-seqs", "12", "--batch",   "1"};
  const std::string killed = tmp_ / "killed", whole = tmp_ / "whole";
  {
    Child child(command(2, killed, sizes), tmp_ / "killed.log");
    const bool ready = wait_for(
        child,
        [&] {
          const auto files = listed_files(killed);
          return !files.empty() && files.size() < 4 && !fs::exists(killed + "/stats.h5");
        },
        90);
    ASSERT_TRUE(ready) << "no shard was ever listed while others were missing; log:\n"
                       << child.log();
    child.kill_all();
    const auto files = listed_files(killed);
    ASSERT_FALSE(files.empty());
    ASSERT_LT(files.size(), 4u) << "the capture finished before it could be killed";
    ASSERT_FALSE(fs::exists(killed + "/stats.h5"));
  }
  auto r = test::run_command(command(2, killed, sizes));
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("reused by rank 0"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("0 shard(s) written"), std::string::npos) << r.out;
  r = test::run_command(command(2, whole, sizes));
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  expect_same_bytes(killed, whole);
}

}  // namespace
}  // namespace cskv::data
