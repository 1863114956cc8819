// The Llama-family decoder forward (Llama, Mistral, Qwen2) in LibTorch, with a hook that hands
// each layer's post-input_layernorm hidden state (the input of k_proj/v_proj) to the caller.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <memory>
#include <string>

#include "model/config.h"
#include "model/safetensors.h"

namespace cskv::model {

// Called once per captured layer with X [batch*seq, H] (float32, contiguous, row = token).
using LayerHook = std::function<void(int64_t layer, const at::Tensor& x)>;

struct ForwardOptions {
  // Run layers 0..last_layer only and return an undefined tensor instead of logits
  // (-1: all layers, final norm and lm_head, returns logits [batch, seq, vocab]).
  int64_t last_layer = -1;
};

// Weights stay in the checkpoint's dtype, memory-mapped; each matmul casts one weight to the
// compute dtype just before use, so no full float32 copy of the model ever exists.
class LlamaModel {
 public:
  LlamaModel(ModelConfig config, std::shared_ptr<const SafetensorsModel> weights,
             at::ScalarType compute_dtype = at::kFloat);

  const ModelConfig& config() const { return config_; }

  // tokens: int64 [batch, seq]. Positions are 0..seq-1 for every row.
  at::Tensor forward(const at::Tensor& tokens, const LayerHook& hook = {},
                     const ForwardOptions& options = {}) const;

  // RoPE tables for positions [0, seq): cos/sin of shape [seq, head_dim] (HF rotate_half layout).
  std::pair<at::Tensor, at::Tensor> rope_tables(int64_t seq) const;

  // One decoder layer on h [batch, seq, H]; calls hook with the normalised input.
  at::Tensor layer_forward(int64_t layer, const at::Tensor& h, const at::Tensor& cos,
                           const at::Tensor& sin, const LayerHook& hook) const;

  // A weight by HF name in the compute dtype (bias/weight of any module).
  at::Tensor weight(const std::string& name) const;

 private:
  at::Tensor rms_norm(const at::Tensor& x, const std::string& weight_name) const;
  at::Tensor linear(const at::Tensor& x, const std::string& prefix, bool bias) const;

  ModelConfig config_;
  std::shared_ptr<const SafetensorsModel> weights_;
  at::ScalarType compute_dtype_;
};

// Applies RoPE (HF rotate_half convention) to x [batch, heads, seq, head_dim].
at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

}  // namespace cskv::model
