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
ExportedFiles export_cskv(const FactorMap& factors, const std::string& dir,
                          const std::string& name);

// Same, from a merged compressor.safetensors.
ExportedFiles export_cskv(const std::string& compressor_path, const std::string& dir,
                          const std::string& name);

}  // namespace cskv::checkpoint
