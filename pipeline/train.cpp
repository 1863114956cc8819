// The train stage driver: validate → plan (jobs, ranks, placement) → resume → work (the job loop
// under the coordinator) → share (every state to every rank) → write (factors and metrics).
#include "pipeline/train.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>

#include <nlohmann/json.hpp>

#include "checkpoint/compressor_file.h"
#include "checkpoint/rank_checkpoint.h"
#include "comm/collectives.h"
#include "comm/factory.h"
#include "comm/local_communicator.h"
#include "common/device.h"
#include "common/error.h"
#include "common/fs.h"
#include "common/log.h"
#include "common/output_dir.h"
#include "common/progress.h"
#include "common/stop_signal.h"
#include "data/layer_stats.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "pipeline/capture.h"
#include "pipeline/coordinator.h"
#include "pipeline/settings.h"
#include "pipeline/stage_outputs.h"
#include "trainer/group_overhead.h"
#include "trainer/job_widths.h"
#include "trainer/quantizer.h"
#include "trainer/rank_allocation.h"
#include "trainer/schedule.h"

namespace cskv::pipeline {

using namespace cskv::trainer;  // the stage is built from trainer/ throughout

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::vector<LayerJob> plan_jobs(const TrainRunOptions& o, const model::ModelConfig& model,
                                const model::SafetensorsModel& weights) {
  const auto header = data::read_capture_stats_header(o.acts_dir, model.hash());
  std::vector<int64_t> layers = o.layers.empty() ? header.layers : o.layers;
  for (const int64_t l : layers) {
    CSKV_CHECK_USAGE(
        std::find(header.layers.begin(), header.layers.end(), l) != header.layers.end(),
        "--layers: layer " << l << " was not captured in " << o.acts_dir);
  }
  std::vector<LayerJob> jobs;
  const int64_t D = model.kv_dim();
  auto log = log::get("trainer");
  if (o.cfg.quant == QuantMode::kWaterfill) {  // widths come from plan_widths
    for (const int64_t l : layers) {
      jobs.push_back({l, KvKind::kKey, D});
      jobs.push_back({l, KvKind::kValue, D});
    }
  } else if (o.budget > 0) {
    std::vector<at::Tensor> k_eigs, v_eigs;
    for (const int64_t l : layers) {
      const auto st = data::read_layer_stats(o.acts_dir + "/stats.h5", l);
      k_eigs.push_back(layer_spectrum(weights, l, KvKind::kKey, st.gram));
      v_eigs.push_back(layer_spectrum(weights, l, KvKind::kValue, st.gram));
    }
    const int64_t multiple =
        o.rank_multiple > 0 ? o.rank_multiple : default_rank_multiple(model.num_key_value_heads);
    const auto alloc = allocate_budget(k_eigs, v_eigs, o.budget, D, multiple);
    for (size_t i = 0; i < layers.size(); ++i) {
      jobs.push_back({layers[i], KvKind::kKey, alloc[i].k});
      jobs.push_back({layers[i], KvKind::kValue, alloc[i].v});
      log->info("layer {}: r_k {} (floor {:.4g}), r_v {} (floor {:.4g})", layers[i], alloc[i].k,
                floor_for_rank(k_eigs[i], alloc[i].k), alloc[i].v,
                floor_for_rank(v_eigs[i], alloc[i].v));
    }
    const FloorSummary f = expected_floor(k_eigs, v_eigs, alloc);
    log->info("budget {}: expected 16-bit floor mean K {:.4g}, mean V {:.4g} (sum {:.4g})",
              o.budget, f.mean_k, f.mean_v, f.sum);
  } else {
    const int64_t rk =
        rank_from_density(o.k_density, model.head_dim, model.num_key_value_heads, "--k-density");
    const int64_t rv =
        rank_from_density(o.v_density, model.head_dim, model.num_key_value_heads, "--v-density");
    for (const int64_t l : layers) {
      jobs.push_back({l, KvKind::kKey, rk});
      jobs.push_back({l, KvKind::kValue, rv});
    }
    log->info("ranks: r_k {} r_v {} of D {} for {} layer(s)", rk, rv, D, layers.size());
  }
  return jobs;
}

}  // namespace cskv::pipeline

namespace cskv::trainer {  // typed collectives carry channel curves bit for bit (CBOR)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(ChannelCode, bits, offset, scale)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(ChannelCurve, code, error)
}  // namespace cskv::trainer

namespace cskv::pipeline {
namespace {

// One job's channel curves, from the rank that fitted them.
struct JobCurves {
  size_t job = 0;
  std::vector<ChannelCurve> channels;
  double energy = 0;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(JobCurves, job, channels, energy)

// Every job's curves on every rank: rank k fits jobs k, k + size, … and one allgather shares
// them (the fit depends only on the job, so any world size gives the same curves).
std::vector<LayerTrainer::Curves> gather_curves(const std::vector<LayerJob>& jobs,
                                                const LayerTrainer& trainer,
                                                comm::Communicator& comm) {
  std::vector<JobCurves> mine;
  for (size_t i = static_cast<size_t>(comm.rank()); i < jobs.size();
       i += static_cast<size_t>(comm.size())) {
    LayerTrainer::Curves c = trainer.channel_curves(jobs[i]);
    mine.push_back({i, std::move(c.channels), c.energy});
  }
  std::vector<LayerTrainer::Curves> all(jobs.size());
  for (const auto& from_rank : comm::allgather_values(comm, mine)) {
    for (const JobCurves& c : from_rank) {
      CSKV_CHECK(c.job < jobs.size(), "train: curves of job " << c.job << " of " << jobs.size());
      all[c.job] = {c.channels, c.energy};
    }
  }
  return all;
}

// The widths of every channel of every job: one budget over all jobs (--cache-budget), or each
// job's own bits per token.
std::vector<std::vector<int>> allocate_widths(const TrainConfig& cfg,
                                              const std::vector<LayerJob>& jobs,
                                              const std::vector<LayerTrainer::Curves>& curves,
                                              int64_t D) {
  if (cfg.cache_budget > 0) {
    std::vector<std::vector<ChannelCurve>> all;
    std::vector<double> energy;
    for (const auto& c : curves) {
      all.push_back(c.channels);
      energy.push_back(c.energy);
    }
    const auto total = static_cast<int64_t>(std::floor(
        cfg.cache_budget * 16.0 * static_cast<double>(D * static_cast<int64_t>(jobs.size()))));
    return allocate_jobs(all, energy, total);
  }
  std::vector<std::vector<int>> widths;
  for (size_t i = 0; i < jobs.size(); ++i) {
    const bool key = jobs[i].kind == KvKind::kKey;
    widths.push_back(
        allocate_bits(curves[i].channels, key ? cfg.k_bits_per_token : cfg.v_bits_per_token));
  }
  return widths;
}

// --quant waterfill: the kept channels of every job and their codes (the channels' curves
// allocated under the budget). The same on every rank and in every resumed session.
std::vector<LayerJob> plan_widths(const TrainRunOptions& o, std::vector<LayerJob> jobs,
                                  const LayerTrainer& trainer, const model::ModelConfig& model,
                                  comm::Communicator& comm) {
  if (o.cfg.quant != QuantMode::kWaterfill) return jobs;
  const auto curves = gather_curves(jobs, trainer, comm);
  const auto widths = allocate_widths(o.cfg, jobs, curves, model.kv_dim());
  for (size_t i = 0; i < jobs.size(); ++i) {
    LayerJob& j = jobs[i];
    j = with_widths(j, curves[i].channels, widths[i]);
    double err = 0;
    for (size_t c = 0; c < widths[i].size(); ++c) {
      err += curves[i].channels[c].error[static_cast<size_t>(widths[i][c])];
    }
    CSKV_CHECK_USAGE(j.rank > 0, j.name() << ": the budget leaves no bits for any channel");
    log::get("trainer")->info("{}: {} bits/token over {} of {} channels, training-set error {:.4g}",
                              j.name(), j.bits_per_token(), j.rank, model.kv_dim(),
                              err / std::max(curves[i].energy, 1e-300));
  }
  return jobs;
}

}  // namespace

std::vector<OwnedOutput> train_outputs() {
  return {
      {"compressor.safetensors", checkpoint::is_compressor_file, "a cskv compressor file"},
      {"metrics.json",
       [](const std::string& p) {
         return is_json_object_with(p, {"context", "compressed_cache_bytes", "jobs"});
       },
       "the training metrics cskv writes"},
      {"metrics.md",
       [](const std::string& p) { return starts_with_text(p, "| layer | K/V | rank | bits |"); },
       "the metrics table cskv writes"}};
}

std::string resolved_config_json(const TrainRunOptions& o, const model::ModelConfig& model,
                                 const std::string& weights_fingerprint) {
  nlohmann::json j = settings_identity(train_bound_settings(), o);
  // What the command's own flags, the model, the runtime and the trainer decide besides the
  // table.
  j["model_config_hash"] = model.hash();
  j["model_weights_fingerprint"] = weights_fingerprint;
  j["acts"] = fs::absolute(o.acts_dir).string();
  j["layers"] = o.layers;
  j["clip"] = o.cfg.clip;
  j["seed"] = o.cfg.seed;
  j["threads"] = o.threads;
  return j.dump();
}

namespace {

JobMetrics metrics_of(const JobState& s, const TrainConfig& cfg) {
  JobMetrics m;
  m.job = s.job;
  m.bits = cfg.quant == QuantMode::kWaterfill ? 0
           : s.job.kind == KvKind::kKey       ? cfg.k_bits
                                              : cfg.v_bits;
  m.bits_per_token =
      cfg.quant == QuantMode::kWaterfill ? s.job.bits_per_token() : s.job.rank * m.bits;
  m.floor = s.floor;
  m.train_error_init = s.train_error_init;
  m.train_error = s.train_error;
  m.holdout_error_init_q = s.holdout_error_init_q;
  m.holdout_error_q = s.holdout_error_q;
  m.holdout_error = s.holdout_error;
  m.steps = s.step;
  m.seconds = s.seconds;
  return m;
}

// ---- validate

// --quant waterfill allocates its own widths over the PCA basis: the uniform code's settings are
// refused by name, and it needs a budget; the waterfill budgets are refused under uniform.
void validate_quant_mode(const TrainRunOptions& o) {
  const TrainConfig& c = o.cfg;
  if (c.quant == QuantMode::kUniform) {
    for (const auto& [given, flag] : {std::pair{c.k_bits_per_token > 0, "--k-bits-per-token"},
                                      {c.v_bits_per_token > 0, "--v-bits-per-token"},
                                      {c.cache_budget > 0, "--cache-budget"}}) {
      CSKV_CHECK_USAGE(!given, flag << " applies to --quant waterfill only");
    }
    return;
  }
  for (const auto& [given, flag] : {std::pair{c.k_bits != 16, "--k-bits"},
                                    {c.v_bits != 16, "--v-bits"},
                                    {c.group_size != 0, "--group-size"},
                                    {c.quant_compat_cskv, "--quant-compat"},
                                    {c.init != InitMethod::kPca, "--init"},
                                    {c.rotate_hadamard, "--rotate"},
                                    {o.budget > 0, "--budget"}}) {
    CSKV_CHECK_USAGE(!given, "--quant waterfill: "
                                 << flag
                                 << " does not apply (every PCA channel gets its own width and "
                                    "static range; give --k/v-bits-per-token or --cache-budget)");
  }
  CSKV_CHECK_USAGE(c.cache_budget > 0 || (c.k_bits_per_token > 0 && c.v_bits_per_token > 0),
                   "--quant waterfill needs --cache-budget F or both --k-bits-per-token and "
                   "--v-bits-per-token");
}

void validate_options(const TrainRunOptions& o) {
  validate_quant_mode(o);
  CSKV_CHECK_USAGE(o.save_every >= 0, "--save-every: expected >= 0, found " << o.save_every);
  CSKV_CHECK_USAGE(o.keep >= 1, "--keep: expected >= 1, found " << o.keep);
  CSKV_CHECK_USAGE(!(o.require_resume && o.overwrite),
                   "--resume requires a checkpoint to continue from and --overwrite may delete "
                   "them: give one of the two");
}

// The ranks every job gets in density mode (budget mode knows them only from stats.h5).
std::vector<LayerJob> density_jobs(const TrainRunOptions& o, const model::ModelConfig& model) {
  const int64_t layer = o.layers.empty() ? 0 : o.layers.front();
  return {
      {layer, KvKind::kKey,
       rank_from_density(o.k_density, model.head_dim, model.num_key_value_heads, "--k-density")},
      {layer, KvKind::kValue,
       rank_from_density(o.v_density, model.head_dim, model.num_key_value_heads, "--v-density")}};
}

// The files the write phase replaces: refused when cskv did not write them (unless --overwrite).
void check_train_outputs(const TrainRunOptions& o, comm::Communicator& comm) {
  refuse_foreign_outputs(comm, o.ckpt_dir, train_outputs, o.overwrite, "--ckpt-dir");
}

// ---- plan

// The model's weights fingerprint, once its weights are checked against config.json; the
// activations must have been captured from these weights.
std::string model_fingerprint(const TrainRunOptions& o, const model::ModelConfig& model,
                              const model::SafetensorsModel& weights) {
  model::validate_weights(model, weights, o.model_dir);
  std::string fingerprint = model::weights_fingerprint(model, weights);
  check_capture_weights(o.acts_dir, model.hash(), fingerprint);
  return fingerprint;
}

CheckpointPolicy checkpoint_policy(const TrainRunOptions& o, std::string config_json) {
  CheckpointPolicy p;
  p.ckpt_dir = o.ckpt_dir;
  p.save_every = o.save_every;
  p.keep = o.keep;
  p.round_seconds = o.round_seconds;
  p.require_resume = o.require_resume;
  p.overwrite = o.overwrite;
  p.config_json = std::move(config_json);
  return p;
}

// The placement costs of the jobs and their steps in all (the progress total).
struct JobCosts {
  std::vector<double> costs;
  int64_t all_steps = 0;
};

JobCosts job_costs(const std::vector<LayerJob>& jobs, const LayerTrainer& trainer,
                   const model::ModelConfig& model, const TrainConfig& cfg) {
  JobCosts c;
  for (const auto& j : jobs) {
    const int64_t steps = trainer.total_steps(j);  // reads the capture manifest: once per job
    c.all_steps += steps;
    c.costs.push_back(job_cost(j, model.hidden_size, model.kv_dim(), steps, cfg.batch_tokens));
  }
  return c;
}

// This rank's part of the plan: the placement, its data-parallel group and its group's jobs.
struct RankAssignment {
  Placement placement;
  std::unique_ptr<comm::Communicator> group;  // only when dp > 1
  std::vector<size_t> my_jobs;
};

// A data-parallel group on a CUDA device allreduces over NCCL where the build has it
// (comm::make_group decides).
RankAssignment assign_ranks(const std::vector<double>& costs, int dp, comm::Communicator& comm,
                            at::Device device) {
  const int me = comm.rank();
  RankAssignment a;
  a.placement = place_jobs(costs, dp, comm.size(), me);
  const Placement& p = a.placement;
  if (p.dp > 1) {
    a.group = comm::make_group(comm, p.my_group >= 0 ? p.my_group : p.groups + me, me, device);
  }
  if (me == 0 && p.groups * p.dp < comm.size()) {
    log::get("trainer")->warn("{} rank(s) idle: {} ranks do not divide into groups of {}",
                              comm.size() - p.groups * p.dp, comm.size(), p.dp);
  }
  a.my_jobs = p.my_jobs();
  return a;
}

// ---- work

// This rank's jobs in order (init → train → evaluate), meeting the other ranks at the
// coordinator's points, then rounds with them until every job is done or a stop.
class JobLoop {
 public:
  JobLoop(LayerTrainer& trainer, const std::vector<LayerJob>& jobs,
          const std::vector<size_t>& my_jobs, std::map<size_t, JobState>& states,
          Coordinator& coord, const DataParallelSlice& slice, Clock::time_point run_start)
      : trainer_(trainer),
        jobs_(jobs),
        my_jobs_(my_jobs),
        states_(states),
        coord_(coord),
        slice_(slice),
        run_start_(run_start) {}

  void run() {
    for (size_t n = 0; n < my_jobs_.size() && !coord_.stopped(); ++n) run_job(my_jobs_[n], n + 1);
    while (!coord_.stopped() && !coord_.all_finished()) {
      coord_.point(/*save_wanted=*/false, /*end_round=*/true);
    }
  }

 private:
  // Job i, the done-th of this rank's jobs: whatever is left of it.
  void run_job(size_t i, size_t done) {
    auto it = states_.find(i);
    if (it != states_.end() && it->second.finished()) return;
    job_clock_ = Clock::now();
    if (it == states_.end()) {
      it = states_.emplace(i, start_job(jobs_[i])).first;
      if (!coord_.point()) return;
    } else if (it->second.step > 0) {
      log::get("trainer")->info("{}: continuing at step {}/{}", jobs_[i].name(), it->second.step,
                                it->second.total_steps);
    }
    JobState& s = it->second;
    train_job(s, i, done);
    if (coord_.stopped()) return;
    if (s.step == s.total_steps && std::isnan(s.holdout_error)) {
      evaluate_job(s, i);
      coord_.point(/*save_wanted=*/true);
    }
  }

  JobState start_job(const LayerJob& job) {
    JobState s = trainer_.init(job);
    s.train_error_init = trainer_.relative_error(s, "train", false);
    s.holdout_error_init_q = trainer_.relative_error(s, "holdout", true);
    log::get("trainer")->info("{} (rank {}): 16-bit floor {:.6g}, init train error {:.6g}",
                              job.name(), job.rank, s.floor, s.train_error_init);
    return s;
  }

  void train_job(JobState& s, size_t i, size_t done) {
    const int64_t start_step = s.step;
    auto last_log = Clock::now();
    trainer_.train(
        s, s.total_steps,
        [&](const JobState& st) {
          coord_.count_step();
          const auto now = Clock::now();
          if (std::chrono::duration<double>(now - last_log).count() >= 2.0 ||
              st.step == st.total_steps) {
            last_log = now;
            log_step(st, i, start_step, done, now);
          }
          add_time(s);
          return coord_.point();
        },
        slice_);
  }

  void log_step(const JobState& st, size_t i, int64_t start_step, size_t done,
                Clock::time_point now) const {
    const double el = std::chrono::duration<double>(now - run_start_).count();
    const double rate = static_cast<double>(st.step - start_step) / std::max(el, 1e-9);
    log::get("trainer")->debug(
        "{}: step {}/{} loss {:.6g} ({:.1f} steps/s, ETA {:.0f} s; job {}/{} here)",
        jobs_[i].name(), st.step, st.total_steps, st.last_loss, rate,
        static_cast<double>(st.total_steps - st.step) / std::max(rate, 1e-9), done,
        my_jobs_.size());
  }

  // waterfill: the trained factors, their ranges re-fitted, are kept only when their quantized
  // training-set error is below the closed form's (static ranges let QAT drift the latents out of
  // range); otherwise the closed form (the plan's job, init) comes back. Decided on the training
  // split alone.
  void settle_codes(JobState& s, size_t i) {
    if (s.job.codes.empty() || s.step == 0) return;
    JobState trained = s;
    trainer_.refit_codes(trained);
    const JobState closed = trainer_.init(jobs_[i]);
    const double e_trained = trainer_.relative_error(trained, "train", true);
    const double e_closed = trainer_.relative_error(closed, "train", true);
    const bool keep = e_trained < e_closed;
    s.A = keep ? trained.A : closed.A;
    s.B = keep ? trained.B : closed.B;
    s.job.codes = keep ? trained.job.codes : closed.job.codes;
    log::get("trainer")->info(
        "{}: quantized training error {:.6g} trained, {:.6g} closed form: "
        "keeping the {}",
        jobs_[i].name(), e_trained, e_closed, keep ? "trained factors" : "closed form");
  }

  void evaluate_job(JobState& s, size_t i) {
    settle_codes(s, i);
    s.train_error = trainer_.relative_error(s, "train", false);
    s.holdout_error_q = trainer_.relative_error(s, "holdout", true);
    s.holdout_error = trainer_.relative_error(s, "holdout", false);
    add_time(s);
    log::get("trainer")->info("{}: done, held-out error {:.6g} (quantized {:.6g})", jobs_[i].name(),
                              s.holdout_error, s.holdout_error_q);
  }

  // The wall time since the last call (or the job's start here) goes to the job.
  void add_time(JobState& s) {
    const auto now = Clock::now();
    s.seconds += std::chrono::duration<double>(now - job_clock_).count();
    job_clock_ = now;
  }

  LayerTrainer& trainer_;
  const std::vector<LayerJob>& jobs_;
  const std::vector<size_t>& my_jobs_;
  std::map<size_t, JobState>& states_;
  Coordinator& coord_;
  const DataParallelSlice& slice_;
  const Clock::time_point run_start_;
  Clock::time_point job_clock_;
};

// ---- share

// The scalars of a finished job, as the typed value its owner sends every rank (CBOR: every
// double arrives bit for bit).
struct JobSummary {
  size_t job = 0;  // index in the plan
  int64_t step = 0, total_steps = 0, data_position = 0;
  double floor = 0, last_loss = 0, train_error_init = 0, holdout_error_init_q = 0, train_error = 0,
         holdout_error_q = 0, holdout_error = 0, seconds = 0;
  std::vector<ChannelCode> codes;  // waterfill: re-fitted after training
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(JobSummary, job, step, total_steps, data_position, floor,
                                   last_loss, train_error_init, holdout_error_init_q, train_error,
                                   holdout_error_q, holdout_error, seconds, codes)

JobSummary summary_of(size_t job, const JobState& s) {
  return {job,
          s.step,
          s.total_steps,
          s.data_position,
          s.floor,
          s.last_loss,
          s.train_error_init,
          s.holdout_error_init_q,
          s.train_error,
          s.holdout_error_q,
          s.holdout_error,
          s.seconds,
          s.job.codes};
}

void apply_summary(const JobSummary& m, JobState& s) {
  s.step = m.step;
  s.total_steps = m.total_steps;
  s.data_position = m.data_position;
  s.floor = m.floor;
  s.last_loss = m.last_loss;
  s.train_error_init = m.train_error_init;
  s.holdout_error_init_q = m.holdout_error_init_q;
  s.train_error = m.train_error;
  s.holdout_error_q = m.holdout_error_q;
  s.holdout_error = m.holdout_error;
  s.seconds = m.seconds;
  s.job.codes = m.codes;
}

// Every rank learns the scalars of the jobs it does not own (one allgather of the owners'
// summaries) and gets zero tensors of the right shapes for their factors.
void receive_summaries(const std::vector<LayerJob>& jobs, const Placement& placement,
                       const model::ModelConfig& model, comm::Communicator& comm,
                       std::vector<JobState>& all) {
  const int me = comm.rank();
  std::vector<JobSummary> mine;
  for (size_t i = 0; i < jobs.size(); ++i) {
    if (placement.leader_of(i) == me) mine.push_back(summary_of(i, all[i]));
  }
  const auto by_rank = comm::allgather_values(comm, mine);
  const int64_t H = model.hidden_size, D = model.kv_dim();
  for (int r = 0; r < comm.size(); ++r) {
    if (r == me) continue;
    for (const JobSummary& m : by_rank[static_cast<size_t>(r)]) {
      CSKV_CHECK(
          m.job < jobs.size() && placement.leader_of(m.job) == r,
          "train: rank " << r << " sent the summary of job " << m.job << ", which it does not own");
      JobState& s = all[m.job];
      s.job = jobs[m.job];
      apply_summary(m, s);  // after the plan's job: its codes are the owner's
      s.A = at::zeros({H, s.job.rank}, at::kFloat);
      s.B = at::zeros({s.job.rank, D}, at::kFloat);
      s.eigenvalues = at::zeros({D}, at::kDouble);
    }
  }
}

// Every finished job travels from its owner to all ranks, bit for bit, in job order.
std::vector<JobState> share_states(const std::vector<LayerJob>& jobs,
                                   const std::map<size_t, JobState>& states,
                                   const Placement& placement, const model::ModelConfig& model,
                                   comm::Communicator& comm) {
  const int me = comm.rank();
  std::vector<JobState> all(jobs.size());
  for (size_t i = 0; i < jobs.size(); ++i) {
    if (placement.leader_of(i) == me) all[i] = states.at(i);
  }
  if (comm.size() == 1) return all;
  receive_summaries(jobs, placement, model, comm, all);
  // The AdamW moments stay with the owner (they live on in the checkpoint): at 7B scale they
  // are two thirds of the bytes and no rank needs another's.
  for (size_t i = 0; i < jobs.size(); ++i) {
    const int owner = placement.leader_of(i);
    for (at::Tensor* t : {&all[i].A, &all[i].B, &all[i].eigenvalues}) {
      if (owner == me) *t = t->contiguous();
      comm.broadcast(*t, owner);
    }
  }
  return all;
}

// ---- write

// The factors in the HF Linear layout with the quantization settings (checkpoint/compressor_file).
void write_factors(const std::string& path, const std::vector<JobState>& states,
                   const model::ModelConfig& model, const std::string& weights_fingerprint,
                   const TrainConfig& cfg) {
  checkpoint::write_trained_compressor(path, states, model.hash(), cfg,
                                       {{"model_weights_fingerprint", weights_fingerprint}});
}

// One rank's train stage: the plan (made alike on every rank, no communication but the group
// split) and the phases that follow it, each filling its part of the result.
class TrainStage {
 public:
  TrainStage(const TrainRunOptions& o, comm::Communicator& comm)
      : o_(o),
        comm_(comm),
        model_(model::load_config(o.model_dir)),
        weights_(std::make_shared<model::SafetensorsModel>(
            model::SafetensorsModel::open_dir(o.model_dir))),
        fingerprint_(model_fingerprint(o, model_, *weights_)),
        device_(device::select(o.device, comm.local_rank())),
        trainer_(o.cfg, model_, weights_, o.acts_dir,
                 trainer::TrainDevice{device_, o.resident, o.resident_share, std::nullopt}),
        jobs_(plan_widths(o, plan_jobs(o, model_, *weights_), trainer_, model_, comm)),
        policy_(checkpoint_policy(o, resolved_config_json(o, model_, fingerprint_))),
        // A job's numbers depend only on the job (its data, seed and the fixed thread count),
        // never on which rank or how many ranks (dp = 1).
        costs_(job_costs(jobs_, trainer_, model_, o.cfg)),
        ranks_(assign_ranks(costs_.costs, o.dp, comm, device_)) {
    if (comm.rank() == 0) {
      for (const auto& g : costly_groupings(model_, o.cfg, jobs_)) {
        log::get("trainer")->warn("{}", costly_grouping_message(g));
      }
    }
  }

  // Continues from the newest complete step, if there is one: this group's saved states.
  void resume() {
    const std::optional<int64_t> step = find_resume_step(policy_, comm_);
    if (!step) return;
    states_ = load_resumed_jobs(o_.ckpt_dir, *step, jobs_, ranks_.my_jobs);
    result_.resumed_from = *step;
    log::get("trainer")->info("resuming from {} ({} of this rank's {} job(s) started there)",
                              checkpoint::step_dir(o_.ckpt_dir, *step), states_.size(),
                              ranks_.my_jobs.size());
  }

  // Trains this group's jobs with collective saves; false after a stop (the state is saved).
  bool work() {
    comm::Communicator* group = ranks_.group.get();
    const Placement& placement = ranks_.placement;
    const DataParallelSlice slice{placement.my_index, placement.dp, [group](at::Tensor& t) {
                                    comm::allreduce_sum_on_device(*group, t);
                                  }};
    progress_.emplace("train", "steps", costs_.all_steps, comm_.rank() == 0);
    progress_->set_start(std::max<int64_t>(0, result_.resumed_from));
    Coordinator coord(policy_, comm_, group, placement, states_, ranks_.my_jobs,
                      result_.resumed_from, *progress_);
    const auto t_run = Clock::now();
    JobLoop(trainer_, jobs_, ranks_.my_jobs, states_, coord, slice, t_run).run();
    if (!coord.stopped()) progress_->finish();
    result_.saves = coord.saves();
    result_.save_seconds = coord.save_seconds();
    result_.last_step = coord.last_saved();
    result_.train_seconds = std::chrono::duration<double>(Clock::now() - t_run).count();
    if (!coord.stopped()) return true;
    result_.interrupted = true;
    const int sig = stop_signal();
    log::get("trainer")->warn(
        "stopping on {}: checkpoint {} written; rerun the same command to resume",
        sig ? stop_signal_name(sig) : "a peer's stop signal",
        checkpoint::step_dir(o_.ckpt_dir, coord.last_saved()));
    return false;
  }

  // Every rank gets every job's state and the run's metrics.
  void share() {
    result_.states = share_states(jobs_, states_, ranks_.placement, model_, comm_);
    std::vector<JobMetrics> metrics;
    for (const auto& s : result_.states) metrics.push_back(metrics_of(s, o_.cfg));
    result_.metrics = summarize(model_, o_.cfg, metrics, o_.context);
    result_.factors_path = o_.ckpt_dir + "/compressor.safetensors";
  }

  // Rank 0 writes the factors, metrics.json and metrics.md; everyone waits for them.
  void write() {
    if (comm_.rank() == 0) {
      fs::create_directories(o_.ckpt_dir);
      write_factors(result_.factors_path, result_.states, model_, fingerprint_, o_.cfg);
      files::write_file_atomic(o_.ckpt_dir + "/metrics.json", metrics_json(result_.metrics) + "\n");
      files::write_file_atomic(o_.ckpt_dir + "/metrics.md", metrics_markdown(result_.metrics));
    }
    comm_.barrier();
    const TrainRunResult& r = result_;
    log::get("trainer")->info(
        "trained {} job(s) ({} on this rank of {}, {} rank(s) per job) in {:.1f} s; {} "
        "checkpoint(s) in {:.2f} s ({:.1f}%); factors in {}",
        jobs_.size(), ranks_.my_jobs.size(), comm_.size(), ranks_.placement.dp, r.train_seconds,
        r.saves, r.save_seconds, 100.0 * r.save_seconds / std::max(r.train_seconds, 1e-9),
        r.factors_path);
  }

  TrainRunResult take_result() { return std::move(result_); }

 private:
  const TrainRunOptions& o_;
  comm::Communicator& comm_;
  const model::ModelConfig model_;
  const std::shared_ptr<model::SafetensorsModel> weights_;
  const std::string fingerprint_;  // model::weights_fingerprint of weights_
  const at::Device device_;        // this rank's
  LayerTrainer trainer_;
  const std::vector<LayerJob> jobs_;
  const CheckpointPolicy policy_;
  const JobCosts costs_;
  const RankAssignment ranks_;
  std::map<size_t, JobState> states_;  // this group's started jobs
  std::optional<ProgressMeter> progress_;
  TrainRunResult result_;
};

}  // namespace

void validate_train_settings(const TrainRunOptions& o, const model::ModelConfig& model,
                             int64_t captured_seq_len) {
  validate_options(o);
  if (o.budget <= 0 && o.cfg.quant == QuantMode::kUniform) {
    for (const LayerJob& job : density_jobs(o, model)) {
      const int64_t D = model.kv_dim();
      CSKV_CHECK_USAGE(job.rank >= 1 && job.rank <= D,
                       job.name() << ": rank " << job.rank << " outside [1, D = " << D << "]");
      validate_quant_config(job_quant_config(o.cfg, model, job), job.rank, job.name());
    }
  }
  const QuantConfig key = job_quant_config(o.cfg, model, {0, KvKind::kKey, 1});
  if (!uses_channel_windows(key) || key.bits >= 16) return;
  CSKV_CHECK_USAGE(
      o.cfg.batch_tokens % key.window == 0,
      "--batch-tokens " << o.cfg.batch_tokens << " is not a multiple of --window " << key.window);
  CSKV_CHECK_USAGE(captured_seq_len % key.window == 0,
                   "the captured seq_len " << captured_seq_len << " is not a multiple of --window "
                                           << key.window);
}

TrainRunResult run_training(const TrainRunOptions& o) {
  comm::LocalCommunicator local;
  return run_training(o, local);
}

// validate → plan → (lock, check the outputs) → resume → work → share → write
TrainRunResult run_training(const TrainRunOptions& o, comm::Communicator& comm) {
  validate_options(o);
  verify_capture_checksums(o.acts_dir, comm);  // once per run: every epoch reads these bytes
  TrainStage stage(o, comm);
  const auto lock = lock_output_dir(comm, o.ckpt_dir, "--ckpt-dir");  // held until the end
  check_train_outputs(o, comm);
  stage.resume();
  if (stage.work()) {
    stage.share();
    stage.write();
  }
  return stage.take_result();
}

}  // namespace cskv::pipeline
