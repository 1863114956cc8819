// Device selection: CPU always; CUDA only in a build with CUDA and with a visible GPU, otherwise
// one usage error that says which is missing and what the CUDA runtime answered.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "common/device.h"
#include "model/llama.h"
#include "tests/support/test_support.h"

namespace cskv::model {
namespace {

TEST(Device, CpuComputesInFloat32) {
  EXPECT_EQ(device::select("cpu", 3), at::Device(at::kCPU));
  EXPECT_EQ(default_compute_dtype(at::kCPU), at::kFloat);
  EXPECT_EQ(default_compute_dtype(at::Device(at::kCUDA, 0)), at::kBFloat16);
}

TEST(Device, UnknownDeviceIsAUsageError) {
  EXPECT_CSKV_ERROR(device::select("tpu", 0), "--device: expected cpu|cuda, found 'tpu'");
  EXPECT_CSKV_ERROR(device::select("gpu", 0, "--eval-device"),
                    "--eval-device: expected cpu|cuda, found 'gpu'");
}

TEST(Device, CudaWithoutAGpuSaysWhatWasFound) {
  if (device::visible_gpus() > 0) GTEST_SKIP() << "a GPU is visible; bench/gpu_check.sh runs it";
  std::string why_none;
  device::visible_gpus(&why_none);
  if (!device::cuda_compiled()) {
    EXPECT_EQ(why_none, "this cskv was built without CUDA");
    return;
  }
  // This machine's CUDA runtime answers without a driver or device; the message quotes it.
  EXPECT_EQ(why_none.rfind("CUDA runtime " + device::cuda_runtime_version() + ": ", 0), 0u)
      << why_none;
  EXPECT_NE(why_none.find("; CUDA_VISIBLE_DEVICES "), std::string::npos) << why_none;
  EXPECT_CSKV_ERROR(device::select("cuda", 0),
                    "--device cuda: no CUDA GPU is visible to this process (" + why_none + ")");
}

TEST(Device, PrecisionNamesRoundTripAndTf32IsCudaOnly) {
  for (const char* name : {"fp32", "tf32", "bf16"}) {
    EXPECT_STREQ(device::precision_name(device::parse_precision(name)), name);
  }
  EXPECT_CSKV_ERROR(device::parse_precision("fp16"),
                    "--precision: expected fp32|tf32|bf16, found 'fp16'");
  EXPECT_CSKV_ERROR(device::configure(at::kCPU, device::Precision::kTf32),
                    "--precision tf32: TF32 is a CUDA tensor-core format; on the CPU use fp32 or "
                    "bf16");
  device::configure(at::kCPU, device::Precision::kFp32);  // changes nothing on the CPU
  EXPECT_FALSE(at::globalContext().deterministicAlgorithms());
}

TEST(Device, Bf16MatmulRoundsTheOperandsAndAccumulatesInFloat32) {
  const at::Tensor a = at::randn({17, 9}, at::TensorOptions().dtype(at::kDouble));
  const at::Tensor b = at::randn({9, 5}, at::TensorOptions().dtype(at::kDouble));
  const at::Tensor af = a.to(at::kFloat), bf = b.to(at::kFloat);
  EXPECT_TRUE(at::equal(device::matmul(af, bf, device::Precision::kFp32), at::mm(af, bf)));
  const at::Tensor got = device::matmul(af, bf, device::Precision::kBf16).to(at::kDouble);
  const at::Tensor ref =
      at::mm(a.to(at::kBFloat16).to(at::kDouble), b.to(at::kBFloat16).to(at::kDouble));
  EXPECT_EQ(device::matmul(af, bf, device::Precision::kBf16).scalar_type(), at::kFloat);
  EXPECT_LT((got - ref).abs().max().item<double>(), 2e-2 * ref.abs().max().item<double>());
  EXPECT_GT((got - a.mm(b)).abs().max().item<double>(), 1e-4);  // the rounding is real
}

TEST(Device, CpuMemoryAndBuffersAreTheHostsOwn) {
  const device::Memory m = device::memory(at::kCPU);
  EXPECT_GT(m.total_bytes, int64_t{1} << 28);
  EXPECT_GT(m.free_bytes, 0);
  EXPECT_LE(m.free_bytes, m.total_bytes);
  EXPECT_EQ(device::peak_allocated_bytes(at::kCPU), -1);
  const at::Tensor h = device::host_buffer({4, 3}, at::kHalf, at::kCPU);
  EXPECT_EQ(h.scalar_type(), at::kHalf);
  EXPECT_FALSE(h.is_pinned());
  device::synchronize(at::kCPU);
}

}  // namespace
}  // namespace cskv::model
