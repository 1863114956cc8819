// The one place that decides which Communicator backend a process uses (local, MPI or NCCL),
// from the requested backend and the launcher found in the environment (mpirun, srun, PMI).
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "comm/communicator.h"

namespace cskv::comm {

// What the environment says about how this process was started.
struct LaunchInfo {
  bool under_launcher = false;  // started by mpirun / srun / a PMI launcher
  std::string launcher;         // "mpirun (Open MPI)", "srun", "PMIx", "PMI"; empty if none
  int world_size = -1;          // number of processes the launcher started; -1 if it does not say
};

// Reads OMPI_COMM_WORLD_SIZE, PMIX_RANK, PMI_SIZE and SLURM_STEP_NUM_TASKS (> 1) through getenv
// (injectable for tests). srun -n 1 and a Slurm batch script without srun count as no launcher.
LaunchInfo detect_launcher(const std::function<const char*(const char*)>& getenv);
LaunchInfo detect_launcher();

// Whether this build contains the NCCL backend (CMake option CSKV_WITH_NCCL).
bool nccl_compiled();

// The NCCL library's version ("2.28.9 (headers 2.28.9)"), or "not built".
std::string nccl_version();

// The communicator of one data-parallel group, as world.split(color, key) (a collective of every
// rank of world): for tensors on a CUDA device over NCCL when this build has it and world is an
// MPI communicator, otherwise world's own backend (MPI, local, or NCCL when world is NCCL).
std::unique_ptr<Communicator> make_group(Communicator& world, int color, int key,
                                         at::Device device);

// Builds the world communicator: backend "auto" is MPI under a launcher and local otherwise;
// "local", "mpi" and "nccl" are taken as asked (a backend this build or machine cannot provide
// is a usage error saying why). Sets the rank used by error messages and log lines.
std::unique_ptr<Communicator> make_communicator(const CommOptions& options = {});

}  // namespace cskv::comm
