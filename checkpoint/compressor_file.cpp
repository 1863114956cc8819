// Tensor names of compressor.safetensors.
#include "checkpoint/compressor_file.h"

namespace cskv::checkpoint {

std::string factor_name(int64_t layer, trainer::KvKind kind, char which) {
  return "model.layers." + std::to_string(layer) + ".self_attn." +
         (kind == trainer::KvKind::kKey ? "k" : "v") + "_proj_" + std::string(1, which) +
         ".weight";
}

}  // namespace cskv::checkpoint
