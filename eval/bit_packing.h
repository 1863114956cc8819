// Bit packing of quantized latent codes: b-bit codes (b = 1..8) stored back to back in a
// uint8 buffer, so a compressed cache really holds count·b/8 bytes (rounded up to whole bytes).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace cskv::eval {

// Layout: one little-endian bitstream; code i occupies bits [i·b, (i+1)·b), least significant
// bit first (so with b = 4, byte j holds code 2j in its low and code 2j+1 in its high nibble;
// with b = 3, the 8 codes of a group fill 3 bytes). Packing and unpacking work on groups of
// 8/gcd(8, b) codes with integer shifts, and bit by bit only for a last partial group.

// ceil(count · bits / 8).
int64_t packed_bytes(int64_t count, int bits);

// codes: uint8 values < 2^bits (any shape, read in row-major order) → uint8 [packed_bytes(n)].
// Input error naming the first offending value when a code does not fit in `bits`.
at::Tensor pack_codes(const at::Tensor& codes, int bits);

// The first `count` codes of a buffer written by pack_codes, as uint8 [count].
at::Tensor unpack_codes(const at::Tensor& packed, int64_t count, int bits);

// A growing packed stream: append() packs onto the end (repacking only the last partial group),
// so the buffer always holds exactly packed_bytes(count(), bits) bytes.
class PackedCodes {
 public:
  explicit PackedCodes(int bits, at::Device device = at::kCPU);
  void append(const at::Tensor& codes);  // uint8, any shape, row-major
  at::Tensor unpack() const;             // uint8 [count()]
  int64_t count() const { return count_; }
  int bits() const { return bits_; }
  const at::Tensor& buffer() const { return buffer_; }

 private:
  int bits_;
  int64_t count_ = 0;
  at::Tensor buffer_;  // uint8 [packed_bytes(count_, bits_)]
};

}  // namespace cskv::eval
