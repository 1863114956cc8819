// Assignment of (layer, K|V) jobs to ranks by estimated cost, longest processing time first:
// computed identically on every rank from the job list alone, with no communication.
#pragma once

#include <cstdint>
#include <vector>

#include "trainer/layer_trainer.h"

namespace cskv::trainer {

// Matmul FLOPs of a job: steps · 2·batch·(2·H·r + 3·r·D + H·D) (a training step's six matmuls).
double job_cost(const LayerJob& job, int64_t hidden, int64_t kv_dim, int64_t steps,
                int64_t batch_tokens);

// Owner rank of every job: jobs in decreasing cost (ties: earlier job first) go to the rank with
// the least assigned cost so far (ties: lowest rank). world_size >= 1.
std::vector<int> assign_jobs_lpt(const std::vector<double>& costs, int world_size);

}  // namespace cskv::trainer
