// Device choice, precision and reproducibility settings, memory figures; the CUDA runtime calls
// are in device_cuda.cpp (built with CSKV_WITH_CUDA), the stand-ins below otherwise.
#include "common/device.h"

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "common/error.h"
#include "cskv_common_config.h"

namespace cskv::device {

#if CSKV_WITH_CUDA
// device_cuda.cpp
int cuda_device_count(std::string& why_none);
Memory cuda_memory(int index);
int64_t cuda_peak_allocated(int index);
int64_t cuda_allocated(int index);
void cuda_reset_peak(int index);
void cuda_synchronize(int index);
std::string cuda_runtime();
#endif

bool cuda_compiled() { return CSKV_WITH_CUDA != 0; }

int visible_gpus(std::string* why_none) {
#if CSKV_WITH_CUDA
  std::string runtime_says;
  const int gpus = cuda_device_count(runtime_says);
  if (gpus > 0 || why_none == nullptr) return gpus;
  const char* visible = std::getenv("CUDA_VISIBLE_DEVICES");
  *why_none = "CUDA runtime " + cuda_runtime() + ": " + runtime_says + "; CUDA_VISIBLE_DEVICES " +
              (visible ? "'" + std::string(visible) + "'" : std::string("unset"));
  return 0;
#else
  if (why_none) *why_none = "this cskv was built without CUDA";
  return 0;
#endif
}

at::Device select(const std::string& name, int local_rank, const std::string& flag) {
  if (name == "cpu") return at::kCPU;
  CSKV_CHECK_USAGE(name == "cuda", flag << ": expected cpu|cuda, found '" << name << "'");
  CSKV_CHECK_USAGE(cuda_compiled(), flag << " cuda: this cskv was built without CUDA (its LibTorch "
                                         << CSKV_TORCH_VERSION_STRING
                                         << " has none; build against a LibTorch with CUDA, e.g. "
                                            "the one launch/install-deps.sh installs)");
  std::string why_none;
  const int gpus = visible_gpus(&why_none);
  CSKV_CHECK_USAGE(gpus > 0,
                   flag << " cuda: no CUDA GPU is visible to this process (" << why_none << ")");
  setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8", /*overwrite=*/0);
  return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(local_rank % gpus));
}

Precision parse_precision(const std::string& text, const std::string& flag) {
  if (text == "fp32") return Precision::kFp32;
  if (text == "tf32") return Precision::kTf32;
  if (text == "bf16") return Precision::kBf16;
  CSKV_FAIL_USAGE(flag << ": expected fp32|tf32|bf16, found '" << text << "'");
}

const char* precision_name(Precision precision) {
  switch (precision) {
    case Precision::kFp32:
      return "fp32";
    case Precision::kTf32:
      return "tf32";
    case Precision::kBf16:
      return "bf16";
  }
  return "?";
}

void configure(at::Device device, Precision precision) {
  if (!device.is_cuda()) {
    CSKV_CHECK_USAGE(precision != Precision::kTf32,
                     "--precision tf32: TF32 is a CUDA tensor-core format; on the CPU use fp32 "
                     "or bf16");
    return;
  }
  auto& ctx = at::globalContext();
  ctx.setDeterministicAlgorithms(true, /*warn_only=*/false);
  ctx.setBenchmarkCuDNN(false);
  ctx.setAllowTF32CuBLAS(precision == Precision::kTf32);
}

void check_choice(const std::string& name, Precision precision) {
  const at::Device device = select(name, 0);
  if (device.is_cpu())
    configure(device, precision);  // the CPU's refusal; CUDA's waits for the rank
}

at::Tensor matmul(const at::Tensor& a, const at::Tensor& b, Precision precision) {
  if (precision != Precision::kBf16) return at::mm(a, b);
  return at::mm(a.to(at::kBFloat16), b.to(at::kBFloat16)).to(at::kFloat);
}

namespace {
// A "<Key>: <n> kB" line of /proc/meminfo in bytes, or 0.
int64_t meminfo_bytes(const std::string& key) {
  std::ifstream f("/proc/meminfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind(key + ":", 0) != 0) continue;
    std::istringstream in(line.substr(key.size() + 1));
    int64_t kb = 0;
    in >> kb;
    return kb * 1024;
  }
  return 0;
}
}  // namespace

Memory memory(at::Device device) {
#if CSKV_WITH_CUDA
  if (device.is_cuda()) return cuda_memory(device.index());
#endif
  CSKV_CHECK(device.is_cpu(), "device::memory: unsupported device " << device);
  return {meminfo_bytes("MemAvailable"), meminfo_bytes("MemTotal")};
}

int64_t peak_allocated_bytes(at::Device device) {
#if CSKV_WITH_CUDA
  if (device.is_cuda()) return cuda_peak_allocated(device.index());
#endif
  (void)device;
  return -1;
}

int64_t allocated_bytes(at::Device device) {
#if CSKV_WITH_CUDA
  if (device.is_cuda()) return cuda_allocated(device.index());
#endif
  (void)device;
  return -1;
}

void reset_peak(at::Device device) {
#if CSKV_WITH_CUDA
  if (device.is_cuda()) cuda_reset_peak(device.index());
#endif
  (void)device;
}

void synchronize(at::Device device) {
#if CSKV_WITH_CUDA
  if (device.is_cuda()) cuda_synchronize(device.index());
#endif
  (void)device;
}

at::Tensor host_buffer(at::IntArrayRef sizes, at::ScalarType dtype, at::Device device) {
  return at::empty(sizes, at::TensorOptions().dtype(dtype).pinned_memory(device.is_cuda()));
}

std::string cuda_runtime_version() {
#if CSKV_WITH_CUDA
  return cuda_runtime();
#else
  return "none";
#endif
}

}  // namespace cskv::device
