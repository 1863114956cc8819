// The training run: job planning (density or budget), placement on rank groups, the job loop
// with progress, rounds of collective checkpoints and stops, resume, the held-out evaluation and
// the written factors + metrics.
#include "pipeline/train.h"

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "checkpoint/compressor_file.h"
#include "checkpoint/rank_checkpoint.h"
#include "checkpoint/resume_config.h"
#include "checkpoint/step_manifest.h"
#include "comm/local_communicator.h"
#include "common/error.h"
#include "common/log.h"
#include "common/progress.h"
#include "common/stop_signal.h"
#include "data/atomic_file.h"
#include "data/layer_stats.h"
#include "model/safetensors.h"
#include "trainer/rank_allocation.h"
#include "trainer/schedule.h"

namespace cskv::pipeline {

using namespace cskv::trainer;  // the stage is built from trainer/ throughout

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::vector<LayerJob> plan_jobs(const TrainRunOptions& o, const model::ModelConfig& model,
                                const model::SafetensorsModel& weights) {
  const auto header = data::read_stats_header(o.acts_dir + "/stats.h5", model.hash());
  std::vector<int64_t> layers = o.layers.empty() ? header.layers : o.layers;
  for (const int64_t l : layers) {
    CSKV_CHECK_USAGE(
        std::find(header.layers.begin(), header.layers.end(), l) != header.layers.end(),
        "--layers: layer " << l << " was not captured in " << o.acts_dir);
  }
  std::vector<LayerJob> jobs;
  const int64_t D = model.kv_dim();
  auto log = log::get("trainer");
  if (o.budget > 0) {
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

std::string resolved_config_json(const TrainRunOptions& o, const model::ModelConfig& model) {
  const auto& c = o.cfg;
  nlohmann::json j;
  j["model_config_hash"] = model.hash();
  j["acts"] = fs::absolute(o.acts_dir).string();
  j["layers"] = o.layers;
  j["k_density"] = o.k_density;
  j["v_density"] = o.v_density;
  j["budget"] = o.budget;
  j["rank_multiple"] = o.rank_multiple;
  j["init"] = init_method_name(c.init);
  j["asvd_alpha"] = c.asvd_alpha;
  j["rotation"] = c.rotate_hadamard ? "hadamard" : "none";
  j["k_bits"] = c.k_bits;
  j["v_bits"] = c.v_bits;
  j["group_size"] = c.group_size;
  j["window"] = c.window;
  j["quant_compat"] = c.quant_compat_cskv ? "cskv" : "none";
  j["lr"] = c.lr;
  j["warmup"] = c.warmup;
  j["steps"] = c.steps;
  j["epochs"] = c.epochs;
  j["batch_tokens"] = c.batch_tokens;
  j["clip"] = c.clip;
  j["seed"] = c.seed;
  j["threads"] = o.threads;
  return j.dump();
}

namespace {

// The scalars of a job, as exact text (hex floats) for broadcasting.
std::string encode_job(const JobState& s) {
  char buf[1024];
  std::snprintf(buf, sizeof buf, "%lld %lld %lld %a %a %a %a %a %a %a %a",
                static_cast<long long>(s.step), static_cast<long long>(s.total_steps),
                static_cast<long long>(s.data_position), s.floor, s.last_loss, s.train_error_init,
                s.holdout_error_init_q, s.train_error, s.holdout_error_q, s.holdout_error,
                s.seconds);
  return buf;
}

void decode_job(const std::string& text, JobState& s) {
  long long step = 0, total = 0, pos = 0;
  const int n =
      std::sscanf(text.c_str(), "%lld %lld %lld %la %la %la %la %la %la %la %la", &step, &total,
                  &pos, &s.floor, &s.last_loss, &s.train_error_init, &s.holdout_error_init_q,
                  &s.train_error, &s.holdout_error_q, &s.holdout_error, &s.seconds);
  CSKV_CHECK(n == 11, "train: malformed job summary from its owner rank: '" << text << "'");
  s.step = step;
  s.total_steps = total;
  s.data_position = pos;
}

JobMetrics metrics_of(const JobState& s, const TrainConfig& cfg) {
  JobMetrics m;
  m.job = s.job;
  m.bits = s.job.kind == KvKind::kKey ? cfg.k_bits : cfg.v_bits;
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

std::string encode_entry(const checkpoint::RankFileEntry& e) {
  return std::to_string(e.rank) + " " + std::to_string(e.bytes) + " " + e.checksum + " " + e.file;
}

checkpoint::RankFileEntry decode_entry(const std::string& text) {
  checkpoint::RankFileEntry e;
  std::istringstream in(text);
  in >> e.rank >> e.bytes >> e.checksum >> e.file;
  CSKV_CHECK(!in.fail(), "train: malformed checkpoint entry from a rank: '" << text << "'");
  return e;
}

// How the ranks share the jobs: groups of `dp` consecutive ranks; job i belongs to group
// owner_group[i] (LPT by cost); ranks past groups * dp have no group (they only take part in the
// collectives).
struct Placement {
  int dp = 1;
  int groups = 1;
  std::vector<int> owner_group;
  int my_group = -1;
  int my_index = 0;  // rank within its group; 0 = the leader, who writes the group's jobs
  int leader_of(size_t job) const { return owner_group[job] * dp; }
};

Placement place_jobs(const std::vector<double>& costs, int requested_dp, int world, int rank) {
  Placement p;
  const int jobs = static_cast<int>(costs.size());
  CSKV_CHECK_USAGE(requested_dp >= 0 && requested_dp <= world,
                   "--dp: expected 0 (auto) or 1.." << world << " (the number of ranks), found "
                                                    << requested_dp);
  p.dp = requested_dp > 0 ? requested_dp : (world > jobs && jobs > 0 ? world / jobs : 1);
  p.groups = world / p.dp;
  p.owner_group = assign_jobs_lpt(costs, p.groups);
  if (rank < p.groups * p.dp) {
    p.my_group = rank / p.dp;
    p.my_index = rank % p.dp;
  }
  return p;
}

// The collective part of the job loop: rounds, saves and stops. Every rank calls point() at the
// same sequence of places within its group (after each step, after init, after evaluation);
// when a round is over (round_seconds, or a local reason to save), all ranks meet in one
// allreduce [save wanted, stop signal, unfinished jobs, Σ steps] and save together when anyone
// asked for it. Idle ranks call point(false, true) until everything is finished.
class Coordinator {
 public:
  Coordinator(const TrainRunOptions& o, comm::Communicator& world, comm::Communicator* group,
              const Placement& placement, std::map<size_t, JobState>& states,
              const std::vector<size_t>& my_jobs, std::string config_json, int64_t last_saved,
              ProgressMeter& progress)
      : o_(o),
        progress_(progress),
        world_(world),
        group_(group),
        placement_(placement),
        states_(states),
        my_jobs_(my_jobs),
        config_json_(std::move(config_json)),
        last_saved_(last_saved),
        round_start_(Clock::now()) {}

  // Returns false once the run must stop (a stop signal reached some rank; state saved).
  // save_wanted: this rank has a reason to save (a job finished); end_round: meet the others
  // now without one (an idle rank waiting for the rest).
  bool point(bool save_wanted = false, bool end_round = false) {
    if (save_wanted) save_wanted_ = true;
    const bool due =
        end_round || save_wanted_ || stop_signal() != 0 ||
        (o_.save_every > 0 && steps_since_save_ >= o_.save_every) ||
        std::chrono::duration<double>(Clock::now() - round_start_).count() >= o_.round_seconds;
    if (!group_decides(due)) return true;
    at::Tensor v = at::zeros({4}, at::TensorOptions().dtype(at::kDouble));
    auto* d = v.data_ptr<double>();
    const bool leader = placement_.my_group >= 0 && placement_.my_index == 0;
    d[0] = (save_wanted_ || (o_.save_every > 0 && steps_since_save_ >= o_.save_every)) ? 1 : 0;
    d[1] = stop_signal() != 0 ? 1 : 0;
    if (leader) {
      for (const size_t i : my_jobs_) {
        const auto it = states_.find(i);
        d[2] += (it == states_.end() || !it->second.finished()) ? 1 : 0;
        if (it != states_.end()) d[3] += static_cast<double>(it->second.step);
      }
    }
    world_.allreduce_sum(v);
    round_start_ = Clock::now();
    save_wanted_ = false;
    unfinished_ = static_cast<int64_t>(d[2]);
    const int64_t step_sum = static_cast<int64_t>(d[3]);
    progress_.update(step_sum);
    if (d[1] > 0) {
      stopped_ = true;
      save(step_sum);
      return false;
    }
    if (d[0] > 0 || unfinished_ == 0) save(step_sum);
    return true;
  }

  void count_step() { ++steps_since_save_; }
  bool all_finished() const { return unfinished_ == 0; }
  bool stopped() const { return stopped_; }
  int64_t last_saved() const { return last_saved_; }
  int saves() const { return saves_; }
  double save_seconds() const { return save_seconds_; }

 private:
  // In a data-parallel group the leader's clock decides; the members follow (one broadcast).
  bool group_decides(bool due) {
    if (!group_ || group_->size() == 1) return due;
    at::Tensor flag = at::full({1}, due ? 1.0f : 0.0f, at::TensorOptions().dtype(at::kFloat));
    group_->broadcast(flag, 0);
    return flag.item<float>() > 0;
  }

  // Checkpoint step `step` (= Σ steps of all jobs): every rank writes its file (group leaders
  // hold their jobs, everyone else an empty file), rank 0 gathers the entries and writes the
  // manifest last, then prunes.
  void save(int64_t step) {
    if (step == last_saved_) return;  // nothing changed since the last save
    const auto t0 = Clock::now();
    std::vector<JobState> mine;
    if (placement_.my_group >= 0 && placement_.my_index == 0) {
      for (const size_t i : my_jobs_) {
        const auto it = states_.find(i);
        if (it != states_.end()) mine.push_back(it->second);
      }
    }
    const int me = world_.rank();
    if (me == 0) {  // a stale manifest of a step this run passes again (after a fallback)
      std::error_code ec;
      std::filesystem::remove(checkpoint::step_manifest_path(o_.ckpt_dir, step), ec);
    }
    const auto entry = checkpoint::write_rank_checkpoint(o_.ckpt_dir, step, me, mine, config_json_);
    inject_fault("after-rank-file");
    const auto all = world_.gather_bytes(encode_entry(entry), 0);
    if (me == 0) {
      std::vector<checkpoint::RankFileEntry> entries;
      for (const auto& text : all) entries.push_back(decode_entry(text));
      checkpoint::write_step_manifest(o_.ckpt_dir, step, world_.size(), entries, config_json_);
      checkpoint::prune_steps(o_.ckpt_dir, o_.keep, /*verify_checksums=*/false);
    }
    // Nobody goes on (or exits, e.g. with 75 after a stop: mpirun would kill the rest) before the
    // step is complete on disk.
    world_.barrier();
    last_saved_ = step;
    steps_since_save_ = 0;
    ++saves_;
    const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    save_seconds_ += seconds;
    log::get("trainer")->debug("checkpoint step {} written in {:.3f} s", step, seconds);
  }

  // Test hook (documented in README, "Testing the checkpoints"): CSKV_FAULT=after-rank-file:<n>
  // kills this process with SIGKILL right after it wrote its rank file of the n-th save, before
  // the manifest — a crash in the middle of a checkpoint.
  void inject_fault(const char* where) {
    static const char* fault = std::getenv("CSKV_FAULT");
    if (!fault) return;
    const std::string spec = fault, prefix = std::string(where) + ":";
    if (spec.rfind(prefix, 0) != 0) return;
    if (std::stoi(spec.substr(prefix.size())) == saves_ + 1) {
      log::get("trainer")->warn("CSKV_FAULT={}: killing this process", spec);
      std::raise(SIGKILL);
    }
  }

  const TrainRunOptions& o_;
  ProgressMeter& progress_;
  comm::Communicator& world_;
  comm::Communicator* group_;
  const Placement& placement_;
  std::map<size_t, JobState>& states_;
  const std::vector<size_t>& my_jobs_;
  std::string config_json_;
  int64_t last_saved_;
  Clock::time_point round_start_;
  int64_t steps_since_save_ = 0;
  bool save_wanted_ = false;
  bool stopped_ = false;
  int64_t unfinished_ = -1;
  int saves_ = 0;
  double save_seconds_ = 0;
};

// Rank 0 looks for the newest complete step and checks its config; every rank learns the
// verdict (a step, none, or the error everyone throws).
int64_t find_resume_step(const TrainRunOptions& o, const std::string& config_json,
                         comm::Communicator& comm) {
  std::string verdict;
  if (comm.rank() == 0) {
    try {
      const auto search = checkpoint::search_latest_complete_step(o.ckpt_dir);
      if (search.step) {
        const auto manifest = checkpoint::read_step_manifest(o.ckpt_dir, *search.step);
        checkpoint::check_resume_config(manifest.config_json, config_json, o.ckpt_dir);
        verdict = "S" + std::to_string(*search.step);
      } else if (o.require_resume) {
        verdict = "E" + checkpoint::no_complete_checkpoint_message(o.ckpt_dir);
      } else {
        verdict = "N";
      }
    } catch (const Error& e) {
      verdict = "E" + e.message();
    }
  }
  comm.broadcast_bytes(verdict, 0);
  if (verdict[0] == 'E') throw Error(ErrorKind::kInput, verdict.substr(1), {}, true);
  return verdict[0] == 'S' ? std::stoll(verdict.substr(1)) : -1;
}

}  // namespace

TrainRunResult run_training(const TrainRunOptions& o) {
  comm::LocalCommunicator local;
  return run_training(o, local);
}

TrainRunResult run_training(const TrainRunOptions& o, comm::Communicator& comm) {
  CSKV_CHECK_USAGE(o.save_every >= 0, "--save-every: expected >= 0, found " << o.save_every);
  CSKV_CHECK_USAGE(o.keep >= 1, "--keep: expected >= 1, found " << o.keep);
  const model::ModelConfig model = model::load_config(o.model_dir);
  auto weights =
      std::make_shared<model::SafetensorsModel>(model::SafetensorsModel::open_dir(o.model_dir));
  const auto jobs = plan_jobs(o, model, *weights);
  LayerTrainer trainer(o.cfg, model, weights, o.acts_dir);
  auto log = log::get("trainer");
  const std::string config_json = resolved_config_json(o, model);
  // Every rank computes the same placement; a job's numbers depend only on the job (its data,
  // seed and the fixed thread count), never on which rank or how many ranks (dp = 1).
  std::vector<double> costs;
  int64_t all_steps = 0;  // of every job: the progress total
  for (const auto& j : jobs) {
    const int64_t steps = trainer.total_steps(j);  // reads the capture manifest: once per job
    all_steps += steps;
    costs.push_back(job_cost(j, model.hidden_size, model.kv_dim(), steps, o.cfg.batch_tokens));
  }
  const int me = comm.rank();
  const Placement placement = place_jobs(costs, o.dp, comm.size(), me);
  std::unique_ptr<comm::Communicator> group;
  if (placement.dp > 1) {
    group = comm.split(placement.my_group >= 0 ? placement.my_group : placement.groups + me, me);
  }
  if (me == 0 && placement.groups * placement.dp < comm.size()) {
    log->warn("{} rank(s) idle: {} ranks do not divide into groups of {}",
              comm.size() - placement.groups * placement.dp, comm.size(), placement.dp);
  }
  std::vector<size_t> my_jobs;
  for (size_t i = 0; i < jobs.size(); ++i) {
    if (placement.owner_group[i] == placement.my_group) my_jobs.push_back(i);
  }

  TrainRunResult result;
  std::map<size_t, JobState> states;  // this group's started jobs
  const int64_t resume_step = find_resume_step(o, config_json, comm);
  if (resume_step >= 0) {
    auto saved = checkpoint::load_step(o.ckpt_dir, resume_step);
    int found = 0;
    for (const size_t i : my_jobs) {
      const auto it = saved.find({jobs[i].layer, jobs[i].kind});
      if (it == saved.end()) continue;
      CSKV_CHECK_INPUT(it->second.job.rank == jobs[i].rank,
                       o.ckpt_dir << ": step " << resume_step << " holds " << jobs[i].name()
                                  << " at rank " << it->second.job.rank << ", the plan says "
                                  << jobs[i].rank);
      states[i] = std::move(it->second);
      ++found;
    }
    result.resumed_from = resume_step;
    log->info("resuming from {} ({} of this rank's {} job(s) started there)",
              checkpoint::step_dir(o.ckpt_dir, resume_step), found, my_jobs.size());
  }

  const DataParallelSlice slice{placement.my_index, placement.dp,
                                [&](at::Tensor& t) { group->allreduce_sum(t); }};
  ProgressMeter progress("train", "steps", all_steps, me == 0);
  progress.set_start(std::max<int64_t>(0, resume_step));
  Coordinator coord(o, comm, group.get(), placement, states, my_jobs, config_json, resume_step,
                    progress);
  const auto t_run = Clock::now();
  size_t done = 0;
  bool stopped = false;
  for (const size_t i : my_jobs) {
    if (stopped) break;
    ++done;
    auto it = states.find(i);
    if (it != states.end() && it->second.finished()) continue;
    auto t0 = Clock::now();
    if (it == states.end()) {
      JobState s = trainer.init(jobs[i]);
      s.train_error_init = trainer.relative_error(s, "train", false);
      s.holdout_error_init_q = trainer.relative_error(s, "holdout", true);
      log->info("{} (rank {}): 16-bit floor {:.6g}, init train error {:.6g}", jobs[i].name(),
                jobs[i].rank, s.floor, s.train_error_init);
      it = states.emplace(i, std::move(s)).first;
      if (!coord.point()) break;
    } else if (it->second.step > 0) {
      log->info("{}: continuing at step {}/{}", jobs[i].name(), it->second.step,
                it->second.total_steps);
    }
    JobState& s = it->second;
    const int64_t start_step = s.step;
    auto last_log = Clock::now();
    auto add_time = [&] {
      const auto now = Clock::now();
      s.seconds += std::chrono::duration<double>(now - t0).count();
      t0 = now;
    };
    trainer.train(
        s, s.total_steps,
        [&](const JobState& st) {
          coord.count_step();
          const auto now = Clock::now();
          if (std::chrono::duration<double>(now - last_log).count() >= 2.0 ||
              st.step == st.total_steps) {
            last_log = now;
            const double el = std::chrono::duration<double>(now - t_run).count();
            const double rate = static_cast<double>(st.step - start_step) / std::max(el, 1e-9);
            log->debug("{}: step {}/{} loss {:.6g} ({:.1f} steps/s, ETA {:.0f} s; job {}/{} here)",
                       jobs[i].name(), st.step, st.total_steps, st.last_loss, rate,
                       static_cast<double>(st.total_steps - st.step) / std::max(rate, 1e-9), done,
                       my_jobs.size());
          }
          add_time();
          if (!coord.point()) {
            stopped = true;
            return false;
          }
          return true;
        },
        slice);
    if (stopped) break;
    if (s.step == s.total_steps && std::isnan(s.holdout_error)) {
      s.train_error = trainer.relative_error(s, "train", false);
      s.holdout_error_q = trainer.relative_error(s, "holdout", true);
      s.holdout_error = trainer.relative_error(s, "holdout", false);
      add_time();
      log->info("{}: done, held-out error {:.6g} (quantized {:.6g})", jobs[i].name(),
                s.holdout_error, s.holdout_error_q);
      if (!coord.point(/*save_wanted=*/true)) stopped = true;
    }
  }
  // Idle (or finished) ranks keep meeting the others until every job is done or a stop.
  while (!stopped && !coord.all_finished()) {
    if (!coord.point(/*save_wanted=*/false, /*end_round=*/true)) stopped = true;
  }
  if (!stopped) progress.finish();
  result.saves = coord.saves();
  result.save_seconds = coord.save_seconds();
  result.last_step = coord.last_saved();
  result.train_seconds = std::chrono::duration<double>(Clock::now() - t_run).count();
  if (stopped) {
    result.interrupted = true;
    const int sig = stop_signal();
    log->warn("stopping on {}: checkpoint {} written; rerun the same command to resume",
              sig ? stop_signal_name(sig) : "a peer's stop signal",
              checkpoint::step_dir(o.ckpt_dir, coord.last_saved()));
    return result;
  }

  // Every finished job travels from its owner to all ranks, bit for bit, in job order.
  std::vector<JobState> all(jobs.size());
  const int64_t H = model.hidden_size, D = model.kv_dim();
  for (size_t i = 0; i < jobs.size(); ++i) {
    JobState& s = all[i];
    const int owner = placement.leader_of(i);
    if (owner == me) s = states.at(i);
    if (comm.size() == 1) continue;
    std::string summary = owner == me ? encode_job(s) : std::string();
    comm.broadcast_bytes(summary, owner);
    if (owner != me) {
      const int64_t r = jobs[i].rank;
      s.job = jobs[i];
      decode_job(summary, s);
      s.A = at::zeros({H, r}, at::kFloat);
      s.B = at::zeros({r, D}, at::kFloat);
      s.eigenvalues = at::zeros({D}, at::kDouble);
    }
    // The AdamW moments stay with the owner (they live on in the checkpoint): at 7B scale they
    // are two thirds of the bytes and no rank needs another's.
    for (at::Tensor* t : {&s.A, &s.B, &s.eigenvalues}) {
      if (owner == me) *t = t->contiguous();
      comm.broadcast(*t, owner);
    }
  }
  std::vector<JobMetrics> metrics;
  for (const auto& s : all) metrics.push_back(metrics_of(s, o.cfg));
  result.states = std::move(all);
  result.metrics = summarize(model, o.cfg, metrics, o.context);
  result.factors_path = o.ckpt_dir + "/compressor.safetensors";
  if (me == 0) {
    fs::create_directories(o.ckpt_dir);
    model::NamedTensors tensors;
    for (const auto& s : result.states) {
      tensors.emplace_back(checkpoint::factor_name(s.job.layer, s.job.kind, 'a'), s.A.t().contiguous());
      tensors.emplace_back(checkpoint::factor_name(s.job.layer, s.job.kind, 'b'), s.B.t().contiguous());
    }
    // The quantization settings travel with the factors (as in a merged file), so `cskv eval`
    // can build the cache they were trained for.
    model::write_safetensors(result.factors_path, tensors,
                             {{"model_config_hash", model.hash()},
                              {"format", "cskv-1"},
                              {"k_bits", std::to_string(o.cfg.k_bits)},
                              {"v_bits", std::to_string(o.cfg.v_bits)},
                              {"group_size", std::to_string(o.cfg.group_size)},
                              {"window", std::to_string(o.cfg.window)},
                              {"quant_compat", o.cfg.quant_compat_cskv ? "cskv" : "none"}});
    data::write_file_atomic(o.ckpt_dir + "/metrics.json", metrics_json(result.metrics) + "\n");
    data::write_file_atomic(o.ckpt_dir + "/metrics.md", metrics_markdown(result.metrics));
  }
  comm.barrier();
  log->info(
      "trained {} job(s) ({} on this rank of {}, {} rank(s) per job) in {:.1f} s; {} "
      "checkpoint(s) in {:.2f} s ({:.1f}%); factors in {}",
      jobs.size(), my_jobs.size(), comm.size(), placement.dp, result.train_seconds, result.saves,
      result.save_seconds, 100.0 * result.save_seconds / std::max(result.train_seconds, 1e-9),
      result.factors_path);
  return result;
}

}  // namespace cskv::pipeline
