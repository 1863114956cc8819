// LPT assignment of layer jobs: hand-checked owners, balance, and independence from anything but
// the costs and the world size.
#include "trainer/schedule.h"

#include <gtest/gtest.h>

namespace cskv::trainer {
namespace {

TEST(Schedule, LongestJobsFirstToTheLeastLoadedRank) {
  // By cost: 9 (j1) → r0 [9, 0]; 7 (j3) → r1 [9, 7]; 5 (j0) → r1 [9, 12]; 4 (j2) → r0 [13, 12];
  // 1 (j4) → r1 [13, 13].
  const std::vector<double> costs = {5, 9, 4, 7, 1};
  EXPECT_EQ(assign_jobs_lpt(costs, 2), (std::vector<int>{1, 0, 0, 1, 1}));
  EXPECT_EQ(assign_jobs_lpt(costs, 1), (std::vector<int>{0, 0, 0, 0, 0}));
  // More ranks than jobs: one job each, the rest idle.
  EXPECT_EQ(assign_jobs_lpt({3, 2}, 4), (std::vector<int>{0, 1}));
}

TEST(Schedule, EqualCostsGoRoundRobinInJobOrder) {
  EXPECT_EQ(assign_jobs_lpt({1, 1, 1, 1, 1, 1}, 3), (std::vector<int>{0, 1, 2, 0, 1, 2}));
}

TEST(Schedule, JobCostCountsTheStepsSixMatmuls) {
  LayerJob j{0, KvKind::kKey, 8};
  // steps 3, batch 10, H 16, D 32, r 8: 3 · 2 · 10 · (2·16·8 + 3·8·32 + 16·32) = 60 · 1536.
  EXPECT_DOUBLE_EQ(job_cost(j, 16, 32, 3, 10), 60.0 * (256 + 768 + 512));
}

}  // namespace
}  // namespace cskv::trainer
