// The CUDA runtime calls behind common/device.h (compiled only with CSKV_WITH_CUDA).
#include <c10/cuda/CUDACachingAllocator.h>
#include <cuda_runtime_api.h>

#include <string>

#include "common/device.h"
#include "common/error.h"

namespace cskv::device {

namespace {
void check(cudaError_t status, const char* what, int index) {
  CSKV_CHECK_KIND(status == cudaSuccess, ErrorKind::kRuntime,
                  what << " on cuda:" << index << ": " << cudaGetErrorString(status));
}
}  // namespace

int cuda_device_count(std::string& why_none) {
  int n = 0;
  const cudaError_t status = cudaGetDeviceCount(&n);
  if (status != cudaSuccess) {
    why_none = cudaGetErrorString(status);
    (void)cudaGetLastError();  // clear the sticky error
    return 0;
  }
  if (n == 0) why_none = "0 devices";
  return n;
}

Memory cuda_memory(int index) {
  check(cudaSetDevice(index), "cudaSetDevice", index);
  size_t free_bytes = 0, total_bytes = 0;
  check(cudaMemGetInfo(&free_bytes, &total_bytes), "cudaMemGetInfo", index);
  return {static_cast<int64_t>(free_bytes), static_cast<int64_t>(total_bytes)};
}

int64_t cuda_peak_allocated(int index) {
  const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(index);
  return stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)]
      .peak;
}

int64_t cuda_allocated(int index) {
  const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(index);
  return stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)]
      .current;
}

void cuda_reset_peak(int index) { c10::cuda::CUDACachingAllocator::resetPeakStats(index); }

void cuda_synchronize(int index) {
  check(cudaSetDevice(index), "cudaSetDevice", index);
  check(cudaDeviceSynchronize(), "cudaDeviceSynchronize", index);
}

std::string cuda_runtime() {
  int v = 0;
  if (cudaRuntimeGetVersion(&v) != cudaSuccess) return "unknown";
  return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
}

}  // namespace cskv::device
