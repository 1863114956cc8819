// The Llama-family decoder forward (Llama, Mistral, Qwen2) in LibTorch, with a hook that hands
// each layer's post-input_layernorm hidden state (the input of k_proj/v_proj) to the caller.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/kv_cache.h"
#include "model/safetensors.h"

namespace cskv::model {

// Called once per captured layer with X [batch*seq, H] (float32, contiguous, row = token).
using LayerHook = std::function<void(int64_t layer, const at::Tensor& x)>;

struct ForwardOptions {
  // Run layers 0..last_layer only and return an undefined tensor instead of logits
  // (-1: all layers, final norm and lm_head, returns logits [batch, seq, vocab]).
  int64_t last_layer = -1;
  // Logits only for positions [logits_from, seq) ([batch, seq - logits_from, vocab]): a long
  // prefill whose early logits nobody reads never holds [seq, vocab] of them.
  int64_t logits_from = 0;
};

// One decoder layer's weights in the compute dtype, on the compute device.
struct LayerWeights {
  at::Tensor input_norm, q, k, v, q_bias, k_bias, v_bias, o, post_norm, gate, up, down;
};

// Weights stay in the checkpoint's dtype, memory-mapped; one layer at a time is cast to the
// compute dtype (and moved to the device) just before use, so on the CPU no full float32 copy of
// the model ever exists. On CUDA (bf16/fp16 compute) the converted layers are kept on the GPU.
class LlamaModel {
 public:
  LlamaModel(ModelConfig config, std::shared_ptr<const SafetensorsModel> weights,
             at::ScalarType compute_dtype = at::kFloat, at::Device device = at::kCPU);

  const ModelConfig& config() const { return config_; }

  // tokens: int64 [batch, seq]. Positions are 0..seq-1 for every row.
  at::Tensor forward(const at::Tensor& tokens, const LayerHook& hook = {},
                     const ForwardOptions& options = {}) const;

  // RoPE tables for positions [0, seq): cos/sin of shape [seq, head_dim] (HF rotate_half layout).
  // Under dynamic RoPE every row depends on seq too (HF's base for a forward of seq positions).
  std::pair<at::Tensor, at::Tensor> rope_tables(int64_t seq) const;

  // The layer's weights converted for compute (cached on CUDA devices, and on the CPU after
  // keep_converted_layers(true)).
  LayerWeights layer_weights(int64_t layer) const;

  // Keep every converted layer (compute dtype: float32 on the CPU, i.e. twice an f16 checkpoint)
  // instead of converting it again on every forward: what token-by-token decoding needs.
  void keep_converted_layers(bool keep) { keep_converted_ = keep; }

  // One decoder layer on h [batch, seq, H]; calls hook with the normalised input.
  at::Tensor layer_forward(int64_t layer, const LayerWeights& w, const at::Tensor& h,
                           const at::Tensor& cos, const at::Tensor& sin,
                           const LayerHook& hook) const;

  // Incremental forward of one sequence: tokens int64 [1, n] at positions [p, p + n), p the
  // caches' common size(); caches[l] is layer l's (one per model layer). Each layer attends over
  // its cache's keys/values followed by the new tokens' own full-precision ones (causal, sliding
  // window as configured), then appends the new tokens to its cache. Returns logits
  // [1, n - logits_from, vocab] of the new tokens from the logits_from-th on. With empty caches
  // (a prefill) the logits are bitwise those of forward() on the same tokens.
  // Dynamic RoPE: refused beyond max_position_embeddings (rope_tables_cached).
  at::Tensor forward_cached(const at::Tensor& tokens, const std::vector<KvCache*>& caches,
                            int64_t logits_from = 0) const;

  // One decoder layer of forward_cached on h [1, n, H]; cos/sin cover positions [0, p + n).
  at::Tensor layer_forward_cached(const LayerWeights& w, const at::Tensor& h, const at::Tensor& cos,
                                  const at::Tensor& sin, KvCache& cache) const;

  // rope_tables(seq) rows, computed once for the longest length asked so far (each row depends
  // only on its position, so the values equal rope_tables(seq)'s). Under dynamic RoPE that holds
  // up to max_position_embeddings only (unscaled rows): a longer seq is refused (cached decoding
  // cannot follow a base that changes with the length; see llama.cpp).
  std::pair<at::Tensor, at::Tensor> rope_tables_cached(int64_t seq) const;

  // A weight by HF name in the compute dtype on the compute device.
  at::Tensor weight(const std::string& name) const;

  at::Device device() const { return device_; }

 private:
  at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w) const;

  ModelConfig config_;
  std::shared_ptr<const SafetensorsModel> weights_;
  at::ScalarType compute_dtype_;
  at::Device device_;
  bool keep_converted_ = false;
  mutable std::map<int64_t, LayerWeights> device_cache_;  // CUDA, or keep_converted_
  mutable at::Tensor rope_cos_, rope_sin_;                // rope_tables_cached()
  mutable at::Tensor final_norm_, lm_head_;               // forward_cached, keep_converted_
};

// float32 on the CPU, bfloat16 on CUDA.
at::ScalarType default_compute_dtype(at::Device device);

// Applies RoPE (HF rotate_half convention) to x [batch, heads, seq, head_dim].
at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

}  // namespace cskv::model
