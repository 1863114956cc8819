// The measurements of `cskv eval` as library calls: held-out reconstruction errors per layer,
// end-to-end fidelity of teacher-forced decoding with the compressed caches, measured cache memory.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "eval/compressor.h"
#include "eval/report.h"
#include "model/config.h"
#include "model/kv_cache.h"
#include "model/llama.h"
#include "model/safetensors.h"

namespace cskv::eval {

// The held-out token sequences of a capture, int64 [sequences, seq_len] in manifest order
// (shards checked against the manifest and the model hash).
at::Tensor read_holdout_tokens(const std::string& acts_dir, const std::string& model_config_hash);

// (a) One compressed layer: relative errors over the held-out sequences of seq_len tokens (the
// latents quantized as the cache stores them in `storage`, and unquantized), the 16-bit floors
// and the normalised spectra from the training statistics (<acts_dir>/stats.h5).
LayerEval evaluate_layer(const model::SafetensorsModel& weights, const model::ModelConfig& config,
                         const Compressor& compressor, const std::string& acts_dir, int64_t seq_len,
                         int64_t layer, at::ScalarType storage, at::Device device = at::kCPU);

// (a) evaluate_layer for every compressed layer in ascending order (the i-th on rank i mod W);
// every rank returns all of them.
std::vector<LayerEval> evaluate_layers(const model::SafetensorsModel& weights,
                                       const model::ModelConfig& config,
                                       const Compressor& compressor, const std::string& acts_dir,
                                       int64_t seq_len, at::ScalarType storage, at::Device device,
                                       comm::Communicator& comm);

// (b) For each sequence (rank r takes r, r + W, ...): the original model's logits over the first
// context + decode tokens (LlamaModel::forward), against a prefill of `context` tokens followed
// by `decode` teacher-forced steps with the compressor's caches (`storage`) and with plain fp16
// caches. sequences: int64 [N, L] with L >= context + decode + 1. KL and NLL in float64.
EndToEndEval evaluate_end_to_end(const model::LlamaModel& model, const Compressor& compressor,
                                 const at::Tensor& sequences, int64_t context, int64_t decode,
                                 at::ScalarType storage, comm::Communicator& comm);

// Logits [steps, vocab] of `steps` teacher-forced decode steps after prefilling
// tokens[0, context) into `caches` (empty on entry): step i feeds token context + i.
at::Tensor decode_logits(const model::LlamaModel& model, const std::vector<model::KvCache*>& caches,
                         const at::Tensor& tokens, int64_t context, int64_t steps);

// (c) Every layer's cache filled to each context (ascending) with the held-out activations of
// the layer repeated (their k/v projections, no RoPE: contents do not change sizes), measured
// (KvCache::bytes) and by the formula, for the compressor's caches and plain fp16 caches.
std::vector<MemoryRow> measure_memory(const model::LlamaModel& model, const Compressor& compressor,
                                      const std::string& acts_dir,
                                      const std::vector<int64_t>& contexts, at::ScalarType storage,
                                      comm::Communicator& comm);

}  // namespace cskv::eval
