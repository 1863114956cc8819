// Where a job's arithmetic runs and how its activations reach it (trainer/batch_source.h does
// the reading): the settings only, so that layer_trainer.h stays free of the HDF5 reader.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>

namespace cskv::trainer {

// --resident: auto (in device memory when the split fits in the share of the device's free
// memory; on CUDA only) | on | off (stream every epoch from the shards).
enum class Residency { kAuto, kOn, kOff };
Residency parse_residency(const std::string& text);  // usage error naming --resident
const char* residency_name(Residency residency);

// Where a job's arithmetic runs and how its activations reach it. None of it changes a number:
// every choice yields the same float32 batches.
struct TrainDevice {
  at::Device device = at::kCPU;
  Residency resident = Residency::kAuto;
  double resident_share = 0.5;  // of the device's free memory, for auto
  // Streaming: convert float16 rows and check them on the host (the reader's prefetch thread)
  // rather than on the device. Default: on the CPU only; tests turn it off there to run the
  // device path on the CPU.
  std::optional<bool> host_convert;
};

}  // namespace cskv::trainer
