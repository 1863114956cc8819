// Where this process sits in the job: MPI's rank, size and local rank cross-checked against the
// launcher's environment (srun's SLURM_*, mpirun's OMPI_COMM_WORLD_*), and the line every rank
// logs.
#pragma once

#include <map>
#include <string>

namespace cskv::launch {

// A process's place in the job as MPI reports it (local rank: among the ranks on its node).
struct ProcessPlace {
  int rank = 0;
  int size = 1;
  int local_rank = 0;
};

// Environment variables by name (only the ones that are set).
using Environment = std::map<std::string, std::string>;

// The variables check_launcher_env() reads, taken from this process's environment.
Environment launcher_environment();

struct LauncherCheck {
  // "mpirun", "srun" or "none": which launcher's variables describe this process.
  std::string launcher = "none";
  // Empty when every variable present agrees with MPI; else one sentence naming each mismatch
  // with both values and both sources.
  std::string error;
};

// Which variables are compared:
//  - started by mpirun (OMPI_COMM_WORLD_RANK set): OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_LOCAL_RANK
//    and OMPI_COMM_WORLD_SIZE. The SLURM_* variables such a process inherits describe the batch
//    shell or mpirun's daemon, not the rank, so they are not compared;
//  - else a task of a Slurm job step (SLURM_STEP_ID set, i.e. started by srun): SLURM_PROCID,
//    SLURM_LOCALID and SLURM_NTASKS;
//  - else none (a plain process, or a batch shell whose SLURM_* describe the whole allocation).
// A variable that is absent is not compared; one that is not a non-negative integer is an error.
LauncherCheck check_launcher_env(const ProcessPlace& mpi, const Environment& env);

// What the start line says about a process.
struct StartInfo {
  std::string host;
  ProcessPlace place;
  std::string device;  // "cpu", "cuda:1"
  int threads = 1;
  std::string backend;   // "local", "mpi", "nccl"
  std::string launcher;  // LauncherCheck::launcher
};

// "host gpu07 rank 3/8 local rank 3 device cuda:3 threads 8 backend nccl launcher srun"
std::string start_line(const StartInfo& info);

}  // namespace cskv::launch
