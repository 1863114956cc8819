// The train stage's coordinator: job placement, the rounds in which all ranks agree on saves and
// stops (with the sharded checkpoint save itself), and the collective search for a resume step.
#include "pipeline/coordinator.h"

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <system_error>
#include <utility>

#include <nlohmann/json.hpp>

#include "checkpoint/rank_checkpoint.h"
#include "checkpoint/resume_config.h"
#include "checkpoint/step_manifest.h"
#include "comm/collectives.h"
#include "common/error.h"
#include "common/log.h"
#include "trainer/schedule.h"

namespace cskv::pipeline {

using trainer::JobState;

std::vector<size_t> Placement::my_jobs() const {
  std::vector<size_t> mine;
  for (size_t i = 0; i < owner_group.size(); ++i) {
    if (owner_group[i] == my_group) mine.push_back(i);
  }
  return mine;
}

Placement place_jobs(const std::vector<double>& costs, int requested_dp, int world, int rank) {
  Placement p;
  const int jobs = static_cast<int>(costs.size());
  CSKV_CHECK_USAGE(requested_dp >= 0 && requested_dp <= world,
                   "--dp: expected 0 (auto) or 1.." << world << " (the number of ranks), found "
                                                    << requested_dp);
  p.dp = requested_dp > 0 ? requested_dp : (world > jobs && jobs > 0 ? world / jobs : 1);
  p.groups = world / p.dp;
  p.owner_group = trainer::assign_jobs_lpt(costs, p.groups);
  if (rank < p.groups * p.dp) {
    p.my_group = rank / p.dp;
    p.my_index = rank % p.dp;
  }
  return p;
}

Coordinator::Coordinator(CheckpointPolicy policy, comm::Communicator& world,
                         comm::Communicator* group, const Placement& placement,
                         std::map<size_t, JobState>& states, const std::vector<size_t>& my_jobs,
                         int64_t last_saved, ProgressMeter& progress)
    : policy_(std::move(policy)),
      progress_(progress),
      world_(world),
      group_(group),
      placement_(placement),
      states_(states),
      my_jobs_(my_jobs),
      last_saved_(last_saved),
      round_start_(Clock::now()) {}

bool Coordinator::point(bool save_wanted, bool end_round) {
  if (save_wanted) save_wanted_ = true;
  if (!group_decides(round_due(end_round))) return true;
  const RoundTotals totals = meet();
  progress_.update(totals.step_sum);
  if (totals.stop) {
    stopped_ = true;
    save(totals.step_sum);
    return false;
  }
  if (totals.save || unfinished_ == 0) save(totals.step_sum);
  return true;
}

bool Coordinator::save_every_due() const {
  return policy_.save_every > 0 && steps_since_save_ >= policy_.save_every;
}

bool Coordinator::round_due(bool end_round) const {
  return end_round || save_wanted_ || policy_.stop_source() != 0 || save_every_due() ||
         std::chrono::duration<double>(Clock::now() - round_start_).count() >=
             policy_.round_seconds;
}

// In a data-parallel group the leader's clock decides; the members follow (one broadcast).
bool Coordinator::group_decides(bool due) {
  if (!group_ || group_->size() == 1) return due;
  at::Tensor flag = at::full({1}, due ? 1.0f : 0.0f, at::TensorOptions().dtype(at::kFloat));
  group_->broadcast(flag, 0);
  return flag.item<float>() > 0;
}

// One allreduce of [save wanted, stop signal, unfinished jobs, Σ steps] (the last two counted by
// the group leaders); starts the next round.
Coordinator::RoundTotals Coordinator::meet() {
  at::Tensor v = at::zeros({4}, at::TensorOptions().dtype(at::kDouble));
  auto* d = v.data_ptr<double>();
  d[0] = (save_wanted_ || save_every_due()) ? 1 : 0;
  d[1] = policy_.stop_source() != 0 ? 1 : 0;
  if (placement_.leads()) {
    for (const size_t i : my_jobs_) {
      const auto it = states_.find(i);
      d[2] += (it == states_.end() || !it->second.finished()) ? 1 : 0;
      if (it != states_.end()) d[3] += static_cast<double>(it->second.step);
    }
  }
  world_.allreduce_sum(v);
  ++rounds_;
  round_start_ = Clock::now();
  save_wanted_ = false;
  unfinished_ = static_cast<int64_t>(d[2]);
  return {d[0] > 0, d[1] > 0, unfinished_, static_cast<int64_t>(d[3])};
}

// Checkpoint step `step` (= Σ steps of all jobs): every rank writes its file (group leaders
// hold their jobs, everyone else an empty file), rank 0 gathers the entries and writes the
// manifest last, then prunes.
void Coordinator::save(int64_t step) {
  if (step == last_saved_) return;  // nothing changed since the last save
  const auto t0 = Clock::now();
  std::vector<JobState> mine;
  if (placement_.leads()) {
    for (const size_t i : my_jobs_) {
      const auto it = states_.find(i);
      if (it != states_.end()) mine.push_back(it->second);
    }
  }
  const int me = world_.rank();
  const std::string& dir = policy_.ckpt_dir;
  if (me == 0) {  // a stale manifest of a step this run passes again (after a fallback)
    std::error_code ec;
    std::filesystem::remove(checkpoint::step_manifest_path(dir, step), ec);
  }
  const auto entry = checkpoint::write_rank_checkpoint(dir, step, me, mine, policy_.config_json);
  inject_fault("after-rank-file");
  const auto entries = comm::gather_values(world_, entry, 0);
  if (me == 0) {
    checkpoint::write_step_manifest(dir, step, world_.size(), entries, policy_.config_json);
    checkpoint::prune_steps(dir, policy_.keep, /*verify_checksums=*/false);
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
void Coordinator::inject_fault(const char* where) {
  static const char* fault = std::getenv("CSKV_FAULT");
  if (!fault) return;
  const std::string spec = fault, prefix = std::string(where) + ":";
  if (spec.rfind(prefix, 0) != 0) return;
  if (std::stoi(spec.substr(prefix.size())) == saves_ + 1) {
    log::get("trainer")->warn("CSKV_FAULT={}: killing this process", spec);
    std::raise(SIGKILL);
  }
}

namespace {

// --overwrite: every step directory goes (the run starts from step 0).
void delete_steps(const std::string& ckpt_dir, const std::vector<int64_t>& steps,
                  const std::string& why) {
  for (const int64_t step : steps) {
    const std::string dir = checkpoint::step_dir(ckpt_dir, step);
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
    CSKV_CHECK(!ec, dir << ": cannot remove: " << ec.message());
  }
  log::get("trainer")->warn(
      "--overwrite: deleted {} checkpoint step(s) of {} ({}); training starts "
      "from step 0",
      steps.size(), ckpt_dir, why);
}

// With no complete step: the steps that were complete once (they have a manifest) but cannot be
// read now. A fresh start would prune them, so they are refused, or deleted with --overwrite.
void refuse_unreadable_steps(const CheckpointPolicy& p) {
  std::vector<int64_t> unreadable;
  std::string reasons;
  for (const int64_t step : checkpoint::list_steps(p.ckpt_dir)) {
    std::error_code ec;
    if (!std::filesystem::exists(checkpoint::step_manifest_path(p.ckpt_dir, step), ec)) continue;
    const auto problem = checkpoint::check_step(p.ckpt_dir, step, /*verify_checksums=*/true);
    if (!problem) continue;
    unreadable.push_back(step);
    reasons += (reasons.empty() ? "" : "; ") + ("step " + std::to_string(step) + ": " + *problem);
  }
  if (unreadable.empty()) return;
  if (p.overwrite) return delete_steps(p.ckpt_dir, unreadable, "none could be read");
  CSKV_FAIL_INPUT(p.ckpt_dir << ": no checkpoint step can be read (" << reasons
                             << "); starting from step 0 would delete them, and cskv never "
                                "deletes a step it could not read: move them away to keep them, "
                                "or pass --overwrite to delete them and train from step 0");
}

// Rank 0's part of the resume search: the newest complete step when its config matches.
std::optional<int64_t> resumable_step(const CheckpointPolicy& p) {
  const auto search = checkpoint::search_latest_complete_step(p.ckpt_dir);
  if (search.step) {
    const auto manifest = checkpoint::read_step_manifest(p.ckpt_dir, *search.step);
    try {
      checkpoint::check_resume_config(manifest.config_json, p.config_json, p.ckpt_dir);
    } catch (const Error&) {
      if (!p.overwrite) throw;
      delete_steps(p.ckpt_dir, checkpoint::list_steps(p.ckpt_dir), "a run with other settings");
      return std::nullopt;
    }
    return search.step;
  }
  CSKV_CHECK_INPUT(!p.require_resume, checkpoint::no_complete_checkpoint_message(p.ckpt_dir));
  refuse_unreadable_steps(p);
  return std::nullopt;
}

}  // namespace

std::optional<int64_t> find_resume_step(const CheckpointPolicy& policy, comm::Communicator& comm) {
  return comm::root_decides<std::optional<int64_t>>(comm, [&] {
    try {
      return resumable_step(policy);
    } catch (const Error& e) {  // every rank throws it as an input error, without a location
      throw Error(ErrorKind::kInput, e.message(), {}, /*collective=*/true);
    }
  });
}

std::map<size_t, JobState> load_resumed_jobs(const std::string& ckpt_dir, int64_t step,
                                             const std::vector<trainer::LayerJob>& jobs,
                                             const std::vector<size_t>& my_jobs) {
  auto saved = checkpoint::load_step(ckpt_dir, step);
  std::map<size_t, JobState> states;
  for (const size_t i : my_jobs) {
    const auto it = saved.find({jobs[i].layer, jobs[i].kind});
    if (it == saved.end()) continue;
    CSKV_CHECK_INPUT(it->second.job.rank == jobs[i].rank,
                     ckpt_dir << ": step " << step << " holds " << jobs[i].name() << " at rank "
                              << it->second.job.rank << ", the plan says " << jobs[i].rank);
    std::vector<int> saved_widths, planned_widths;
    for (const auto& c : it->second.job.codes) saved_widths.push_back(c.bits);
    for (const auto& c : jobs[i].codes) planned_widths.push_back(c.bits);
    CSKV_CHECK_INPUT(it->second.job.channels == jobs[i].channels && saved_widths == planned_widths,
                     ckpt_dir << ": step " << step << " holds " << jobs[i].name()
                              << " with other kept channels or widths than the plan's");
    states[i] = std::move(it->second);
  }
  return states;
}

}  // namespace cskv::pipeline
