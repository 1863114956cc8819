// Thread-count control for ATen and OpenBLAS (found at run time through dlsym, so the build does
// not depend on which BLAS LibTorch was linked against).
#include "common/threads.h"

#include <ATen/Parallel.h>
#include <dlfcn.h>

#include "common/error.h"

namespace cskv {

void set_compute_threads(int threads) {
  CSKV_CHECK_USAGE(threads >= 1, "--threads: expected >= 1, found " << threads);
  at::set_num_threads(threads);
  using SetFn = void (*)(int);
  if (auto set = reinterpret_cast<SetFn>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) {
    set(threads);
  }
}

int openblas_threads() {
  using GetFn = int (*)();
  auto get = reinterpret_cast<GetFn>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
  return get ? get() : -1;
}

}  // namespace cskv
