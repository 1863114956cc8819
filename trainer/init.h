// Initial low-rank factors A [H, r], B [r, D] of one layer's k_proj / v_proj (`--init
// svd|asvd|pca`, DESIGN.md §2), computed in float64, and the relative reconstruction error K̂ = X A
// B is judged by.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

namespace cskv::trainer {

enum class InitMethod { kSvd, kAsvd, kPca };

// "svd" | "asvd" | "pca"; anything else is a usage error
// "--init: expected svd|asvd|pca, found '<text>'".
InitMethod parse_init_method(const std::string& text);
const char* init_method_name(InitMethod method);  // "svd" | "asvd" | "pca"

struct InitResult {
  at::Tensor A;            // [H, r] float32: the latent c = X A is what the cache stores
  at::Tensor B;            // [r, D] float32: K̂ = c B (+ bias)
  at::Tensor eigenvalues;  // [D] float64, descending: spectrum of C = Wᵀ G W (trainer/spectrum.h)
  double floor = 0.0;  // Σ_{i≥r} λ_i / Σ_i λ_i: the 16-bit relative training-set error floor
};

// Factors of rank r for one layer's K or V projection (W = weightᵀ, K = X W):
// - kSvd:  SVD W = U Σ Vᵀ;  A = U_r Σ_r^½,  B = Σ_r^½ V_rᵀ  (best rank-r approximation of W).
// - kAsvd: s = abs_mean (mean |x| per input channel), S = diag(s^α); SVD S W = U Σ Vᵀ;
//          A = S⁻¹ U_r Σ_r^½,  B = Σ_r^½ V_rᵀ. Channels with s below 1e-6·max(s) (in particular
//          channels that are always zero, whose row of W does not affect K) are raised to
//          1e-6·max(s) so S⁻¹ stays bounded; when every s is 0 the scaling is the identity (= svd).
// - kPca:  C = Wᵀ G W [D, D]; V_r = its top-r eigenvectors; A = W V_r, B = V_rᵀ. The exact
//          minimiser of ‖X W − X A B‖² (Eckart–Young on K), attaining `floor`.
// Every singular/eigenvector is given a deterministic sign (its largest-magnitude component in the
// D-dimensional output space is positive), so results do not depend on LAPACK's sign choice.
// When r exceeds min(H, D) (H < D, unusual), svd/asvd pad with zero components.
// weight: HF layout [D, H], any floating dtype. gram: G = XᵀX [H, H] float64. abs_mean: [H]
// float64, needed by kAsvd only (may be undefined otherwise). `context` (e.g. "layer 3 K") names
// the layer in messages. Errors: rank outside [1, D] (usage, "rank 300 is larger than D = 256
// (layer 3 K)"), asvd_alpha negative or not finite (usage), shapes/dtypes that do not fit and
// NaN/Inf in weight, gram or abs_mean, or a negative abs_mean (input).
InitResult init_factors(InitMethod method, const at::Tensor& weight, int64_t rank,
                        const at::Tensor& gram, const at::Tensor& abs_mean,
                        const std::string& context, double asvd_alpha = 0.5);

// The factors of a full-rank (r = D) kPca result restricted to the given channels (indices into
// its eigenvalue order, ascending): A's columns and B's rows, with the floor Σ_{i∉channels} λ_i /
// Σλ. Usage error for an empty, unsorted or out-of-range list.
InitResult select_channels(const InitResult& full, const std::vector<int64_t>& channels,
                           const std::string& context);

// ‖X W − X A B‖² / ‖X W‖² in float64 (bias-less: a bias cancels in K − K̂). x [N, H],
// weight [D, H] (HF layout), a [H, r], b [r, D], any floating dtypes. 0 when K = K̂ = 0, +inf when
// only K is 0.
double relative_error(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& a,
                      const at::Tensor& b);

// The same error from the Gram matrix G = XᵀX [H, H] float64 alone, without the tokens:
// tr(Eᵀ G E) / tr(Wᵀ G W) with E = W − A B.
double relative_error_from_gram(const at::Tensor& gram, const at::Tensor& weight,
                                const at::Tensor& a, const at::Tensor& b);

}  // namespace cskv::trainer
