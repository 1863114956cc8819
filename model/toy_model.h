// The built-in toy model: a random HF-format Llama/Mistral/Qwen2 directory whose weights have
// LLM-like structure (power-law spectra, outlier norm channels), and a Zipf-Markov token stream.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "model/config.h"
#include "model/safetensors.h"

namespace cskv::model {

struct ToyModelSpec {
  Arch arch = Arch::kLlama;
  int64_t hidden = 256;
  int64_t layers = 4;
  int64_t heads = 8;
  int64_t kv_heads = 2;
  int64_t intermediate = 688;
  int64_t vocab = 1024;
  StDType dtype = StDType::kF16;
  bool tie_word_embeddings = false;
  uint64_t seed = 0;
  int64_t shards = 1;  // number of .safetensors files written
};

// Power-law exponents of the singular values s_i ∝ i^-alpha of each projection kind: keys are
// the most compressible, values less so (as the CSKV paper reports for real models). With the
// outlier channels below, the default toy model's K cache needs ~10-20% of its D channels for 90%
// of the energy and its V cache ~30-45% (tests/model/toy_model_test.cpp prints the numbers).
struct ToySpectrum {
  static constexpr double kQuery = 0.6;
  static constexpr double kKey = 0.7;
  static constexpr double kValue = 0.45;
  static constexpr double kOther = 0.5;  // o_proj, mlp
  // Share of hidden channels (same channels in every layer, at least one) whose RMSNorm weight
  // is an outlier, and the range of the outlier gains; other channels are 1 + 0.02·N(0,1).
  static constexpr double kOutlierShare = 0.015;
  static constexpr double kOutlierMin = 5.0;
  static constexpr double kOutlierMax = 15.0;
};

// The most parameters toy_config accepts (the generator holds every tensor in memory, with
// float64 work matrices per shape): 2^31, i.e. 4 GiB of f16 weights — room for a few layers of
// Llama-3-8B shapes (bench/gpu_check.sh).
constexpr int64_t kMaxToyParams = int64_t{1} << 31;

// The config the spec describes; throws a usage cskv::Error naming the field for an invalid spec
// (and the flags whose sizes make more than kMaxToyParams parameters).
ModelConfig toy_config(const ToyModelSpec& spec);

// Every weight of expected_weight_list(toy_config(spec)), in model order and the spec's dtype.
// Projections are P·U·diag(s)·Vᵀ·Q with U, V orthonormal (QR of float64 Gaussians, one pair per
// shape and exponent, shared by the layers), P, Q random signed permutations per tensor, and s a
// power law scaled so that ‖W‖²_F = rows (unit-variance outputs for unit-variance inputs).
// Randomness comes from generators seeded by (spec.seed, tensor or base name) and every kernel
// used is independent of the thread count, so the bytes depend only on the spec (on a given
// machine: LAPACK/BLAS kernels may round differently on another CPU).
NamedTensors toy_weights(const ToyModelSpec& spec);

// Writes config.json and spec.shards safetensors files (model.safetensors, or
// model-0000k-of-0000n.safetensors + model.safetensors.index.json, split into contiguous runs of
// tensors of about equal size) into dir, which is created; stale model files from an earlier run
// (config.json, *.safetensors, the index) are removed first. Returns the file names written.
std::vector<std::string> write_toy_model(const ToyModelSpec& spec, const std::string& dir);

// __metadata__ key every safetensors file of a toy model carries ("1"), so a rerun recognises
// the files it may replace.
inline constexpr const char* kToyModelMarker = "cskv_toy_model";
// The first model file in dir (config.json, model*.safetensors, model.safetensors.index.json)
// that write_toy_model would replace but that is not a toy model's: a safetensors file without
// kToyModelMarker, or config.json / the index when not every safetensors file carries it (or there
// is none). nullopt when dir holds no model file or only a toy model's.
std::optional<std::string> foreign_model_file(const std::string& dir);

// Token stream: a first-order Markov chain over [0, vocab). With probability kLocalWeight the
// successor of token t is drawn from a Zipf(kZipfExponent) over a permutation specific to t,
// otherwise from the same Zipf over a global permutation. Uses only std::mt19937_64 and integer
// arithmetic, so the stream is identical on every platform for the same (vocab, count, seed).
struct ToyTokenStream {
  static constexpr double kZipfExponent = 1.1;
  static constexpr double kLocalWeight = 0.7;
};
std::vector<uint32_t> toy_tokens(int64_t vocab, int64_t count, uint64_t seed);

enum class TokenDType { kU16, kU32 };
// Writes the tokens as flat little-endian u16 or u32 (temp file + rename). Throws a usage error
// when u16 cannot hold vocab (vocab > 65536).
void write_tokens(const std::string& path, const std::vector<uint32_t>& tokens, int64_t vocab,
                  TokenDType dtype);

}  // namespace cskv::model
