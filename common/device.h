// Compute devices: the one a rank computes on, what it offers (memory), and the settings that
// make its arithmetic reproducible. Every function takes a CPU or a CUDA device alike, so the CPU
// tests run the code a GPU runs; only common/device_cuda.cpp (CSKV_WITH_CUDA) calls CUDA itself.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>

namespace cskv::device {

// Whether this build has the CUDA code paths (CMake CSKV_WITH_CUDA: LibTorch has CUDA).
bool cuda_compiled();

// CUDA GPUs this process sees (0 without CUDA); when there are none, why_none (if given) says
// what the CUDA runtime answered and what CUDA_VISIBLE_DEVICES holds:
// "CUDA runtime 13.0: no CUDA-capable device is detected; CUDA_VISIBLE_DEVICES unset".
int visible_gpus(std::string* why_none = nullptr);

// "cpu", or "cuda" → cuda:<local_rank mod visible GPUs>. Anything else, CUDA in a build without
// it, or no visible GPU is one usage error naming `flag` and what was found (the CUDA runtime's
// own reason and CUDA_VISIBLE_DEVICES). Choosing CUDA also fixes cuBLAS's workspace
// (CUBLAS_WORKSPACE_CONFIG=:4096:8 unless set), which deterministic cuBLAS needs before its
// first use.
at::Device select(const std::string& name, int local_rank, const std::string& flag = "--device");

// The precision of the training step's matmuls: fp32 (default), TF32 tensor cores (CUDA only),
// or bf16 operands with float32 accumulation.
enum class Precision { kFp32, kTf32, kBf16 };
// "fp32" | "tf32" | "bf16", or a usage error: "--precision: expected fp32|tf32|bf16, found 'x'".
Precision parse_precision(const std::string& text, const std::string& flag = "--precision");
const char* precision_name(Precision precision);

// Puts `device` into reproducible mode for `precision`: on CUDA, deterministic algorithms only
// (no atomics-based kernels), no cuDNN autotuning, TF32 matmuls exactly when kTf32; on the CPU
// nothing changes (its kernels are deterministic for a fixed thread count). kTf32 on the CPU is
// a usage error (there are no TF32 units).
void configure(at::Device device, Precision precision);

// select()'s and configure()'s refusals, which need no rank: called before the runtime starts,
// so that they are one line, not one per rank after the start-up log.
void check_choice(const std::string& name, Precision precision = Precision::kFp32);

// a @ b in `precision`: float32 operands as they are (kFp32, kTf32), or rounded to bf16 with the
// product returned in float32 (kBf16).
at::Tensor matmul(const at::Tensor& a, const at::Tensor& b, Precision precision);

struct Memory {
  int64_t free_bytes = 0;
  int64_t total_bytes = 0;
};
// CUDA: the device's free and total memory (cudaMemGetInfo); CPU: MemAvailable and MemTotal.
Memory memory(at::Device device);

// Bytes the caching allocator handed out at most since reset_peak (CUDA); -1 on the CPU, which
// has no allocator statistics.
int64_t peak_allocated_bytes(at::Device device);
// Bytes the caching allocator has handed out now (CUDA); -1 on the CPU.
int64_t allocated_bytes(at::Device device);
void reset_peak(at::Device device);

// Waits for the device's queued work (no-op on the CPU): timings must include it.
void synchronize(at::Device device);

// An uninitialised host tensor the device copies from: page-locked on CUDA (so copies are
// asynchronous), ordinary memory on the CPU.
at::Tensor host_buffer(at::IntArrayRef sizes, at::ScalarType dtype, at::Device device);

// "13.0" (the CUDA runtime this build links), or "none" without CUDA.
std::string cuda_runtime_version();

}  // namespace cskv::device
