// One rank's shard of a training checkpoint: ckpt/step-<S>/rank-<R>.safetensors holding the full
// state (factors, AdamW moments, counters, eigenvalues) of every job the rank owns, bit for bit.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "checkpoint/step_manifest_json.h"
#include "trainer/layer_trainer.h"

namespace cskv::checkpoint {

// Format of the rank files (metadata "format"); bumped when the layout changes.
constexpr const char* kRankFileFormat = "cskv-ckpt-2";

// "step-00000012": zero-padded so that directory names sort like the steps.
std::string step_dir_name(int64_t step);
// "<ckpt_dir>/step-00000012"
std::string step_dir(const std::string& ckpt_dir, int64_t step);
// "<ckpt_dir>/step-00000012/rank-1.safetensors"
std::string rank_file_path(const std::string& ckpt_dir, int64_t step, int rank);

// Size and checksum of a rank file as it is on disk (input error naming it when it is missing).
RankFileEntry describe_rank_file(const std::string& ckpt_dir, int64_t step, int rank);

// Writes this rank's jobs to rank_file_path(ckpt_dir, step, rank) via temp file → fsync →
// rename (creating and syncing the step directory first) and returns its manifest entry.
// Tensor names: "jobs/<layer>/<K|V>/{A,B,m_A,v_A,m_B,v_B}" (float32, as given) and
// "jobs/<layer>/<K|V>/eigenvalues_f64" (the float64 eigenvalues [D] as their raw little-endian
// bytes in a float32 [D, 2] tensor: safetensors here carries no F64), and for a waterfill job
// "jobs/<layer>/<K|V>/codes" (float32 [r, 4] rows: kept channel, bits, offset, scale; the job
// entry then has "has_codes": true). `__metadata__` holds
// "format", "step", "rank", "config" (resolved_config_json, verbatim) and "jobs": a JSON array
// with each job's layer, kind, rank, step, total_steps, data_position and the doubles floor and
// last_loss (and the evaluation scalars: train_error_init, holdout_error_init_q, train_error,
// holdout_error_q, holdout_error, seconds) both as "%.17g" text and as their exact IEEE-754 bits
// ("floor_bits": 16 hex digits). A rank that owns no job writes a file with no tensors. Input error
// for an inconsistent state.
RankFileEntry write_rank_checkpoint(const std::string& ckpt_dir, int64_t step, int rank,
                                    const std::vector<trainer::JobState>& jobs,
                                    const std::string& resolved_config_json);

// Reads a rank file back: the same jobs in the same order, every tensor and scalar bitwise equal
// to what was written (tensors are owned copies, not views of the file). Input error naming the
// file for anything malformed.
std::vector<trainer::JobState> read_rank_checkpoint(const std::string& path);

// The resolved config a rank file was written with (its "config" metadata).
std::string read_rank_checkpoint_config(const std::string& path);

}  // namespace cskv::checkpoint
