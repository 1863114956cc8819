// Fake quantization of the cached latent c = XA (DESIGN.md §2): min–max groups, round half to
// even, straight-through gradient, and the packed codes/scale/offset form a cache stores.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

namespace cskv::trainer {

// One latent channel's static code (`--quant waterfill`, trainer/waterfill.h): with M = 2^bits − 1,
// q = clamp(round_half_even((c − offset) / scale), 0, M) and ĉ = offset + scale·q, in float32.
// bits 0 drops the channel (ĉ = 0); a kept channel has bits 1..8 and scale > 0.
struct ChannelCode {
  int bits = 0;
  float offset = 0;
  float scale = 0;
  bool operator==(const ChannelCode& o) const {
    return bits == o.bits && offset == o.offset && scale == o.scale;
  }
};

// How one latent (K or V) is quantized.
//
// Grouping (uses_channel_windows()):
//  - per token: each token's r latent channels form r / group_size groups of group_size
//    consecutive channels (V, and K without a window);
//  - per channel (per_channel && window > 0; keys, KIVI-style): each channel's tokens form
//    groups of `window` consecutive tokens along dim −2; when the token count is not a multiple
//    of the window the last, shorter group is quantized on its own. Windows never cross a leading
//    (batch / sequence) index of a [..., tokens, r] latent.
//
// Values, with M = 2^bits − 1, per group of minimum mn and maximum mx:
//  - default: scale = (mx − mn)/M, offset = mn (the zero point −mn/scale is neither rounded nor
//    clamped), code q = clamp(round((x − mn)/scale), 0, M), x̂ = q·scale + mn. Every x̂ lies within
//    scale/2 of x, mn and mx are exact grid points, and a constant group (scale = 0) gives q = 0,
//    x̂ = x exactly.
//  - compat_cskv (`--quant-compat cskv`, the reference code's KVQuantizer): scale = max(mx − mn,
//    1e-5)/M, offset = zero = clamp(round(−mn/scale), 0, M),
//    q = clamp(round(x/scale) + zero, 0, M), x̂ = (q − zero)·scale. A group that does not
//    straddle zero collapses: all positive (mn ≥ (M + ½)·scale) → every x̂ = M·scale = mx − mn;
//    all negative (mx ≤ −(M + ½)·scale) → every x̂ = −M·scale = −(mx − mn). A constant group v
//    (scale = 1e-5/M) becomes M·scale·sign(v) ≈ ±1e-5 when |v| ≥ (M + ½)·scale, 0 when v = 0.
// round() is ATen's round: half to even. bits 16 means no quantization (x̂ = x, bitwise).
struct QuantConfig {
  int bits = 16;             // 2, 3, 4, 8 or 16
  int64_t group_size = 0;    // latent channels per group (per-token grouping)
  int64_t window = 0;        // tokens per group (per-channel grouping); 0: none
  bool per_channel = false;  // keys: per-channel groups over `window` tokens when window > 0
  bool compat_cskv = false;  // reproduce the reference implementation (see above)
  // Static per-channel codes (`--quant waterfill`): when not empty, channel j of the latent is
  // quantized by channels[j] alone (ChannelCode above) and group_size, window, per_channel and
  // compat_cskv are unused; bits is then the widest channel's width (16 never).
  std::vector<ChannelCode> channels;
};

// True when the latent is quantized by static per-channel codes (cfg.channels not empty).
bool uses_channel_codes(const QuantConfig& cfg);

// True when groups run over `window` tokens of one channel (per_channel && window > 0).
bool uses_channel_windows(const QuantConfig& cfg);

// Throws a usage error "<flag>: expected one of 2, 3, 4, 8, 16, found 5" for unsupported bits.
void check_quant_bits(int bits, const std::string& flag);

// Checks bits, the window (≥ 0) and, for per-token grouping, that group_size divides
// latent_width. With channel codes: one code per latent channel, each of 1..8 bits with a finite
// offset and a finite scale > 0 ("layer 3 K: channel 5: expected 1..8 bits, found 9"). Usage
// errors, prefixed by "<context>: " when context is not empty, e.g. "layer 3 V: --group-size:
// expected a divisor of the latent width 96, found 40".
void validate_quant_config(const QuantConfig& cfg, int64_t latent_width,
                           const std::string& context = {});

// The static scale and offset of channel codes as float32 [r] tensors on `device` (0 and 0 for a
// dropped channel): what dequantize takes with channel codes, and what eval folds into B.
struct ChannelRanges {
  at::Tensor scale, offset;
};
ChannelRanges channel_ranges(const std::vector<ChannelCode>& codes, at::Device device);

// Applies channel codes to a latent [..., r] (codes.size() == r) on its device and dtype: ĉ, with
// no autograd history.
at::Tensor quantize_channels(const at::Tensor& latent, const std::vector<ChannelCode>& codes);

// Fake-quantized latent (same shape and dtype as c, float32 or float64) and the straight-through
// gradient mask: undefined in the default mode (the gradient passes unchanged everywhere), a 0/1
// tensor shaped like c under compat_cskv (the reference's backward: 0 where x ≤ −zero·scale or
// x ≥ (M − zero)·scale, i.e. at or beyond the representable range). For manual gradients:
// dL/dc = dL/dx̂ ⊙ mask. At 16 bits values is c itself and mask is undefined. No autograd history.
struct QuantizedLatent {
  at::Tensor values;
  at::Tensor mask;
};
QuantizedLatent fake_quantize_with_mask(const at::Tensor& c, const QuantConfig& cfg);

// Autograd form: the value of fake_quantize_with_mask(c).values (bitwise, except −0 → +0),
// with gradient dL/dc = dL/dx̂ (⊙ mask under compat_cskv). Built as x̂ + mask·(c − c.detach()),
// so plain ATen ops carry the straight-through gradient when c requires grad.
at::Tensor fake_quantize(const at::Tensor& c, const QuantConfig& cfg);

// The packed form of a quantized latent of shape [..., tokens, r] (bits 2..8, or channel codes).
//  codes  uint8, shaped like c;
//  scale  c's dtype, one per group: [..., r / group_size] per token, or
//         [..., ceil(tokens / window), r] per channel;
//  offset shaped like scale: the group minimum (default) or the clamped integer zero point
//         (compat_cskv).
// With channel codes: codes as above, scale and offset the static [r] float32 of the channels.
struct QuantizedCodes {
  at::Tensor codes;
  at::Tensor scale;
  at::Tensor offset;
};
QuantizedCodes quantize_codes(const at::Tensor& c, const QuantConfig& cfg);

// x̂ from the packed form: codes·scale + offset (default) or (codes − offset)·scale (compat_cskv),
// in scale's dtype. dequantize(quantize_codes(c)) equals fake_quantize_with_mask(c).values bitwise.
at::Tensor dequantize(const at::Tensor& codes, const at::Tensor& scale, const at::Tensor& offset,
                      const QuantConfig& cfg);

// Bytes per token of a packed latent of width r: codes r·bits/8, plus an fp16 scale and offset per
// group (2·2·r/group_size per token, or 2·2·r/window per token amortised over a window). 16 bits:
// 2·r (fp16, no overhead). Channel codes: Σ bits_j / 8, no overhead (the ranges are static).
double quant_code_bytes_per_token(int64_t latent_width, const QuantConfig& cfg);
double quant_overhead_bytes_per_token(int64_t latent_width, const QuantConfig& cfg);
// Bits one token's latent costs: 8 · (code bytes + overhead bytes).
double quant_bits_per_token(int64_t latent_width, const QuantConfig& cfg);

}  // namespace cskv::trainer
