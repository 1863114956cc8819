// Error construction for the check macros (kept out of line so the macros stay small).
#include "common/error.h"

#include <atomic>
#include <cstdlib>

namespace cskv {
namespace {
std::atomic<int> g_rank{-1};
}

void set_error_rank(int rank) { g_rank.store(rank); }
int error_rank() { return g_rank.load(); }

int process_rank() {
  if (error_rank() >= 0) return error_rank();
  for (const char* var : {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"}) {
    if (const char* v = std::getenv(var)) return std::atoi(v);
  }
  if (std::getenv("SLURM_STEP_ID") != nullptr) {
    if (const char* v = std::getenv("SLURM_PROCID")) return std::atoi(v);
  }
  return 0;
}

namespace detail {
void throw_error(ErrorKind kind, const char* file, int line, const char* expr,
                 const std::string& message) {
  std::string f = file;
  const auto slash = f.find_last_of('/');
  if (slash != std::string::npos) {
    const auto prev = f.find_last_of('/', slash - 1);
    f = f.substr(prev == std::string::npos ? 0 : prev + 1);
  }
  std::ostringstream where;
  where << f << ":" << line << " (" << expr << ")";
  if (error_rank() >= 0) where << " on rank " << error_rank();
  throw Error(kind, message, where.str());
}
}  // namespace detail
}  // namespace cskv
