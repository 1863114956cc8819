// Launcher environment checks and the per-rank start line (pure functions; launch/cli.cpp wires
// them to the communicator and the logger).
#include "launch/env.h"

#include <cstdlib>
#include <optional>
#include <sstream>
#include <vector>

namespace cskv::launch {
namespace {

// What one launcher variable must equal.
struct Expected {
  const char* variable;
  const char* mpi_name;  // "rank", "local rank", "world size"
  int value;
};

std::optional<long> parse_count(const std::string& text) {
  if (text.empty()) return std::nullopt;
  char* end = nullptr;
  const long n = std::strtol(text.c_str(), &end, 10);
  if (*end != '\0' || n < 0) return std::nullopt;
  return n;
}

std::string compare(const std::vector<Expected>& expected, const Environment& env) {
  std::ostringstream out;
  const char* sep = "";
  for (const auto& e : expected) {
    const auto it = env.find(e.variable);
    if (it == env.end()) continue;
    const auto n = parse_count(it->second);
    if (!n) {
      out << sep << e.variable << "='" << it->second << "' is not a non-negative integer";
    } else if (*n != e.value) {
      out << sep << e.variable << "=" << it->second << " but MPI " << e.mpi_name << " is "
          << e.value;
    } else {
      continue;
    }
    sep = "; ";
  }
  return out.str();
}

}  // namespace

Environment launcher_environment() {
  Environment env;
  for (const char* name :
       {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_SIZE",
        "SLURM_STEP_ID", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS"}) {
    if (const char* value = std::getenv(name)) env[name] = value;
  }
  return env;
}

LauncherCheck check_launcher_env(const ProcessPlace& mpi, const Environment& env) {
  LauncherCheck check;
  std::string mismatches;
  std::string hint;
  if (env.count("OMPI_COMM_WORLD_RANK")) {
    check.launcher = "mpirun";
    mismatches = compare({{"OMPI_COMM_WORLD_RANK", "rank", mpi.rank},
                          {"OMPI_COMM_WORLD_LOCAL_RANK", "local rank", mpi.local_rank},
                          {"OMPI_COMM_WORLD_SIZE", "world size", mpi.size}},
                         env);
    hint = "is cskv linked against the MPI library of this mpirun?";
  } else if (env.count("SLURM_STEP_ID")) {
    check.launcher = "srun";
    mismatches = compare({{"SLURM_PROCID", "rank", mpi.rank},
                          {"SLURM_LOCALID", "local rank", mpi.local_rank},
                          {"SLURM_NTASKS", "world size", mpi.size}},
                         env);
    hint = "start MPI ranks with srun --mpi=pmix (Open MPI), or with mpirun inside the allocation";
  }
  if (!mismatches.empty()) {
    check.error =
        check.launcher + " and MPI disagree about this process: " + mismatches + " (" + hint + ")";
  }
  return check;
}

std::string start_line(const StartInfo& info) {
  std::ostringstream out;
  out << "host " << info.host << " rank " << info.place.rank << "/" << info.place.size
      << " local rank " << info.place.local_rank << " device " << info.device << " threads "
      << info.threads << " backend " << info.backend << " launcher " << info.launcher;
  return out.str();
}

}  // namespace cskv::launch
