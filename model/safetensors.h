// Safetensors I/O: a torch-free header parser/validator, a lazy mmap reader (single file or
// sharded via model.safetensors.index.json) and a writer (optionally sharded with an index).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "model/safetensors_header.h"

namespace cskv::model {

at::ScalarType to_scalar_type(StDType d);
// Throws an input error naming the dtype for anything but float32/float16/bfloat16.
StDType from_scalar_type(at::ScalarType t);

// One mmapped .safetensors file. Tensors are views into the mapping (copy-on-write private
// mapping, so in-place ops never touch the file) and keep the mapping alive.
class SafetensorsFile : public std::enable_shared_from_this<SafetensorsFile> {
 public:
  // Validates the header against the file size; throws cskv::Error (kInput) naming the file.
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const SafetensorsHeader& header() const { return header_; }
  bool contains(const std::string& name) const;
  const TensorEntry& entry(const std::string& name) const;  // throws naming file + tensor
  // Only this tensor's byte range is touched. Zero-copy when the data is suitably aligned.
  at::Tensor get(const std::string& name) const;

 private:
  SafetensorsFile() = default;
  std::string path_;
  SafetensorsHeader header_;
  int fd_ = -1;
  uint8_t* map_ = nullptr;
  size_t map_size_ = 0;
};

// A model's weights: either model.safetensors or the shards named in model.safetensors.index.json.
// Shard files are opened on first access to one of their tensors.
class SafetensorsModel {
 public:
  static SafetensorsModel open_dir(const std::string& model_dir);
  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const;
  const TensorEntry& entry(const std::string& name) const;
  at::Tensor get(const std::string& name) const;
  // The file that holds `name` (for error messages).
  std::string file_of(const std::string& name) const;

 private:
  std::string dir_;
  std::map<std::string, std::string> weight_map_;  // tensor -> file name (relative to dir_)
  mutable std::map<std::string, std::shared_ptr<SafetensorsFile>> files_;
  std::shared_ptr<std::mutex> files_mutex_ = std::make_shared<std::mutex>();  // guards files_
  std::shared_ptr<SafetensorsFile> file(const std::string& file_name) const;
};

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;
using Metadata = std::map<std::string, std::string>;

// Writes one file via temp file + fsync + rename. Tensors must be float32/float16/bfloat16 on
// CPU; they are written contiguous in the order given; header padded with spaces to 8 bytes.
void write_safetensors(const std::string& path, const NamedTensors& tensors,
                       const Metadata& metadata = {});

// Writes `model-0000k-of-0000n.safetensors` shards of at most max_shard_bytes each (a tensor
// larger than that gets its own shard) and `model.safetensors.index.json`; with a single
// shard writes plain `model.safetensors` and no index. Returns the file names written.
std::vector<std::string> write_safetensors_sharded(const std::string& dir,
                                                   const NamedTensors& tensors,
                                                   const Metadata& metadata,
                                                   uint64_t max_shard_bytes);

}  // namespace cskv::model
