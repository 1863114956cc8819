// XXH64 (xxHash, 64-bit, seed 0) over byte buffers and whole files: the shard checksum that
// acts/manifest.json records ("xxh64:<16 hex digits>").
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace cskv::data {

// Incremental XXH64; update() may be called with any split of the input.
class Xxh64 {
 public:
  explicit Xxh64(uint64_t seed = 0);
  void update(const void* data, size_t len);
  uint64_t digest() const;

 private:
  uint64_t v_[4];
  uint64_t seed_;
  uint64_t total_len_ = 0;
  unsigned char buf_[32];
  size_t buf_len_ = 0;
};

uint64_t xxh64(const void* data, size_t len, uint64_t seed = 0);

// Reads the file in large blocks; throws an input error naming the file when it cannot be read.
uint64_t xxh64_file(const std::string& path);

// "xxh64:0123456789abcdef"
std::string format_checksum(uint64_t digest);

}  // namespace cskv::data
