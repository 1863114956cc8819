// The float32 batches a job computes on, on its device: streamed from the shards (prefetched into
// page-locked host buffers for a GPU, converted and NaN/Inf-checked where they are used), or
// sliced from the layer's split held in device memory (read once, shared by the K and V job).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "data/activation_reader.h"
#include "trainer/train_device.h"

namespace cskv::trainer {

// One split of one layer as stored (float16 or float32) on a device, checked for NaN/Inf once.
struct ResidentSplit {
  int64_t layer = 0;
  std::string split;
  at::Tensor rows;  // [tokens, H]
};

// The whole split on `device` (read in chunks, each checked with the reader's message).
std::shared_ptr<const ResidentSplit> load_resident(const data::ActivationReaderOptions& options,
                                                   at::Device device);

// Whether the split that `options` names goes into device memory under `dev`.
bool use_resident(const data::ActivationReaderOptions& options, const TrainDevice& dev);

// The reader's stream of batches (same positions, lengths and epochs), as float32 on the device.
class BatchStream {
 public:
  // resident null: read through an ActivationReader; otherwise slices of resident->rows.
  BatchStream(data::ActivationReaderOptions options, const TrainDevice& dev,
              std::shared_ptr<const ResidentSplit> resident);

  std::optional<at::Tensor> next();  // [n, H] float32 on the device; nullopt after the last epoch
  int64_t position() const;
  void seek(int64_t position);

 private:
  data::ActivationReaderOptions options_;
  at::Device device_;
  bool host_convert_ = true;
  std::shared_ptr<const ResidentSplit> resident_;
  std::unique_ptr<data::ActivationReader> reader_;
  int64_t position_ = 0;  // resident only
};

}  // namespace cskv::trainer
