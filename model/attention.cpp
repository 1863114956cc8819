// Causal attention of one sequence, dense or by query blocks (model/attention.h).
#include "model/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "common/error.h"

namespace cskv::model {
namespace {

void check_shapes(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  CSKV_CHECK(q.dim() == 3 && k.dim() == 3 && v.sizes() == k.sizes() && k.size(0) > 0 &&
                 q.size(0) % k.size(0) == 0 && q.size(1) == k.size(1) && q.size(2) == k.size(2),
             "causal_attention: expected q [nh, T, hd] and k, v [nkv, T, hd] with nkv dividing nh, "
             "found q "
                 << q.sizes() << ", k " << k.sizes() << ", v " << v.sizes());
}

// Keys query i cannot see among keys [k0, k0 + keys): j > i, or i - j >= window.
at::Tensor hidden_mask(int64_t q0, int64_t rows, int64_t k0, int64_t keys, int64_t window,
                       at::Device device) {
  const auto opts = at::TensorOptions().dtype(at::kLong).device(device);
  const auto qi = at::arange(q0, q0 + rows, opts).unsqueeze(1);
  const auto kj = at::arange(k0, k0 + keys, opts).unsqueeze(0);
  auto hidden = kj > qi;
  if (window > 0) hidden = hidden.logical_or(qi - kj >= window);
  return hidden;
}

// Keys a block of `rows` query rows can see at most.
int64_t visible_keys(int64_t seq, int64_t rows, int64_t window) {
  return window > 0 ? std::min(seq, window + rows - 1) : seq;
}

// Whether every query in [q0, q0 + rows) sees every key in [k0, k0 + keys).
bool all_visible(int64_t q0, int64_t rows, int64_t k0, int64_t keys, int64_t window) {
  return k0 + keys - 1 <= q0 && (window <= 0 || q0 + rows - 1 - k0 < window);
}

// One chunk's scaled scores [nkv, group · rows, keys], hidden keys at -inf.
at::Tensor chunk_scores(const at::Tensor& qb, const at::Tensor& k, int64_t q0, int64_t rows,
                        int64_t k0, int64_t keys, int64_t window, double norm) {
  at::Tensor s = at::matmul(qb, k.narrow(1, k0, keys).transpose(-2, -1)).div_(norm);
  if (!all_visible(q0, rows, k0, keys, window)) {
    s.view({s.size(0), -1, rows, keys})
        .masked_fill_(hidden_mask(q0, rows, k0, keys, window, s.device()),
                      -std::numeric_limits<double>::infinity());
  }
  return s;
}

// Attention of one query block qb [nkv, group · rows, hd] (rows q0..q0+rows-1) over keys
// [k0, k_end), in ascending chunks of key_block keys. One chunk: a plain softmax. More: the
// online softmax — each row's running maximum m, sum l of exp(s - m) and unnormalised output
// acc, rescaled by exp(m_old - m_new) when a chunk raises the maximum; out = acc / l (l and acc
// kept in at least float32, so a bfloat16 capture does not sum in bfloat16). Every row sees a
// key of the first chunk (rows <= key_block), so m is finite from the start.
at::Tensor attend_block(const at::Tensor& qb, const at::Tensor& k, const at::Tensor& v, int64_t q0,
                        int64_t rows, int64_t k0, int64_t k_end, int64_t window, int64_t key_block,
                        double norm) {
  if (k_end - k0 <= key_block) {
    const at::Tensor s = chunk_scores(qb, k, q0, rows, k0, k_end - k0, window, norm);
    return at::matmul(at::softmax(s, -1), v.narrow(1, k0, k_end - k0));
  }
  const at::ScalarType sum_type = at::promote_types(qb.scalar_type(), at::kFloat);
  const auto sums = qb.options().dtype(sum_type);
  // Before the first chunk: m = -inf, so its rescale exp(m - m_new) is 0 and l, acc start at it.
  at::Tensor m =
      at::full({qb.size(0), qb.size(1), 1}, -std::numeric_limits<double>::infinity(), qb.options());
  at::Tensor l = at::zeros({qb.size(0), qb.size(1), 1}, sums);
  at::Tensor acc = at::zeros({qb.size(0), qb.size(1), v.size(2)}, sums);
  for (int64_t c0 = k0; c0 < k_end; c0 += key_block) {
    const int64_t keys = std::min(key_block, k_end - c0);
    at::Tensor s = chunk_scores(qb, k, q0, rows, c0, keys, window, norm);
    const at::Tensor m_new = at::maximum(m, std::get<0>(s.max(-1, /*keepdim=*/true)));
    const at::Tensor rescale = (m - m_new).to(sum_type).exp_();
    s.sub_(m_new).exp_();
    l.mul_(rescale).add_(s.sum(-1, /*keepdim=*/true, sum_type));
    acc.mul_(rescale).add_(at::matmul(s, v.narrow(1, c0, keys)).to(sum_type));
    m = m_new;
  }
  return acc.div_(l).to(qb.scalar_type());
}

}  // namespace

int64_t attention_block_rows(int64_t heads, int64_t seq, int64_t sliding_window) {
  const int64_t visible = sliding_window > 0 ? std::min(seq, sliding_window) : seq;
  const int64_t keys = std::max<int64_t>(1, std::min(visible, kAttentionKeyBlock));
  const int64_t rows = kAttentionBlockScoreElements / (std::max<int64_t>(1, heads) * keys);
  return std::max<int64_t>(16, std::min({rows, std::max<int64_t>(seq, 1), kAttentionKeyBlock}));
}

at::Tensor dense_causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  int64_t sliding_window) {
  check_shapes(q, k, v);
  const int64_t nh = q.size(0), seq = q.size(1), hd = q.size(2), nkv = k.size(0);
  at::Tensor k_rep = k, v_rep = v;
  if (nkv != nh) {  // GQA: query head i reads kv head i / (nh / nkv), as HF repeat_kv
    k_rep = k.repeat_interleave(nh / nkv, /*dim=*/0);
    v_rep = v.repeat_interleave(nh / nkv, /*dim=*/0);
  }
  auto scores = at::matmul(q, k_rep.transpose(-2, -1)) / std::sqrt(static_cast<double>(hd));
  scores = scores.masked_fill(hidden_mask(0, seq, 0, seq, sliding_window, q.device()),
                              -std::numeric_limits<double>::infinity());
  const auto probs = at::softmax(scores, -1);
  return at::matmul(probs, v_rep).transpose(0, 1).reshape({seq, nh * hd});
}

at::Tensor blocked_causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    int64_t sliding_window, int64_t block_rows, int64_t key_block) {
  check_shapes(q, k, v);
  CSKV_CHECK(block_rows > 0 && block_rows <= key_block,
             "blocked_causal_attention: expected 0 < block_rows <= key_block, found block_rows "
                 << block_rows << ", key_block " << key_block);
  const int64_t nh = q.size(0), seq = q.size(1), hd = q.size(2), nkv = k.size(0);
  const int64_t group = nh / nkv;
  const double norm = std::sqrt(static_cast<double>(hd));
  // Query heads grouped by their kv head, so no key or value is copied per query head.
  const at::Tensor qg = q.reshape({nkv, group, seq, hd});
  at::Tensor out = at::empty({nh, seq, hd}, q.options());
  for (int64_t q0 = 0; q0 < seq; q0 += block_rows) {
    const int64_t rows = std::min(block_rows, seq - q0);
    // Keys [k0, q0 + rows): the rest are hidden from every row of the block.
    const int64_t k0 = sliding_window > 0 ? std::max<int64_t>(0, q0 - sliding_window + 1) : 0;
    const at::Tensor qb = qg.narrow(2, q0, rows).reshape({nkv, group * rows, hd});
    out.narrow(1, q0, rows)
        .copy_(attend_block(qb, k, v, q0, rows, k0, q0 + rows, sliding_window, key_block, norm)
                   .view({nh, rows, hd}));
  }
  return out.transpose(0, 1).reshape({seq, nh * hd});
}

at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            int64_t sliding_window) {
  const int64_t seq = q.dim() == 3 ? q.size(1) : 0;
  if (seq <= kDenseAttentionMaxTokens) return dense_causal_attention(q, k, v, sliding_window);
  return blocked_causal_attention(q, k, v, sliding_window,
                                  attention_block_rows(q.size(0), seq, sliding_window));
}

double attention_peak_bytes(int64_t heads, int64_t head_dim, int64_t seq, int64_t sliding_window,
                            double elem_bytes) {
  const double h = static_cast<double>(heads), t = static_cast<double>(seq);
  const double output = 2.0 * h * t * static_cast<double>(head_dim) * elem_bytes;  // out + reshape
  if (seq <= kDenseAttentionMaxTokens) {
    // scores (the matmul's and the scaled), softmax; the mask of T² bytes; repeated k and v
    return 3.0 * h * t * t * elem_bytes + t * t + output + output;
  }
  const int64_t rows = attention_block_rows(heads, seq, sliding_window);
  const double keys =
      static_cast<double>(std::min(visible_keys(seq, rows, sliding_window), kAttentionKeyBlock));
  const double block = h * static_cast<double>(rows) * keys;  // one chunk's scores
  // the scores and their softmax (the online steps work in place), the chunk's mask
  return 2.0 * block * elem_bytes + block / h + output;
}

}  // namespace cskv::model
