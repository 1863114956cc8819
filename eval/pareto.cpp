// `cskv eval --pareto` (eval/pareto.h): the closed forms `cskv train` starts from, at a sweep of
// budgets, measured on the held-out split next to the Gaussian bound.
#include "eval/pareto.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <utility>

#include "common/progress.h"
#include "data/activation_reader.h"
#include "trainer/job_widths.h"
#include "trainer/layer_trainer.h"
#include "trainer/quantizer.h"
#include "trainer/rank_allocation.h"
#include "trainer/spectrum.h"
#include "trainer/waterfill.h"

namespace cskv::eval {
namespace {

using trainer::KvKind;

// Eigenvalues (float64 [D]) of Σ KᵀK over the held-out split of the job's layer.
at::Tensor holdout_spectrum(const std::string& acts_dir, int64_t layer, const at::Tensor& w) {
  data::ActivationReaderOptions ro;
  ro.acts_dir = acts_dir;
  ro.layer = layer;
  ro.split = "holdout";
  ro.batch_tokens = 1 << 16;
  ro.num_epochs = 1;
  ro.prefetch_batches = 0;
  data::ActivationReader reader(ro);
  const at::Tensor wt = w.to(at::kDouble).t();
  at::Tensor cov = at::zeros({w.size(0), w.size(0)}, at::kDouble);
  while (auto b = reader.next()) {
    const at::Tensor k = at::mm(b->x.to(at::kDouble), wt);
    cov.addmm_(k.t(), k);
  }
  return at::linalg_eigvalsh(cov).clamp_min(0);
}

// Bits one token's latent costs under q at width r (codes and scale/zero overhead).
double bits_per_token(int64_t r, const trainer::QuantConfig& q) {
  return 8.0 * (trainer::quant_code_bytes_per_token(r, q) +
                trainer::quant_overhead_bytes_per_token(r, q));
}

// The grid's uniform points of one job, then the waterfill code at each of their bits.
std::vector<ParetoPoint> sweep_job(const std::shared_ptr<const model::SafetensorsModel>& weights,
                                   const model::ModelConfig& config, const std::string& acts_dir,
                                   const trainer::LayerJob& base, const ParetoGrid& grid) {
  const bool key = base.kind == KvKind::kKey;
  const at::Tensor spectrum = holdout_spectrum(
      acts_dir, base.layer, weights->get(trainer::kv_weight_name(base.layer, base.kind)));
  std::vector<ParetoPoint> uniform;
  for (const double density : grid.densities) {
    const int64_t per_head = static_cast<int64_t>(std::floor(density * config.head_dim + 1e-9));
    if (per_head < 1) continue;
    const int64_t r = trainer::rank_from_density(density, config.head_dim,
                                                 config.num_key_value_heads, "--pareto");
    for (const int bits : grid.bits) {
      trainer::TrainConfig cfg;
      (key ? cfg.k_bits : cfg.v_bits) = bits;
      cfg.window = kParetoKeyWindow;
      const trainer::LayerTrainer t(cfg, config, weights, acts_dir);
      const trainer::LayerJob job(base.layer, base.kind, r);
      const trainer::JobState s = t.init(job);
      ParetoPoint p;
      p.code = "uniform";
      p.density = density;
      p.bits = bits;
      p.bits_per_token = bits_per_token(r, trainer::job_quant_config(cfg, config, job));
      p.error = t.relative_error(s, "holdout", true);
      p.bound = trainer::gaussian_bound(spectrum, p.bits_per_token);
      uniform.push_back(p);
    }
  }
  trainer::TrainConfig wcfg;
  wcfg.quant = trainer::QuantMode::kWaterfill;
  const trainer::LayerTrainer wt(wcfg, config, weights, acts_dir);
  const trainer::LayerJob full(base.layer, base.kind, config.kv_dim());
  const auto curves = wt.channel_curves(full).channels;
  std::vector<ParetoPoint> out = uniform;
  for (const ParetoPoint& u : uniform) {
    const auto budget = static_cast<int64_t>(std::floor(u.bits_per_token));
    const trainer::LayerJob job =
        trainer::with_widths(full, curves, trainer::allocate_bits(curves, budget));
    ParetoPoint p;
    p.code = "waterfill";
    p.density = static_cast<double>(job.rank) / static_cast<double>(config.kv_dim());
    p.bits_per_token = static_cast<double>(job.bits_per_token());
    p.error = job.rank > 0 ? wt.relative_error(wt.init(job), "holdout", true) : 1.0;
    p.bound = trainer::gaussian_bound(spectrum, p.bits_per_token);
    out.push_back(p);
  }
  return out;
}

// The points' numbers as one float64 row (5 per point) and back.
constexpr int kFields = 5;
void pack(const std::vector<ParetoPoint>& points, at::Tensor row) {
  for (size_t i = 0; i < points.size(); ++i) {
    const ParetoPoint& p = points[i];
    const double v[kFields] = {p.density, static_cast<double>(p.bits), p.bits_per_token, p.error,
                               p.bound};
    for (int f = 0; f < kFields; ++f) row[static_cast<int64_t>(i)][f].fill_(v[f]);
  }
}

ParetoPoint unpack(const at::Tensor& row, const std::string& code) {
  ParetoPoint p;
  p.code = code;
  p.density = row[0].item<double>();
  p.bits = static_cast<int>(row[1].item<double>());
  p.bits_per_token = row[2].item<double>();
  p.error = row[3].item<double>();
  p.bound = row[4].item<double>();
  return p;
}

// Grid points with at least one channel (their count is the same for every job).
int64_t uniform_points(const model::ModelConfig& config, const ParetoGrid& grid) {
  int64_t n = 0;
  for (const double d : grid.densities) {
    if (std::floor(d * static_cast<double>(config.head_dim) + 1e-9) >= 1) ++n;
  }
  return n * static_cast<int64_t>(grid.bits.size());
}

}  // namespace

std::vector<JobPareto> pareto_sweep(std::shared_ptr<const model::SafetensorsModel> weights,
                                    const model::ModelConfig& config, const std::string& acts_dir,
                                    const std::vector<int64_t>& layers, const ParetoGrid& grid,
                                    comm::Communicator& comm) {
  std::vector<trainer::LayerJob> jobs;
  for (const int64_t l : layers) {
    for (const KvKind kind : {KvKind::kKey, KvKind::kValue}) jobs.emplace_back(l, kind, 0);
  }
  const auto n_jobs = static_cast<int64_t>(jobs.size());
  const int64_t n_uniform = uniform_points(config, grid);
  // Job i's rows on its rank, zeros elsewhere: the sum is an exact gather.
  at::Tensor all = at::zeros({n_jobs, 2 * n_uniform, kFields}, at::kDouble);
  ProgressMeter progress("eval pareto", "jobs", n_jobs, comm.rank() == 0);
  for (int64_t i = comm.rank(); i < n_jobs; i += comm.size()) {
    pack(sweep_job(weights, config, acts_dir, jobs[static_cast<size_t>(i)], grid), all[i]);
    progress.update(i + 1);
  }
  progress.finish();
  comm.allreduce_sum(all);
  std::vector<JobPareto> out;
  for (int64_t i = 0; i < n_jobs; ++i) {
    JobPareto jp;
    jp.layer = jobs[static_cast<size_t>(i)].layer;
    jp.kind = trainer::kv_kind_name(jobs[static_cast<size_t>(i)].kind);
    for (int64_t p = 0; p < 2 * n_uniform; ++p) {
      jp.points.push_back(unpack(all[i][p], p < n_uniform ? "uniform" : "waterfill"));
    }
    out.push_back(std::move(jp));
  }
  return out;
}

}  // namespace cskv::eval
