// Hugging Face config.json of Llama/Mistral/Qwen2 decoder models, and the weight shapes it implies.
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace cskv::model {

enum class Arch { kLlama, kMistral, kQwen2 };
const char* arch_name(Arch a);  // "LlamaForCausalLM" | "MistralForCausalLM" | "Qwen2ForCausalLM"
const char* model_type_name(Arch a);  // "llama" | "mistral" | "qwen2" (config.json model_type)

// rope_scaling of config.json ("type" or "rope_type"): linear, dynamic (NTK), llama3 or yarn, as HF
// transformers' modeling_rope_utils computes them.
struct RopeScaling {
  std::string type;  // "" (none) | "linear" | "dynamic" | "llama3" | "yarn"
  double factor = 1.0;
  double low_freq_factor = 0, high_freq_factor = 0;  // llama3
  int64_t original_max_position_embeddings = 0;      // llama3, yarn
  double beta_fast = 32, beta_slow = 1;              // yarn
  bool truncate = true;                              // yarn
  double attention_factor = 1.0;  // yarn: multiplies cos and sin (given, or derived as HF does)
};

struct ModelConfig {
  Arch arch = Arch::kLlama;
  int64_t hidden_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;  // defaults to num_attention_heads
  int64_t head_dim = 0;             // defaults to hidden_size / num_attention_heads
  int64_t intermediate_size = 0;
  int64_t vocab_size = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  double rope_scaling_factor = 1.0;  // rope_scaling {"type"|"rope_type": "linear", "factor": f}
  RopeScaling rope_scaling;          // dynamic/llama3/yarn parameters (type "" or "linear": unused)
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v biases (always true for Qwen2)
  std::string torch_dtype = "float32";
  int64_t bos_token_id = -1;   // -1: none
  int64_t sliding_window = 0;  // Mistral sliding-window attention span (0: none)
  // The longest sequence the model was trained for (0: not given). It bounds --seq-len and eval's
  // context; part of hash() only under dynamic RoPE (whose base grows beyond it), as it changes no
  // activation otherwise. Required by dynamic.
  int64_t max_position_embeddings = 0;

  int64_t kv_dim() const { return num_key_value_heads * head_dim; }  // D
  int64_t q_dim() const { return num_attention_heads * head_dim; }

  // Stable hex hash of the fields above but max_position_embeddings (but under dynamic RoPE; what
  // shards/checkpoints record to detect a model swap): FNV-1a 64 of canonical_json(), as 16
  // lowercase hex digits.
  std::string hash() const;
  // The fields above as compact JSON with sorted keys (the input of hash()).
  std::string canonical_json() const;
  // rope_scaling of a dynamic/llama3/yarn config as JSON (part of canonical_json and to_json).
  nlohmann::json rope_json() const;
  // config.json text that HF transformers and parse_config() both read.
  std::string to_json() const;
};

// Parses and validates; throws cskv::Error (kInput) naming the file and the offending key.
ModelConfig parse_config_json(const std::string& json_text, const std::string& path);
ModelConfig load_config(const std::string& model_dir);  // <dir>/config.json

using WeightShape = std::vector<int64_t>;

// Every weight the architecture has, with its expected shape (HF names and layouts).
std::map<std::string, WeightShape> expected_weights(const ModelConfig& c);
// The same weights in model order: embed_tokens, layers 0..L-1 (HF order inside a layer),
// model.norm, lm_head (absent when tie_word_embeddings).
std::vector<std::pair<std::string, WeightShape>> expected_weight_list(const ModelConfig& c);

}  // namespace cskv::model
