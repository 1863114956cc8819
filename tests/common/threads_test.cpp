// set_compute_threads must reach OpenBLAS's pool, not only ATen's (float64 LAPACK results depend
// on OpenBLAS's thread count, so an uncontrolled pool breaks bitwise reproducibility).
#include "common/threads.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include "tests/support/test_support.h"

namespace cskv {
namespace {

TEST(Threads, SetsAtenAndOpenBlasPools) {
  (void)at::mm(at::ones({8, 8}), at::ones({8, 8}));  // make sure BLAS is loaded and initialised
  set_compute_threads(1);
  EXPECT_EQ(at::get_num_threads(), 1);
  EXPECT_EQ(openblas_threads(), 1);
  set_compute_threads(2);
  EXPECT_EQ(at::get_num_threads(), 2);
  EXPECT_EQ(openblas_threads(), 2);
  set_compute_threads(1);
}

TEST(Threads, RejectsZero) {
  EXPECT_CSKV_ERROR(set_compute_threads(0), "--threads: expected >= 1, found 0");
}

}  // namespace
}  // namespace cskv
