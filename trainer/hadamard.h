// Fixed, seeded, randomized Hadamard rotation R [r, r] of the latent (`--rotate hadamard`):
// A ← A R, B ← Rᵀ B leaves A B unchanged while every quantization group mixes all channels.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace cskv::trainer {

// The Sylvester Hadamard matrix H_n (n a power of two): entries (−1)^popcount(i & j), float64.
at::Tensor sylvester_hadamard(int64_t n);

// The power-of-two blocks r is decomposed into, largest first (its binary expansion):
// 64 → {64}, 96 → {64, 32}, 100 → {64, 32, 4}.
std::vector<int64_t> hadamard_blocks(int64_t r);

// R [r, r], float64, orthogonal, a function of (r, seed) only (own SplitMix64 stream, so the same
// on every platform and LibTorch version). With s random ±1 signs:
//  - r a power of two: R = H_r · diag(s) / √r;
//  - otherwise: block-diagonal, one H_k · diag(s_k) / √k per block of hadamard_blocks(r) (no
//    padding: the latent width, i.e. the cache size, stays r), with its rows (the input channels)
//    in a seeded random order, so channels of any size (a `pca` latent is sorted by variance) are
//    spread over the blocks instead of the largest filling the first block. A block of size 1
//    (odd r) is a sign flip of one channel.
// The caller derives the seed from (global seed, layer, K|V). Usage error when r < 1.
at::Tensor randomized_hadamard(int64_t r, uint64_t seed);

// The rotated factors A R [H, r] and Rᵀ B [r, D], computed in float64 and returned in A's and B's
// dtypes; (A R)(Rᵀ B) = A B up to that rounding.
struct RotatedFactors {
  at::Tensor A;
  at::Tensor B;
};
RotatedFactors rotate_factors(const at::Tensor& A, const at::Tensor& B, const at::Tensor& R);

}  // namespace cskv::trainer
