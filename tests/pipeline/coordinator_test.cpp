// The train stage's coordinator on 1-5 in-process ranks: placement, stop and save rounds, resume
// on another world size, and a failing peer (tests/support/thread_communicator.h).
#include "pipeline/coordinator.h"

#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <algorithm>
#include <csignal>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "checkpoint/rank_checkpoint.h"
#include "checkpoint/step_manifest.h"
#include "comm/collectives.h"
#include "common/error.h"
#include "tests/support/test_support.h"
#include "tests/support/thread_communicator.h"

namespace cskv::pipeline {
namespace {

using trainer::JobState;
using trainer::KvKind;
using trainer::LayerJob;

constexpr int64_t kHidden = 16, kKvDim = 8;

// Job i of a plan: layer i / 2, K for even i; a seeded state as init would leave it.
LayerJob job_of(size_t i) {
  return {static_cast<int64_t>(i / 2), i % 2 == 0 ? KvKind::kKey : KvKind::kValue,
          static_cast<int64_t>(2 + i % 3)};
}

// Deterministic values without the global generator (the ranks are threads).
at::Tensor pattern(int64_t rows, int64_t cols, double offset) {
  return (at::arange(rows * cols, at::kFloat) * 0.01 + offset).reshape({rows, cols});
}

JobState make_state(size_t i, int64_t total_steps) {
  JobState s;
  s.job = job_of(i);
  const int64_t r = s.job.rank;
  const double o = static_cast<double>(i);
  s.A = pattern(kHidden, r, o);
  s.B = pattern(r, kKvDim, o + 0.5);
  s.m_A = pattern(kHidden, r, -o);
  s.v_A = pattern(kHidden, r, o + 0.25);
  s.m_B = pattern(r, kKvDim, -o - 0.5);
  s.v_B = pattern(r, kKvDim, o + 0.75);
  s.eigenvalues = at::linspace(1.0, 0.1, kKvDim, at::kDouble);
  s.total_steps = total_steps;
  s.floor = 0.125 + 1e-3 * o;
  return s;
}

CheckpointPolicy policy_for(const std::string& dir) {
  CheckpointPolicy p;
  p.ckpt_dir = dir;
  p.save_every = 0;     // saves only when a job finishes and on a stop
  p.round_seconds = 0;  // every point is a round: the ranks go in lock step
  p.config_json = R"({"seed":1})";
  p.stop_source = [] { return 0; };
  return p;
}

// One rank of a run: its placement, its group's states (all started) and a coordinator.
struct RankRun {
  Placement placement;
  std::vector<size_t> my_jobs;
  std::map<size_t, JobState> states;
  ProgressMeter progress{"train", "steps", 0, false};
  std::optional<Coordinator> coord;

  RankRun(const CheckpointPolicy& policy, comm::Communicator& comm,
          const std::vector<double>& costs, int64_t total_steps) {
    placement = place_jobs(costs, 1, comm.size(), comm.rank());
    my_jobs = placement.my_jobs();
    for (const size_t i : my_jobs) states[i] = make_state(i, total_steps);
    coord.emplace(policy, comm, nullptr, placement, states, my_jobs, -1, progress);
  }

  // Steps every job like the train stage does (a point after each step, a save-wanted point
  // once it is evaluated), then waits for the others.
  void drive() {
    for (const size_t i : my_jobs) {
      JobState& s = states.at(i);
      while (s.step < s.total_steps && !coord->stopped()) {
        ++s.step;
        coord->count_step();
        coord->point();
      }
      if (coord->stopped()) return;
      s.holdout_error = 0.5 / static_cast<double>(i + 1);
      coord->point(/*save_wanted=*/true);
    }
    while (!coord->stopped() && !coord->all_finished()) coord->point(false, true);
  }
};

void expect_same_state(const JobState& got, const JobState& want) {
  EXPECT_EQ(got.job.layer, want.job.layer);
  EXPECT_EQ(got.job.kind, want.job.kind);
  EXPECT_EQ(got.job.rank, want.job.rank);
  EXPECT_EQ(got.step, want.step);
  EXPECT_EQ(got.total_steps, want.total_steps);
  EXPECT_EQ(got.floor, want.floor);
  EXPECT_TRUE(at::equal(got.A, want.A));
  EXPECT_TRUE(at::equal(got.B, want.B));
  EXPECT_TRUE(at::equal(got.v_B, want.v_B));
  EXPECT_TRUE(at::equal(got.eigenvalues, want.eigenvalues));
}

TEST(CoordinatorPlacement, EveryJobOwnedOnceWithLptBalanceOnOneToFiveRanks) {
  const std::vector<double> costs = {5, 4, 3, 3, 2, 1};
  for (int world = 1; world <= 5; ++world) {
    std::vector<int> owners(costs.size(), 0);
    std::vector<double> load(static_cast<size_t>(world), 0);
    for (int rank = 0; rank < world; ++rank) {
      const Placement p = place_jobs(costs, 0, world, rank);
      EXPECT_EQ(p.dp, 1) << world;  // fewer ranks than jobs
      EXPECT_EQ(p.my_group, rank);
      EXPECT_TRUE(p.leads());
      for (const size_t i : p.my_jobs()) {
        ++owners[i];
        EXPECT_EQ(p.leader_of(i), rank);
        load[static_cast<size_t>(rank)] += costs[i];
      }
    }
    for (size_t i = 0; i < costs.size(); ++i) EXPECT_EQ(owners[i], 1) << "job " << i;
    const auto [lo, hi] = std::minmax_element(load.begin(), load.end());
    EXPECT_LE(*hi - *lo, 5.0) << world;  // LPT: within the largest job's cost
  }
  // Two groups: 5 | 4 → 3 to the lighter, 3 to the lighter, ... loads 9 and 9.
  EXPECT_EQ(place_jobs(costs, 1, 2, 0).owner_group, (std::vector<int>{0, 1, 1, 0, 1, 0}));
}

TEST(CoordinatorPlacement, DataParallelGroupsAndIdleRanks) {
  const std::vector<double> costs = {2, 1};
  // 5 ranks, 2 jobs: auto dp = 2, groups {0,1} {2,3}, rank 4 idle.
  for (int rank = 0; rank < 5; ++rank) {
    const Placement p = place_jobs(costs, 0, 5, rank);
    EXPECT_EQ(p.dp, 2);
    EXPECT_EQ(p.groups, 2);
    EXPECT_EQ(p.my_group, rank < 4 ? rank / 2 : -1);
    EXPECT_EQ(p.my_index, rank < 4 ? rank % 2 : 0);
    EXPECT_EQ(p.leads(), rank == 0 || rank == 2);
    EXPECT_EQ(p.my_jobs().size(), rank < 4 ? 1u : 0u);
  }
  EXPECT_EQ(place_jobs(costs, 0, 5, 0).leader_of(1), 2);
  // An explicit dp of 3 on 4 ranks: one group of 3 holds both jobs; rank 3 idle.
  const Placement p = place_jobs(costs, 3, 4, 1);
  EXPECT_EQ(p.groups, 1);
  EXPECT_EQ(p.my_jobs(), (std::vector<size_t>{0, 1}));
  EXPECT_FALSE(p.leads());
  EXPECT_EQ(place_jobs(costs, 3, 4, 3).my_group, -1);
  try {
    place_jobs(costs, 5, 4, 0);
    FAIL() << "expected a usage error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUsage);
    EXPECT_EQ(e.message(), "--dp: expected 0 (auto) or 1..4 (the number of ranks), found 5");
  }
}

TEST(CoordinatorRounds, AStopOnOneRankStopsEveryRankAtTheSameRoundAndSavesThem) {
  test::TempDir dir;
  const std::vector<double> costs = {1, 1, 1};
  std::mutex mu;
  std::vector<int64_t> rounds(3), saved(3), saves(3);
  test::run_ranks(3, [&](comm::Communicator& comm) {
    CheckpointPolicy policy = policy_for(dir.path());
    RankRun* self = nullptr;
    if (comm.rank() == 1) {  // SIGTERM reaches rank 1 once its job has done 5 steps
      policy.stop_source = [&self] { return self && self->states.at(1).step >= 5 ? SIGTERM : 0; };
    }
    RankRun run(policy, comm, costs, 20);
    self = &run;
    run.drive();
    EXPECT_TRUE(run.coord->stopped());
    std::lock_guard<std::mutex> lock(mu);
    const auto r = static_cast<size_t>(comm.rank());
    rounds[r] = run.coord->rounds();
    saved[r] = run.coord->last_saved();
    saves[r] = run.coord->saves();
  });
  EXPECT_EQ(rounds, (std::vector<int64_t>{5, 5, 5}));
  EXPECT_EQ(saved, (std::vector<int64_t>{15, 15, 15}));  // Σ steps: 5 per job
  EXPECT_EQ(saves, (std::vector<int64_t>{1, 1, 1}));
  EXPECT_EQ(checkpoint::check_step(dir.path(), 15), std::nullopt);
  EXPECT_EQ(checkpoint::read_step_manifest(dir.path(), 15).world_size, 3);
  for (int rank = 0; rank < 3; ++rank) {
    const auto jobs =
        checkpoint::read_rank_checkpoint(checkpoint::rank_file_path(dir.path(), 15, rank));
    ASSERT_EQ(jobs.size(), 1u);
    EXPECT_EQ(jobs[0].step, 5);
  }
}

TEST(CoordinatorRounds, ASaveRoundWritesEveryRankFileAndTheManifest) {
  test::TempDir dir;
  const std::vector<double> costs = {3, 2, 1};  // rank 0: job 0; rank 1: jobs 1, 2
  test::run_ranks(2, [&](comm::Communicator& comm) {
    RankRun run(policy_for(dir.path()), comm, costs, 2);
    run.drive();
    EXPECT_FALSE(run.coord->stopped());
    EXPECT_TRUE(run.coord->all_finished());
    // Round 3: jobs 0 and 1 finished (Σ 4); round 6: job 2 too (Σ 6).
    EXPECT_EQ(run.coord->saves(), 2);
    EXPECT_EQ(run.coord->last_saved(), 6);
    EXPECT_EQ(run.coord->rounds(), 6);
  });
  EXPECT_EQ(checkpoint::list_steps(dir.path()), (std::vector<int64_t>{4, 6}));
  const auto manifest = checkpoint::read_step_manifest(dir.path(), 6);
  EXPECT_EQ(manifest.step, 6);
  EXPECT_EQ(manifest.world_size, 2);
  EXPECT_EQ(manifest.config_json, R"({"seed":1})");
  ASSERT_EQ(manifest.files.size(), 2u);
  for (int rank = 0; rank < 2; ++rank) {
    const auto& entry = manifest.files[static_cast<size_t>(rank)];
    const auto on_disk = checkpoint::describe_rank_file(dir.path(), 6, rank);
    EXPECT_EQ(entry.rank, rank);
    EXPECT_EQ(entry.file, checkpoint::rank_file_name(rank));
    EXPECT_EQ(entry.bytes, on_disk.bytes);
    EXPECT_EQ(entry.checksum, on_disk.checksum);
  }
  const auto rank1 = checkpoint::read_rank_checkpoint(checkpoint::rank_file_path(dir.path(), 6, 1));
  ASSERT_EQ(rank1.size(), 2u);
  JobState want = make_state(2, 2);
  want.step = 2;
  expect_same_state(rank1[1], want);
  EXPECT_EQ(rank1[1].holdout_error, 0.5 / 3);
}

TEST(CoordinatorResume, SavedOnThreeRanksResumesOnTwoWithTheSameStates) {
  test::TempDir dir;
  const std::vector<double> costs = {4, 3, 2, 1};
  test::run_ranks(3, [&](comm::Communicator& comm) {
    RankRun(policy_for(dir.path()), comm, costs, 3).drive();
  });
  std::mutex mu;
  std::vector<int> loaded(costs.size(), 0);
  std::vector<LayerJob> jobs;
  for (size_t i = 0; i < costs.size(); ++i) jobs.push_back(job_of(i));
  test::run_ranks(2, [&](comm::Communicator& comm) {
    const auto step = find_resume_step(policy_for(dir.path()), comm);
    ASSERT_EQ(step, std::optional<int64_t>(12));  // 4 jobs × 3 steps
    const Placement p = place_jobs(costs, 1, 2, comm.rank());
    const auto states = load_resumed_jobs(dir.path(), *step, jobs, p.my_jobs());
    ASSERT_EQ(states.size(), p.my_jobs().size());
    std::lock_guard<std::mutex> lock(mu);
    for (const auto& [i, s] : states) {
      ++loaded[i];
      JobState want = make_state(i, 3);
      want.step = 3;
      expect_same_state(s, want);
      EXPECT_TRUE(s.finished());
    }
  });
  EXPECT_EQ(loaded, (std::vector<int>{1, 1, 1, 1}));
}

// Every rank's error message, or "" for a rank that returned.
std::vector<std::string> errors_of(int n, const std::function<void(comm::Communicator&)>& body,
                                   test::FaultPlan faults = {}) {
  std::mutex mu;
  std::vector<std::string> errors(static_cast<size_t>(n));
  test::run_ranks(
      n,
      [&](comm::Communicator& comm) {
        try {
          body(comm);
        } catch (const Error& e) {
          std::lock_guard<std::mutex> lock(mu);
          errors[static_cast<size_t>(comm.rank())] = e.message();
          EXPECT_TRUE(e.kind() == ErrorKind::kInput || e.kind() == ErrorKind::kComm);
        }
      },
      std::move(faults));
  return errors;
}

TEST(CoordinatorResume, EveryRankThrowsTheSameVerdict) {
  test::TempDir dir;
  CheckpointPolicy policy = policy_for(dir.path());
  policy.require_resume = true;
  const std::string none = "no complete checkpoint in " + dir.path();
  EXPECT_EQ(errors_of(3, [&](comm::Communicator& comm) { find_resume_step(policy, comm); }),
            (std::vector<std::string>{none, none, none}));
  policy.require_resume = false;
  std::vector<std::optional<int64_t>> found(2, 7);
  test::run_ranks(2, [&](comm::Communicator& comm) {
    found[static_cast<size_t>(comm.rank())] = find_resume_step(policy, comm);
  });
  EXPECT_EQ(found, (std::vector<std::optional<int64_t>>{std::nullopt, std::nullopt}));
  // A saved step of another config: the same refusal, naming the key, on every rank.
  test::run_ranks(
      1, [&](comm::Communicator& comm) { RankRun(policy_for(dir.path()), comm, {1}, 1).drive(); });
  policy.config_json = R"({"seed":2})";
  const auto errors =
      errors_of(2, [&](comm::Communicator& comm) { find_resume_step(policy, comm); });
  EXPECT_EQ(errors[0], errors[1]);
  EXPECT_NE(errors[0].find("seed: 1 -> 2"), std::string::npos) << errors[0];
}

// Every regular file under dir (relative path -> bytes).
std::map<std::string, std::string> tree_bytes(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) {
      out[std::filesystem::relative(e.path(), dir).string()] = test::read_file(e.path());
    }
  }
  return out;
}

TEST(CoordinatorResume, UnreadableStepsAreRefusedOnEveryRankAndDeletedOnlyWithOverwrite) {
  test::TempDir dir;
  test::run_ranks(2, [&](comm::Communicator& comm) {
    RankRun(policy_for(dir.path()), comm, {1, 1}, 3).drive();
  });
  const auto steps = checkpoint::list_steps(dir.path());
  ASSERT_FALSE(steps.empty());
  std::string reasons;
  for (const int64_t step : steps) {  // every complete step loses its rank 0 file's last byte
    const std::string f = checkpoint::rank_file_path(dir.path(), step, 0);
    std::filesystem::resize_file(f, std::filesystem::file_size(f) - 1);
    reasons += (reasons.empty() ? "" : "; ") +
               ("step " + std::to_string(step) + ": " + *checkpoint::check_step(dir.path(), step));
  }
  // A save that never finished (no manifest) was never a checkpoint: it is not named.
  std::filesystem::create_directories(checkpoint::step_dir(dir.path(), 99));
  test::write_file(checkpoint::rank_file_path(dir.path(), 99, 0), "partial");
  const auto before = tree_bytes(dir.path());
  CheckpointPolicy policy = policy_for(dir.path());
  const std::string refusal =
      dir.path() + ": no checkpoint step can be read (" + reasons +
      "); starting from step 0 would delete them, and cskv never deletes a step it could not "
      "read: move them away to keep them, or pass --overwrite to delete them and train from step 0";
  EXPECT_EQ(errors_of(2, [&](comm::Communicator& comm) { find_resume_step(policy, comm); }),
            (std::vector<std::string>{refusal, refusal}));
  EXPECT_EQ(tree_bytes(dir.path()), before);
  policy.overwrite = true;
  std::vector<std::optional<int64_t>> found(2, 7);
  test::run_ranks(2, [&](comm::Communicator& comm) {
    found[static_cast<size_t>(comm.rank())] = find_resume_step(policy, comm);
  });
  EXPECT_EQ(found, (std::vector<std::optional<int64_t>>{std::nullopt, std::nullopt}));
  EXPECT_EQ(checkpoint::list_steps(dir.path()), std::vector<int64_t>{99});
}

TEST(CoordinatorFailures, APeerThatFailsInARoundNamesTheOperationOnTheOthers) {
  test::TempDir dir;
  const auto errors = errors_of(
      3,
      [&](comm::Communicator& comm) {
        RankRun(policy_for(dir.path()), comm, {1, 1, 1}, 10).drive();
      },
      test::FaultPlan().fail(1, 3, "injected: rank 1 lost its network"));
  EXPECT_EQ(errors[1], "injected: rank 1 lost its network");
  for (const size_t r : {0u, 2u}) {
    EXPECT_NE(errors[r].find("allreduce_sum failed on rank " + std::to_string(r) + " of 3"),
              std::string::npos)
        << errors[r];
    EXPECT_NE(errors[r].find("rank 1 will not join it"), std::string::npos) << errors[r];
  }
}

TEST(CoordinatorFailures, APeerThatFailsInASaveNamesTheGatherOnRankZero) {
  test::TempDir dir;
  // Rank 1's 1-step job: round 1 (its step), round 2 (finished: save) → write, then gather.
  const auto errors = errors_of(
      2,
      [&](comm::Communicator& comm) {
        RankRun(policy_for(dir.path()), comm, {1, 1}, 1).drive();
      },
      test::FaultPlan().fail(1, 3, "injected"));
  EXPECT_EQ(errors[1], "injected");
  EXPECT_NE(errors[0].find("gather_bytes failed on rank 0 of 2"), std::string::npos) << errors[0];
  EXPECT_EQ(checkpoint::check_step(dir.path(), 2).has_value(), true);  // no manifest
}

}  // namespace
}  // namespace cskv::pipeline
