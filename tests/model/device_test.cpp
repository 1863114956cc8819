// Device selection for the forward: CPU always; CUDA only with a CUDA LibTorch and a visible GPU,
// otherwise one usage error that says which is missing.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "model/llama.h"
#include "tests/support/test_support.h"

namespace cskv::model {
namespace {

TEST(Device, CpuComputesInFloat32) {
  EXPECT_EQ(select_device("cpu", 3), at::Device(at::kCPU));
  EXPECT_EQ(default_compute_dtype(at::kCPU), at::kFloat);
  EXPECT_EQ(default_compute_dtype(at::Device(at::kCUDA, 0)), at::kBFloat16);
}

TEST(Device, UnknownDeviceIsAUsageError) {
  EXPECT_CSKV_ERROR(select_device("tpu", 0), "--device: expected cpu|cuda, found 'tpu'");
}

TEST(Device, CudaWithoutCudaLibTorchSaysSo) {
  if (at::hasCUDA()) GTEST_SKIP() << "this LibTorch has CUDA; the GPU path is checked on a GPU";
  EXPECT_CSKV_ERROR(select_device("cuda", 0),
                    "--device cuda: this LibTorch was built without CUDA (Debian's is CPU-only; "
                    "build against an official LibTorch CUDA distribution)");
}

}  // namespace
}  // namespace cskv::model
