// svd / asvd / pca factor initialisation in float64 (LAPACK gesdd / syevd via at::linalg), with
// deterministic signs, and the relative reconstruction error from tokens or from the Gram matrix.
#include "trainer/init.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <utility>

#include "common/error.h"
#include "trainer/spectrum.h"

namespace cskv::trainer {
namespace {

// " (layer 3 K)" for rank messages, "layer 3 K: " as a prefix for input messages.
std::string suffix(const std::string& context) {
  return context.empty() ? std::string() : " (" + context + ")";
}
std::string prefix(const std::string& context) {
  return context.empty() ? std::string() : context + ": ";
}

int64_t count_non_finite(const at::Tensor& t) {
  return t.numel() - at::isfinite(t).sum().item<int64_t>();
}

void check_finite(const at::Tensor& t, const char* what, const std::string& context) {
  const int64_t bad = count_non_finite(t);
  CSKV_CHECK_INPUT(bad == 0, prefix(context) << what << " has " << bad << " non-finite value"
                                             << (bad == 1 ? "" : "s") << " (NaN or Inf)");
}

// ±1 per row of `rows` [k, D] ([k, 1] float64) that makes the row's largest-magnitude entry (the
// first one on a tie) positive; +1 for a zero row.
at::Tensor row_signs(const at::Tensor& rows) {
  const at::Tensor index = rows.abs().argmax(1, /*keepdim=*/true);
  const at::Tensor sign = rows.gather(1, index).sign();
  return at::where(sign == 0, at::ones_like(sign), sign);
}

// Rank-r factors A = S⁻¹ U_r Σ_r^½, B = Σ_r^½ V_rᵀ from the SVD of S W (S = diag(scale), or the
// identity when scale is undefined). w: [H, D] float64.
std::pair<at::Tensor, at::Tensor> scaled_svd_factors(const at::Tensor& w, const at::Tensor& scale,
                                                     int64_t rank) {
  const at::Tensor scaled = scale.defined() ? w * scale.unsqueeze(1) : w;
  auto [u, s, vh] = at::linalg_svd(scaled, /*full_matrices=*/false);
  const int64_t k = std::min(rank, s.numel());
  at::Tensor root = s.narrow(0, 0, k).sqrt();
  const at::Tensor sign = row_signs(vh.narrow(0, 0, k));              // [k, 1]
  at::Tensor b = vh.narrow(0, 0, k) * (root.unsqueeze(1) * sign);     // [k, D]
  at::Tensor a = u.narrow(1, 0, k) * (root.unsqueeze(0) * sign.t());  // [H, k]
  if (scale.defined()) a = a / scale.unsqueeze(1);
  if (k < rank) {  // r > min(H, D): the extra components are zero (W is already exact).
    a = at::cat({a, at::zeros({a.size(0), rank - k}, a.options())}, 1);
    b = at::cat({b, at::zeros({rank - k, b.size(1)}, b.options())}, 0);
  }
  return {a, b};
}

// The asvd scale s^α with s clamped below at 1e-6·max(s) (all ones when s is all zero).
at::Tensor asvd_scale(const at::Tensor& abs_mean, double alpha) {
  const double largest = abs_mean.max().item<double>();
  if (largest == 0.0) return at::ones_like(abs_mean);
  return abs_mean.clamp_min(1e-6 * largest).pow(alpha);
}

double ratio(double num, double den) {
  if (den == 0.0) return num == 0.0 ? 0.0 : std::numeric_limits<double>::infinity();
  return num / den;
}

void check_matrix(const at::Tensor& t, const char* what, const char* fn) {
  CSKV_CHECK_INPUT(t.dim() == 2 && at::isFloatingType(t.scalar_type()),
                   fn << ": expected " << what << " to be a 2-D floating-point tensor, found "
                      << t.dim() << "-d " << t.scalar_type());
}

// a [H, r] and b [r, D] against weight [D, H]; returns E = W − A B as [H, D] float64.
at::Tensor residual(const at::Tensor& weight, const at::Tensor& a, const at::Tensor& b,
                    const char* fn) {
  check_matrix(weight, "weight", fn);
  check_matrix(a, "A", fn);
  check_matrix(b, "B", fn);
  CSKV_CHECK_INPUT(
      a.size(0) == weight.size(1) && b.size(1) == weight.size(0) && a.size(1) == b.size(0),
      fn << ": expected weight [D, H], A [H, r], B [r, D], found weight " << weight.sizes()
         << ", A " << a.sizes() << ", B " << b.sizes());
  return weight.to(at::kDouble).t() - at::matmul(a.to(at::kDouble), b.to(at::kDouble));
}

}  // namespace

InitMethod parse_init_method(const std::string& text) {
  if (text == "svd") return InitMethod::kSvd;
  if (text == "asvd") return InitMethod::kAsvd;
  if (text == "pca") return InitMethod::kPca;
  CSKV_FAIL_USAGE("--init: expected svd|asvd|pca, found '" << text << "'");
}

const char* init_method_name(InitMethod method) {
  switch (method) {
    case InitMethod::kSvd:
      return "svd";
    case InitMethod::kAsvd:
      return "asvd";
    case InitMethod::kPca:
      return "pca";
  }
  return "?";
}

InitResult init_factors(InitMethod method, const at::Tensor& weight, int64_t rank,
                        const at::Tensor& gram, const at::Tensor& abs_mean,
                        const std::string& context, double asvd_alpha) {
  CSKV_CHECK_INPUT(weight.dim() == 2 && at::isFloatingType(weight.scalar_type()),
                   prefix(context) << "expected a 2-D floating-point weight [D, H], found "
                                   << weight.dim() << "-d " << weight.scalar_type() << " tensor");
  const int64_t d = weight.size(0);
  const int64_t h = weight.size(1);
  CSKV_CHECK_USAGE(rank >= 1, "rank " << rank << " is smaller than 1" << suffix(context));
  CSKV_CHECK_USAGE(rank <= d, "rank " << rank << " is larger than D = " << d << suffix(context));
  CSKV_CHECK_INPUT(gram.dim() == 2 && gram.size(0) == h && gram.size(1) == h &&
                       gram.scalar_type() == at::kDouble,
                   prefix(context) << "expected a float64 Gram matrix [" << h << ", " << h
                                   << "], found " << gram.scalar_type() << " " << gram.sizes());
  check_finite(weight, "the weight", context);
  check_finite(gram, "the Gram matrix", context);

  if (method == InitMethod::kAsvd) {  // checked before the float64 work
    CSKV_CHECK_USAGE(std::isfinite(asvd_alpha) && asvd_alpha >= 0.0,
                     "--asvd-alpha: expected a finite value >= 0, found " << asvd_alpha);
    CSKV_CHECK_INPUT(abs_mean.defined(), prefix(context)
                                             << "asvd needs the mean |x| per channel, found none");
    CSKV_CHECK_INPUT(
        abs_mean.dim() == 1 && abs_mean.size(0) == h && abs_mean.scalar_type() == at::kDouble,
        prefix(context) << "asvd needs the float64 mean |x| per channel [" << h << "], found "
                        << abs_mean.scalar_type() << " " << abs_mean.sizes());
    check_finite(abs_mean, "the mean |x| per channel", context);
    const double smallest = abs_mean.min().item<double>();
    CSKV_CHECK_INPUT(smallest >= 0.0, prefix(context)
                                          << "the mean |x| per channel must be non-negative, "
                                             "found "
                                          << smallest);
  }

  const at::NoGradGuard no_grad;
  const at::Tensor w = weight.to(at::kDouble).t().contiguous();  // W = weightᵀ [H, D]
  const at::Tensor covariance = kv_covariance(weight, gram);     // Wᵀ G W [D, D]

  InitResult result;
  result.eigenvalues = spectrum(covariance);
  result.floor = floor_for_rank(result.eigenvalues, rank);

  at::Tensor a, b;
  switch (method) {
    case InitMethod::kSvd:
      std::tie(a, b) = scaled_svd_factors(w, at::Tensor(), rank);
      break;
    case InitMethod::kAsvd:
      std::tie(a, b) = scaled_svd_factors(w, asvd_scale(abs_mean, asvd_alpha), rank);
      break;
    case InitMethod::kPca: {
      // eigh gives ascending eigenvalues; the top r eigenvectors are the last r columns.
      const at::Tensor vectors = std::get<1>(at::linalg_eigh(covariance));
      b = vectors.narrow(1, d - rank, rank).flip(1).t();  // V_rᵀ [r, D]
      b = (b * row_signs(b)).contiguous();
      a = at::matmul(w, b.t());  // W V_r [H, r]
      break;
    }
  }
  result.A = a.to(at::kFloat).contiguous();
  result.B = b.to(at::kFloat).contiguous();
  return result;
}

InitResult select_channels(const InitResult& full, const std::vector<int64_t>& channels,
                           const std::string& context) {
  const int64_t d = full.B.size(0);
  CSKV_CHECK_USAGE(!channels.empty(), prefix(context) << "no channel kept");
  for (size_t i = 0; i < channels.size(); ++i) {
    CSKV_CHECK_USAGE(
        channels[i] >= 0 && channels[i] < d && (i == 0 || channels[i - 1] < channels[i]),
        prefix(context) << "kept channels must be ascending indices below " << d << ", found "
                        << channels[i] << " at position " << i);
  }
  const at::Tensor idx = at::tensor(channels, at::kLong);
  InitResult r;
  r.A = full.A.index_select(1, idx).contiguous();
  r.B = full.B.index_select(0, idx).contiguous();
  r.eigenvalues = full.eigenvalues;
  // As floor_for_rank sums them: in eigenvalue order, so the top r channels give its value.
  const at::Tensor l = full.eigenvalues.to(at::kDouble).contiguous().cpu();
  const double* p = l.data_ptr<double>();
  double total = 0, tail = 0;
  for (int64_t i = 0, k = 0; i < l.numel(); ++i) {
    total += p[i];
    const bool kept = k < static_cast<int64_t>(channels.size()) && channels[k] == i;
    if (kept) ++k;
    if (!kept) tail += p[i];
  }
  r.floor = total == 0.0 ? 0.0 : tail / total;
  return r;
}

double relative_error(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& a,
                      const at::Tensor& b) {
  const at::NoGradGuard no_grad;
  const at::Tensor e = residual(weight, a, b, "relative_error");
  check_matrix(x, "X", "relative_error");
  CSKV_CHECK_INPUT(x.size(1) == weight.size(1), "relative_error: expected X [N, " << weight.size(1)
                                                                                  << "], found X "
                                                                                  << x.sizes());
  const at::Tensor xd = x.to(at::kDouble);
  const double num = at::matmul(xd, e).square().sum().item<double>();
  const double den = at::matmul(xd, weight.to(at::kDouble).t()).square().sum().item<double>();
  return ratio(num, den);
}

double relative_error_from_gram(const at::Tensor& gram, const at::Tensor& weight,
                                const at::Tensor& a, const at::Tensor& b) {
  const at::NoGradGuard no_grad;
  const at::Tensor e = residual(weight, a, b, "relative_error_from_gram");
  const int64_t h = weight.size(1);
  CSKV_CHECK_INPUT(gram.dim() == 2 && gram.size(0) == h && gram.size(1) == h &&
                       gram.scalar_type() == at::kDouble,
                   "relative_error_from_gram: expected a float64 Gram matrix ["
                       << h << ", " << h << "], found " << gram.scalar_type() << " "
                       << gram.sizes());
  const double num = (e * at::matmul(gram, e)).sum().item<double>();
  const double den = kv_covariance(weight, gram).trace().item<double>();
  return ratio(std::max(num, 0.0), den);
}

}  // namespace cskv::trainer
