// Transform coding of a job's latent (`--quant waterfill`, issue 13): every PCA channel gets its
// own bit width b ∈ {0, …, 8} and a static affine range (trainer/quantizer.h ChannelCode) fitted
// on the training latents, and the widths are allocated under a budget of bits per token by
// greedy marginal gain — reverse water-filling on the measured errors. Every function takes CPU
// or CUDA tensors.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <cstdint>
#include <vector>

#include "trainer/quantizer.h"

namespace cskv::trainer {

inline constexpr int kMaxChannelBits = 8;

// A channel's fitted codes and their squared errors Σ(c − ĉ)² over the values, per width.
struct ChannelCurve {
  std::array<ChannelCode, kMaxChannelBits + 1> code;
  std::array<double, kMaxChannelBits + 1> error{};
};

// Fits every width of one channel (values [n] float32): dropped at 0 bits (ĉ = 0, error Σc²); at
// b ≥ 1 the range
// [m − α(m − min), m + α(max − m)] (m the mean) with α searched on a grid from 1 (min–max) down
// to 0.05 for the least squared error — clipping, not min–max — or the previous width's levels
// (at 1 bit: {mean, mean + spread}) nested in this one's, whichever is better: the error never
// grows with the width from 1 bit on. Errors are summed in float64.
ChannelCurve fit_channel(const at::Tensor& values);

// The code at current.bits with the least squared error on `values` [n] float32: the range search
// of fit_channel at that width, with `current` itself as a candidate (so it only gets better).
ChannelCode refit_channel(const at::Tensor& values, const ChannelCode& current);

// fit_channel of every column of latents [n, D] float32.
std::vector<ChannelCurve> fit_channels(const at::Tensor& latents);

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

}  // namespace cskv::trainer
