// Export to the CSKV reference implementation's format: <name>_k.ckpt and <name>_v.ckpt, each a
// pickled list over layers of (a.state_dict(), b.state_dict()) that Python torch.load reads.
#pragma once

#include <nlohmann/json.hpp>

#include <string>

#include "checkpoint/merge.h"
#include "checkpoint/reference_run.h"
#include "model/config.h"

namespace cskv::checkpoint {

struct ExportedFiles {
  std::string k_path;  // <dir>/<name>_k.ckpt
  std::string v_path;  // <dir>/<name>_v.ckpt
  // export_for_reference: how the reference code finds and loads them: "--kv_ckpt_root_path
  // <parent of dir> --model_id <dir's name> <ReferenceRun::arguments()>"
  std::string reference_arguments;
};

// Writes both files (temp → fsync → rename) as Python's torch.save writes such a list, so that
// torch.load reads them with weights_only=True (its default since torch 2.6) and False: element l
// of each list is the tuple ({"weight": a [r, H]}, {"weight": b [D, r]}) of layer l, float32, the
// dicts plain dicts (the reference's are OrderedDicts; it only indexes them). The list index is the
// layer index, so the factors must cover layers 0..n-1 for both K and V (input error naming the
// missing ones otherwise). `name` must be a plain file-name prefix.
// An existing file at either path that is not such an export is refused (unless overwrite),
// naming it (check_export_outputs).
ExportedFiles export_cskv(const FactorMap& factors, const std::string& dir, const std::string& name,
                          bool overwrite = false);

// The export the reference code can load: reference_run() of the factors, `config` (the training
// run's resolved config) and `model` (its refusals thrown, its warnings logged), then export_cskv
// under `name`, or the reference's own file_name() when `name` is empty.
ExportedFiles export_for_reference(const FactorMap& factors, const nlohmann::json& config,
                                   const model::ModelConfig& model, const std::string& dir,
                                   const std::string& name, bool overwrite = false);

// Same, from a merged compressor.safetensors.
ExportedFiles export_cskv(const std::string& compressor_path, const std::string& dir,
                          const std::string& name, bool overwrite = false);

// The check export_cskv makes before writing, for callers that refuse before any work: `name` a
// plain prefix (empty: the reference's name, not known yet: nothing is checked), and
// <dir>/<name>_{k,v}.ckpt absent or a pickled list of ({"weight": tensor},
// {"weight": tensor}) tuples — the format above — unless overwrite.
void check_export_outputs(const std::string& dir, const std::string& name, bool overwrite);

// Whether path holds the export format above (torch::pickle_load reads it and it has its shape).
bool is_cskv_export(const std::string& path);

}  // namespace cskv::checkpoint
