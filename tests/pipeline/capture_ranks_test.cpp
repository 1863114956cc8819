// In-process multi-rank tests of the capture stage's agreements (tests/support run_ranks): rank
// 0's verdict on --out reaches every rank, so all stop together or raise the same error.
#include <array>

#include "comm/local_communicator.h"
#include "pipeline/capture.h"
#include "tests/pipeline/capture_test_util.h"
#include "tests/support/thread_communicator.h"

namespace cskv::pipeline {
namespace {

using namespace cskv::data::capture_testing;

class CaptureRanksTest : public ::testing::Test {
 protected:
  void SetUp() override {
    make_model_and_tokens(tmp_.path(), toy_spec(2, 32, 4, 2, 64, 256), 4000);
    options_.model_dir = tmp_ / "model";
    options_.tokens_path = tmp_ / "tokens.bin";
    options_.token_dtype = data::TokenDtype::kU16;
    options_.num_seqs = 6;
    options_.seq_len = 8;
    options_.holdout_seqs = 3;
    options_.batch = 2;
    options_.out_dir = tmp_ / "acts";
    comm::LocalCommunicator one;
    ASSERT_FALSE(run_capture(options_, one).already_complete);
  }

  test::TempDir tmp_;
  CaptureOptions options_;
};

// A capture complete on one rank is complete for three: every rank returns at once and nothing
// in --out changes.
TEST_F(CaptureRanksTest, CompleteOnAnotherWorldSizeIsCompleteOnEveryRank) {
  const auto before = dir_bytes(options_.out_dir);
  std::array<int, 3> complete{};
  test::run_ranks(3, [&](comm::Communicator& comm) {
    const CaptureResult r = run_capture(options_, comm);
    complete[comm.rank()] =
        r.already_complete && !r.interrupted && r.tokens_captured == 0 && r.shards_written.empty();
  });
  EXPECT_EQ(complete, (std::array<int, 3>{1, 1, 1}));
  EXPECT_TRUE(before == dir_bytes(options_.out_dir));
}

// Other settings on three ranks: every rank raises rank 0's refusal, word for word.
TEST_F(CaptureRanksTest, RefusalReachesEveryRankAsTheSameInputError) {
  const auto before = dir_bytes(options_.out_dir);
  CaptureOptions other = options_;
  other.seed = 5;
  const std::string expected = options_.out_dir +
                               " holds a capture with other settings (seed: 0 -> 5; world_size: "
                               "1 -> 3); use another --out or --overwrite";
  std::array<std::string, 3> messages;
  std::array<int, 3> input_and_collective{};
  test::run_ranks(3, [&](comm::Communicator& comm) {
    try {
      run_capture(other, comm);
    } catch (const Error& e) {
      messages[comm.rank()] = e.message();
      input_and_collective[comm.rank()] = e.kind() == ErrorKind::kInput && e.collective();
    }
  });
  EXPECT_EQ(messages, (std::array<std::string, 3>{expected, expected, expected}));
  EXPECT_EQ(input_and_collective, (std::array<int, 3>{1, 1, 1}));
  EXPECT_TRUE(before == dir_bytes(options_.out_dir));
}

// The same settings on the same single rank, through run_ranks: complete, nothing to do.
TEST_F(CaptureRanksTest, RerunOnOneThreadRankIsComplete) {
  bool complete = false;
  test::run_ranks(1, [&](comm::Communicator& comm) {
    complete = run_capture(options_, comm).already_complete;
  });
  EXPECT_TRUE(complete);
}

}  // namespace
}  // namespace cskv::pipeline
