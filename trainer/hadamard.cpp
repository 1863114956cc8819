// Randomized Hadamard rotation: Sylvester blocks with seeded signs, a seeded channel permutation
// for widths that are not a power of two, and the rotation of a pair of factors.
#include "trainer/hadamard.h"

#include <cmath>
#include <numeric>

#include "common/error.h"

namespace cskv::trainer {
namespace {

// SplitMix64: a tiny, fully specified generator (identical output everywhere).
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n) without modulo bias (rejection of the incomplete last range).
  uint64_t below(uint64_t n) {
    const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t v = next();
    while (v >= limit) v = next();
    return v % n;
  }

 private:
  uint64_t state_;
};

bool is_power_of_two(int64_t n) { return n > 0 && (n & (n - 1)) == 0; }

}  // namespace

at::Tensor sylvester_hadamard(int64_t n) {
  CSKV_CHECK(is_power_of_two(n), "sylvester_hadamard: expected a power of two, found " << n);
  at::Tensor h = at::empty({n, n}, at::TensorOptions().dtype(at::kDouble));
  double* p = h.data_ptr<double>();
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      p[i * n + j] = (__builtin_popcountll(static_cast<uint64_t>(i & j)) & 1) ? -1.0 : 1.0;
    }
  }
  return h;
}

std::vector<int64_t> hadamard_blocks(int64_t r) {
  std::vector<int64_t> blocks;
  for (int bit = 62; bit >= 0; --bit) {
    const int64_t k = int64_t{1} << bit;
    if (r & k) blocks.push_back(k);
  }
  return blocks;
}

at::Tensor randomized_hadamard(int64_t r, uint64_t seed) {
  CSKV_CHECK_USAGE(r >= 1, "hadamard rotation: expected a latent width >= 1, found " << r);
  SplitMix64 rng(seed);
  at::Tensor rot = at::zeros({r, r}, at::TensorOptions().dtype(at::kDouble));
  int64_t at_row = 0;
  for (const int64_t k : hadamard_blocks(r)) {
    std::vector<double> signs(static_cast<size_t>(k));
    for (double& s : signs) s = (rng.next() >> 63) ? -1.0 : 1.0;
    const at::Tensor d = at::tensor(at::ArrayRef<double>(signs), at::kDouble);
    rot.narrow(0, at_row, k).narrow(1, at_row, k).copy_(sylvester_hadamard(k) * d / std::sqrt(k));
    at_row += k;
  }
  if (is_power_of_two(r)) return rot;
  // Fisher–Yates: row i of R is row perm[i] of the block-diagonal matrix.
  std::vector<int64_t> perm(static_cast<size_t>(r));
  std::iota(perm.begin(), perm.end(), int64_t{0});
  for (int64_t i = r - 1; i > 0; --i) {
    const auto j = static_cast<int64_t>(rng.below(static_cast<uint64_t>(i + 1)));
    std::swap(perm[static_cast<size_t>(i)], perm[static_cast<size_t>(j)]);
  }
  return rot.index_select(0, at::tensor(at::ArrayRef<int64_t>(perm), at::kLong)).contiguous();
}

RotatedFactors rotate_factors(const at::Tensor& A, const at::Tensor& B, const at::Tensor& R) {
  CSKV_CHECK(A.dim() == 2 && B.dim() == 2 && R.dim() == 2 && R.size(0) == R.size(1) &&
                 A.size(1) == R.size(0) && B.size(0) == R.size(0),
             "rotate_factors: expected A [H, r], B [r, D] and R [r, r], found A "
                 << A.sizes() << ", B " << B.sizes() << ", R " << R.sizes());
  const at::NoGradGuard no_grad;
  const at::Tensor r = R.to(at::kDouble);
  return {at::mm(A.to(at::kDouble), r).to(A.scalar_type()).contiguous(),
          at::mm(r.t(), B.to(at::kDouble)).to(B.scalar_type()).contiguous()};
}

}  // namespace cskv::trainer
