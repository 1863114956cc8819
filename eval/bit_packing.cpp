// Packing of b-bit codes (b = 1..8) into a little-endian bitstream: whole groups (lcm(8, b) bits)
// with integer shifts, a last partial group bit by bit.
#include "eval/bit_packing.h"

#include <numeric>

#include "common/error.h"

namespace cskv::eval {
namespace {

void check_bits(int bits) {
  CSKV_CHECK(bits >= 1 && bits <= 8, "bit packing: expected 1..8 bits per code, found " << bits);
}

// Codes per group and bytes per group: 8 codes in b bytes reduced by gcd(8, b).
int64_t group_codes(int bits) { return 8 / std::gcd(8, bits); }
int64_t group_bytes(int bits) { return group_codes(bits) * bits / 8; }

at::Tensor int_range(int64_t n, int64_t step, at::Device device) {
  return at::arange(0, n * step, step, at::TensorOptions().dtype(at::kLong).device(device));
}

// Partial last group (fewer than group_codes codes) bit by bit.
at::Tensor pack_bits(const at::Tensor& codes, int bits) {
  const int64_t n = codes.numel();
  const at::Tensor b = at::bitwise_and(
      at::bitwise_right_shift(codes.to(at::kInt).unsqueeze(1), int_range(bits, 1, codes.device())),
      1);  // [n, bits], least significant first
  const int64_t nbits = n * bits, nbytes = packed_bytes(n, bits);
  at::Tensor flat = at::zeros({nbytes * 8}, b.options());
  flat.narrow(0, 0, nbits).copy_(b.reshape({nbits}));
  const at::Tensor weights =
      at::bitwise_left_shift(at::ones({8}, b.options()), int_range(8, 1, codes.device()));
  return (flat.view({nbytes, 8}) * weights).sum(1).to(at::kByte);
}

at::Tensor unpack_bits(const at::Tensor& bytes, int64_t count, int bits) {
  const at::Tensor b = at::bitwise_and(
      at::bitwise_right_shift(bytes.to(at::kInt).unsqueeze(1), int_range(8, 1, bytes.device())),
      1);  // [nbytes, 8]
  const at::Tensor code_bits = b.reshape({-1}).narrow(0, 0, count * bits).view({count, bits});
  const at::Tensor weights =
      at::bitwise_left_shift(at::ones({bits}, b.options()), int_range(bits, 1, bytes.device()));
  return (code_bits * weights).sum(1).to(at::kByte);
}

}  // namespace

int64_t packed_bytes(int64_t count, int bits) { return (count * bits + 7) / 8; }

at::Tensor pack_codes(const at::Tensor& codes_in, int bits) {
  check_bits(bits);
  CSKV_CHECK(codes_in.scalar_type() == at::kByte,
             "pack_codes: expected uint8 codes, found " << codes_in.scalar_type());
  const at::Tensor codes = codes_in.reshape({-1});
  const int64_t n = codes.numel();
  if (n == 0) return at::empty({0}, codes.options());
  if (bits < 8) {
    const int64_t limit = int64_t{1} << bits;
    const at::Tensor bad = (codes >= limit).nonzero();
    if (bad.numel() > 0) {
      const int64_t i = bad[0][0].item<int64_t>();
      CSKV_FAIL_INPUT("pack_codes: code " << i << " is " << codes[i].item<int64_t>()
                                          << ", which does not fit in " << bits << " bits (max "
                                          << limit - 1 << ")");
    }
  }
  if (bits == 8) return codes.clone();
  const int64_t g = group_codes(bits), gb = group_bytes(bits);
  const int64_t full = n / g, rem = n % g;
  std::vector<at::Tensor> parts;
  if (full > 0) {
    // Each group's codes as one integer (at most 56 bits), then its bytes.
    const at::Tensor c = codes.narrow(0, 0, full * g).view({full, g}).to(at::kLong);
    const at::Tensor value =
        at::bitwise_left_shift(c, int_range(g, bits, codes.device())).sum(1, /*keepdim=*/true);
    parts.push_back(
        at::bitwise_and(at::bitwise_right_shift(value, int_range(gb, 8, codes.device())), 255)
            .to(at::kByte)
            .reshape({full * gb}));
  }
  if (rem > 0) parts.push_back(pack_bits(codes.narrow(0, full * g, rem), bits));
  return parts.size() == 1 ? parts[0] : at::cat(parts, 0);
}

at::Tensor unpack_codes(const at::Tensor& packed, int64_t count, int bits) {
  check_bits(bits);
  CSKV_CHECK(packed.scalar_type() == at::kByte && packed.dim() == 1,
             "unpack_codes: expected a uint8 [bytes] buffer, found " << packed.scalar_type() << " "
                                                                     << packed.sizes());
  CSKV_CHECK(packed.numel() >= packed_bytes(count, bits),
             "unpack_codes: " << count << " codes of " << bits << " bits need "
                              << packed_bytes(count, bits) << " bytes, the buffer holds "
                              << packed.numel());
  if (count == 0) return at::empty({0}, packed.options());
  if (bits == 8) return packed.narrow(0, 0, count).clone();
  const int64_t g = group_codes(bits), gb = group_bytes(bits);
  const int64_t full = count / g, rem = count % g;
  std::vector<at::Tensor> parts;
  if (full > 0) {
    const at::Tensor b = packed.narrow(0, 0, full * gb).view({full, gb}).to(at::kLong);
    const at::Tensor value =
        at::bitwise_left_shift(b, int_range(gb, 8, packed.device())).sum(1, /*keepdim=*/true);
    parts.push_back(
        at::bitwise_and(at::bitwise_right_shift(value, int_range(g, bits, packed.device())),
                        (1 << bits) - 1)
            .to(at::kByte)
            .reshape({full * g}));
  }
  if (rem > 0) {
    parts.push_back(unpack_bits(packed.narrow(0, full * gb, packed_bytes(rem, bits)), rem, bits));
  }
  return parts.size() == 1 ? parts[0] : at::cat(parts, 0);
}

PackedCodes::PackedCodes(int bits, at::Device device) : bits_(bits) {
  check_bits(bits);
  buffer_ = at::empty({0}, at::TensorOptions().dtype(at::kByte).device(device));
}

void PackedCodes::append(const at::Tensor& codes_in) {
  const at::Tensor codes = codes_in.reshape({-1});
  if (codes.numel() == 0) return;
  const int64_t g = group_codes(bits_), tail = count_ % g;
  if (tail == 0) {
    buffer_ = at::cat({buffer_, pack_codes(codes, bits_)}, 0);
  } else {
    // The last group is partial: unpack its codes and pack them again with the new ones.
    const int64_t aligned_bytes = (count_ - tail) / g * group_bytes(bits_);
    const at::Tensor tail_codes = unpack_codes(
        buffer_.narrow(0, aligned_bytes, buffer_.numel() - aligned_bytes), tail, bits_);
    buffer_ = at::cat({buffer_.narrow(0, 0, aligned_bytes),
                       pack_codes(at::cat({tail_codes, codes.to(tail_codes.device())}, 0), bits_)},
                      0);
  }
  count_ += codes.numel();
}

at::Tensor PackedCodes::unpack() const { return unpack_codes(buffer_, count_, bits_); }

}  // namespace cskv::eval
