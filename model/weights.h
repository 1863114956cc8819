// Checks a model's safetensors against the weights its config.json implies, and formats the
// model summary that `cskv toy-model` and `cskv inspect` print.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/safetensors.h"

namespace cskv::model {

struct WeightsReport {
  int64_t tensors = 0;                  // tensors implied by the config (all present)
  int64_t params = 0;                   // their elements
  uint64_t data_bytes = 0;              // their data bytes in the files
  std::vector<std::string> dtypes;      // safetensors dtypes found, e.g. {"F16"}, sorted
  std::vector<std::string> files;       // file names (relative to the model dir) holding them
  std::vector<std::string> unexpected;  // tensors in the files that the config does not imply
};

// Every weight of expected_weight_list(config) must exist with exactly that shape; throws
// cskv::Error (kInput): "<dir>: tensor 'X' is missing (expected shape [a, b] from config.json)"
// or "<file>: tensor 'X' has shape [c, b], expected [a, b] from config.json" (first problem in
// model order). Only headers are read, never tensor data.
WeightsReport validate_weights(const ModelConfig& config, const SafetensorsModel& weights,
                               const std::string& model_dir);

// The model's weights fingerprint, "xxh64:<16 hex digits>": XXH64 over every weight of
// expected_weight_list(config) in model order, each as its name, safetensors dtype, shape and the
// XXH64 of its raw bytes in the file (so every tensor that decides the captured activations, the
// k/v projections and the forward is covered; tensors the config does not imply are not). Two
// models with the same config.json but other weights differ here. The tensors are hashed in
// parallel on ATen's intra-op pool; the result does not depend on the thread count. Call after
// validate_weights (a missing tensor throws as SafetensorsModel::entry does). Within a process the
// result is remembered per set of files (path, inode, size, mtime, ctime): the stages of one
// `cskv run` read the weights once; a rewritten file is read again.
std::string weights_fingerprint(const ModelConfig& config, const SafetensorsModel& weights);

// Parameter count the config implies (what validate_weights().params must equal).
int64_t count_params(const ModelConfig& config);
// K and V of every layer in fp16, per token: 2 * layers * D * 2 bytes.
int64_t kv_cache_bytes_per_token_fp16(const ModelConfig& config);

// "[128, 256]"
std::string format_shape(const std::vector<int64_t>& shape);

// Multi-line "key  value" summary: architecture, layers, hidden, heads / kv heads / head_dim, D,
// intermediate, vocab, tied embeddings, attention bias, dtype, params, bytes, files, config hash,
// KV cache per token in fp16.
std::string format_model_summary(const ModelConfig& config, const WeightsReport& report);

}  // namespace cskv::model
