// Launcher environment checks (launch/env.h): which variables are compared, the exact messages
// for each mismatch, and the per-rank start line.
#include <gtest/gtest.h>

#include "launch/env.h"
#include "tests/support/test_support.h"

namespace cskv::launch {
namespace {

constexpr ProcessPlace kRank1Of2{1, 2, 1};

TEST(LauncherEnv, PlainProcessComparesNothing) {
  const auto check = check_launcher_env({0, 1, 0}, {});
  EXPECT_EQ(check.launcher, "none");
  EXPECT_EQ(check.error, "");
}

TEST(LauncherEnv, SrunTaskThatAgrees) {
  const auto check = check_launcher_env(kRank1Of2, {{"SLURM_STEP_ID", "0"},
                                                    {"SLURM_PROCID", "1"},
                                                    {"SLURM_LOCALID", "1"},
                                                    {"SLURM_NTASKS", "2"}});
  EXPECT_EQ(check.launcher, "srun");
  EXPECT_EQ(check.error, "");
}

TEST(LauncherEnv, SrunRankMismatchNamesBothValues) {
  const auto check = check_launcher_env({0, 2, 0}, {{"SLURM_STEP_ID", "0"},
                                                    {"SLURM_PROCID", "1"},
                                                    {"SLURM_LOCALID", "0"},
                                                    {"SLURM_NTASKS", "2"}});
  EXPECT_EQ(check.launcher, "srun");
  EXPECT_EQ(check.error,
            "srun and MPI disagree about this process: SLURM_PROCID=1 but MPI rank is 0 (start MPI "
            "ranks with srun --mpi=pmix (Open MPI), or with mpirun inside the allocation)");
}

// srun --mpi=none with an MPI that falls back to a singleton: every task is rank 0 of 1.
TEST(LauncherEnv, SrunEveryMismatchIsListed) {
  const auto check = check_launcher_env({0, 1, 0}, {{"SLURM_STEP_ID", "3"},
                                                    {"SLURM_PROCID", "1"},
                                                    {"SLURM_LOCALID", "1"},
                                                    {"SLURM_NTASKS", "2"}});
  EXPECT_EQ(check.error,
            "srun and MPI disagree about this process: SLURM_PROCID=1 but MPI rank is 0; "
            "SLURM_LOCALID=1 but MPI local rank is 0; SLURM_NTASKS=2 but MPI world size is 1 "
            "(start MPI ranks with srun --mpi=pmix (Open MPI), or with mpirun inside the "
            "allocation)");
}

TEST(LauncherEnv, MalformedVariableIsAnError) {
  const auto check =
      check_launcher_env(kRank1Of2, {{"SLURM_STEP_ID", "0"}, {"SLURM_PROCID", "one"}});
  EXPECT_EQ(check.error,
            "srun and MPI disagree about this process: SLURM_PROCID='one' is not a non-negative "
            "integer (start MPI ranks with srun --mpi=pmix (Open MPI), or with mpirun inside the "
            "allocation)");
  EXPECT_NE(check_launcher_env(kRank1Of2, {{"SLURM_STEP_ID", "0"}, {"SLURM_PROCID", "-1"}}).error,
            "");
  EXPECT_NE(check_launcher_env(kRank1Of2, {{"SLURM_STEP_ID", "0"}, {"SLURM_PROCID", ""}}).error,
            "");
}

TEST(LauncherEnv, AbsentVariablesAreNotCompared) {
  EXPECT_EQ(check_launcher_env(kRank1Of2, {{"SLURM_STEP_ID", "0"}, {"SLURM_PROCID", "1"}}).error,
            "");
}

// A batch shell (no SLURM_STEP_ID): SLURM_NTASKS is the allocation's task count, SLURM_PROCID 0;
// a single process started there is not one of those tasks.
TEST(LauncherEnv, BatchShellVariablesAreNotCompared) {
  const auto check = check_launcher_env(
      {0, 1, 0}, {{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "8"}, {"SLURM_LOCALID", "0"}});
  EXPECT_EQ(check.launcher, "none");
  EXPECT_EQ(check.error, "");
}

TEST(LauncherEnv, MpirunThatAgrees) {
  const auto check = check_launcher_env(kRank1Of2, {{"OMPI_COMM_WORLD_RANK", "1"},
                                                    {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
                                                    {"OMPI_COMM_WORLD_SIZE", "2"}});
  EXPECT_EQ(check.launcher, "mpirun");
  EXPECT_EQ(check.error, "");
}

TEST(LauncherEnv, MpirunMismatchNamesBothValues) {
  const auto check = check_launcher_env({1, 3, 0}, {{"OMPI_COMM_WORLD_RANK", "1"},
                                                    {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
                                                    {"OMPI_COMM_WORLD_SIZE", "2"}});
  EXPECT_EQ(check.error,
            "mpirun and MPI disagree about this process: OMPI_COMM_WORLD_LOCAL_RANK=1 but MPI "
            "local rank is 0; OMPI_COMM_WORLD_SIZE=2 but MPI world size is 3 (is cskv linked "
            "against the MPI library of this mpirun?)");
}

// mpirun inside a batch job (or started by mpirun's daemons through srun): every rank inherits
// SLURM_PROCID=0 and the allocation's SLURM_NTASKS; only OMPI_COMM_WORLD_* describe the rank.
TEST(LauncherEnv, MpirunInsideSlurmIgnoresInheritedSlurmVariables) {
  const auto check = check_launcher_env(kRank1Of2, {{"OMPI_COMM_WORLD_RANK", "1"},
                                                    {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
                                                    {"OMPI_COMM_WORLD_SIZE", "2"},
                                                    {"SLURM_STEP_ID", "0"},
                                                    {"SLURM_PROCID", "0"},
                                                    {"SLURM_LOCALID", "0"},
                                                    {"SLURM_NTASKS", "1"}});
  EXPECT_EQ(check.launcher, "mpirun");
  EXPECT_EQ(check.error, "");
}

TEST(LauncherEnv, StartLine) {
  EXPECT_EQ(start_line({"gpu07", {3, 8, 3}, "cuda:3", 8, "nccl", "srun"}),
            "host gpu07 rank 3/8 local rank 3 device cuda:3 threads 8 backend nccl launcher srun");
  EXPECT_EQ(start_line({"vm", {0, 1, 0}, "cpu", 1, "local", "none"}),
            "host vm rank 0/1 local rank 0 device cpu threads 1 backend local launcher none");
}

// End to end under mpirun: rank 1 is told a wrong local rank; every rank stops with status 1 (none
// waits for the others) and the message, naming the rank, is printed once.
TEST(LauncherEnv, MismatchOnOneRankStopsEveryRankUnderMpirun) {
  test::allow_mpirun_as_root();
  const auto t = test::run_command({CSKV_MPIEXEC, "--oversubscribe", "-np", "2", "sh", "-c",
                                    "[ \"$OMPI_COMM_WORLD_RANK\" = 1 ] && export "
                                    "OMPI_COMM_WORLD_LOCAL_RANK=7; exec \"$0\" \"$@\"",
                                    CSKV_BINARY_FOR_TESTS, "comm-check", "--sizes", "4", "--iters",
                                    "1", "--log-level", "warn"});
  EXPECT_NE(t.exit_code, 0);
  const std::string expected =
      "cskv comm-check: error: rank 1: mpirun and MPI disagree about this process: "
      "OMPI_COMM_WORLD_LOCAL_RANK=7 but MPI local rank is 1 (is cskv linked against the MPI "
      "library of this mpirun?)\n";
  EXPECT_NE(t.err.find(expected), std::string::npos) << t.err;
  EXPECT_EQ(t.err.find(expected), t.err.rfind(expected)) << "printed more than once:\n" << t.err;
  EXPECT_EQ(t.out.find("broadcast"), std::string::npos) << "a rank went on:\n" << t.out;
}

}  // namespace
}  // namespace cskv::launch
