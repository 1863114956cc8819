// compressor.safetensors, the merged factors of a training run (DESIGN.md §3): the one owner of its
// tensor names, its __metadata__ schema, its writer (training and merge) and its reader (eval).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "checkpoint/step_manifest.h"
#include "model/safetensors.h"
#include "trainer/layer_trainer.h"
#include "trainer/spectrum.h"

namespace cskv::checkpoint {

// __metadata__ "format" of every compressor file.
constexpr const char* kCompressorFormat = "cskv-1";

// Tensor names of the merged checkpoint (DESIGN.md §3): a = Aᵀ [r, H], b = Bᵀ [D, r].
std::string factor_name(int64_t layer, trainer::KvKind kind, char which /* 'a' | 'b' */);
// Parses "model.layers.<l>.self_attn.<k|v>_proj_<a|b>.weight"; false for any other name.
bool parse_factor_name(const std::string& name, int64_t& layer, trainer::KvKind& kind, char& which);

// waterfill: "model.layers.<l>.self_attn.<k|v>_latent_<bits|scale|offset>" (U8 [r], F32 [r],
// F32 [r]), the static code of every kept latent channel (trainer::ChannelCode).
std::string latent_code_name(int64_t layer, trainer::KvKind kind, const char* what);

// One job's factors as HF Linear weights: a = Aᵀ [r, H] (the down projection), b = Bᵀ [D, r],
// and, in waterfill files, the channel codes of its latent (empty otherwise).
struct LinearFactors {
  at::Tensor a, b;  // float32, contiguous
  std::vector<trainer::ChannelCode> codes;
};
using FactorMap = std::map<JobKey, LinearFactors>;
// Factors in the order they are written to the file.
using FactorList = std::vector<std::pair<JobKey, LinearFactors>>;

// The settings every compressor file records (the schema's required keys): the model it was
// trained for and the quantization the factors were trained with, which `cskv eval` rebuilds.
struct CompressorSettings {
  std::string model_config_hash;
  int k_bits = 16;
  int v_bits = 16;
  int64_t group_size = 0;
  int64_t window = 32;
  bool quant_compat_cskv = false;
  bool waterfill = false;  // --quant waterfill: the latents are coded by the files' channel codes
  bool operator==(const CompressorSettings& o) const;
};
CompressorSettings compressor_settings(const std::string& model_config_hash,
                                       const trainer::TrainConfig& cfg);

// The schema's __metadata__: "format" = kCompressorFormat, "model_config_hash", "k_bits",
// "v_bits", "group_size", "window" (decimal integers) and "quant_compat" ("cskv" | "none"), and
// "quant" = "waterfill" in waterfill files (absent: uniform).
model::Metadata compressor_metadata(const CompressorSettings& s);
// Parses those keys back. Input errors name the file and key: "<path>: __metadata__ has no
// 'k_bits' (...)", "... 'k_bits' is 'x', expected an integer", "... 'quant_compat' is 'x', ...".
CompressorSettings parse_compressor_settings(const model::Metadata& metadata,
                                             const std::string& path);

// Writes path (temp → fsync → rename; parent directories created) with the factors' a and b
// tensors named factor_name(), in the given order, and `metadata` as __metadata__.
void write_compressor_file(const std::string& path, const FactorList& factors,
                           const model::Metadata& metadata);
// The file training writes at the end of a run: aᵀ/bᵀ of every state in the given order and
// compressor_metadata(compressor_settings(model_config_hash, cfg)), plus the `extra` keys (the
// model's weights fingerprint).
void write_trained_compressor(const std::string& path, const std::vector<trainer::JobState>& states,
                              const std::string& model_config_hash, const trainer::TrainConfig& cfg,
                              const model::Metadata& extra = {});

// The cskv factors of a compressor file (other tensors are ignored) and, when `waterfill`, every
// job's channel codes (required: U8 bits 1..8, F32 finite offset and scale > 0, [r] each); input
// error naming the file and tensor for a missing partner, a shape mismatch, a wrong dtype, a bad
// code or no factors at all.
FactorMap read_compressor_factors(const model::SafetensorsFile& file, const std::string& path,
                                  bool waterfill = false);

struct CompressorFile {
  std::string path;
  model::Metadata metadata;  // all of __metadata__ (merge adds provenance keys)
  CompressorSettings settings;
  FactorMap factors;
};
// Reads a compressor file: its settings (parse_compressor_settings) and factors.
CompressorFile read_compressor_file(const std::string& path);

// Whether path is a safetensors file whose __metadata__ "format" is kCompressorFormat (a file
// cskv train or merge wrote, which they may replace); false for anything else, never throws.
bool is_compressor_file(const std::string& path);

}  // namespace cskv::checkpoint
