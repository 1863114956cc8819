// What a bug report needs: the versions this cskv was built with (`cskv --version`).
#pragma once

#include <string>

namespace cskv {

// Lines "cskv 0.1.0", "LibTorch 2.11.0 (BLAS: mkl)", "CUDA runtime 13.0 (CSKV_WITH_CUDA on)",
// "NCCL 2.28.9" / "NCCL: not built"; `nccl` is what comm::nccl_version() says.
std::string version_text(const std::string& nccl);

}  // namespace cskv
