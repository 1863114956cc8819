// K/V cache covariance spectra in float64: C = W G Wᵀ, its eigenvalues (LAPACK syevd via
// at::linalg_eigvalsh), and the energy rank / error floor computed from them.
#include "trainer/spectrum.h"

#include <algorithm>

#include "common/error.h"

namespace cskv::trainer {
namespace {

// Rejects anything but a 1-D float64 tensor of non-negative, non-increasing values.
const double* checked_eigenvalues(const at::Tensor& eigenvalues, const char* fn) {
  CSKV_CHECK_INPUT(eigenvalues.dim() == 1 && eigenvalues.scalar_type() == at::kDouble &&
                       eigenvalues.is_contiguous() && eigenvalues.device().is_cpu(),
                   fn << ": expected contiguous 1-D float64 CPU eigenvalues, found "
                      << eigenvalues.dim() << "-d " << eigenvalues.scalar_type() << " tensor");
  const double* p = eigenvalues.data_ptr<double>();
  for (int64_t i = 0; i < eigenvalues.numel(); ++i) {
    CSKV_CHECK_INPUT(p[i] >= 0,
                     fn << ": eigenvalues must be non-negative; element " << i << " is " << p[i]);
    CSKV_CHECK_INPUT(i == 0 || p[i] <= p[i - 1], fn << ": eigenvalues must be descending; element "
                                                    << i << " (" << p[i] << ") exceeds element "
                                                    << i - 1 << " (" << p[i - 1] << ")");
  }
  return p;
}

}  // namespace

const char* kv_kind_name(KvKind kind) { return kind == KvKind::kKey ? "K" : "V"; }

std::string kv_weight_name(int64_t layer, KvKind kind) {
  return "model.layers." + std::to_string(layer) + ".self_attn." +
         (kind == KvKind::kKey ? "k_proj" : "v_proj") + ".weight";
}

at::Tensor kv_covariance(const at::Tensor& weight, const at::Tensor& gram) {
  CSKV_CHECK_INPUT(weight.dim() == 2 && gram.dim() == 2 && gram.size(0) == gram.size(1) &&
                       weight.size(1) == gram.size(0),
                   "kv_covariance: expected weight [D, H] and Gram [H, H], found weight "
                       << weight.sizes() << " and Gram " << gram.sizes());
  CSKV_CHECK_INPUT(gram.scalar_type() == at::kDouble,
                   "kv_covariance: expected a float64 Gram matrix, found " << gram.scalar_type());
  CSKV_CHECK_INPUT(
      at::isFloatingType(weight.scalar_type()),
      "kv_covariance: expected a floating-point weight, found " << weight.scalar_type());
  const at::Tensor w = weight.to(at::kDouble);
  const at::Tensor c = at::matmul(at::matmul(w, gram), w.t());
  // Mathematically symmetric; make it exactly so, so eigvalsh sees the same matrix either way.
  return ((c + c.t()) * 0.5).contiguous();
}

at::Tensor spectrum(const at::Tensor& covariance) {
  CSKV_CHECK_INPUT(covariance.dim() == 2 && covariance.size(0) == covariance.size(1),
                   "spectrum: expected a square matrix, found " << covariance.sizes());
  const at::Tensor ascending = at::linalg_eigvalsh(covariance.to(at::kDouble));
  const at::Tensor eigs = ascending.flip(0).contiguous();
  if (eigs.numel() == 0) return eigs;
  const double largest = eigs[0].item<double>();
  const double smallest = eigs[eigs.numel() - 1].item<double>();
  CSKV_CHECK_INPUT(smallest >= -1e-8 * std::max(largest, 0.0),
                   "spectrum: the matrix is not positive semidefinite (eigenvalue "
                       << smallest << " against a largest of " << largest << ")");
  return eigs.clamp_min(0.0);
}

int64_t rank_for_energy(const at::Tensor& eigenvalues, double fraction) {
  CSKV_CHECK_INPUT(fraction >= 0.0 && fraction <= 1.0,
                   "rank_for_energy: fraction must be in [0, 1], found " << fraction);
  const double* p = checked_eigenvalues(eigenvalues, "rank_for_energy");
  const int64_t n = eigenvalues.numel();
  double total = 0.0;
  for (int64_t i = 0; i < n; ++i) total += p[i];
  if (total == 0.0) return 0;
  // The same summation order as `total`, so fraction 1 stops at the last non-zero eigenvalue.
  const double target = fraction * total;
  double cumulative = 0.0;
  for (int64_t r = 0; r < n; ++r) {
    if (cumulative >= target) return r;
    cumulative += p[r];
  }
  return n;
}

double floor_for_rank(const at::Tensor& eigenvalues, int64_t rank) {
  const double* p = checked_eigenvalues(eigenvalues, "floor_for_rank");
  const int64_t n = eigenvalues.numel();
  CSKV_CHECK_INPUT(rank >= 0 && rank <= n,
                   "floor_for_rank: rank must be in [0, " << n << "], found " << rank);
  double total = 0.0, tail = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    total += p[i];
    if (i >= rank) tail += p[i];
  }
  return total == 0.0 ? 0.0 : tail / total;
}

at::Tensor layer_spectrum(const model::SafetensorsModel& weights, int64_t layer, KvKind kind,
                          const at::Tensor& gram) {
  const std::string name = kv_weight_name(layer, kind);
  CSKV_CHECK_INPUT(weights.contains(name),
                   "layer " << layer << ": tensor '" << name << "' not found in the model");
  const at::Tensor w = weights.get(name);
  CSKV_CHECK_INPUT(w.dim() == 2 && w.size(1) == gram.size(0),
                   weights.file_of(name) << ": tensor '" << name << "' has shape " << w.sizes()
                                         << ", the statistics have hidden size " << gram.size(0));
  return spectrum(kv_covariance(w, gram));
}

}  // namespace cskv::trainer
