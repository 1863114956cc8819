// compressor.safetensors, the merged factors of a training run (DESIGN.md §3): its tensor names.
// The one owner of the file's names; training, merge and eval all go through it.
#pragma once

#include <cstdint>
#include <string>

#include "trainer/spectrum.h"

namespace cskv::checkpoint {

// Tensor names of the merged checkpoint (DESIGN.md §3): a = Aᵀ [r, H], b = Bᵀ [D, r].
std::string factor_name(int64_t layer, trainer::KvKind kind, char which /* 'a' | 'b' */);

}  // namespace cskv::checkpoint
