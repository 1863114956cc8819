// Single-process tests of comm/: the local backend, argument checks shared by all backends,
// timeout resolution, launcher detection and the factory's backend choice.
#include <gtest/gtest.h>

#include <cstdlib>
#include <map>
#include <optional>

#include "comm/factory.h"
#include "comm/local_communicator.h"
#include "common/device.h"
#include "common/error.h"
#include "tests/support/test_support.h"

namespace cskv::comm {
namespace {

// Sets (or unsets, with nullopt) environment variables for one test and restores them after.
class EnvGuard {
 public:
  void set(const std::string& name, const std::optional<std::string>& value) {
    if (!saved_.count(name)) {
      const char* old = std::getenv(name.c_str());
      saved_[name] = old ? std::optional<std::string>(old) : std::nullopt;
    }
    apply(name, value);
  }
  ~EnvGuard() {
    for (const auto& [name, value] : saved_) apply(name, value);
  }

 private:
  static void apply(const std::string& name, const std::optional<std::string>& value) {
    if (value) {
      setenv(name.c_str(), value->c_str(), 1);
    } else {
      unsetenv(name.c_str());
    }
  }
  std::map<std::string, std::optional<std::string>> saved_;
};

void clear_launcher_env(EnvGuard& env) {
  for (const char* name :
       {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"}) {
    env.set(name, std::nullopt);
  }
}

// getenv over a fixed map, for detect_launcher().
std::function<const char*(const char*)> fake_env(std::map<std::string, std::string> vars) {
  auto shared = std::make_shared<std::map<std::string, std::string>>(std::move(vars));
  return [shared](const char* name) -> const char* {
    auto it = shared->find(name);
    return it == shared->end() ? nullptr : it->second.c_str();
  };
}

TEST(LocalCommunicator, ReportsOneRank) {
  LocalCommunicator comm(12.5);
  EXPECT_EQ(comm.rank(), 0);
  EXPECT_EQ(comm.size(), 1);
  EXPECT_EQ(comm.local_rank(), 0);
  EXPECT_EQ(comm.local_size(), 1);
  EXPECT_EQ(comm.backend_name(), "local");
  EXPECT_DOUBLE_EQ(comm.timeout_s(), 12.5);
  comm.barrier();
}

TEST(LocalCommunicator, CollectivesAreIdentity) {
  LocalCommunicator comm;
  auto f32 = at::arange(10, at::kFloat) * 0.5;
  const auto f32_before = f32.clone();
  comm.allreduce_sum(f32);
  EXPECT_TRUE(at::equal(f32, f32_before));

  auto f64 = at::arange(6, at::kDouble).reshape({2, 3}) - 2.25;
  const auto f64_before = f64.clone();
  comm.allreduce_sum(f64);
  EXPECT_TRUE(at::equal(f64, f64_before));

  auto ints = at::arange(7, at::kLong);  // broadcast takes any dtype
  comm.broadcast(ints, 0);
  EXPECT_TRUE(at::equal(ints, at::arange(7, at::kLong)));

  EXPECT_EQ(comm.gather_bytes("abc", 0), std::vector<std::string>{"abc"});
  EXPECT_EQ(comm.allgather_bytes(std::string("x\0y", 3)),
            std::vector<std::string>{std::string("x\0y", 3)});
  std::string blob = "payload";
  comm.broadcast_bytes(blob, 0);
  EXPECT_EQ(blob, "payload");
}

// The data-parallel group factory: on a CPU device it is the world's own split (NCCL groups are
// only for CUDA tensors of an MPI world).
TEST(Factory, GroupOnTheCpuIsTheWorldsSplit) {
  LocalCommunicator comm(3);
  auto group = make_group(comm, 2, 0, at::kCPU);
  ASSERT_NE(group, nullptr);
  EXPECT_EQ(group->backend_name(), "local");
  EXPECT_EQ(group->size(), 1);
  at::Tensor t = at::ones({4});
  group->allreduce_sum(t);
  EXPECT_TRUE(at::equal(t, at::ones({4})));
  EXPECT_EQ(nccl_version() == "not built", !nccl_compiled());
}

TEST(LocalCommunicator, SplitGivesAnotherSizeOneCommunicator) {
  LocalCommunicator comm(3);
  auto group = comm.split(5, 0);
  ASSERT_NE(group, nullptr);
  EXPECT_EQ(group->size(), 1);
  EXPECT_EQ(group->rank(), 0);
  EXPECT_EQ(group->backend_name(), "local");
  EXPECT_DOUBLE_EQ(group->timeout_s(), 3);
  EXPECT_CSKV_ERROR(comm.split(-1, 0), "split: expected a color >= 0, found -1");
}

TEST(LocalCommunicator, RejectsUnsupportedDtypes) {
  LocalCommunicator comm;
  auto ints = at::ones({4}, at::kLong);
  EXPECT_CSKV_ERROR(comm.allreduce_sum(ints),
                    "backend 'local' does not support allreduce_sum of dtype int64 (expected "
                    "float32 or float64)");
  auto half = at::ones({4}, at::kHalf);
  EXPECT_CSKV_ERROR(comm.allreduce_sum(half),
                    "backend 'local' does not support allreduce_sum of dtype float16 (expected "
                    "float32 or float64)");
  try {
    comm.allreduce_sum(ints);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kRuntime);
  }
}

TEST(LocalCommunicator, RejectsBadTensorsAndRoots) {
  LocalCommunicator comm;
  auto transposed = at::zeros({4, 3}, at::kFloat).t();
  EXPECT_CSKV_ERROR(comm.allreduce_sum(transposed),
                    "allreduce_sum: expected a contiguous tensor, found sizes [3, 4] with strides "
                    "[1, 3] (call .contiguous() first)");
  at::Tensor undefined;
  EXPECT_CSKV_ERROR(comm.broadcast(undefined, 0),
                    "broadcast: expected a defined tensor, found an undefined one");
  auto t = at::zeros({2}, at::kFloat);
  EXPECT_CSKV_ERROR(comm.broadcast(t, 1),
                    "broadcast: root 1 is out of range for a communicator of size 1 (expected "
                    "0..0)");
  EXPECT_CSKV_ERROR(comm.gather_bytes("a", -1),
                    "gather_bytes: root -1 is out of range for a communicator of size 1 (expected "
                    "0..0)");
  std::string s;
  EXPECT_CSKV_ERROR(comm.broadcast_bytes(s, 2),
                    "broadcast_bytes: root 2 is out of range for a communicator of size 1 "
                    "(expected 0..0)");
}

TEST(LocalCommunicatorDeathTest, AbortLogsAndExitsWithOne) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  LocalCommunicator comm;
  EXPECT_EXIT(comm.abort("rank 0 lost its data"), ::testing::ExitedWithCode(1),
              "aborting: rank 0 lost its data");
}

TEST(CommOptions, TimeoutComesFromOptionThenEnvThenDefault) {
  EnvGuard env;
  env.set(kTimeoutEnvVar, std::nullopt);
  CommOptions options;
  EXPECT_DOUBLE_EQ(resolve_timeout_s(options), 300.0);
  env.set(kTimeoutEnvVar, "7.5");
  EXPECT_DOUBLE_EQ(resolve_timeout_s(options), 7.5);
  options.timeout_s = 2;
  EXPECT_DOUBLE_EQ(resolve_timeout_s(options), 2.0);
}

TEST(CommOptions, BadTimeoutsAreUsageErrors) {
  EnvGuard env;
  env.set(kTimeoutEnvVar, "soon");
  CommOptions options;
  EXPECT_CSKV_ERROR(resolve_timeout_s(options),
                    "CSKV_COMM_TIMEOUT_S: expected a positive number of seconds, found 'soon'");
  env.set(kTimeoutEnvVar, "0");
  EXPECT_CSKV_ERROR(resolve_timeout_s(options),
                    "CSKV_COMM_TIMEOUT_S: expected a positive number of seconds, found '0'");
  options.timeout_s = -1.5;
  EXPECT_CSKV_ERROR(resolve_timeout_s(options),
                    "communication timeout: expected a positive number of seconds, found '-1.5'");
  try {
    resolve_timeout_s(options);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUsage);
  }
}

TEST(CommOptions, FormatsSecondsAndDtypes) {
  EXPECT_EQ(format_seconds(300), "300");
  EXPECT_EQ(format_seconds(0.25), "0.25");
  EXPECT_EQ(dtype_name(at::kFloat), "float32");
  EXPECT_EQ(dtype_name(at::kDouble), "float64");
  EXPECT_EQ(dtype_name(at::kBFloat16), "bfloat16");
}

TEST(Factory, DetectsLaunchers) {
  auto none = detect_launcher(fake_env({}));
  EXPECT_FALSE(none.under_launcher);
  EXPECT_EQ(none.launcher, "");
  EXPECT_EQ(none.world_size, -1);

  auto ompi = detect_launcher(fake_env({{"OMPI_COMM_WORLD_SIZE", "3"}, {"PMIX_RANK", "1"}}));
  EXPECT_TRUE(ompi.under_launcher);
  EXPECT_EQ(ompi.launcher, "mpirun (Open MPI)");
  EXPECT_EQ(ompi.world_size, 3);

  auto pmix = detect_launcher(fake_env({{"PMIX_RANK", "0"}, {"SLURM_STEP_NUM_TASKS", "8"}}));
  EXPECT_TRUE(pmix.under_launcher);
  EXPECT_EQ(pmix.launcher, "PMIx");
  EXPECT_EQ(pmix.world_size, 8);

  auto pmi = detect_launcher(fake_env({{"PMI_SIZE", "4"}, {"PMI_RANK", "2"}}));
  EXPECT_EQ(pmi.launcher, "PMI");
  EXPECT_EQ(pmi.world_size, 4);

  auto srun = detect_launcher(fake_env({{"SLURM_STEP_NUM_TASKS", "2"}, {"SLURM_NTASKS", "2"}}));
  EXPECT_TRUE(srun.under_launcher);
  EXPECT_EQ(srun.launcher, "srun");
  EXPECT_EQ(srun.world_size, 2);

  // srun -n 1, and a batch script that runs cskv without srun: a single process.
  EXPECT_FALSE(detect_launcher(fake_env({{"SLURM_STEP_NUM_TASKS", "1"}})).under_launcher);
  EXPECT_FALSE(
      detect_launcher(fake_env({{"SLURM_NTASKS", "4"}, {"SLURM_JOB_ID", "77"}})).under_launcher);
}

TEST(Factory, AutoWithoutLauncherIsLocal) {
  EnvGuard env;
  clear_launcher_env(env);
  CommOptions options;
  options.timeout_s = 4;
  auto comm = make_communicator(options);
  set_error_rank(-1);  // make_communicator sets it; other tests expect the default
  ASSERT_NE(comm, nullptr);
  EXPECT_EQ(comm->backend_name(), "local");
  EXPECT_EQ(comm->size(), 1);
  EXPECT_DOUBLE_EQ(comm->timeout_s(), 4);

  options.backend = "local";
  EXPECT_EQ(make_communicator(options)->backend_name(), "local");
  set_error_rank(-1);
}

TEST(Factory, UnknownBackendIsUsageError) {
  CommOptions options;
  options.backend = "gloo";
  EXPECT_CSKV_ERROR(make_communicator(options),
                    "communication backend: expected auto|local|mpi|nccl, found 'gloo'");
}

TEST(Factory, NcclWithoutCudaSaysWhy) {
  EnvGuard env;
  clear_launcher_env(env);
  CommOptions options;
  options.backend = "nccl";
  if (!nccl_compiled()) {
    EXPECT_CSKV_ERROR(make_communicator(options),
                      "backend 'nccl' is not available: cskv was built without NCCL (configure "
                      "with -DCSKV_WITH_NCCL=ON where the CUDA toolkit and NCCL are installed)");
  } else if (device::visible_gpus() == 0) {
    std::string why_none;
    device::visible_gpus(&why_none);
    EXPECT_EQ(why_none.rfind("CUDA runtime " + device::cuda_runtime_version() + ": ", 0), 0u)
        << why_none;
    EXPECT_CSKV_ERROR(
        make_communicator(options),
        "backend 'nccl' needs CUDA: no CUDA device is visible to this process (" + why_none + ")");
  } else {
    GTEST_SKIP() << "CUDA and NCCL are present; the NCCL backend is tested under mpirun";
  }
  try {
    make_communicator(options);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUsage);
  }
}

}  // namespace
}  // namespace cskv::comm
