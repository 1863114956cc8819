// Fake quantization of the cached latent: group statistics, codes, dequantization and the
// straight-through gradient, all from plain ATen ops (see quantizer.h for the exact formulas).
#include "trainer/quantizer.h"

#include <cmath>
#include <string>

#include "common/error.h"

namespace cskv::trainer {
namespace {

std::string prefix(const std::string& context) { return context.empty() ? "" : context + ": "; }

void check_group_size(int64_t group_size, int64_t latent_width, const std::string& context) {
  CSKV_CHECK_USAGE(group_size > 0 && latent_width % group_size == 0,
                   prefix(context) << "--group-size: expected a divisor of the latent width "
                                   << latent_width << ", found " << group_size);
}

double max_code(int bits) { return static_cast<double>((int64_t{1} << bits) - 1); }

// Checks done on every call (the config may not have gone through validate_quant_config).
void check_call(const at::Tensor& c, const QuantConfig& cfg) {
  check_quant_bits(cfg.bits, "quantization bits");
  CSKV_CHECK(c.scalar_type() == at::kFloat || c.scalar_type() == at::kDouble,
             "fake quantization: expected a float32 or float64 latent, found " << c.scalar_type());
  if (uses_channel_windows(cfg)) {
    CSKV_CHECK(c.dim() >= 2,
               "fake quantization: per-channel windows need a [..., tokens, r] "
               "latent, found "
                   << c.dim() << " dimension(s)");
  } else {
    CSKV_CHECK(c.dim() >= 1, "fake quantization: expected a [..., r] latent, found a scalar");
    check_group_size(cfg.group_size, c.size(-1), "");
  }
  CSKV_CHECK_USAGE(cfg.window >= 0,
                   "--window: expected a number of tokens >= 0, found " << cfg.window);
}

// Per-group minimum and maximum in the layout of QuantizedCodes::scale.
std::pair<at::Tensor, at::Tensor> group_min_max(const at::Tensor& c, const QuantConfig& cfg) {
  if (!uses_channel_windows(cfg)) {
    auto shape = c.sizes().vec();
    shape.back() = c.size(-1) / cfg.group_size;
    shape.push_back(cfg.group_size);
    const at::Tensor g = c.reshape(shape);
    return {g.amin(-1), g.amax(-1)};
  }
  const int64_t tokens = c.size(-2), w = cfg.window;
  const int64_t full = tokens / w, rest = tokens - full * w;
  std::vector<at::Tensor> mins, maxs;
  if (full > 0) {
    auto shape = c.sizes().vec();
    shape[shape.size() - 2] = full;
    shape.insert(shape.end() - 1, w);  // [..., full, w, r]
    const at::Tensor g = c.narrow(-2, 0, full * w).reshape(shape);
    mins.push_back(g.amin(-2));
    maxs.push_back(g.amax(-2));
  }
  if (rest > 0) {  // the last, shorter window on its own
    const at::Tensor g = c.narrow(-2, full * w, rest);
    mins.push_back(g.amin(-2, /*keepdim=*/true));
    maxs.push_back(g.amax(-2, /*keepdim=*/true));
  }
  return {at::cat(mins, -2), at::cat(maxs, -2)};
}

// The shape of the per-group tensors of a latent of this shape.
std::vector<int64_t> group_shape(const at::IntArrayRef latent_shape, const QuantConfig& cfg) {
  auto shape = latent_shape.vec();
  if (uses_channel_windows(cfg)) {
    int64_t& tokens = shape[shape.size() - 2];
    tokens = (tokens + cfg.window - 1) / cfg.window;
  } else {
    shape.back() /= cfg.group_size;
  }
  return shape;
}

// A per-group tensor broadcast to the latent's shape.
at::Tensor expand_groups(const at::Tensor& per_group, const at::IntArrayRef latent_shape,
                         const QuantConfig& cfg) {
  if (!uses_channel_windows(cfg)) return per_group.repeat_interleave(cfg.group_size, -1);
  const int64_t tokens = latent_shape[latent_shape.size() - 2];
  return per_group.repeat_interleave(cfg.window, -2).narrow(-2, 0, tokens);
}

// Codes (as floating values in c's dtype), per-group scale and offset, and (compat) the mask.
struct Quantized {
  at::Tensor codes, scale, offset, mask;
};

Quantized quantize_impl(const at::Tensor& c_in, const QuantConfig& cfg, bool want_mask) {
  check_call(c_in, cfg);
  const at::Tensor c = c_in.detach();
  const double m = max_code(cfg.bits);
  auto [mn, mx] = group_min_max(c, cfg);
  Quantized q;
  if (!cfg.compat_cskv) {
    q.scale = (mx - mn).div_(m);
    q.offset = mn;
    // A constant group has scale 0: every (x − mn) is 0 there, so dividing by 1 gives code 0.
    const at::Tensor safe = at::where(q.scale > 0, q.scale, at::ones_like(q.scale));
    const at::Tensor s = expand_groups(safe, c.sizes(), cfg);
    const at::Tensor lo = expand_groups(mn, c.sizes(), cfg);
    q.codes = (c - lo).div_(s).round_().clamp_(0.0, m);
    return q;
  }
  // The reference KVQuantizer: scales = (max − min).clamp(min=1e-5)/max_int,
  // zeros = (−round(min/scales)).clamp(0, max_int), q = clamp(round(x/scales) + zeros, 0, max_int).
  q.scale = at::clamp_min(mx - mn, 1e-5).div_(m);
  q.offset = at::neg(at::round(mn / q.scale)).clamp_(0.0, m);
  const at::Tensor s = expand_groups(q.scale, c.sizes(), cfg);
  const at::Tensor z = expand_groups(q.offset, c.sizes(), cfg);
  q.codes = at::round(c / s).add_(z).clamp_(0.0, m);
  if (want_mask) {
    // Its backward zeroes the gradient where x ≤ scales·(0 − zeros) or x ≥ scales·(max_int −
    // zeros).
    const at::Tensor lo_clip = s * (0.0 - z);
    const at::Tensor hi_clip = s * (m - z);
    q.mask = at::logical_and(c > lo_clip, c < hi_clip).to(c.scalar_type());
  }
  return q;
}

at::Tensor dequantize_expanded(const at::Tensor& codes, const at::Tensor& scale,
                               const at::Tensor& offset, const QuantConfig& cfg) {
  const at::Tensor s = expand_groups(scale, codes.sizes(), cfg);
  const at::Tensor o = expand_groups(offset, codes.sizes(), cfg);
  const at::Tensor q = codes.to(scale.scalar_type());
  if (!cfg.compat_cskv) return q * s + o;
  return (q - o) * s;
}

// The channel codes as [r] tensors in `dtype` on c's device: offset, the scale (0 for a dropped
// channel), the scale a division may use (1 where it is 0) and the top code 2^bits − 1.
struct ChannelTensors {
  at::Tensor offset, scale, divisor, top;
};

ChannelTensors channel_tensors(const std::vector<ChannelCode>& codes, const at::Tensor& like) {
  std::vector<float> offset, scale, divisor, top;
  for (const ChannelCode& c : codes) {
    const bool kept = c.bits > 0;
    offset.push_back(kept ? c.offset : 0.0f);
    scale.push_back(kept ? c.scale : 0.0f);
    divisor.push_back(kept && c.scale > 0 ? c.scale : 1.0f);
    top.push_back(static_cast<float>(max_code(c.bits)));
  }
  const auto opts = at::TensorOptions().dtype(at::kFloat).device(like.device());
  const auto t = [&](const std::vector<float>& v) {
    return at::tensor(v, opts).to(like.scalar_type());
  };
  return {t(offset), t(scale), t(divisor), t(top)};
}

void check_channel_call(const at::Tensor& c, const QuantConfig& cfg) {
  CSKV_CHECK(
      c.scalar_type() == at::kFloat || c.scalar_type() == at::kDouble,
      "channel quantization: expected a float32 or float64 latent, found " << c.scalar_type());
  CSKV_CHECK(c.dim() >= 1 && c.size(-1) == static_cast<int64_t>(cfg.channels.size()),
             "channel quantization: a latent " << c.sizes() << " for " << cfg.channels.size()
                                               << " channel codes");
}

// Codes (floating, in c's dtype) of every channel: clamp(round((c − offset)/scale), 0, top).
at::Tensor channel_codes(const at::Tensor& c, const ChannelTensors& t) {
  return at::round((c - t.offset) / t.divisor).clamp_min_(0).minimum(t.top);
}

}  // namespace

bool uses_channel_codes(const QuantConfig& cfg) { return !cfg.channels.empty(); }

ChannelRanges channel_ranges(const std::vector<ChannelCode>& codes, at::Device device) {
  const ChannelTensors t =
      channel_tensors(codes, at::empty({0}, at::TensorOptions().dtype(at::kFloat).device(device)));
  return {t.scale, t.offset};
}

at::Tensor quantize_channels(const at::Tensor& latent, const std::vector<ChannelCode>& codes) {
  QuantConfig cfg;
  cfg.channels = codes;
  check_channel_call(latent, cfg);
  const at::NoGradGuard no_grad;
  const at::Tensor c = latent.detach();
  const ChannelTensors t = channel_tensors(codes, c);
  return t.offset + t.scale * channel_codes(c, t);
}

bool uses_channel_windows(const QuantConfig& cfg) { return cfg.per_channel && cfg.window > 0; }

void check_quant_bits(int bits, const std::string& flag) {
  CSKV_CHECK_USAGE(bits == 2 || bits == 3 || bits == 4 || bits == 8 || bits == 16,
                   flag << ": expected one of 2, 3, 4, 8, 16, found " << bits);
}

namespace {
void validate_channel_codes(const QuantConfig& cfg, int64_t latent_width,
                            const std::string& context) {
  CSKV_CHECK_USAGE(static_cast<int64_t>(cfg.channels.size()) == latent_width,
                   prefix(context) << "expected one channel code per latent channel ("
                                   << latent_width << "), found " << cfg.channels.size());
  for (size_t j = 0; j < cfg.channels.size(); ++j) {
    const ChannelCode& c = cfg.channels[j];
    CSKV_CHECK_USAGE(c.bits >= 1 && c.bits <= 8, prefix(context)
                                                     << "channel " << j
                                                     << ": expected 1..8 bits, found " << c.bits);
    CSKV_CHECK_USAGE(std::isfinite(c.offset) && std::isfinite(c.scale) && c.scale > 0,
                     prefix(context)
                         << "channel " << j << ": expected a finite offset and a "
                         << "finite scale > 0, found offset " << c.offset << ", scale " << c.scale);
  }
}
}  // namespace

void validate_quant_config(const QuantConfig& cfg, int64_t latent_width,
                           const std::string& context) {
  if (uses_channel_codes(cfg)) return validate_channel_codes(cfg, latent_width, context);
  check_quant_bits(cfg.bits, prefix(context) + "quantization bits");
  CSKV_CHECK_USAGE(cfg.window >= 0, prefix(context)
                                        << "--window: expected a number of tokens >= 0, found "
                                        << cfg.window);
  if (!uses_channel_windows(cfg)) check_group_size(cfg.group_size, latent_width, context);
}

QuantizedLatent fake_quantize_with_mask(const at::Tensor& c, const QuantConfig& cfg) {
  if (uses_channel_codes(cfg)) return {quantize_channels(c, cfg.channels), at::Tensor()};
  check_quant_bits(cfg.bits, "quantization bits");
  if (cfg.bits == 16) return {c, at::Tensor()};
  const at::NoGradGuard no_grad;
  if (c.numel() == 0) {
    check_call(c, cfg);
    return {c.detach().clone(), cfg.compat_cskv ? at::ones_like(c) : at::Tensor()};
  }
  Quantized q = quantize_impl(c, cfg, /*want_mask=*/cfg.compat_cskv);
  return {dequantize_expanded(q.codes, q.scale, q.offset, cfg), q.mask};
}

at::Tensor fake_quantize(const at::Tensor& c, const QuantConfig& cfg) {
  if (cfg.bits == 16 && !uses_channel_codes(cfg)) {
    check_quant_bits(cfg.bits, "quantization bits");
    return c;
  }
  const QuantizedLatent q = fake_quantize_with_mask(c, cfg);
  if (!c.requires_grad()) return q.values;
  // c − c.detach() is 0 in value and has gradient 1: the straight-through estimator.
  at::Tensor through = c - c.detach();
  if (q.mask.defined()) through = through * q.mask;
  return q.values + through;
}

QuantizedCodes quantize_codes(const at::Tensor& c, const QuantConfig& cfg) {
  if (uses_channel_codes(cfg)) {
    check_channel_call(c, cfg);
    const at::NoGradGuard no_grad;
    const ChannelTensors t = channel_tensors(cfg.channels, c.detach());
    return {channel_codes(c.detach(), t).to(at::kByte), t.scale, t.offset};
  }
  CSKV_CHECK(cfg.bits != 16,
             "quantize_codes: 16 bits is not quantized (store the latent in fp16 instead)");
  CSKV_CHECK(c.numel() > 0, "quantize_codes: expected a non-empty latent");
  const at::NoGradGuard no_grad;
  Quantized q = quantize_impl(c, cfg, /*want_mask=*/false);
  return {q.codes.to(at::kByte), q.scale, q.offset};
}

at::Tensor dequantize(const at::Tensor& codes, const at::Tensor& scale, const at::Tensor& offset,
                      const QuantConfig& cfg) {
  if (uses_channel_codes(cfg)) {
    const auto r = static_cast<int64_t>(cfg.channels.size());
    CSKV_CHECK(codes.scalar_type() == at::kByte && codes.dim() >= 1 && codes.size(-1) == r &&
                   scale.sizes() == at::IntArrayRef({r}) && offset.sizes() == scale.sizes(),
               "dequantize: channel codes need uint8 [..., "
                   << r << "] codes and [" << r << "] scale and offset, found "
                   << codes.scalar_type() << " " << codes.sizes() << ", " << scale.sizes() << ", "
                   << offset.sizes());
    const at::NoGradGuard no_grad;
    return offset + scale * codes.to(scale.scalar_type());
  }
  check_quant_bits(cfg.bits, "quantization bits");
  CSKV_CHECK(cfg.bits != 16, "dequantize: 16 bits is not quantized");
  CSKV_CHECK(codes.scalar_type() == at::kByte,
             "dequantize: expected uint8 codes, found " << codes.scalar_type());
  CSKV_CHECK(scale.sizes() == offset.sizes(), "dequantize: scale "
                                                  << scale.sizes() << " and offset "
                                                  << offset.sizes() << " differ in shape");
  if (uses_channel_windows(cfg)) {
    CSKV_CHECK(
        codes.dim() >= 2,
        "dequantize: per-channel windows need [..., tokens, r] codes, found " << codes.sizes());
  } else {
    CSKV_CHECK(codes.dim() >= 1, "dequantize: expected [..., r] codes, found a scalar");
    check_group_size(cfg.group_size, codes.size(-1), "");
  }
  CSKV_CHECK(scale.sizes() == at::IntArrayRef(group_shape(codes.sizes(), cfg)),
             "dequantize: codes " << codes.sizes() << " need per-group scale and offset of shape "
                                  << at::IntArrayRef(group_shape(codes.sizes(), cfg)) << ", found "
                                  << scale.sizes());
  const at::NoGradGuard no_grad;
  return dequantize_expanded(codes, scale, offset, cfg);
}

double quant_code_bytes_per_token(int64_t latent_width, const QuantConfig& cfg) {
  if (uses_channel_codes(cfg)) {
    int64_t bits = 0;
    for (const ChannelCode& c : cfg.channels) bits += c.bits;
    return static_cast<double>(bits) / 8.0;
  }
  return static_cast<double>(latent_width) * cfg.bits / 8.0;
}

double quant_overhead_bytes_per_token(int64_t latent_width, const QuantConfig& cfg) {
  if (cfg.bits == 16 || uses_channel_codes(cfg)) return 0.0;
  const double per_group = 2.0 * 2.0;  // fp16 scale + fp16 offset
  const double r = static_cast<double>(latent_width);
  if (uses_channel_windows(cfg)) return per_group * r / static_cast<double>(cfg.window);
  return per_group * r / static_cast<double>(cfg.group_size);
}

double quant_bits_per_token(int64_t latent_width, const QuantConfig& cfg) {
  return 8.0 * (quant_code_bytes_per_token(latent_width, cfg) +
                quant_overhead_bytes_per_token(latent_width, cfg));
}

}  // namespace cskv::trainer
