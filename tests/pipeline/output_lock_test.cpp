// The stages' output locks in process: a test holds the lock of --out / --ckpt-dir and runs the
// stage on two in-process ranks; every rank must fail with the same one-line message naming this
// process, and nothing in the directory may change. Also a capture whose capture.json is gone.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <mutex>
#include <vector>

#include "comm/local_communicator.h"
#include "common/output_dir.h"
#include "pipeline/capture.h"
#include "pipeline/train.h"
#include "tests/pipeline/capture_test_util.h"
#include "tests/support/test_support.h"
#include "tests/support/thread_communicator.h"

namespace cskv {
namespace {

namespace fs = std::filesystem;

std::string holder_text() {
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  return "pid " + std::to_string(::getpid()) + " on host " + host;
}

class OutputLock : public ::testing::Test {
 protected:
  void SetUp() override { data::capture_testing::write_tiny_model_and_tokens(dir_.path()); }

  pipeline::CaptureOptions capture_options(const std::string& out) const {
    pipeline::CaptureOptions o;
    o.model_dir = dir_ / "model";
    o.tokens_path = dir_ / "tokens.bin";
    o.token_dtype = data::TokenDtype::kU16;
    o.num_seqs = 4;
    o.seq_len = 32;
    o.holdout_seqs = 2;
    o.batch = 2;
    o.out_dir = out;
    return o;
  }

  // Runs body on two in-process ranks; returns each rank's error message (collective ones).
  static std::vector<std::string> messages_of(
      const std::function<void(comm::Communicator&)>& body) {
    std::vector<std::string> messages(2);
    std::mutex m;
    test::run_ranks(2, [&](comm::Communicator& comm) {
      try {
        body(comm);
      } catch (const Error& e) {
        std::lock_guard<std::mutex> g(m);
        messages[static_cast<size_t>(comm.rank())] =
            std::string(e.collective() ? "" : "(not collective) ") + e.message();
      }
    });
    return messages;
  }

  test::TempDir dir_;
};

TEST_F(OutputLock, CaptureIntoALockedOutIsRefusedOnEveryRank) {
  const std::string out = dir_ / "acts";
  fs::create_directories(out);
  test::write_file(out + "/notes.txt", "the user's");
  const auto lock = files::DirectoryLock::acquire(out, "--out");
  const auto before = data::capture_testing::dir_bytes(out);
  const auto messages = messages_of(
      [&](comm::Communicator& comm) { pipeline::run_capture(capture_options(out), comm); });
  const std::string expected = out + ": in use by another cskv run (" + holder_text() +
                               "); wait for it to finish, or use another --out";
  EXPECT_EQ(messages, std::vector<std::string>(2, expected));
  EXPECT_EQ(data::capture_testing::dir_bytes(out), before);
}

TEST_F(OutputLock, TrainIntoALockedCkptDirIsRefusedOnEveryRank) {
  const std::string acts = dir_ / "acts";
  comm::LocalCommunicator local;
  pipeline::run_capture(capture_options(acts), local);
  EXPECT_FALSE(fs::exists(acts + "/.cskv.lock")) << "the capture's lock goes with it";
  pipeline::TrainRunOptions o;
  o.model_dir = dir_ / "model";
  o.acts_dir = acts;
  o.ckpt_dir = dir_ / "ckpt";
  o.cfg.steps = 4;
  o.cfg.batch_tokens = 32;
  const auto lock = files::DirectoryLock::acquire(o.ckpt_dir, "--ckpt-dir");
  const auto before = data::capture_testing::dir_bytes(o.ckpt_dir);
  const auto messages =
      messages_of([&](comm::Communicator& comm) { pipeline::run_training(o, comm); });
  const std::string expected = o.ckpt_dir + ": in use by another cskv run (" + holder_text() +
                               "); wait for it to finish, or use another --ckpt-dir";
  EXPECT_EQ(messages, std::vector<std::string>(2, expected));
  EXPECT_EQ(data::capture_testing::dir_bytes(o.ckpt_dir), before);
}

TEST_F(OutputLock, CaptureFilesWithoutCaptureJsonAreNeitherReusedNorReplaced) {
  const std::string out = dir_ / "acts";
  comm::LocalCommunicator local;
  pipeline::run_capture(capture_options(out), local);
  fs::remove(out + "/capture.json");
  const auto before = data::capture_testing::dir_bytes(out);
  auto other_seed = capture_options(out);
  other_seed.seed = 1;
  EXPECT_EQ(test::input_error_of([&] { pipeline::run_capture(other_seed, local); }),
            out + "/holdout-00000-of-00001.h5: exists and is not known to be an output of cskv (" +
                out +
                " has no capture.json recording which capture wrote it); move it away, use "
                "another --out, or pass --overwrite to replace it");
  EXPECT_EQ(data::capture_testing::dir_bytes(out), before);
  other_seed.overwrite = true;  // told to: the old files go, the capture is redone
  const auto r = pipeline::run_capture(other_seed, local);
  EXPECT_EQ(r.shards_written.size(), 2u);
}

}  // namespace
}  // namespace cskv
