// The train stage's coordinator: where the jobs run (placement on groups of ranks), when all ranks
// save and stop together (rounds of one small allreduce), and which checkpoint step a run resumes.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "common/progress.h"
#include "common/stop_signal.h"
#include "trainer/layer_trainer.h"

namespace cskv::pipeline {

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
  // This rank leads a group (it saves the group's jobs and counts them in a round).
  bool leads() const { return my_group >= 0 && my_index == 0; }
  // The jobs of this rank's group, in job order (empty for a rank without a group).
  std::vector<size_t> my_jobs() const;
};

// Every rank computes the same placement from the job costs alone. requested_dp: ranks per job
// (0: 1, or world / jobs when there are more ranks than jobs); a usage error outside 0..world.
Placement place_jobs(const std::vector<double>& costs, int requested_dp, int world, int rank);

// What the save/stop rounds and the resume search need of a run.
struct CheckpointPolicy {
  std::string ckpt_dir;
  int64_t save_every = 500;    // optimizer steps of a rank between saves (0: none)
  int64_t keep = 2;            // complete steps kept
  double round_seconds = 1.0;  // how often the ranks meet
  bool require_resume = false;
  // Delete the steps instead of refusing them (other settings; unreadable with none readable).
  bool overwrite = false;
  std::string config_json;  // the resolved config: recorded in every step, checked on resume
  // Non-zero once a stop signal reached this rank (tests inject their own).
  std::function<int()> stop_source = &cskv::stop_signal;
};

// The collective part of the job loop: rounds, saves and stops. Every rank calls point() at the
// same sequence of places within its group (after each step, after init, after evaluation);
// when a round is over (round_seconds, or a local reason to save), all ranks meet in one
// allreduce [save wanted, stop signal, unfinished jobs, Σ steps] and save together when anyone
// asked for it. Idle ranks call point(false, true) until everything is finished.
class Coordinator {
 public:
  // states: this group's started jobs (the leader saves them); my_jobs: this group's jobs;
  // last_saved: the step resumed from (-1: none). group: the data-parallel group (null: dp 1).
  Coordinator(CheckpointPolicy policy, comm::Communicator& world, comm::Communicator* group,
              const Placement& placement, std::map<size_t, trainer::JobState>& states,
              const std::vector<size_t>& my_jobs, int64_t last_saved, ProgressMeter& progress);

  // Returns false once the run must stop (a stop signal reached some rank; state saved).
  // save_wanted: this rank has a reason to save (a job finished); end_round: meet the others
  // now without one (an idle rank waiting for the rest).
  bool point(bool save_wanted = false, bool end_round = false);

  void count_step() { ++steps_since_save_; }
  bool all_finished() const { return unfinished_ == 0; }
  bool stopped() const { return stopped_; }
  int64_t last_saved() const { return last_saved_; }
  int saves() const { return saves_; }
  double save_seconds() const { return save_seconds_; }
  int64_t rounds() const { return rounds_; }  // rounds this rank took part in

 private:
  using Clock = std::chrono::steady_clock;
  struct RoundTotals {
    bool save = false;
    bool stop = false;
    int64_t unfinished = 0;
    int64_t step_sum = 0;
  };
  bool round_due(bool end_round) const;
  bool save_every_due() const;
  bool group_decides(bool due);
  RoundTotals meet();
  void save(int64_t step);
  void inject_fault(const char* where);

  CheckpointPolicy policy_;
  ProgressMeter& progress_;
  comm::Communicator& world_;
  comm::Communicator* group_;
  const Placement& placement_;
  std::map<size_t, trainer::JobState>& states_;
  const std::vector<size_t>& my_jobs_;
  int64_t last_saved_;
  Clock::time_point round_start_;
  int64_t steps_since_save_ = 0;
  bool save_wanted_ = false;
  bool stopped_ = false;
  int64_t unfinished_ = -1;
  int64_t rounds_ = 0;
  int saves_ = 0;
  double save_seconds_ = 0;
};

// Rank 0 looks for the newest complete step of policy.ckpt_dir and checks its config; every rank
// returns the verdict: the step, nullopt (none), or the same input error on every rank (another
// config; no complete step while require_resume; no complete step but steps with a manifest that
// cannot be read, which a fresh start would prune: they are named, each with its reason). With
// policy.overwrite the refused steps are deleted instead and the run starts from step 0.
std::optional<int64_t> find_resume_step(const CheckpointPolicy& policy, comm::Communicator& comm);

// The saved states of `my_jobs` (indices into `jobs`) at `step`, whatever world size wrote it;
// jobs the step does not hold are absent. Input error when a saved job's rank differs from the
// plan.
std::map<size_t, trainer::JobState> load_resumed_jobs(const std::string& ckpt_dir, int64_t step,
                                                      const std::vector<trainer::LayerJob>& jobs,
                                                      const std::vector<size_t>& my_jobs);

}  // namespace cskv::pipeline
