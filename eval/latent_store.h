// The compressed branch of one latent (K or V) in a cache: quantized latents of the compressed
// tokens as packed b-bit codes with a scale and zero per group in the storage dtype (fp16 by
// default), or the plain latents in the storage dtype at 16 bits, or — with static channel codes
// (`--quant waterfill`) — the codes alone, the channels grouped by width and each group packed at
// its width (the ranges are constants of the compressor, not of the cache).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "eval/bit_packing.h"
#include "trainer/quantizer.h"

namespace cskv::eval {

// One appended block's quantization, before packing.
struct EncodedLatent {
  at::Tensor codes;   // uint8 [n, r]
  at::Tensor scale;   // storage dtype, per group (layout of trainer::QuantizedCodes::scale)
  at::Tensor offset;  // storage dtype, like scale
};

// Quantizes c [n, r] (float32) with the training quantizer's groups (trainer::quantize_codes:
// min–max per group, round half to even), then stores scale and offset in `storage`. With a
// float32 storage the codes, scale and offset are exactly quantize_codes'; with float16 the codes
// are recomputed against the rounded scale/offset (what dequantization will use), so every
// reconstructed value stays within half a rounded step of c except where rounding moved the
// group's ends. Input error when a scale or offset does not fit the storage dtype.
EncodedLatent encode_latent(const at::Tensor& c, const trainer::QuantConfig& q,
                            at::ScalarType storage);

// x̂ [n, r] float32 from an encoded block (trainer::dequantize on the stored scale/offset).
at::Tensor decode_latent(const at::Tensor& codes, const at::Tensor& scale, const at::Tensor& offset,
                         const trainer::QuantConfig& q);

class LatentStore {
 public:
  // r: latent width; q: its quantizer (bits 16: plain latents in `storage`).
  LatentStore(int64_t r, const trainer::QuantConfig& q, at::ScalarType storage,
              at::Device device = at::kCPU);

  // Appends c [n, r] (float32). Per-channel key groups run over `window` consecutive tokens
  // starting at each appended block's first token, so a cache appends whole windows.
  void append(const at::Tensor& c);

  // Every stored latent, dequantized, [tokens(), r] float32.
  at::Tensor dequantized() const;
  // With channel codes: the stored codes as float32 [tokens(), r] (what a reconstruction with the
  // ranges folded into B multiplies); otherwise dequantized().
  at::Tensor folded_latents() const;

  int64_t tokens() const { return tokens_; }
  int64_t width() const { return r_; }
  const trainer::QuantConfig& quant() const { return q_; }
  // Storage bytes: packed codes + scale + offset, or the plain latents.
  int64_t bytes() const;

 private:
  int64_t r_;
  trainer::QuantConfig q_;
  at::ScalarType storage_;
  int64_t tokens_ = 0;
  PackedCodes codes_;
  at::Tensor scale_, offset_;  // per group, concatenated along the token-group dimension
  at::Tensor plain_;           // 16 bits: [tokens, r]
  // Channel codes: the channels of each width (ascending) and their packed codes, token-major.
  std::vector<at::Tensor> width_channels_;  // int64 [n_w], one per width present
  std::vector<PackedCodes> width_codes_;
  at::Tensor channel_codes() const;  // uint8 [tokens, r]
};

}  // namespace cskv::eval
