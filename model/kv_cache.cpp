// The full-precision per-layer KV cache (fp16 by default) behind the KvCache interface.
#include "model/kv_cache.h"

#include "common/error.h"

namespace cskv::model {

int64_t storage_bytes(const at::Tensor& t) {
  if (!t.defined()) return 0;
  return static_cast<int64_t>(t.storage().nbytes());
}

FullKvCache::FullKvCache(const ModelConfig& config, at::ScalarType storage, at::Device device)
    : n_kv_(config.num_key_value_heads), head_dim_(config.head_dim), storage_(storage) {
  const auto opts = at::TensorOptions().dtype(storage).device(device);
  k_ = at::empty({n_kv_, 0, head_dim_}, opts);
  v_ = at::empty({n_kv_, 0, head_dim_}, opts);
}

void FullKvCache::reserve(int64_t tokens) {
  if (tokens <= k_.size(1)) return;
  at::Tensor k = at::empty({n_kv_, tokens, head_dim_}, k_.options());
  at::Tensor v = at::empty({n_kv_, tokens, head_dim_}, v_.options());
  k.narrow(1, 0, size_).copy_(k_.narrow(1, 0, size_));
  v.narrow(1, 0, size_).copy_(v_.narrow(1, 0, size_));
  k_ = k;
  v_ = v;
}

at::Tensor FullKvCache::keys(const at::Tensor& cos, const at::Tensor&) const {
  return k_.narrow(1, 0, size_).to(cos.scalar_type());
}

at::Tensor FullKvCache::weighted_values(const at::Tensor& probs) const {
  return at::matmul(probs, values(probs.scalar_type()));
}

at::Tensor FullKvCache::values(at::ScalarType dtype) const {
  return v_.narrow(1, 0, size_).to(dtype);
}

void FullKvCache::append(const at::Tensor&, const at::Tensor& k, const at::Tensor& v) {
  CSKV_CHECK(k.dim() == 3 && k.size(0) == n_kv_ && k.size(2) == head_dim_ && v.sizes() == k.sizes(),
             "FullKvCache::append: expected k and v of shape ["
                 << n_kv_ << ", n, " << head_dim_ << "], found " << k.sizes() << " and "
                 << v.sizes());
  const int64_t n = k.size(1);
  if (size_ + n <= k_.size(1)) {
    k_.narrow(1, size_, n).copy_(k);
    v_.narrow(1, size_, n).copy_(v);
  } else {
    k_ = at::cat({k_.narrow(1, 0, size_), k.to(storage_)}, 1);
    v_ = at::cat({v_.narrow(1, 0, size_), v.to(storage_)}, 1);
  }
  size_ += n;
}

int64_t FullKvCache::bytes() const { return storage_bytes(k_) + storage_bytes(v_); }

}  // namespace cskv::model
