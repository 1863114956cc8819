// libFuzzer target for the torch-free safetensors header parser (built with clang, see
// tests.cmake). Only cskv::Error may escape the parser; anything else (crash, ASan/UBSan report) is
// a bug.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common/error.h"
#include "model/safetensors_header.h"

namespace {

void parse(const uint8_t* data, size_t size) {
  try {
    const auto header = cskv::model::parse_safetensors_header(data, size, size, "fuzz");
    // A header that parses must describe tensors inside the data section.
    for (const auto& kv : header.tensors) {
      const auto& e = kv.second;
      if (e.begin > e.end || header.data_offset + e.end > size ||
          e.end - e.begin != e.numel() * cskv::model::dtype_size(e.dtype)) {
        __builtin_trap();
      }
    }
  } catch (const cskv::Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // 1. The input as a whole file (length prefix included).
  parse(data, size);
  // 2. The input as header JSON, with a correct length prefix and a 256-byte data section, so the
  //    fuzzer reaches the entry/offset checks without having to guess the length.
  std::vector<uint8_t> file(8 + size + 256, 0);
  for (int i = 0; i < 8; ++i)
    file[i] = static_cast<uint8_t>(static_cast<uint64_t>(size) >> (8 * i));
  if (size) std::memcpy(file.data() + 8, data, size);
  parse(file.data(), file.size());
  return 0;
}
