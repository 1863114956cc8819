// The bi-branch compressed KV cache of one layer (DESIGN.md §2): tokens older than the last
// window boundary only as quantized latents (keys rebuilt as RoPE(Q(c)·B + b) at their
// positions), the most recent tokens as full-precision K/V.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "eval/latent_store.h"
#include "model/config.h"
#include "model/kv_cache.h"
#include "trainer/quantizer.h"

namespace cskv::eval {

// The factors of one branch: latent c = x·A, reconstruction ĉ·B + bias.
struct BranchFactors {
  at::Tensor A;     // [H, r] float32
  at::Tensor B;     // [r, D] float32
  at::Tensor bias;  // [D] (k_proj/v_proj bias, Qwen2) or undefined
  trainer::QuantConfig quant;
  int64_t rank() const { return A.size(1); }
};

// Memory (see bytes()) — with window w > 0 and T tokens held, C = floor(T / w)·w are compressed
// and T − C sit in the window:
//   compressed: packed codes ceil(C·r·b/8) bytes per branch + a scale and a zero per group in the
//               storage dtype (K: per channel per w tokens; V: per token per group_size channels),
//               or C·r plain latents at 16 bits;
//   window:     K and V after RoPE [n_kv, T − C, hd] each, plus the window tokens' latents
//               [T − C, r_k] and [T − C, r_v] (c = x·A cannot be recomputed once x is gone, and a
//               window's keys are quantized together when it fills), all in the storage dtype.
// With the default float16 storage this is exactly trainer::layer_cache_bytes(). With w = 0 every
// token is compressed as soon as it has been attended to (keys then in per-token groups).
//
// With static channel codes (`--quant waterfill`) the ranges are folded into B at construction:
// B' = diag(scale)·B and a constant c = offset·B + bias, so a compressed key is RoPE(q·B' + c)
// from the stored integer codes q, and the latent branch holds nothing but packed codes.
//
// Order of the tokens: the sinks (positions 0..s−1), the compressed tokens, the window.
//
// Decoding: forward_cached attends over keys() / weighted_values() and the new tokens' own K/V,
// then append()s
// them to the window; when the window holds w tokens they move to the compressed branch
// together (their keys' per-channel groups are exactly that window, as in training, where windows
// start at position 0 of every sequence).
class CompressedKvCache final : public model::KvCache {
 public:
  // sinks: the first `sinks` tokens of the sequence stay full precision for good (K after RoPE
  // and V, as attention sinks are), ahead of the compressed tokens; 0 = none.
  CompressedKvCache(const model::ModelConfig& config, BranchFactors k, BranchFactors v,
                    int64_t window, at::ScalarType storage = at::kHalf,
                    at::Device device = at::kCPU, int64_t sinks = 0);

  int64_t size() const override { return sink_tokens() + compressed_tokens() + window_tokens(); }
  // The compressed tokens' keys are rebuilt as RoPE(Q(c)·B + b) at their positions (keys are
  // compressed before RoPE), followed by the window's keys.
  at::Tensor keys(const at::Tensor& cos, const at::Tensor& sin) const override;
  // Compressed tokens: (probs·Q(c))·B_h + (Σ probs)·b_h per kv head h — the value rows are never
  // rebuilt (probs·(Q(c)·B + b) regrouped; n_heads·T·r instead of T·r·D multiply-adds).
  at::Tensor weighted_values(const at::Tensor& probs) const override;
  at::Tensor values(at::ScalarType dtype) const override;
  void append(const at::Tensor& x, const at::Tensor& k, const at::Tensor& v) override;
  int64_t bytes() const override;

  int64_t sink_tokens() const { return sink_k_.size(1); }
  int64_t compressed_tokens() const { return k_store_.tokens(); }
  int64_t window_tokens() const { return win_k_.size(1); }
  // The dequantized latents of the compressed tokens, [compressed_tokens(), r] float32.
  at::Tensor key_latents() const { return k_store_.dequantized(); }
  at::Tensor value_latents() const { return v_store_.dequantized(); }

 private:
  int64_t n_kv_, head_dim_, window_, sinks_;
  at::ScalarType storage_;
  BranchFactors kf_, vf_;
  LatentStore k_store_, v_store_;
  // What rebuilds a branch from LatentStore::folded_latents(): B and bias, or B' and c (above).
  struct Reconstruction {
    at::Tensor B, bias;
  };
  Reconstruction k_rec_, v_rec_;
  at::Tensor sink_k_, sink_v_;  // [n_kv, s, hd] after RoPE: the first tokens, full precision
  at::Tensor win_k_, win_v_;    // [n_kv, n, hd] after RoPE
  at::Tensor win_ck_, win_cv_;  // [n, r_k], [n, r_v]: latents waiting for their window to fill
};

}  // namespace cskv::eval
