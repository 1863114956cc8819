// XXH64 (xxHash, 64-bit) over byte buffers: the one implementation that data/ (shard checksums)
// and model/ (the weights fingerprint) share.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace cskv {

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

// "xxh64:0123456789abcdef"
std::string format_xxh64(uint64_t digest);

}  // namespace cskv
