// Export to the CSKV reference implementation's format: <name>_k.ckpt and <name>_v.ckpt, each a
// pickled list over layers of (a.state_dict(), b.state_dict()) that Python torch.load reads.
#pragma once

#include <string>

#include "checkpoint/merge.h"

namespace cskv::checkpoint {

struct ExportedFiles {
  std::string k_path;  // <dir>/<name>_k.ckpt
  std::string v_path;  // <dir>/<name>_v.ckpt
};

// Writes both files (torch::pickle_save; temp → fsync → rename): element l of each list is the
// tuple ({"weight": a [r, H]}, {"weight": b [D, r]}) of layer l, float32. The list index is the
// layer index, so the factors must cover layers 0..n-1 for both K and V (input error naming the
// missing ones otherwise). `name` must be a plain file-name prefix.
// An existing file at either path that is not such an export is refused (unless overwrite),
// naming it (check_export_outputs).
ExportedFiles export_cskv(const FactorMap& factors, const std::string& dir, const std::string& name,
                          bool overwrite = false);

// Same, from a merged compressor.safetensors.
ExportedFiles export_cskv(const std::string& compressor_path, const std::string& dir,
                          const std::string& name, bool overwrite = false);

// The check export_cskv makes before writing, for callers that refuse before any work: `name` a
// plain prefix, and <dir>/<name>_{k,v}.ckpt absent or a pickled list of ({"weight": tensor},
// {"weight": tensor}) tuples — the format above — unless overwrite.
void check_export_outputs(const std::string& dir, const std::string& name, bool overwrite);

// Whether path holds the export format above (torch::pickle_load reads it and it has its shape).
bool is_cskv_export(const std::string& path);

}  // namespace cskv::checkpoint
