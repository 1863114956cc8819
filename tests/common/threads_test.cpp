// set_compute_threads must reach the BLAS pool, not only ATen's (float64 LAPACK results depend on
// its thread count, so an uncontrolled pool breaks bitwise reproducibility): MKL's follows
// at::set_num_threads; OpenBLAS's, where a LibTorch uses it, is set by name.
#include "common/threads.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include "tests/support/test_support.h"

namespace cskv {
namespace {

TEST(Threads, SetsAtenAndBlasPools) {
  (void)at::mm(at::ones({8, 8}), at::ones({8, 8}));  // make sure BLAS is loaded and initialised
  const bool openblas = openblas_threads() != -1;
  EXPECT_EQ(openblas, at::show_config().find("BLAS_INFO=open") != std::string::npos);
  for (int n : {1, 2, 1}) {
    set_compute_threads(n);
    EXPECT_EQ(at::get_num_threads(), n);
    if (openblas) {
      EXPECT_EQ(openblas_threads(), n);
    }
  }
}

TEST(Threads, RejectsZero) {
  EXPECT_CSKV_ERROR(set_compute_threads(0), "--threads: expected >= 1, found 0");
}

}  // namespace
}  // namespace cskv
