// Transform coding of a job's latent (issue 13, first part): every PCA channel gets its own bit
// width b ∈ {0, …, 8} and a static affine range fitted on the training latents, and the widths
// are allocated under a budget of bits per token by greedy marginal gain — reverse
// water-filling on the measured errors. Not yet a training mode or a cache format; this is the
// allocation and the quantizer those will use. Every function takes CPU or CUDA tensors.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <cstdint>
#include <vector>

namespace cskv::trainer {

inline constexpr int kMaxChannelBits = 8;

// One channel's code at one width: q = clamp(round_half_even((c − offset) / scale), 0, 2^bits −
// 1), ĉ = offset + scale·q. bits 0 drops the channel to its constant ĉ = offset (the mean).
struct ChannelCode {
  int bits = 0;
  float offset = 0;
  float scale = 0;
};

// A channel's fitted codes and their squared errors Σ(c − ĉ)² over the values, per width.
struct ChannelCurve {
  std::array<ChannelCode, kMaxChannelBits + 1> code;
  std::array<double, kMaxChannelBits + 1> error{};
};

// Fits every width of one channel (values [n] float32): the mean at 0 bits; at b ≥ 1 the range
// [m − α(m − min), m + α(max − m)] (m the mean) with α searched on a grid from 1 (min–max) down
// to 0.05 for the least squared error — clipping, not min–max — or the previous width's levels
// nested in this one's, whichever is better: the error never grows with the width. Errors are
// summed in float64.
ChannelCurve fit_channel(const at::Tensor& values);

// Widths for channels whose squared-error curves are `curves` (each non-increasing in bits, as
// fit_channel's are), summing to at most budget_bits, that minimise the summed error: greedy by
// the steepest gain per bit over any width increase (a jump along the channel's lower convex
// hull). Optimal for every budget when each curve is convex in bits (its gains per bit never
// grow), which is the usual case; on a non-convex curve it is optimal at the budgets its choices
// land on hull vertices, and may be beaten by at most one hull segment otherwise. Ties go to the
// lower channel index, then the smaller jump.
std::vector<int> allocate_bits(const std::vector<ChannelCurve>& curves, int64_t budget_bits);

// One budget over several jobs (layers, K and V): widths for every channel of every job that
// minimise the summed *relative* error Σ_jobs error/energy (energy: the job's ‖K‖² over the same
// tokens as its curves), at most total_bits in all — allocate_bits over the channels of all jobs
// with each job's curves divided by its energy. Returns the widths per job, in order.
std::vector<std::vector<int>> allocate_jobs(const std::vector<std::vector<ChannelCurve>>& jobs,
                                            const std::vector<double>& energy, int64_t total_bits);

// The Gaussian rate–distortion bound: the least relative error Σ min(θ, λ_i) / Σ λ_i any code of
// `bits_per_token` bits can reach on a Gaussian source with covariance eigenvalues λ (reverse
// water-filling: channel i gets max(0, ½·log2(λ_i / θ)) bits, θ chosen so they sum to the
// budget). eigenvalues: float64 [D], non-negative. A yardstick for the codes above.
double gaussian_bound(const at::Tensor& eigenvalues, double bits_per_token);

// Applies per-channel codes to a latent [n, r] (codes.size() == r), on the latent's device.
at::Tensor quantize_channels(const at::Tensor& latent, const std::vector<ChannelCode>& codes);

}  // namespace cskv::trainer
