// Merge of the newest complete checkpoint step into one compressor.safetensors: the factors in
// HF Linear layout (a = Aᵀ [r, H], b = Bᵀ [D, r]) with the resolved config in __metadata__.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <string>

#include "checkpoint/compressor_file.h"
#include "checkpoint/step_manifest.h"
#include "model/safetensors.h"

namespace cskv::checkpoint {

// aᵀ/bᵀ of every state (bitwise copies of A and B, transposed).
FactorMap linear_factors(const std::map<JobKey, trainer::JobState>& states);

// The factors of a merged compressor.safetensors (read_compressor_factors); input error naming the
// file and tensor for a missing partner, a shape mismatch or a non-F32 dtype.
FactorMap read_merged_factors(const std::string& compressor_path);

struct MergeResult {
  int64_t step = 0;         // the checkpoint step merged
  std::string path;         // out_path
  size_t jobs = 0;          // (layer, K|V) jobs written
  std::string config_json;  // the resolved config of the run
  FactorMap factors;
};

// Reads the newest complete step of ckpt_dir (require_latest_complete_step), requires every job
// to be finished (step == total_steps; otherwise an input error naming the unfinished jobs) and
// writes out_path through write_compressor_file, tensors in (layer, K, V) order. __metadata__:
// "format" = "cskv-1", "cskv_config" (the resolved config JSON),
// "ckpt_step", "layers", "k_ranks", "v_ranks" (JSON arrays over the merged layers; a missing
// kind shows as 0), every top-level field of the config that does not collide with those (strings
// verbatim, other values as JSON: bits, window, group size, init, rotation, model_config_hash …)
// and finally `extra`, which overrides. When the config holds every CompressorSettings field,
// those keys are written by compressor_metadata(), exactly as training writes them.
// An existing out_path that is not a compressor file (is_compressor_file: a model's
// model.safetensors, any other file, a directory) is refused before anything is read, unless
// overwrite (common/output_dir.h's message, naming --out).
MergeResult merge_checkpoint(const std::string& ckpt_dir, const std::string& out_path,
                             const model::Metadata& extra = {}, bool overwrite = false);

}  // namespace cskv::checkpoint
