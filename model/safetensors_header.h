// Torch-free parsing and validation of a safetensors header (also the libFuzzer target's unit).
// Format: u64 little-endian header length N, N bytes of JSON, then the data section.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace cskv::model {

enum class StDType { kF32, kF16, kBF16, kU8 };
const char* dtype_name(StDType d);  // "F32" | "F16" | "BF16" | "U8"
size_t dtype_size(StDType d);

struct TensorEntry {
  std::string name;
  StDType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets relative to the start of the data section
  uint64_t end = 0;
  uint64_t numel() const;
};

struct SafetensorsHeader {
  uint64_t header_size = 0;  // N
  uint64_t data_offset = 0;  // 8 + N
  std::map<std::string, TensorEntry> tensors;
  std::map<std::string, std::string> metadata;
};

constexpr uint64_t kMaxHeaderBytes = 100ull * 1000 * 1000;  // 100 MB, as the reference reader

// Parses the header from the first bytes of a file. `prefix` must hold at least
// min(file_size, 8 + N) bytes; `file_size` is the full file size. Validates: header length
// within the file and ≤ kMaxHeaderBytes, JSON well-formed, each entry has dtype/shape/
// data_offsets of the right types, dtype supported, offsets ordered, inside the data section,
// non-overlapping, and end-begin == numel*dtype_size. Throws cskv::Error (kInput) whose message
// starts with "<path>: " and names the tensor and expected vs found.
SafetensorsHeader parse_safetensors_header(const uint8_t* prefix, size_t prefix_size,
                                           uint64_t file_size, const std::string& path);

}  // namespace cskv::model
