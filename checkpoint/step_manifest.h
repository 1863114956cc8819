// Complete checkpoint steps: the step manifest (written last, by rank 0), the search for the
// newest step whose rank files all check out (with fallback), loading a step, and pruning.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "checkpoint/rank_checkpoint.h"
#include "trainer/layer_trainer.h"

namespace cskv::checkpoint {

// "<ckpt_dir>/step-00000012/manifest.json"
std::string step_manifest_path(const std::string& ckpt_dir, int64_t step);

// Writes step_manifest_path() via temp file → fsync → rename → fsync of the step directory.
// `files` must hold exactly one entry per rank 0..world_size-1 (any order); the config must be
// valid JSON. Called by rank 0 after every rank has written its file (a barrier), so a step
// with a manifest is complete.
void write_step_manifest(const std::string& ckpt_dir, int64_t step, int world_size,
                         const std::vector<RankFileEntry>& files,
                         const std::string& resolved_config_json);

// Reads and validates a step manifest; input error naming it when missing or malformed.
StepManifest read_step_manifest(const std::string& ckpt_dir, int64_t step);

// Steps that have a "step-<digits>" directory in ckpt_dir, ascending (empty when ckpt_dir does
// not exist).
std::vector<int64_t> list_steps(const std::string& ckpt_dir);

// Why a step is not complete (e.g. "<file>: checksum xxh64:… does not match the manifest
// (xxh64:…)"), or nullopt when its manifest is valid and every rank file it lists exists with
// the recorded size (and checksum when verify_checksums).
std::optional<std::string> check_step(const std::string& ckpt_dir, int64_t step,
                                      bool verify_checksums = true);

struct StepSearch {
  std::optional<int64_t> step;       // newest complete step
  std::vector<std::string> skipped;  // one line per newer step that failed, newest first
};

// Checks steps from the newest down and stops at the first complete one; every step that fails
// is logged as a warning "<reason>; falling back to an earlier step" and listed in `skipped`.
StepSearch search_latest_complete_step(const std::string& ckpt_dir);
std::optional<int64_t> find_latest_complete_step(const std::string& ckpt_dir);

// "no complete checkpoint in <dir>"
std::string no_complete_checkpoint_message(const std::string& ckpt_dir);
// find_latest_complete_step(), or an input error with no_complete_checkpoint_message().
int64_t require_latest_complete_step(const std::string& ckpt_dir);

using JobKey = std::pair<int64_t, trainer::KvKind>;  // (layer, K|V)

// The union of the jobs in every rank file the step's manifest lists, keyed by (layer, K|V):
// the unit of ownership is the job, so a resume may re-plan on any world size. A job found in
// two files must be bitwise identical in both (data-parallel groups); otherwise input error.
std::map<JobKey, trainer::JobState> load_step(const std::string& ckpt_dir, int64_t step);

// Keeps the newest `keep` (>= 1) complete steps; removes every older step directory, complete or
// not. Steps newer than the newest complete one (a save in progress) are never touched. Returns
// the removed steps, ascending. verify_checksums = false checks sizes only (cheaper).
std::vector<int64_t> prune_steps(const std::string& ckpt_dir, int64_t keep,
                                 bool verify_checksums = true);

}  // namespace cskv::checkpoint
