// Per-channel range fitting (clipping search), greedy width allocation, the channel quantizer.
#include "trainer/waterfill.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <tuple>
#include <utility>

#include "common/error.h"
#include "trainer/job_widths.h"

namespace cskv::trainer {

namespace {

// The reconstruction of x under (offset, scale > 0, levels), as the quantizer computes it
// (trainer/quantizer.h ChannelCode): offset + scale·clamp(round((x − offset)/scale), 0, levels).
at::Tensor reconstruct(const at::Tensor& x, const at::Tensor& offset, const at::Tensor& scale,
                       const at::Tensor& levels) {
  return offset + scale * at::clamp(at::round((x - offset) / scale), 0).minimum(levels);
}

// A channel's values and what every width's search needs of them.
struct ChannelValues {
  at::Tensor x;   // [n] float32, contiguous
  at::Tensor xd;  // [n] float64
  float mean = 0, lo = 0, hi = 0;
};

ChannelValues channel_values(const at::Tensor& values, const char* what) {
  CSKV_CHECK(values.dim() == 1 && values.numel() > 0 && values.scalar_type() == at::kFloat,
             what << ": expected a non-empty 1-D float32 tensor, found " << values.scalar_type()
                  << " " << values.sizes());
  ChannelValues v;
  v.x = values.contiguous();
  v.xd = v.x.to(at::kDouble);
  v.mean = static_cast<float>(v.xd.mean().item<double>());
  v.lo = v.x.min().item<float>();
  v.hi = v.x.max().item<float>();
  return v;
}

// The squared error of every candidate range (offset lo_i, step scale_i) at width b, float64 [A].
at::Tensor range_errors(const ChannelValues& v, int b, const at::Tensor& lo,
                        const at::Tensor& scale) {
  const auto opts = v.x.options();
  const at::Tensor xr = reconstruct(v.x.unsqueeze(0), lo.unsqueeze(1), scale.unsqueeze(1),
                                    at::full({1, 1}, static_cast<float>((1 << b) - 1), opts));
  return (xr - v.x.unsqueeze(0)).square_().sum({1}, /*keepdim=*/false, at::kDouble);
}

// The clipped ranges [m − α(m − min), m + α(max − m)] (m the mean) at width b as (lo, scale).
std::pair<std::vector<float>, std::vector<float>> clipped_ranges(const ChannelValues& v, int b,
                                                                 const std::vector<float>& alphas) {
  std::vector<float> lo, scale;
  const float levels = static_cast<float>((1 << b) - 1);
  for (const float a : alphas) {
    const float l = v.mean - a * (v.mean - v.lo), h = v.mean + a * (v.hi - v.mean);
    lo.push_back(l);
    scale.push_back(std::max((h - l) / levels, std::numeric_limits<float>::min()));
  }
  return {lo, scale};
}

// The code of width b with the least squared error among the clipped ranges for α on a coarse
// grid 0.85^i (1 = min–max down to ~0.05), then a fine one around the coarse best (its α times
// 0.85^(k/4), |k| ≤ 3), and the `extra` candidates (offset, scale). Scales are kept ≥ FLT_MIN so
// that a kept channel's scale is positive (a constant channel is exact at any scale). Ties: the
// first candidate.
std::pair<ChannelCode, double> best_range(const ChannelValues& v, int b,
                                          const std::vector<std::pair<float, float>>& extra) {
  std::vector<float> coarse;
  for (int i = 0; i < 19; ++i) coarse.push_back(std::pow(0.85f, static_cast<float>(i)));
  const auto opts = v.x.options();
  auto [lo, scale] = clipped_ranges(v, b, coarse);
  const int64_t c =
      at::argmin(range_errors(v, b, at::tensor(lo, opts), at::tensor(scale, opts))).item<int64_t>();
  std::vector<float> fine;
  for (int k = -3; k <= 3; ++k) {
    const float a = coarse[static_cast<size_t>(c)] * std::pow(0.85f, static_cast<float>(k) / 4);
    if (k != 0 && a <= 1.0f) fine.push_back(a);
  }
  fine.push_back(coarse[static_cast<size_t>(c)]);
  std::tie(lo, scale) = clipped_ranges(v, b, fine);
  for (const auto& [o, s] : extra) {
    lo.push_back(o);
    scale.push_back(std::max(s, std::numeric_limits<float>::min()));
  }
  const at::Tensor err = range_errors(v, b, at::tensor(lo, opts), at::tensor(scale, opts));
  const auto best = static_cast<size_t>(err.argmin().item<int64_t>());
  return {{b, lo[best], scale[best]}, err[static_cast<int64_t>(best)].item<double>()};
}

}  // namespace

ChannelCurve fit_channel(const at::Tensor& values) {
  const ChannelValues v = channel_values(values, "fit_channel");
  ChannelCurve curve;
  curve.code[0] = {0, 0.0f, 0.0f};
  curve.error[0] = v.xd.pow(2).sum().item<double>();
  // One extra candidate per width nests the previous width's levels in this one's (its offset,
  // half its step: 2^b − 1 levels reach past its 2^(b−1) − 1), so the error never grows with the
  // width; at 1 bit it is {mean, mean + (max − mean)}.
  for (int b = 1; b <= kMaxChannelBits; ++b) {
    const ChannelCode& prev = curve.code[b - 1];
    const std::pair<float, float> nested = b == 1
                                               ? std::pair{v.mean, std::max(v.hi - v.mean, 1e-30f)}
                                               : std::pair{prev.offset, prev.scale / 2};
    std::tie(curve.code[b], curve.error[b]) = best_range(v, b, {nested});
  }
  return curve;
}

ChannelCode refit_channel(const at::Tensor& values, const ChannelCode& current) {
  CSKV_CHECK(current.bits >= 1 && current.bits <= kMaxChannelBits,
             "refit_channel: " << current.bits << " bits");
  const ChannelValues v = channel_values(values, "refit_channel");
  return best_range(v, current.bits, {{current.offset, current.scale}}).first;
}

std::vector<ChannelCurve> fit_channels(const at::Tensor& latents) {
  CSKV_CHECK(latents.dim() == 2,
             "fit_channels: expected [n, D] latents, found " << latents.sizes());
  std::vector<ChannelCurve> curves;
  const at::Tensor cols = latents.to(at::kFloat).t().contiguous();
  for (int64_t i = 0; i < cols.size(0); ++i) curves.push_back(fit_channel(cols[i]));
  return curves;
}

std::vector<int> allocate_bits(const std::vector<ChannelCurve>& curves, int64_t budget_bits) {
  CSKV_CHECK(budget_bits >= 0, "allocate_bits: budget " << budget_bits << " bits");
  std::vector<int> bits(curves.size(), 0);
  int64_t spent = 0;
  for (;;) {
    double best_gain = 0;
    int best_channel = -1, best_jump = 0;
    for (size_t i = 0; i < curves.size(); ++i) {
      const int b = bits[i];
      for (int k = 1; b + k <= kMaxChannelBits && spent + k <= budget_bits; ++k) {
        const double gain = (curves[i].error[b] - curves[i].error[b + k]) / k;
        if (gain > best_gain) {
          best_gain = gain;
          best_channel = static_cast<int>(i);
          best_jump = k;
        }
      }
    }
    if (best_channel < 0) return bits;
    bits[static_cast<size_t>(best_channel)] += best_jump;
    spent += best_jump;
  }
}

std::vector<std::vector<int>> allocate_jobs(const std::vector<std::vector<ChannelCurve>>& jobs,
                                            const std::vector<double>& energy, int64_t total_bits) {
  CSKV_CHECK(jobs.size() == energy.size(),
             "allocate_jobs: " << jobs.size() << " jobs, " << energy.size() << " energies");
  std::vector<ChannelCurve> all;
  for (size_t j = 0; j < jobs.size(); ++j) {
    CSKV_CHECK(energy[j] > 0, "allocate_jobs: job " << j << " has energy " << energy[j]);
    for (ChannelCurve c : jobs[j]) {
      for (double& e : c.error) e /= energy[j];
      all.push_back(c);
    }
  }
  const std::vector<int> flat = allocate_bits(all, total_bits);
  std::vector<std::vector<int>> out;
  size_t k = 0;
  for (const auto& job : jobs) {
    out.emplace_back(flat.begin() + static_cast<std::ptrdiff_t>(k),
                     flat.begin() + static_cast<std::ptrdiff_t>(k + job.size()));
    k += job.size();
  }
  return out;
}

double gaussian_bound(const at::Tensor& eigenvalues, double bits_per_token) {
  CSKV_CHECK(eigenvalues.dim() == 1 && bits_per_token >= 0, "gaussian_bound: eigenvalues "
                                                                << eigenvalues.sizes() << ", "
                                                                << bits_per_token << " bits");
  const at::Tensor l = eigenvalues.to(at::kDouble).clamp_min(0).cpu();
  const double total = l.sum().item<double>();
  if (total <= 0) return 0;
  const auto rate = [&](double theta) {  // bits spent at water level θ
    return (l.clamp_min(theta) / theta).log2().sum().item<double>() / 2;
  };
  // rate(θ) falls as θ grows; bisect log θ between a level that spends too much and λ_max.
  double lo = std::log(l.max().item<double>()) - 200, hi = std::log(l.max().item<double>());
  if (rate(std::exp(lo)) <= bits_per_token)
    return l.clamp_max(std::exp(lo)).sum().item<double>() / total;
  for (int i = 0; i < 200; ++i) {
    const double mid = (lo + hi) / 2;
    (rate(std::exp(mid)) > bits_per_token ? lo : hi) = mid;
  }
  return l.clamp_max(std::exp(hi)).sum().item<double>() / total;
}

LayerJob with_widths(LayerJob job, const std::vector<ChannelCurve>& curves,
                     const std::vector<int>& widths) {
  CSKV_CHECK(widths.size() == curves.size(),
             job.name() << ": " << widths.size() << " widths for " << curves.size() << " channels");
  job.channels.clear();
  job.codes.clear();
  for (size_t c = 0; c < widths.size(); ++c) {
    const int b = widths[c];
    CSKV_CHECK(b >= 0 && b <= kMaxChannelBits,
               job.name() << ": channel " << c << " width " << b << " outside [0, 8]");
    if (b == 0) continue;
    job.channels.push_back(static_cast<int64_t>(c));
    job.codes.push_back(curves[c].code[static_cast<size_t>(b)]);
  }
  job.rank = static_cast<int64_t>(job.channels.size());
  return job;
}

}  // namespace cskv::trainer
