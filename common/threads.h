// The CPU thread count of a process, applied to every pool that computes: ATen's intra-op pool
// and OpenBLAS's own pool (which at::set_num_threads does not reach).
#pragma once

namespace cskv {

// Sets ATen's intra-op threads and, when the loaded BLAS is OpenBLAS, its thread count too, so
// a result never depends on how many cores the machine (or the rank's binding) offers.
void set_compute_threads(int threads);

// OpenBLAS's current thread count, or -1 when the process did not load OpenBLAS.
int openblas_threads();

}  // namespace cskv
