// Bit packing of 2/3/4/8-bit latent codes: exact round trips (one shot and in appended pieces),
// the documented bit layout, buffer sizes and the error for a code that does not fit.
#include "eval/bit_packing.h"

#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <vector>

#include "tests/support/test_support.h"

namespace cskv::eval {
namespace {

at::Tensor random_codes(int64_t n, int bits, uint64_t seed) {
  at::manual_seed(seed);
  return at::randint(0, int64_t{1} << bits, {n}, at::kByte);
}

TEST(EvalBitPacking, RoundTripIsExactForEveryWidthAndLength) {
  for (const int bits : {1, 2, 3, 4, 5, 6, 7, 8}) {
    for (const int64_t n : {0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1000, 4099}) {
      const at::Tensor codes = random_codes(n, bits, static_cast<uint64_t>(n * 10 + bits));
      const at::Tensor packed = pack_codes(codes, bits);
      ASSERT_EQ(packed.numel(), (n * bits + 7) / 8) << bits << " bits, " << n << " codes";
      EXPECT_EQ(packed_bytes(n, bits), packed.numel());
      EXPECT_TRUE(at::equal(unpack_codes(packed, n, bits), codes))
          << bits << " bits, " << n << " codes";
    }
  }
}

TEST(EvalBitPacking, AppendedPiecesGiveTheSameStreamAsOnePack) {
  for (const int bits : {1, 2, 3, 4, 5, 6, 7, 8}) {
    const at::Tensor codes = random_codes(3000, bits, 7 + bits);
    PackedCodes stream(bits);
    // Pieces of awkward sizes, so most appends start inside a partial group.
    const std::vector<int64_t> pieces = {1, 2, 5, 3, 64, 7, 100, 1, 13, 804, 1000, 1000};
    int64_t at = 0;
    for (const int64_t p : pieces) {
      stream.append(codes.narrow(0, at, p));
      at += p;
      ASSERT_EQ(stream.count(), at);
      ASSERT_EQ(stream.buffer().numel(), packed_bytes(at, bits)) << bits << " bits at " << at;
      ASSERT_TRUE(at::equal(stream.unpack(), codes.narrow(0, 0, at))) << bits << " bits at " << at;
    }
    EXPECT_TRUE(at::equal(stream.buffer(), pack_codes(codes, bits))) << bits << " bits";
  }
}

TEST(EvalBitPacking, LayoutIsALittleEndianBitstream) {
  // 3 bits: codes 1..7, 0 → bits (LSB first) 100 010 110 001 101 011 111 000
  // → bytes 0b11010001 = 0xD1, 0b01011000 = 0x58, 0b00011111 = 0x1F.
  const at::Tensor three = at::tensor({1, 2, 3, 4, 5, 6, 7, 0}, at::kByte);
  const at::Tensor p3 = pack_codes(three, 3);
  ASSERT_EQ(p3.numel(), 3);
  EXPECT_EQ(p3[0].item<int>(), 0xD1);
  EXPECT_EQ(p3[1].item<int>(), 0x58);
  EXPECT_EQ(p3[2].item<int>(), 0x1F);
  // 7 bits (a waterfill width): codes 127, 0, 1 → stream bits 0–6 set, then bit 14 → bytes
  // 0x7F, 0x40 (bit 6 of byte 1), 0x00.
  const at::Tensor p7 = pack_codes(at::tensor({127, 0, 1}, at::kByte), 7);
  ASSERT_EQ(p7.numel(), 3);
  EXPECT_EQ(p7[0].item<int>(), 0x7F);
  EXPECT_EQ(p7[1].item<int>(), 0x40);
  EXPECT_EQ(p7[2].item<int>(), 0x00);
  // 4 bits: code 2j in the low nibble of byte j; a lone last code fills a low nibble.
  const at::Tensor p4 = pack_codes(at::tensor({0x3, 0xA, 0xF}, at::kByte), 4);
  ASSERT_EQ(p4.numel(), 2);
  EXPECT_EQ(p4[0].item<int>(), 0xA3);
  EXPECT_EQ(p4[1].item<int>(), 0x0F);
  // 2 bits: four codes per byte.
  const at::Tensor p2 = pack_codes(at::tensor({1, 2, 3, 0, 3}, at::kByte), 2);
  ASSERT_EQ(p2.numel(), 2);
  EXPECT_EQ(p2[0].item<int>(), 0b00111001);
  EXPECT_EQ(p2[1].item<int>(), 0b00000011);
}

TEST(EvalBitPacking, CodeThatDoesNotFitIsAnInputError) {
  EXPECT_CSKV_ERROR(pack_codes(at::tensor({1, 2, 9, 3}, at::kByte), 3),
                    "pack_codes: code 2 is 9, which does not fit in 3 bits (max 7)");
  EXPECT_CSKV_ERROR(pack_codes(at::tensor({4}, at::kByte), 2),
                    "pack_codes: code 0 is 4, which does not fit in 2 bits (max 3)");
}

}  // namespace
}  // namespace cskv::eval
