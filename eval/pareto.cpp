// `cskv eval --pareto` (eval/pareto.h): the closed forms `cskv train` starts from, at a sweep of
// budgets, measured on the held-out split next to the Gaussian bound.
#include "eval/pareto.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <memory>
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

// The grid's densities that keep at least one channel per head (the same for every job).
std::vector<double> kept_densities(const model::ModelConfig& config, const ParetoGrid& grid) {
  std::vector<double> out;
  for (const double d : grid.densities) {
    if (std::floor(d * static_cast<double>(config.head_dim) + 1e-9) >= 1) out.push_back(d);
  }
  return out;
}

// The uniform code at every kept density × bits, in grid order (one trainer per bits, so each
// reads the held-out split once for all densities).
std::vector<ParetoPoint> uniform_points(
    const std::shared_ptr<const model::SafetensorsModel>& weights, const model::ModelConfig& config,
    const std::string& acts_dir, const trainer::LayerJob& base, const ParetoGrid& grid,
    const at::Tensor& spectrum) {
  std::vector<trainer::TrainConfig> cfgs;
  std::vector<std::unique_ptr<const trainer::LayerTrainer>> trainers;
  for (const int bits : grid.bits) {
    trainer::TrainConfig cfg;
    (base.kind == KvKind::kKey ? cfg.k_bits : cfg.v_bits) = bits;
    cfg.window = kParetoKeyWindow;
    cfgs.push_back(cfg);
    trainers.push_back(
        std::make_unique<const trainer::LayerTrainer>(cfg, config, weights, acts_dir));
  }
  std::vector<ParetoPoint> out;
  for (const double density : kept_densities(config, grid)) {
    const int64_t r = trainer::rank_from_density(density, config.head_dim,
                                                 config.num_key_value_heads, "--pareto");
    const trainer::LayerJob job(base.layer, base.kind, r);
    for (size_t b = 0; b < grid.bits.size(); ++b) {
      ParetoPoint p;
      p.code = "uniform";
      p.density = density;
      p.bits = grid.bits[b];
      p.bits_per_token =
          trainer::quant_bits_per_token(r, trainer::job_quant_config(cfgs[b], config, job));
      p.error = trainers[b]->relative_error(trainers[b]->init(job), "holdout", true);
      p.bound = trainer::gaussian_bound(spectrum, p.bits_per_token);
      out.push_back(p);
    }
  }
  return out;
}

// The waterfill code at the bits per token of each uniform point.
std::vector<ParetoPoint> waterfill_points(
    const std::shared_ptr<const model::SafetensorsModel>& weights, const model::ModelConfig& config,
    const std::string& acts_dir, const trainer::LayerJob& base,
    const std::vector<ParetoPoint>& uniform, const at::Tensor& spectrum) {
  trainer::TrainConfig cfg;
  cfg.quant = trainer::QuantMode::kWaterfill;
  const trainer::LayerTrainer t(cfg, config, weights, acts_dir);
  const trainer::LayerJob full(base.layer, base.kind, config.kv_dim());
  const auto curves = t.channel_curves(full).channels;
  std::vector<ParetoPoint> out;
  for (const ParetoPoint& u : uniform) {
    const auto budget = static_cast<int64_t>(std::floor(u.bits_per_token));
    const trainer::LayerJob job =
        trainer::with_widths(full, curves, trainer::allocate_bits(curves, budget));
    ParetoPoint p;
    p.code = "waterfill";
    p.density = static_cast<double>(job.rank) / static_cast<double>(config.kv_dim());
    p.bits_per_token = static_cast<double>(job.bits_per_token());
    p.error = job.rank > 0 ? t.relative_error(t.init(job), "holdout", true) : 1.0;
    p.bound = trainer::gaussian_bound(spectrum, p.bits_per_token);
    out.push_back(p);
  }
  return out;
}

// One job's points: the uniform ones, then the waterfill ones.
std::vector<ParetoPoint> sweep_job(const std::shared_ptr<const model::SafetensorsModel>& weights,
                                   const model::ModelConfig& config, const std::string& acts_dir,
                                   const trainer::LayerJob& base, const ParetoGrid& grid) {
  const at::Tensor spectrum = holdout_spectrum(
      acts_dir, base.layer, weights->get(trainer::kv_weight_name(base.layer, base.kind)));
  std::vector<ParetoPoint> out = uniform_points(weights, config, acts_dir, base, grid, spectrum);
  const auto waterfill = waterfill_points(weights, config, acts_dir, base, out, spectrum);
  out.insert(out.end(), waterfill.begin(), waterfill.end());
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
  const auto n_uniform =
      static_cast<int64_t>(kept_densities(config, grid).size() * grid.bits.size());
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
