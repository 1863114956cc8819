// A compressor checkpoint (compressor.safetensors from `cskv merge` or `cskv train`) checked
// against the model it is applied to, and the per-layer caches it implies.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "eval/compressed_kv_cache.h"
#include "model/config.h"
#include "model/kv_cache.h"
#include "model/llama.h"
#include "trainer/layer_trainer.h"

namespace cskv::eval {

struct LayerFactors {
  at::Tensor k_a, k_b, v_a, v_b;  // A [H, r], B [r, D] float32 (the file stores Aᵀ and Bᵀ)
  std::vector<trainer::ChannelCode> k_codes, v_codes;  // waterfill files: one per latent channel
  int64_t r_k() const { return k_a.size(1); }
  int64_t r_v() const { return v_a.size(1); }
};

struct Compressor {
  std::string path;
  std::string model_config_hash;
  // __metadata__ "model_weights_fingerprint" (model::weights_fingerprint of the weights it was
  // trained on); empty for files written before cskv recorded it.
  std::string model_weights_fingerprint;
  // The quantization the factors were trained with (bits, group size, window, compat): what
  // trainer::layer_cache_bytes and trainer::job_quant_config read.
  trainer::TrainConfig quant;
  std::map<int64_t, LayerFactors> layers;  // compressed layers; any other layer stays fp16
  // `cskv eval --sink-tokens`: the first tokens every compressed layer keeps at full precision.
  int64_t sink_tokens = 0;
};

// Reads `path` and checks it against `model`: __metadata__ must hold model_config_hash (equal to
// model.hash()), k_bits, v_bits, group_size, window and quant_compat (as `cskv merge` and
// `cskv train` write them); every layer must exist in the model and have K and V factors of
// shapes a [r, H], b [D, r]; group sizes must divide the ranks. Input errors name the file, the
// key or tensor, what was expected and what was found.
Compressor load_compressor(const std::string& path, const model::ModelConfig& model);

// The quantizer of a compressed layer's key (kind K) or value latent.
trainer::QuantConfig branch_quant(const Compressor& c, const model::ModelConfig& model,
                                  trainer::KvKind kind, int64_t layer);

// One cache per model layer: a CompressedKvCache for the compressor's layers (factors, biases
// from the model's weights, quantizers from the compressor), a FullKvCache otherwise; all in
// `storage` (float16: what the memory accounting states).
std::vector<std::unique_ptr<model::KvCache>> make_caches(const Compressor& c,
                                                         const model::LlamaModel& model,
                                                         at::ScalarType storage = at::kHalf);
// Every layer a FullKvCache in `storage`.
std::vector<std::unique_ptr<model::KvCache>> make_full_caches(const model::LlamaModel& model,
                                                              at::ScalarType storage = at::kHalf);
std::vector<model::KvCache*> raw(const std::vector<std::unique_ptr<model::KvCache>>& caches);

// Bytes one layer's cache holds at `context` tokens by the accounting formula: the compressed
// layers' trainer::layer_cache_bytes of the tokens after the sinks plus the sinks' fp16 K/V, fp16
// K/V for the others.
double formula_layer_bytes(const Compressor& c, const model::ModelConfig& model, int64_t layer,
                           int64_t context);

}  // namespace cskv::eval
