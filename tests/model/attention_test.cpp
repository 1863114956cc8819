// The blocked causal attention against a float64 reference (explicit per-row softmax) at
// T = 8192 (two 4096-key chunks, so the online softmax), against the dense form at short T for
// any block height and key chunk, with causal and sliding-window masks and GQA; and the block
// height and peak-memory estimate it is sized by.
#include "model/attention.h"

#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

namespace cskv::model {
namespace {

struct Qkv {
  at::Tensor q, k, v;
};

// Scores of spread ~3 (not a near-uniform softmax), float32 inputs.
Qkv random_qkv(int64_t nh, int64_t nkv, int64_t seq, int64_t hd, uint64_t seed) {
  at::manual_seed(seed);
  return {at::randn({nh, seq, hd}) * 1.2, at::randn({nkv, seq, hd}) * 1.2,
          at::randn({nkv, seq, hd})};
}

// Float64 reference of output rows `rows` ([rows, nh·hd]): per row i, a softmax over keys j <= i
// with i - j < window, written out without the library's mask or block logic.
at::Tensor reference_rows(const Qkv& t, const std::vector<int64_t>& rows, int64_t window) {
  const int64_t nh = t.q.size(0), hd = t.q.size(2), group = nh / t.k.size(0);
  const at::Tensor q = t.q.to(at::kDouble), k = t.k.to(at::kDouble), v = t.v.to(at::kDouble);
  at::Tensor out = at::zeros({static_cast<int64_t>(rows.size()), nh * hd}, at::kDouble);
  for (size_t r = 0; r < rows.size(); ++r) {
    const int64_t i = rows[r];
    const int64_t first = window > 0 ? std::max<int64_t>(0, i - window + 1) : 0;
    for (int64_t h = 0; h < nh; ++h) {
      const at::Tensor keys = k[h / group].narrow(0, first, i + 1 - first);
      const at::Tensor s = at::mv(keys, q[h][i]) / std::sqrt(static_cast<double>(hd));
      const at::Tensor e = at::exp(s - s.max());
      const at::Tensor p = e / e.sum();
      out[static_cast<int64_t>(r)].narrow(0, h * hd, hd) =
          at::mv(v[h / group].narrow(0, first, i + 1 - first).t(), p);
    }
  }
  return out;
}

// Rows at the start, around block and window edges, and at the end.
std::vector<int64_t> probe_rows(int64_t seq) {
  std::vector<int64_t> rows = {0, 1, 2, 15, 16, 17, 63, 64, 1023, 1024, 1025, 4095, 4096};
  for (int64_t i = seq - 40; i < seq; ++i) rows.push_back(i);
  rows.erase(std::remove_if(rows.begin(), rows.end(), [&](int64_t i) { return i >= seq; }),
             rows.end());
  return rows;
}

double max_error_vs_reference(const Qkv& t, const at::Tensor& got, int64_t window) {
  const auto rows = probe_rows(t.q.size(1));
  const at::Tensor idx = at::tensor(rows, at::kLong);
  return (got.index_select(0, idx).to(at::kDouble) - reference_rows(t, rows, window))
      .abs()
      .max()
      .item<double>();
}

TEST(Attention, BlockedMatchesFloat64At8192Causal) {
  const Qkv t = random_qkv(2, 1, 8192, 16, 3);  // GQA: two query heads on one kv head
  const at::Tensor got = causal_attention(t.q, t.k, t.v, 0);
  ASSERT_EQ(got.sizes(), (at::IntArrayRef{8192, 32}));
  EXPECT_LE(max_error_vs_reference(t, got, 0), 1e-5);
}

TEST(Attention, BlockedMatchesFloat64At8192SlidingWindow) {
  const Qkv t = random_qkv(3, 3, 8192, 8, 4);
  for (const int64_t window : {int64_t{1}, int64_t{100}, int64_t{4096}}) {
    const at::Tensor got = causal_attention(t.q, t.k, t.v, window);
    EXPECT_LE(max_error_vs_reference(t, got, window), 1e-5) << "window " << window;
  }
}

TEST(Attention, BlockedEqualsDenseForAnyBlockHeight) {
  const Qkv t = random_qkv(4, 2, 301, 8, 5);
  for (const int64_t window : {int64_t{0}, int64_t{7}, int64_t{300}}) {
    const at::Tensor dense = dense_causal_attention(t.q, t.k, t.v, window);
    EXPECT_LE(max_error_vs_reference(t, dense, window), 1e-5) << "window " << window;
    for (const int64_t rows : {int64_t{1}, int64_t{16}, int64_t{100}, int64_t{301}, int64_t{500}}) {
      const at::Tensor blocked = blocked_causal_attention(t.q, t.k, t.v, window, rows);
      EXPECT_LE((blocked - dense).abs().max().item<double>(), 2e-6)
          << "window " << window << ", " << rows << " rows a block";
    }
  }
}

TEST(Attention, ShortSequencesTakeTheDenseForm) {
  const Qkv t = random_qkv(2, 2, kDenseAttentionMaxTokens, 8, 6);
  EXPECT_TRUE(
      at::equal(causal_attention(t.q, t.k, t.v, 0), dense_causal_attention(t.q, t.k, t.v, 0)));
  const Qkv u = random_qkv(2, 2, kDenseAttentionMaxTokens + 1, 8, 6);
  EXPECT_TRUE(at::equal(
      causal_attention(u.q, u.k, u.v, 0),
      blocked_causal_attention(u.q, u.k, u.v, 0, attention_block_rows(2, u.q.size(1), 0))));
}

TEST(Attention, OnlineSoftmaxOverKeyChunksEqualsDense) {
  // Key chunks far smaller than the visible keys: the softmax is carried over up to 19 chunks.
  const Qkv t = random_qkv(4, 2, 301, 8, 8);
  for (const int64_t window : {int64_t{0}, int64_t{7}, int64_t{40}}) {
    const at::Tensor dense = dense_causal_attention(t.q, t.k, t.v, window);
    for (const auto& [rows, keys] : std::vector<std::pair<int64_t, int64_t>>{
             {1, 1}, {16, 16}, {16, 23}, {7, 64}, {100, 100}}) {
      const at::Tensor online = blocked_causal_attention(t.q, t.k, t.v, window, rows, keys);
      EXPECT_LE((online - dense).abs().max().item<double>(), 2e-6)
          << "window " << window << ", " << rows << " rows, " << keys << " keys a step";
    }
  }
}

TEST(Attention, OnlineSoftmaxKeepsLargeScoreJumpsExact) {
  // A later chunk raises a row's maximum by ~60: the running sum and output are rescaled by
  // exp(-60) rather than overflowing or losing the earlier keys.
  Qkv t = random_qkv(2, 1, 64, 4, 9);
  t.k.narrow(1, 50, 1).mul_(50.0);
  const at::Tensor online = blocked_causal_attention(t.q, t.k, t.v, 0, 16, 16);
  EXPECT_TRUE(at::isfinite(online).all().item<bool>());
  EXPECT_LE(max_error_vs_reference(t, online, 0), 1e-5);
}

TEST(Attention, BlockTallerThanItsKeyChunkIsRefused) {
  const Qkv t = random_qkv(2, 2, 40, 8, 10);
  try {
    blocked_causal_attention(t.q, t.k, t.v, 0, 32, 16);
    FAIL() << "32 rows with 16-key chunks accepted";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("expected 0 < block_rows <= key_block, found block_rows "
                                         "32, key_block 16"),
              std::string::npos)
        << e.what();
  }
}

TEST(Attention, BlockRowsAndPeakBytes) {
  // [16, rows, 4096-key chunks] within 2^24 score elements: 256 rows; never fewer than 16.
  EXPECT_EQ(attention_block_rows(16, 32768, 0), 256);
  EXPECT_EQ(attention_block_rows(16, 1 << 20, 0), 256);  // the same whatever T
  EXPECT_EQ(attention_block_rows(1024, 1 << 20, 0), 16);
  EXPECT_EQ(attention_block_rows(16, 2048, 0), 512);       // visible keys below one chunk
  EXPECT_EQ(attention_block_rows(16, 32768, 1024), 1024);  // the window bounds the keys
  EXPECT_EQ(attention_block_rows(2, 100, 0), 100);         // never more rows than tokens
  EXPECT_EQ(attention_block_rows(1, 1 << 20, 8), kAttentionKeyBlock);  // nor than a chunk's keys
  // Dense at 1024: 3 float score tensors, the bool mask, output and repeated k/v.
  EXPECT_DOUBLE_EQ(attention_peak_bytes(16, 64, 1024, 0, 4.0),
                   3.0 * 16 * 1024 * 1024 * 4 + 1024.0 * 1024 + 4.0 * 16 * 1024 * 64 * 4);
  // Blocked at 32768: 2 · [16, 256, 4096] floats + the [256, 4096] mask + output twice.
  EXPECT_DOUBLE_EQ(attention_peak_bytes(16, 64, 32768, 0, 4.0),
                   2.0 * 16 * 256 * 4096 * 4 + 256.0 * 4096 + 2.0 * 16 * 32768 * 64 * 4);
  // Past the first chunk only the output grows with T (the dense form would be 4x from 16K to
  // 32K).
  EXPECT_DOUBLE_EQ(
      attention_peak_bytes(16, 64, 1 << 20, 0, 4.0) - attention_peak_bytes(16, 64, 32768, 0, 4.0),
      2.0 * 16 * ((1 << 20) - 32768) * 64 * 4);
}

TEST(Attention, MismatchedShapesAreRefused) {
  const Qkv t = random_qkv(3, 2, 10, 8, 7);
  try {
    causal_attention(t.q, t.k, t.v, 0);
    FAIL() << "3 query heads on 2 kv heads accepted";
  } catch (const std::exception& e) {
    EXPECT_NE(
        std::string(e.what()).find("expected q [nh, T, hd] and k, v [nkv, T, hd] with nkv "
                                   "dividing nh, found q [3, 10, 8], k [2, 10, 8], v [2, 10, 8]"),
        std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace cskv::model
