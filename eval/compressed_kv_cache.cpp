// The bi-branch compressed KV cache: window of full-precision K/V, compressed latents behind it.
#include "eval/compressed_kv_cache.h"

#include <algorithm>

#include "common/error.h"
#include "model/llama.h"

namespace cskv::eval {

namespace {
// B and bias, or with channel codes B' = diag(scale)·B and c = offset·B + bias.
template <class Rec>
Rec fold_ranges(const BranchFactors& f) {
  if (!trainer::uses_channel_codes(f.quant)) return {f.B, f.bias};
  const auto ranges = trainer::channel_ranges(f.quant.channels, f.B.device());
  at::Tensor c = at::matmul(ranges.offset.unsqueeze(0), f.B).squeeze(0);  // [D]
  if (f.bias.defined()) c = c + f.bias.to(c.scalar_type()).to(c.device());
  return {(f.B * ranges.scale.unsqueeze(1)).contiguous(), c};
}
}  // namespace

CompressedKvCache::CompressedKvCache(const model::ModelConfig& config, BranchFactors k,
                                     BranchFactors v, int64_t window, at::ScalarType storage,
                                     at::Device device, int64_t sinks)
    : n_kv_(config.num_key_value_heads),
      head_dim_(config.head_dim),
      window_(window),
      sinks_(sinks),
      storage_(storage),
      kf_(std::move(k)),
      vf_(std::move(v)),
      k_store_(kf_.rank(), kf_.quant, storage, device),
      v_store_(vf_.rank(), vf_.quant, storage, device),
      k_rec_(fold_ranges<Reconstruction>(kf_)),
      v_rec_(fold_ranges<Reconstruction>(vf_)) {
  const int64_t H = config.hidden_size, D = config.kv_dim();
  for (const BranchFactors* f : {&kf_, &vf_}) {
    CSKV_CHECK(f->A.dim() == 2 && f->A.size(0) == H && f->B.dim() == 2 &&
                   f->B.size(0) == f->A.size(1) && f->B.size(1) == D,
               "CompressedKvCache: expected A [" << H << ", r] and B [r, " << D << "], found "
                                                 << f->A.sizes() << " and " << f->B.sizes());
  }
  CSKV_CHECK(window >= 0, "CompressedKvCache: window " << window << " < 0");
  CSKV_CHECK(sinks >= 0, "CompressedKvCache: sinks " << sinks << " < 0");
  CSKV_CHECK(!trainer::uses_channel_windows(kf_.quant) || kf_.quant.window == window,
             "CompressedKvCache: key groups of " << kf_.quant.window << " tokens, but a window of "
                                                 << window);
  const auto opts = at::TensorOptions().dtype(storage).device(device);
  win_k_ = at::empty({n_kv_, 0, head_dim_}, opts);
  win_v_ = at::empty({n_kv_, 0, head_dim_}, opts);
  sink_k_ = at::empty({n_kv_, 0, head_dim_}, opts);
  sink_v_ = at::empty({n_kv_, 0, head_dim_}, opts);
  win_ck_ = at::empty({0, kf_.rank()}, opts);
  win_cv_ = at::empty({0, vf_.rank()}, opts);
}

namespace {
// ĉ·B + bias (or q·B' + c) as [n_kv, n, hd].
template <class Rec>
at::Tensor reconstruct(const at::Tensor& latents, const Rec& f, int64_t n_kv, int64_t head_dim) {
  at::Tensor full = at::mm(latents, f.B);
  if (f.bias.defined()) full = full + f.bias.to(full.scalar_type());
  return full.view({latents.size(0), n_kv, head_dim}).transpose(0, 1);
}
}  // namespace

at::Tensor CompressedKvCache::keys(const at::Tensor& cos, const at::Tensor& sin) const {
  const auto dtype = cos.scalar_type();
  const int64_t c = compressed_tokens();
  CSKV_CHECK(cos.size(0) >= size(), "CompressedKvCache: RoPE tables of "
                                        << cos.size(0) << " positions for " << size() << " tokens");
  const int64_t s = sink_tokens();
  const at::Tensor wk = win_k_.to(dtype);
  if (c == 0) return s == 0 ? wk : at::cat({sink_k_.to(dtype), wk}, 1);
  // Keys are compressed before RoPE: rotate the rebuilt keys at their positions s..s+c-1.
  const at::Tensor k_old =
      model::apply_rope(reconstruct(k_store_.folded_latents(), k_rec_, n_kv_, head_dim_).to(dtype),
                        cos.narrow(0, s, c), sin.narrow(0, s, c));
  return at::cat({sink_k_.to(dtype), k_old, wk}, 1);
}

at::Tensor CompressedKvCache::weighted_values(const at::Tensor& probs) const {
  const int64_t s = sink_tokens(), c = compressed_tokens(), w = window_tokens();
  CSKV_CHECK(probs.dim() == 3 && probs.size(0) == n_kv_ && probs.size(2) == s + c + w,
             "CompressedKvCache::weighted_values: expected probs ["
                 << n_kv_ << ", m, " << s + c + w << "], found " << probs.sizes());
  const auto dtype = probs.scalar_type();
  at::Tensor out = at::matmul(probs.narrow(-1, s + c, w), win_v_.to(dtype));  // [n_kv, m, hd]
  if (s > 0) out = out + at::matmul(probs.narrow(-1, 0, s), sink_v_.to(dtype));
  if (c == 0) return out;
  const at::Tensor p = probs.narrow(-1, s, c);
  const int64_t r = vf_.rank();
  const at::Tensor pc = at::matmul(p, v_store_.folded_latents().to(dtype));  // [n_kv, m, r]
  const at::Tensor b_heads =
      v_rec_.B.to(dtype).view({r, n_kv_, head_dim_}).permute({1, 0, 2});  // [n_kv, r, hd]
  out = out + at::bmm(pc, b_heads);
  if (v_rec_.bias.defined()) {
    out = out + p.sum(-1, /*keepdim=*/true) * v_rec_.bias.to(dtype).view({n_kv_, 1, head_dim_});
  }
  return out;
}

at::Tensor CompressedKvCache::values(at::ScalarType dtype) const {
  const at::Tensor wv = at::cat({sink_v_.to(dtype), win_v_.to(dtype)}, 1);
  if (compressed_tokens() == 0) return wv;
  const int64_t s = sink_tokens();
  return at::cat({wv.narrow(1, 0, s),
                  reconstruct(v_store_.folded_latents(), v_rec_, n_kv_, head_dim_).to(dtype),
                  wv.narrow(1, s, wv.size(1) - s)},
                 1);
}

void CompressedKvCache::append(const at::Tensor& x, const at::Tensor& k, const at::Tensor& v) {
  CSKV_CHECK(x.dim() == 2 && x.size(1) == kf_.A.size(0) && k.dim() == 3 && k.size(0) == n_kv_ &&
                 k.size(1) == x.size(0) && k.size(2) == head_dim_ && v.sizes() == k.sizes(),
             "CompressedKvCache::append: expected x [n, "
                 << kf_.A.size(0) << "], k and v [" << n_kv_ << ", n, " << head_dim_ << "], found "
                 << x.sizes() << ", " << k.sizes() << ", " << v.sizes());
  const int64_t to_sink = std::min(sinks_ - sink_tokens(), x.size(0));
  if (to_sink > 0) {  // the sequence's first tokens: full precision for good
    sink_k_ = at::cat({sink_k_, k.narrow(1, 0, to_sink).to(storage_)}, 1);
    sink_v_ = at::cat({sink_v_, v.narrow(1, 0, to_sink).to(storage_)}, 1);
    if (to_sink == x.size(0)) return;
    return append(x.narrow(0, to_sink, x.size(0) - to_sink),
                  k.narrow(1, to_sink, x.size(0) - to_sink),
                  v.narrow(1, to_sink, x.size(0) - to_sink));
  }
  const at::Tensor xf = x.to(at::kFloat);
  win_k_ = at::cat({win_k_, k.to(storage_)}, 1);
  win_v_ = at::cat({win_v_, v.to(storage_)}, 1);
  win_ck_ = at::cat({win_ck_, at::mm(xf, kf_.A).to(storage_)}, 0);
  win_cv_ = at::cat({win_cv_, at::mm(xf, vf_.A).to(storage_)}, 0);
  const int64_t held = win_ck_.size(0);
  const int64_t move = window_ > 0 ? held / window_ * window_ : held;
  if (move == 0) return;
  k_store_.append(win_ck_.narrow(0, 0, move).to(at::kFloat));
  v_store_.append(win_cv_.narrow(0, 0, move).to(at::kFloat));
  // The rest stays in fresh buffers of exactly its size.
  win_k_ = win_k_.narrow(1, move, held - move).clone();
  win_v_ = win_v_.narrow(1, move, held - move).clone();
  win_ck_ = win_ck_.narrow(0, move, held - move).clone();
  win_cv_ = win_cv_.narrow(0, move, held - move).clone();
}

int64_t CompressedKvCache::bytes() const {
  return k_store_.bytes() + v_store_.bytes() + model::storage_bytes(sink_k_) +
         model::storage_bytes(sink_v_) + model::storage_bytes(win_k_) +
         model::storage_bytes(win_v_) + model::storage_bytes(win_ck_) +
         model::storage_bytes(win_cv_);
}

}  // namespace cskv::eval
