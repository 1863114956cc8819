// Quantized latent storage of a compressed cache branch: encode with the training quantizer's
// groups, scale/zero rounded to the storage dtype, codes bit-packed.
#include "eval/latent_store.h"

#include "common/error.h"
#include "model/kv_cache.h"

namespace cskv::eval {
namespace {

// A per-group tensor broadcast over the [n, r] latent (the quantizer's grouping).
at::Tensor expand_groups(const at::Tensor& per_group, int64_t n, const trainer::QuantConfig& q) {
  if (trainer::uses_channel_windows(q)) {
    return per_group.repeat_interleave(q.window, 0).narrow(0, 0, n);
  }
  return per_group.repeat_interleave(q.group_size, 1);
}

}  // namespace

EncodedLatent encode_latent(const at::Tensor& c, const trainer::QuantConfig& q,
                            at::ScalarType storage) {
  CSKV_CHECK(c.dim() == 2 && c.scalar_type() == at::kFloat,
             "encode_latent: expected a float32 [tokens, r] latent, found " << c.scalar_type()
                                                                            << " " << c.sizes());
  const trainer::QuantizedCodes qc = trainer::quantize_codes(c, q);
  EncodedLatent e{qc.codes, qc.scale.to(storage), qc.offset.to(storage)};
  if (storage == at::kFloat) return e;
  const at::Tensor s = e.scale.to(at::kFloat), o = e.offset.to(at::kFloat);
  CSKV_CHECK_INPUT(at::isfinite(s).all().item<bool>() && at::isfinite(o).all().item<bool>(),
                   "a quantization group's scale or zero (max |value| "
                       << at::maximum(qc.scale.abs().max(), qc.offset.abs().max()).item<double>()
                       << ") does not fit the cache's " << storage << " storage");
  const double m = static_cast<double>((int64_t{1} << q.bits) - 1);
  const int64_t n = c.size(0);
  if (!q.compat_cskv) {
    // As quantize_codes: a zero scale (constant group) divides by 1 and gives code 0.
    const at::Tensor safe = at::where(s > 0, s, at::ones_like(s));
    e.codes = (c - expand_groups(o, n, q))
                  .div_(expand_groups(safe, n, q))
                  .round_()
                  .clamp_(0.0, m)
                  .to(at::kByte);
  } else {
    const at::Tensor safe = at::where(s > 0, s, at::ones_like(s));
    e.codes = at::round(c / expand_groups(safe, n, q))
                  .add_(expand_groups(o, n, q))
                  .clamp_(0.0, m)
                  .to(at::kByte);
  }
  return e;
}

at::Tensor decode_latent(const at::Tensor& codes, const at::Tensor& scale, const at::Tensor& offset,
                         const trainer::QuantConfig& q) {
  return trainer::dequantize(codes, scale.to(at::kFloat), offset.to(at::kFloat), q);
}

LatentStore::LatentStore(int64_t r, const trainer::QuantConfig& q, at::ScalarType storage,
                         at::Device device)
    : r_(r), q_(q), storage_(storage), codes_(q.bits == 16 ? 8 : q.bits, device) {
  trainer::validate_quant_config(q, r);
  const auto opts = at::TensorOptions().dtype(storage).device(device);
  if (trainer::uses_channel_codes(q)) {
    for (int b = 1; b <= 8; ++b) {
      std::vector<int64_t> idx;
      for (int64_t j = 0; j < r; ++j) {
        if (q.channels[static_cast<size_t>(j)].bits == b) idx.push_back(j);
      }
      if (idx.empty()) continue;
      width_channels_.push_back(at::tensor(idx, at::kLong).to(device));
      width_codes_.emplace_back(b, device);
    }
  } else if (q.bits == 16) {
    plain_ = at::empty({0, r}, opts);
  } else {
    const int64_t groups = trainer::uses_channel_windows(q) ? r : r / q.group_size;
    scale_ = at::empty({0, groups}, opts);
    offset_ = at::empty({0, groups}, opts);
  }
}

void LatentStore::append(const at::Tensor& c) {
  CSKV_CHECK(c.dim() == 2 && c.size(1) == r_,
             "LatentStore::append: expected a [tokens, " << r_ << "] latent, found " << c.sizes());
  if (c.size(0) == 0) return;
  if (trainer::uses_channel_codes(q_)) {
    const at::Tensor codes = trainer::quantize_codes(c.to(at::kFloat), q_).codes;  // [n, r]
    for (size_t w = 0; w < width_codes_.size(); ++w) {
      width_codes_[w].append(codes.index_select(1, width_channels_[w]).contiguous());
    }
  } else if (q_.bits == 16) {
    plain_ = at::cat({plain_, c.to(storage_)}, 0);
  } else {
    const EncodedLatent e = encode_latent(c.to(at::kFloat).contiguous(), q_, storage_);
    codes_.append(e.codes);
    scale_ = at::cat({scale_, e.scale}, 0);
    offset_ = at::cat({offset_, e.offset}, 0);
  }
  tokens_ += c.size(0);
}

at::Tensor LatentStore::channel_codes() const {
  at::Tensor out = at::zeros({tokens_, r_},
                             at::TensorOptions().dtype(at::kByte).device(codes_.buffer().device()));
  for (size_t w = 0; w < width_codes_.size(); ++w) {
    const int64_t n_w = width_channels_[w].numel();
    out.index_copy_(1, width_channels_[w], width_codes_[w].unpack().view({tokens_, n_w}));
  }
  return out;
}

at::Tensor LatentStore::folded_latents() const {
  if (!trainer::uses_channel_codes(q_)) return dequantized();
  return channel_codes().to(at::kFloat);
}

at::Tensor LatentStore::dequantized() const {
  if (trainer::uses_channel_codes(q_)) {
    const auto ranges = trainer::channel_ranges(q_.channels, codes_.buffer().device());
    return trainer::dequantize(channel_codes(), ranges.scale, ranges.offset, q_);
  }
  if (q_.bits == 16) return plain_.to(at::kFloat);
  if (tokens_ == 0) return at::empty({0, r_}, scale_.options().dtype(at::kFloat));
  return decode_latent(codes_.unpack().view({tokens_, r_}), scale_, offset_, q_);
}

int64_t LatentStore::bytes() const {
  if (trainer::uses_channel_codes(q_)) {
    int64_t bytes = 0;
    for (const PackedCodes& p : width_codes_) bytes += model::storage_bytes(p.buffer());
    return bytes;
  }
  if (q_.bits == 16) return model::storage_bytes(plain_);
  return model::storage_bytes(codes_.buffer()) + model::storage_bytes(scale_) +
         model::storage_bytes(offset_);
}

}  // namespace cskv::eval
