// The per-layer key/value cache interface of incremental decoding (LlamaModel::forward_cached),
// and the plain full-precision cache; the compressed bi-branch cache lives in eval/.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "model/config.h"

namespace cskv::model {

// What one layer remembers of the tokens at positions [0, size()).
class KvCache {
 public:
  virtual ~KvCache() = default;

  // Tokens held; they sit at positions 0 .. size() - 1.
  virtual int64_t size() const = 0;

  // Keys (after RoPE) of every held token, [n_kv, size(), head_dim] in the dtype of cos.
  // cos/sin: RoPE tables of at least size() positions ([positions, head_dim]).
  virtual at::Tensor keys(const at::Tensor& cos, const at::Tensor& sin) const = 0;

  // The attention output over the held tokens, Σ_j probs[h, i, j] · v_j of kv head h:
  // probs [n_kv, m, size()] (the m rows of kv head h are its query heads' rows), result
  // [n_kv, m, head_dim] in probs' dtype. A cache may compute it without materialising the values.
  virtual at::Tensor weighted_values(const at::Tensor& probs) const = 0;

  // Every held value, [n_kv, size(), head_dim] in `dtype` (for checks; attention uses
  // weighted_values).
  virtual at::Tensor values(at::ScalarType dtype) const = 0;

  // Appends n tokens at positions size() .. size() + n - 1: x [n, H] the layer's normalised input
  // (the input of k_proj/v_proj), k [n_kv, n, head_dim] after bias and RoPE, v [n_kv, n, head_dim].
  virtual void append(const at::Tensor& x, const at::Tensor& k, const at::Tensor& v) = 0;

  // Bytes of every buffer the cache holds, summed over their storages (the allocations).
  virtual int64_t bytes() const = 0;
};

// Bytes of the storage behind t (0 for an undefined tensor): what the allocation holds, which
// can exceed t.nbytes() when t is a view.
int64_t storage_bytes(const at::Tensor& t);

// Keys and values of every token in `storage` dtype (float16: a standard fp16 KV cache).
// Without reserve() every append concatenates (the buffers hold exactly size() tokens); with
// reserve(n) the buffers hold n tokens from the start and appends write in place.
class FullKvCache final : public KvCache {
 public:
  FullKvCache(const ModelConfig& config, at::ScalarType storage = at::kHalf,
              at::Device device = at::kCPU);

  // Allocates room for `tokens` tokens (at least size()); later appends beyond it concatenate.
  void reserve(int64_t tokens);

  int64_t size() const override { return size_; }
  at::Tensor keys(const at::Tensor& cos, const at::Tensor& sin) const override;
  at::Tensor weighted_values(const at::Tensor& probs) const override;
  at::Tensor values(at::ScalarType dtype) const override;
  void append(const at::Tensor& x, const at::Tensor& k, const at::Tensor& v) override;
  int64_t bytes() const override;

 private:
  int64_t n_kv_, head_dim_;
  at::ScalarType storage_;
  at::Tensor k_, v_;  // [n_kv, capacity, head_dim]
  int64_t size_ = 0;
};

}  // namespace cskv::model
