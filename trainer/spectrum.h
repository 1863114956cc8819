// Spectra of a layer's key/value cache: C = W G Wᵀ from the Gram matrix G = XᵀX of the k/v_proj
// input, its eigenvalues, and the rank / error floor they imply (DESIGN.md §2, `pca` init).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>

#include "model/safetensors.h"

namespace cskv::trainer {

enum class KvKind { kKey, kValue };
const char* kv_kind_name(KvKind kind);  // "K" | "V"
// "model.layers.<layer>.self_attn.k_proj.weight" (or v_proj).
std::string kv_weight_name(int64_t layer, KvKind kind);

// C = W G Wᵀ in float64, [D, D], exactly symmetric: the uncentred covariance of the cache rows
// K = X Wᵀ (HF layout weight W [D, H] of any floating dtype, G = XᵀX [H, H] float64), i.e.
// DESIGN's WᵀGW with W = weightᵀ. A bias b (Qwen2) is left out on purpose: K − K̂ = (X Wᵀ + b) −
// (X A B + b) does not depend on it, so neither do the optimal factors nor the error floor.
// Throws an input error naming both shapes when they do not fit.
at::Tensor kv_covariance(const at::Tensor& weight, const at::Tensor& gram);

// Eigenvalues of a symmetric positive semidefinite C [D, D], float64, descending. Rounding makes
// the smallest ones slightly negative; those are clamped to 0. An eigenvalue below
// -1e-8·λ_max means C is not PSD (a wrong input): input error.
at::Tensor spectrum(const at::Tensor& covariance);

// The smallest r with Σ_{i<r} λ_i ≥ fraction·Σ_i λ_i (eigenvalues 1-D, descending, ≥ 0; fraction
// in [0, 1]). 0 when fraction is 0 or every eigenvalue is 0; at most eigenvalues.numel().
int64_t rank_for_energy(const at::Tensor& eigenvalues, double fraction);

// Σ_{i≥r} λ_i / Σ_i λ_i: the relative training-set error ‖K − K̂‖²/‖K‖² of the best rank-r
// reconstruction at 16 bits (the floor no training can beat). 0 when every eigenvalue is 0.
double floor_for_rank(const at::Tensor& eigenvalues, int64_t rank);

// spectrum(kv_covariance(W, gram)) with W = the layer's k_proj or v_proj weight.
at::Tensor layer_spectrum(const model::SafetensorsModel& weights, int64_t layer, KvKind kind,
                          const at::Tensor& gram);

}  // namespace cskv::trainer
