// Causal (optionally sliding-window) multi-head attention of one sequence: the dense form for
// short sequences and a flash-style form (query blocks × key blocks with an online softmax) whose
// memory is bounded by the block sizes, whatever T.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace cskv::model {

// Sequences of at most this many tokens use the dense form (every [heads, T, T] score at once);
// longer ones the blocked form. Measured crossover: bench/bench_attention.cpp, bench/RESULTS.md.
inline constexpr int64_t kDenseAttentionMaxTokens = 1024;

// Score elements one block may hold ([heads, rows, keys] float); sets the block height.
inline constexpr int64_t kAttentionBlockScoreElements = int64_t{1} << 24;

// Keys one step of the blocked form scores at once: a query block's visible keys are taken in
// chunks of at most this many, ascending, with the softmax carried from chunk to chunk (running
// row maximum and sum, flash-style); a block whose visible keys fit in one chunk takes a plain
// softmax. Measured: bench/bench_attention.cpp (keyblock), bench/RESULTS.md.
inline constexpr int64_t kAttentionKeyBlock = 4096;

// Query rows per block for a sequence of `seq` tokens with `heads` query heads (a function of the
// shapes and the window only, so every sequence is blocked alike whatever --batch or world size):
// as many as keep [heads, rows, min(visible keys, kAttentionKeyBlock)] within
// kAttentionBlockScoreElements, at least 16, at most kAttentionKeyBlock and at most T.
int64_t attention_block_rows(int64_t heads, int64_t seq, int64_t sliding_window);

// Attention of one sequence: q [nh, T, hd], k and v [nkv, T, hd] after bias and RoPE (nkv divides
// nh; query head i reads kv head i / (nh / nkv), as HF repeat_kv). Query i sees keys j <= i with
// i - j < sliding_window (0: no window). Returns [T, nh · hd] in q's dtype. The dense form runs
// for T <= kDenseAttentionMaxTokens; longer sequences go by query blocks of
// attention_block_rows(nh, T, sliding_window) rows, each scoring only the keys its rows can see
// (the causal upper triangle and the keys behind the window are never computed) in chunks of
// kAttentionKeyBlock keys with an online softmax.
at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            int64_t sliding_window);

// The dense form alone, whatever T (for tests and the crossover bench).
at::Tensor dense_causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  int64_t sliding_window);

// The blocked form alone with `block_rows` query rows and chunks of `key_block` keys (for tests
// and the bench); block_rows <= key_block, so every row sees a key in its block's first chunk.
at::Tensor blocked_causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    int64_t sliding_window, int64_t block_rows,
                                    int64_t key_block = kAttentionKeyBlock);

// Peak bytes causal_attention allocates for one sequence beyond its inputs (a chunk's scores and
// their softmax, its mask, the output), elements of `elem_bytes` bytes.
double attention_peak_bytes(int64_t heads, int64_t head_dim, int64_t seq, int64_t sliding_window,
                            double elem_bytes);

}  // namespace cskv::model
