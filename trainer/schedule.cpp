// LPT scheduling of layer jobs (deterministic: depends on the costs and the world size only).
#include "trainer/schedule.h"

#include <algorithm>
#include <numeric>

#include "common/error.h"

namespace cskv::trainer {

double job_cost(const LayerJob& job, int64_t hidden, int64_t kv_dim, int64_t steps,
                int64_t batch_tokens) {
  const double h = static_cast<double>(hidden), d = static_cast<double>(kv_dim);
  const double r = static_cast<double>(job.rank);
  return static_cast<double>(steps) * 2.0 * static_cast<double>(batch_tokens) *
         (2 * h * r + 3 * r * d + h * d);
}

std::vector<int> assign_jobs_lpt(const std::vector<double>& costs, int world_size) {
  CSKV_CHECK(world_size >= 1, "assign_jobs_lpt: world size " << world_size);
  std::vector<size_t> order(costs.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return costs[a] > costs[b]; });
  std::vector<double> load(static_cast<size_t>(world_size), 0.0);
  std::vector<int> owner(costs.size(), 0);
  for (const size_t j : order) {
    const auto least = std::min_element(load.begin(), load.end());  // first minimum: lowest rank
    owner[j] = static_cast<int>(least - load.begin());
    *least += costs[j];
  }
  return owner;
}

}  // namespace cskv::trainer
