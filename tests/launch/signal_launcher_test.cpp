// Stop signals under mpirun and through the sbatch template: SIGTERM to mpirun itself (as Slurm
// signals every process of a job) makes every rank checkpoint and log the stop; mpirun then exits
// 1 (Open MPI ends a job it was signalled to end that way), and cskv-mpirun.sbatch, which knows it
// received the signal, requeues the job all the same.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>

#include "checkpoint/step_manifest.h"
#include "tests/pipeline/capture_test_util.h"
#include "tests/support/test_support.h"

namespace cskv {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

class SignalLauncher : public ::testing::Test {
 protected:
  void SetUp() override {
    test::allow_mpirun_as_root();
    data::capture_testing::write_tiny_model_and_tokens(dir_.path());
    const auto c = test::run_cskv(
        {"capture", "--model", dir_ / "model", "--tokens", dir_ / "tokens.bin", "--num-seqs", "4",
         "--seq-len", "32", "--holdout-seqs", "2", "--out", dir_ / "acts", "--log-level", "warn"});
    ASSERT_EQ(c.exit_code, 0) << c.err;
  }
  // Training that runs for minutes unless stopped, checkpointing every 200 steps.
  std::vector<std::string> train_args(const std::string& ckpt) const {
    return {"train",       dir_ / "model", "--acts",       dir_ / "acts", "--ckpt-dir",     ckpt,
            "--steps",     "1000000",      "--save-every", "200",         "--batch-tokens", "64",
            "--log-level", "warn"};
  }
  // Once ckpt has a complete step: SIGTERM to mpirun (and to `also`, when given).
  static void terminate_mpirun_after_a_step(const std::string& ckpt, int also,
                                            const std::atomic<bool>& exited) {
    const auto deadline = Clock::now() + std::chrono::seconds(120);
    while (!exited && Clock::now() < deadline) {
      if (!checkpoint::list_steps(ckpt).empty()) {
        auto mpiruns = test::find_processes("mpirun", ckpt);
        for (const auto& p : test::find_processes("mpiexec", ckpt)) mpiruns.push_back(p);
        if (mpiruns.empty()) return;
        if (also > 0) ::kill(also, SIGTERM);
        ::kill(mpiruns.front().pid, SIGTERM);
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  static int count(const std::string& text, const std::string& part) {
    int n = 0;
    for (auto at = text.find(part); at != std::string::npos; at = text.find(part, at + 1)) ++n;
    return n;
  }
  test::TempDir dir_;
};

TEST_F(SignalLauncher, SigtermToMpirunCheckpointsOnEveryRank) {
  const std::string ckpt = dir_ / "ckpt";
  std::vector<std::string> argv = {CSKV_MPIEXEC, "--oversubscribe", "-np", "2",
                                   CSKV_BINARY_FOR_TESTS};
  auto args = train_args(ckpt);
  args.insert(args.begin() + 1, "--model");
  argv.insert(argv.end(), args.begin(), args.end());
  const auto r = test::run_command(argv, [&](int, const std::atomic<bool>& exited) {
    terminate_mpirun_after_a_step(ckpt, 0, exited);
  });
  EXPECT_EQ(r.exit_code, 1) << "Open MPI's mpirun reports a job it ended on SIGTERM with 1\n"
                            << r.err;
  EXPECT_EQ(count(r.err, "] [trainer] warning: stopping on SIGTERM: checkpoint "), 2) << r.err;
  EXPECT_TRUE(checkpoint::find_latest_complete_step(ckpt).has_value());
}

TEST_F(SignalLauncher, MpirunTemplateRequeuesWhenMpirunWasSignalledToo) {
  const std::string bin = dir_ / "bin";
  fs::create_directories(bin);
  test::write_file(bin + "/scontrol", "#!/bin/sh\necho \"$@\" >> \"" + bin + "/scontrol.log\"\n");
  fs::permissions(bin + "/scontrol", fs::perms::owner_all);
  const std::string path = std::getenv("PATH") ? std::getenv("PATH") : "/usr/bin:/bin";
  setenv("PATH", (bin + ":" + path).c_str(), 1);
  setenv("SLURM_JOB_ID", "7", 1);
  setenv("SLURM_NTASKS", "2", 1);
  setenv("CSKV", CSKV_BINARY_FOR_TESTS, 1);
  setenv("CSKV_MPIRUN_FLAGS", "--oversubscribe --bind-to none", 1);
  const std::string ckpt = dir_ / "ckpt";
  std::vector<std::string> argv = {"/bin/bash", CSKV_SOURCE_DIR "/launch/slurm/cskv-mpirun.sbatch"};
  auto args = train_args(ckpt);
  args.insert(args.begin() + 1, "--model");
  argv.insert(argv.end(), args.begin(), args.end());
  // Slurm's way: SIGTERM to the batch shell and to every process of the job, mpirun included.
  const auto r = test::run_command(argv, [&](int shell, const std::atomic<bool>& exited) {
    terminate_mpirun_after_a_step(ckpt, shell, exited);
  });
  setenv("PATH", path.c_str(), 1);
  for (const char* var : {"SLURM_JOB_ID", "SLURM_NTASKS", "CSKV", "CSKV_MPIRUN_FLAGS"}) {
    unsetenv(var);
  }
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_EQ(test::read_file(bin + "/scontrol.log"), "requeue 7\n") << r.out;
  EXPECT_NE(r.out.find("step ended with status 1 after SIGTERM (its launcher was signalled too)"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("ranks checkpointed (status 75); scontrol requeue 7"), std::string::npos)
      << r.out;
  EXPECT_EQ(count(r.err, "] [trainer] warning: stopping on SIGTERM: checkpoint "), 2) << r.err;
  EXPECT_TRUE(checkpoint::find_latest_complete_step(ckpt).has_value());
}

}  // namespace
}  // namespace cskv
