// cskv --version: the project's version and the LibTorch, CUDA and NCCL it was built with.
#include "common/version.h"

#include <ATen/ATen.h>

#include <regex>
#include <sstream>

#include "common/device.h"
#include "cskv_common_config.h"

namespace cskv {

std::string version_text(const std::string& nccl) {
  std::smatch m;
  const std::string config = at::show_config();
  const std::regex blas_re("BLAS_INFO=([^,\\s]+)");
  const std::string blas = std::regex_search(config, m, blas_re) ? m[1].str() : "unknown";
  std::ostringstream out;
  out << "cskv " << CSKV_VERSION_STRING << "\n"
      << "LibTorch " << CSKV_TORCH_VERSION_STRING << " (BLAS: " << blas << ")\n"
      << "CUDA runtime " << device::cuda_runtime_version()
      << (CSKV_WITH_CUDA ? " (CUDA code paths built)" : " (built without CUDA)") << "\n"
      << "NCCL " << nccl << "\n";
  return out.str();
}

}  // namespace cskv
