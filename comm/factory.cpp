// make_communicator(): launcher detection and the backend choice, including the only
// CSKV_WITH_NCCL switch of the code base (the NCCL backend lives in nccl_communicator.cpp).
#include "comm/factory.h"

#include <cstdlib>

#include "cskv_comm_config.h"

#include "comm/local_communicator.h"
#include "comm/mpi_communicator.h"
#include "common/device.h"
#include "common/error.h"
#include "common/log.h"
#if CSKV_WITH_NCCL
#include "comm/nccl_communicator.h"
#endif

namespace cskv::comm {

namespace {

// A positive integer from the environment, or -1 when unset or malformed.
int env_count(const std::function<const char*(const char*)>& getenv, const char* name) {
  const char* value = getenv(name);
  if (value == nullptr || *value == '\0') return -1;
  char* end = nullptr;
  const long n = std::strtol(value, &end, 10);
  return (*end == '\0' && n > 0 && n < (1L << 30)) ? static_cast<int>(n) : -1;
}

bool env_set(const std::function<const char*(const char*)>& getenv, const char* name) {
  const char* value = getenv(name);
  return value != nullptr && *value != '\0';
}

std::unique_ptr<Communicator> make_nccl_backend(const CommOptions& options) {
#if CSKV_WITH_NCCL
  std::string why_none;
  CSKV_CHECK_USAGE(
      device::visible_gpus(&why_none) > 0,
      "backend 'nccl' needs CUDA: no CUDA device is visible to this process (" << why_none << ")");
  return make_nccl_communicator(MpiCommunicator::create_world(options));
#else
  (void)options;
  CSKV_FAIL_USAGE(
      "backend 'nccl' is not available: cskv was built without NCCL (configure with "
      "-DCSKV_WITH_NCCL=ON where the CUDA toolkit and NCCL are installed)");
#endif
}

}  // namespace

LaunchInfo detect_launcher(const std::function<const char*(const char*)>& getenv) {
  LaunchInfo info;
  if (env_set(getenv, "OMPI_COMM_WORLD_SIZE")) {
    info = {true, "mpirun (Open MPI)", env_count(getenv, "OMPI_COMM_WORLD_SIZE")};
  } else if (env_set(getenv, "PMIX_RANK")) {
    info = {true, "PMIx", env_count(getenv, "SLURM_STEP_NUM_TASKS")};
  } else if (env_set(getenv, "PMI_SIZE")) {
    info = {true, "PMI", env_count(getenv, "PMI_SIZE")};
  } else if (env_count(getenv, "SLURM_STEP_NUM_TASKS") > 1) {
    info = {true, "srun", env_count(getenv, "SLURM_STEP_NUM_TASKS")};
  }
  return info;
}

LaunchInfo detect_launcher() {
  return detect_launcher([](const char* name) -> const char* { return std::getenv(name); });
}

bool nccl_compiled() { return CSKV_WITH_NCCL != 0; }

std::string nccl_version() {
#if CSKV_WITH_NCCL
  return nccl_library_version();
#else
  return "not built";
#endif
}

std::unique_ptr<Communicator> make_group(Communicator& world, int color, int key,
                                         at::Device device) {
#if CSKV_WITH_NCCL
  if (device.is_cuda()) {
    if (auto* mpi = dynamic_cast<MpiCommunicator*>(&world)) {
      return make_nccl_group(*mpi, color, key, device.index());
    }
  }
#else
  (void)device;
#endif
  return world.split(color, key);
}

std::unique_ptr<Communicator> make_communicator(const CommOptions& options) {
  const std::string& backend = options.backend;
  CSKV_CHECK_USAGE(
      backend == "auto" || backend == "local" || backend == "mpi" || backend == "nccl",
      "communication backend: expected auto|local|mpi|nccl, found '" << backend << "'");
  const LaunchInfo launch = detect_launcher();
  const double timeout_s = resolve_timeout_s(options);
  std::unique_ptr<Communicator> comm;
  if (backend == "nccl") {
    comm = make_nccl_backend(options);
  } else if (backend == "mpi" || (backend == "auto" && launch.under_launcher)) {
    comm = MpiCommunicator::create_world(options);
  } else {
    comm = std::make_unique<LocalCommunicator>(timeout_s);
  }
  // A launcher that started N processes while MPI sees another world size means the MPI library
  // cannot talk to it (e.g. srun without --mpi=pmix): N independent runs would follow.
  if (launch.world_size > 0 && comm->backend_name() != "local") {
    CSKV_CHECK_KIND(launch.world_size == comm->size(), ErrorKind::kComm,
                    launch.launcher << " started " << launch.world_size
                                    << " processes but MPI sees a world of " << comm->size()
                                    << " (is MPI built for this launcher? with Slurm try "
                                       "srun --mpi=pmix)");
  }
  set_error_rank(comm->rank());
  log::set_rank(comm->rank(), comm->size());
  auto logger = log::get("comm");
  if (backend == "local" && launch.world_size > 1) {
    logger->warn("backend 'local' under {} with {} processes: every process works alone",
                 launch.launcher, launch.world_size);
  }
  if (comm->rank() == 0) {
    logger->info("communicator: {} backend, {} rank(s), {} per node, timeout {} s",
                 comm->backend_name(), comm->size(), comm->local_size(),
                 format_seconds(comm->timeout_s()));
  }
  return comm;
}

}  // namespace cskv::comm
