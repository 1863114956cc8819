// Per-channel range fitting (clipping search), greedy width allocation, the channel quantizer.
#include "trainer/waterfill.h"

#include <algorithm>
#include <cmath>
#include <cstddef>

#include "common/error.h"

namespace cskv::trainer {

namespace {

// The reconstruction of x under (offset, scale, levels), as the quantizer computes it.
at::Tensor reconstruct(const at::Tensor& x, const at::Tensor& offset, const at::Tensor& scale,
                       const at::Tensor& levels) {
  const at::Tensor safe = at::where(scale > 0, scale, at::ones_like(scale));
  const at::Tensor q = at::clamp(at::round((x - offset) / safe), 0).minimum(levels);
  return offset + at::where(scale > 0, scale, at::zeros_like(scale)) * q;
}

}  // namespace

ChannelCurve fit_channel(const at::Tensor& values) {
  CSKV_CHECK(values.dim() == 1 && values.numel() > 0 && values.scalar_type() == at::kFloat,
             "fit_channel: expected a non-empty 1-D float32 tensor, found "
                 << values.scalar_type() << " " << values.sizes());
  const at::Tensor x = values.contiguous();
  const float mean = static_cast<float>(x.to(at::kDouble).mean().item<double>());
  const float lo0 = x.min().item<float>(), hi0 = x.max().item<float>();
  ChannelCurve curve;
  curve.code[0] = {0, mean, 0.0f};
  curve.error[0] = (x.to(at::kDouble) - mean).pow(2).sum().item<double>();
  // The α grid (0.97^i down to ~0.05) as one tensor: every candidate range of a width is
  // evaluated in one pass. One more candidate per width nests the previous width's levels in
  // this one's (its offset, half its step: 2^b − 1 levels reach past its 2^(b−1) − 1), so the
  // error never grows with the width; at 1 bit that candidate is {mean, mean + 2σ-ish}.
  std::vector<float> alphas;
  for (float a = 1.0f; a > 0.05f; a *= 0.97f) alphas.push_back(a);
  const auto opts = x.options();
  const at::Tensor a = at::tensor(alphas, opts).unsqueeze(1);  // [A, 1]
  const at::Tensor grid_lo = mean - a * (mean - lo0);
  const at::Tensor grid_hi = mean + a * (hi0 - mean);
  const at::Tensor xd = x.to(at::kDouble);
  const float spread = std::max(hi0 - mean, 1e-30f);
  for (int b = 1; b <= kMaxChannelBits; ++b) {
    const float levels = static_cast<float>((1 << b) - 1);
    const ChannelCode& prev = curve.code[b - 1];
    const float nested_scale = b == 1 ? spread : prev.scale / 2;
    const at::Tensor lo = at::cat({grid_lo, at::full({1, 1}, prev.offset, opts)}, 0);
    const at::Tensor scale =
        at::cat({(grid_hi - grid_lo) / levels, at::full({1, 1}, nested_scale, opts)}, 0);
    const at::Tensor xr =
        reconstruct(x.unsqueeze(0), lo, scale, at::full({1, 1}, levels, opts));  // [A+1, n]
    const at::Tensor err = (xr.to(at::kDouble) - xd).pow(2).sum(1);              // [A+1]
    const int64_t best = err.argmin().item<int64_t>();
    curve.code[b] = {b, lo[best][0].item<float>(), scale[best][0].item<float>()};
    curve.error[b] = err[best].item<double>();
  }
  return curve;
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

at::Tensor quantize_channels(const at::Tensor& latent, const std::vector<ChannelCode>& codes) {
  CSKV_CHECK(latent.dim() == 2 && latent.size(1) == static_cast<int64_t>(codes.size()),
             "quantize_channels: latent " << latent.sizes() << " for " << codes.size()
                                          << " channel codes");
  std::vector<float> offset, scale, levels;
  for (const ChannelCode& c : codes) {
    CSKV_CHECK(c.bits >= 0 && c.bits <= kMaxChannelBits,
               "quantize_channels: " << c.bits << " bits");
    offset.push_back(c.offset);
    scale.push_back(c.bits == 0 ? 0.0f : c.scale);
    levels.push_back(static_cast<float>((1 << c.bits) - 1));
  }
  const auto opts = latent.options().dtype(at::kFloat);
  return reconstruct(latent.to(at::kFloat), at::tensor(offset, opts), at::tensor(scale, opts),
                     at::tensor(levels, opts));
}

}  // namespace cskv::trainer
