// Tests of config.json parsing (Llama/Mistral/Qwen2, defaults, every error message), the config
// hash, the expected weight list and validate_weights().
#include "model/config.h"

#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include "model/safetensors.h"
#include "model/weights.h"
#include "tests/support/test_support.h"

namespace cskv::model {
namespace {

const char* kLlama2 = R"({
  "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
  "intermediate_size": 11008, "num_attention_heads": 32, "num_hidden_layers": 32,
  "rms_norm_eps": 1e-05, "vocab_size": 32000, "torch_dtype": "float16", "bos_token_id": 1,
  "rope_scaling": null, "max_position_embeddings": 4096})";

// Small valid config whose keys the error tests override one at a time.
nlohmann::json base() {
  return nlohmann::json::parse(R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 64,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "intermediate_size": 128, "vocab_size": 100})");
}

std::string parse_error(const nlohmann::json& j) {
  return test::error_message([&] { parse_config_json(j.dump(), "m/config.json"); });
}

TEST(Config, Llama2DefaultsKvHeadsHeadDimRopeAndTie) {
  const ModelConfig c = parse_config_json(kLlama2, "llama/config.json");
  EXPECT_EQ(c.arch, Arch::kLlama);
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.num_hidden_layers, 32);
  EXPECT_EQ(c.num_attention_heads, 32);
  EXPECT_EQ(c.num_key_value_heads, 32);  // default = heads
  EXPECT_EQ(c.head_dim, 128);            // default = hidden / heads
  EXPECT_EQ(c.kv_dim(), 4096);
  EXPECT_EQ(c.intermediate_size, 11008);
  EXPECT_EQ(c.vocab_size, 32000);
  EXPECT_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_EQ(c.rope_theta, 10000.0);
  EXPECT_EQ(c.rope_scaling_factor, 1.0);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_EQ(c.torch_dtype, "float16");
  EXPECT_EQ(c.bos_token_id, 1);

  const auto w = expected_weights(c);
  EXPECT_EQ(w.size(), 1u + 32u * 9u + 1u + 1u);
  EXPECT_EQ(w.at("model.embed_tokens.weight"), (WeightShape{32000, 4096}));
  EXPECT_EQ(w.at("model.layers.31.self_attn.k_proj.weight"), (WeightShape{4096, 4096}));
  EXPECT_EQ(w.at("model.layers.0.mlp.down_proj.weight"), (WeightShape{4096, 11008}));
  EXPECT_EQ(w.at("lm_head.weight"), (WeightShape{32000, 4096}));
  EXPECT_EQ(w.count("model.layers.0.self_attn.k_proj.bias"), 0u);
  EXPECT_EQ(count_params(c), 6738415616);               // Llama-2-7B
  EXPECT_EQ(kv_cache_bytes_per_token_fp16(c), 524288);  // 0.5 MiB per token
}

TEST(Config, MistralGqaWithExplicitHeadDim) {
  // Mistral-NeMo-like: head_dim 128 although hidden/heads = 160.
  const ModelConfig c = parse_config_json(R"({"architectures": ["MistralForCausalLM"],
    "hidden_size": 5120, "num_hidden_layers": 40, "num_attention_heads": 32,
    "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 14336,
    "vocab_size": 131072, "rope_theta": 1000000.0, "torch_dtype": "bfloat16",
    "sliding_window": null})",
                                          "nemo/config.json");
  EXPECT_EQ(c.arch, Arch::kMistral);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.kv_dim(), 1024);
  EXPECT_EQ(c.q_dim(), 4096);
  EXPECT_EQ(c.rope_theta, 1e6);
  EXPECT_EQ(c.rms_norm_eps, 1e-6);  // default
  EXPECT_EQ(c.bos_token_id, -1);
  const auto w = expected_weights(c);
  EXPECT_EQ(w.at("model.layers.39.self_attn.q_proj.weight"), (WeightShape{4096, 5120}));
  EXPECT_EQ(w.at("model.layers.39.self_attn.k_proj.weight"), (WeightShape{1024, 5120}));
  EXPECT_EQ(w.at("model.layers.39.self_attn.v_proj.weight"), (WeightShape{1024, 5120}));
  EXPECT_EQ(w.at("model.layers.39.self_attn.o_proj.weight"), (WeightShape{5120, 4096}));
}

TEST(Config, HeadDimNullFallsBackToHiddenOverHeads) {
  auto j = base();
  j["head_dim"] = nullptr;
  EXPECT_EQ(parse_config_json(j.dump(), "x").head_dim, 16);
}

TEST(Config, Qwen2AlwaysHasQkvBiasTiedEmbeddingsAndLinearRope) {
  const ModelConfig c = parse_config_json(R"({"architectures": ["Qwen2ForCausalLM"],
    "hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14,
    "num_key_value_heads": 2, "intermediate_size": 4864, "vocab_size": 151936,
    "tie_word_embeddings": true, "rope_scaling": {"rope_type": "linear", "factor": 4.0},
    "bos_token_id": 151643})",
                                          "qwen/config.json");
  EXPECT_EQ(c.arch, Arch::kQwen2);
  EXPECT_TRUE(c.attention_bias);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.kv_dim(), 128);
  EXPECT_EQ(c.rope_scaling_factor, 4.0);
  const auto w = expected_weights(c);
  EXPECT_EQ(w.size(), 1u + 24u * 12u + 1u);  // 3 biases per layer, no lm_head
  EXPECT_EQ(w.count("lm_head.weight"), 0u);
  EXPECT_EQ(w.at("model.layers.5.self_attn.q_proj.bias"), (WeightShape{896}));
  EXPECT_EQ(w.at("model.layers.5.self_attn.k_proj.bias"), (WeightShape{128}));
  EXPECT_EQ(w.at("model.layers.5.self_attn.v_proj.bias"), (WeightShape{128}));
  EXPECT_EQ(count_params(c), 494032768);  // Qwen2-0.5B
}

TEST(Config, LlamaAttentionBiasKeyAndModelTypeFallback) {
  auto j = base();
  j.erase("architectures");
  j["model_type"] = "mistral";
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2}};
  EXPECT_EQ(parse_config_json(j.dump(), "x").arch, Arch::kMistral);
  EXPECT_EQ(parse_config_json(j.dump(), "x").rope_scaling_factor, 2.0);
  j = base();
  j["attention_bias"] = true;
  const ModelConfig c = parse_config_json(j.dump(), "x");
  EXPECT_TRUE(c.attention_bias);
  EXPECT_EQ(expected_weights(c).at("model.layers.1.self_attn.k_proj.bias"), (WeightShape{32}));
}

TEST(Config, ModelOrderListStartsWithEmbeddingsAndEndsWithLmHead) {
  const auto list = expected_weight_list(parse_config_json(base().dump(), "x"));
  ASSERT_EQ(list.size(), 1u + 2u * 9u + 2u);
  EXPECT_EQ(list[0].first, "model.embed_tokens.weight");
  EXPECT_EQ(list[1].first, "model.layers.0.input_layernorm.weight");
  EXPECT_EQ(list[3].first, "model.layers.0.self_attn.k_proj.weight");
  EXPECT_EQ(list[10].first, "model.layers.1.input_layernorm.weight");
  EXPECT_EQ(list[19].first, "model.norm.weight");
  EXPECT_EQ(list[20].first, "lm_head.weight");
}

TEST(Config, HashIsStableAndRoundTripsThroughToJson) {
  const ModelConfig c = parse_config_json(base().dump(), "x");
  EXPECT_EQ(c.canonical_json(),
            R"({"architecture":"LlamaForCausalLM","attention_bias":false,"bos_token_id":-1,)"
            R"("head_dim":16,"hidden_size":64,"intermediate_size":128,"num_attention_heads":4,)"
            R"("num_hidden_layers":2,"num_key_value_heads":2,"rms_norm_eps":1e-06,)"
            R"("rope_scaling_factor":1.0,"rope_theta":10000.0,"tie_word_embeddings":false,)"
            R"("torch_dtype":"float32","vocab_size":100})");
  // FNV-1a 64 of the canonical JSON above (pinned: shards and checkpoints record this value).
  EXPECT_EQ(c.hash(), "b38e092754ebfe6f");
  const ModelConfig again = parse_config_json(c.to_json(), "x");
  EXPECT_EQ(again.hash(), c.hash());
  EXPECT_EQ(again.canonical_json(), c.canonical_json());

  ModelConfig d = c;
  d.num_key_value_heads = 4;
  EXPECT_NE(d.hash(), c.hash());
  ModelConfig q = c;
  q.arch = Arch::kQwen2;
  q.attention_bias = true;
  q.rope_scaling_factor = 8;
  q.tie_word_embeddings = true;
  q.bos_token_id = 3;
  const ModelConfig q2 = parse_config_json(q.to_json(), "x");
  EXPECT_EQ(q2.canonical_json(), q.canonical_json());
}

TEST(Config, ArchitectureErrors) {
  auto j = base();
  j["architectures"] = {"GPT2LMHeadModel"};
  EXPECT_EQ(parse_error(j),
            "m/config.json: architecture 'GPT2LMHeadModel' is not supported (supported: "
            "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)");
  j["architectures"] = nlohmann::json::array();
  EXPECT_EQ(parse_error(j),
            "m/config.json: key 'architectures': expected a non-empty array of strings, found an "
            "array");
  j["architectures"] = "LlamaForCausalLM";
  EXPECT_EQ(parse_error(j),
            "m/config.json: key 'architectures': expected a non-empty array of strings, found a "
            "string (\"LlamaForCausalLM\")");
  j["architectures"] = {7};
  EXPECT_EQ(parse_error(j),
            "m/config.json: key 'architectures': expected a non-empty array of strings, found an "
            "integer (7) as first element");
  j.erase("architectures");
  EXPECT_EQ(parse_error(j),
            "m/config.json: missing required key 'architectures' (or 'model_type')");
  j["model_type"] = "gpt2";
  EXPECT_EQ(parse_error(j),
            "m/config.json: model_type 'gpt2' is not supported (supported: llama, mistral, qwen2)");
}

TEST(Config, MissingKeysAndWrongTypes) {
  auto j = base();
  j.erase("hidden_size");
  EXPECT_EQ(parse_error(j),
            "m/config.json: missing required key 'hidden_size' (expected an integer)");
  j = base();
  j.erase("vocab_size");
  EXPECT_EQ(parse_error(j),
            "m/config.json: missing required key 'vocab_size' (expected an integer)");
  j = base();
  j["num_hidden_layers"] = "32";
  EXPECT_EQ(parse_error(j),
            "m/config.json: key 'num_hidden_layers': expected an integer, found a string (\"32\")");
  j = base();
  j["intermediate_size"] = 128.5;
  EXPECT_EQ(parse_error(j),
            "m/config.json: key 'intermediate_size': expected an integer, found a float (128.5)");
  j = base();
  j["num_attention_heads"] = 0;
  EXPECT_EQ(parse_error(j),
            "m/config.json: key 'num_attention_heads': expected a positive integer, found 0");
  j = base();
  j["num_key_value_heads"] = -2;
  EXPECT_EQ(parse_error(j),
            "m/config.json: key 'num_key_value_heads': expected a positive integer, found -2");
  j = base();
  j["rms_norm_eps"] = "1e-5";
  EXPECT_EQ(parse_error(j),
            "m/config.json: key 'rms_norm_eps': expected a number, found a string (\"1e-5\")");
  j = base();
  j["rope_theta"] = -1.0;
  EXPECT_EQ(parse_error(j),
            "m/config.json: key 'rope_theta': expected a positive number, found -1.0");
  j = base();
  j["tie_word_embeddings"] = 1;
  EXPECT_EQ(parse_error(j),
            "m/config.json: key 'tie_word_embeddings': expected a boolean, found an integer (1)");
  j = base();
  j["attention_bias"] = "no";
  EXPECT_EQ(parse_error(j),
            "m/config.json: key 'attention_bias': expected a boolean, found a string (\"no\")");
  j = base();
  j["torch_dtype"] = "int8";
  EXPECT_EQ(parse_error(j),
            "m/config.json: key 'torch_dtype': expected float32|float16|bfloat16, found 'int8'");
  j = base();
  j["bos_token_id"] = {1, 2};
  EXPECT_EQ(parse_error(j),
            "m/config.json: key 'bos_token_id': expected a non-negative integer, found an array");
  j = base();
  j["head_dim"] = 0;
  EXPECT_EQ(parse_error(j), "m/config.json: key 'head_dim': expected a positive integer, found 0");
}

TEST(Config, DivisibilityErrors) {
  auto j = base();
  j["num_key_value_heads"] = 3;
  EXPECT_EQ(parse_error(j),
            "m/config.json: num_attention_heads (4) is not divisible by num_key_value_heads (3)");
  j = base();
  j["hidden_size"] = 66;
  EXPECT_EQ(parse_error(j),
            "m/config.json: hidden_size (66) is not divisible by num_attention_heads (4) and "
            "head_dim is not given");
  j["head_dim"] = 16;  // explicit head_dim makes it valid
  EXPECT_EQ(parse_config_json(j.dump(), "x").q_dim(), 64);
}

TEST(Config, RopeScalingErrors) {
  auto j = base();
  j["rope_scaling"] = {{"type", "longrope"}, {"factor", 4.0}};
  EXPECT_EQ(parse_error(j),
            "m/config.json: rope_scaling type 'longrope' is not supported "
            "(supported: linear, dynamic, llama3, yarn)");
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}};
  EXPECT_EQ(parse_error(j),
            "m/config.json: missing required key "
            "'rope_scaling.original_max_position_embeddings' (expected an integer)");
  j["rope_scaling"] = {{"rope_type", "llama3"},
                       {"factor", 8.0},
                       {"original_max_position_embeddings", 8192},
                       {"low_freq_factor", 1.0}};
  EXPECT_EQ(parse_error(j),
            "m/config.json: missing required key "
            "'rope_scaling.high_freq_factor' (expected a number)");
  j["rope_scaling"]["high_freq_factor"] = 0.5;
  EXPECT_EQ(parse_error(j),
            "m/config.json: rope_scaling.high_freq_factor (0.5) must exceed "
            "low_freq_factor (1)");
  j["rope_scaling"] = {{"type", "yarn"},
                       {"factor", 4.0},
                       {"original_max_position_embeddings", 4096},
                       {"truncate", 1}};
  EXPECT_EQ(parse_error(j),
            "m/config.json: key 'rope_scaling.truncate': expected a boolean, "
            "found an integer (1)");
  j["rope_scaling"] = {{"factor", 8.0}};
  EXPECT_EQ(parse_error(j), "m/config.json: key 'rope_scaling': missing 'type' (or 'rope_type')");
  j["rope_scaling"] = {{"type", "linear"}};
  EXPECT_EQ(parse_error(j),
            "m/config.json: missing required key 'rope_scaling.factor' (expected a number)");
  j["rope_scaling"] = {{"type", "linear"}, {"factor", "2"}};
  EXPECT_EQ(parse_error(j),
            "m/config.json: key 'rope_scaling.factor': expected a number, found a string (\"2\")");
  j["rope_scaling"] = 2;
  EXPECT_EQ(parse_error(j),
            "m/config.json: key 'rope_scaling': expected an object or null, found an integer (2)");
}

// transformers 5.x writes the RoPE base and variant as one `rope_parameters` object (rope_theta
// inside, top-level rope_theta/rope_scaling null): read as the 4.x keys would be, same hash.
TEST(Config, RopeParametersOfTransformers5ReadAsRopeThetaAndScaling) {
  auto v4 = base();
  v4["rope_theta"] = 500000.0;
  v4["rope_scaling"] = {{"rope_type", "llama3"},
                        {"factor", 8.0},
                        {"low_freq_factor", 1.0},
                        {"high_freq_factor", 4.0},
                        {"original_max_position_embeddings", 8192}};
  auto v5 = base();
  v5["rope_theta"] = nullptr;
  v5["rope_scaling"] = nullptr;
  v5["rope_parameters"] = v4["rope_scaling"];
  v5["rope_parameters"]["rope_theta"] = 500000.0;
  const ModelConfig a = parse_config_json(v4.dump(), "a"), b = parse_config_json(v5.dump(), "b");
  EXPECT_EQ(b.rope_theta, 500000.0);
  EXPECT_EQ(b.rope_scaling.type, "llama3");
  EXPECT_EQ(b.rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(b.hash(), a.hash());
  // The default variant: only the base.
  auto plain = base();
  plain["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 1e6}};
  const ModelConfig c = parse_config_json(plain.dump(), "c");
  EXPECT_EQ(c.rope_theta, 1e6);
  EXPECT_EQ(c.rope_scaling.type, "");
  // Both forms at once must agree; the 5.x object's keys are named as such in errors.
  auto both = v5;
  both["rope_theta"] = 10000.0;
  EXPECT_EQ(parse_error(both),
            "m/config.json: rope_parameters.rope_theta (500000) contradicts rope_theta (10000)");
  both = v5;
  both["rope_scaling"] = {{"type", "linear"}, {"factor", 8.0}};
  EXPECT_EQ(parse_error(both),
            "m/config.json: rope_parameters (type 'llama3', factor 8) contradicts rope_scaling "
            "(type 'linear', factor 8)");
  v5["rope_parameters"].erase("high_freq_factor");
  EXPECT_EQ(parse_error(v5),
            "m/config.json: missing required key 'rope_parameters.high_freq_factor' (expected a "
            "number)");
  v5["rope_parameters"] = {{"rope_type", "longrope"}, {"factor", 4.0}};
  EXPECT_EQ(parse_error(v5),
            "m/config.json: rope_parameters type 'longrope' is not supported "
            "(supported: linear, dynamic, llama3, yarn)");
}

// dynamic (NTK): factor under either key spelling, the top-level max_position_embeddings required
// (it is where the base starts to grow, so it is part of the hash here and only here); to_json
// writes what HF reads and what parses back to the same model.
TEST(Config, DynamicRopeBothSpellingsHashAndRoundTrip) {
  auto j = base();
  j["max_position_embeddings"] = 64;
  j["rope_scaling"] = {{"type", "dynamic"}, {"factor", 2.0}};
  const ModelConfig a = parse_config_json(j.dump(), "a");
  EXPECT_EQ(a.rope_scaling.type, "dynamic");
  EXPECT_EQ(a.rope_scaling.factor, 2.0);
  EXPECT_EQ(a.rope_scaling_factor, 1.0);  // positions are not divided as linear's are
  j["rope_scaling"] = {{"rope_type", "dynamic"}, {"factor", 2.0}};
  const ModelConfig b = parse_config_json(j.dump(), "b");
  EXPECT_EQ(b.hash(), a.hash());
  EXPECT_EQ(a.rope_json().dump(), R"({"factor":2.0,"rope_type":"dynamic"})");
  EXPECT_NE(
      a.canonical_json().find(
          R"("rope_scaling":{"factor":2.0,"max_position_embeddings":64,"rope_type":"dynamic"})"),
      std::string::npos)
      << a.canonical_json();
  const auto written = nlohmann::json::parse(a.to_json());
  EXPECT_EQ(written.at("rope_scaling"),
            (nlohmann::json{{"rope_type", "dynamic"}, {"factor", 2.0}}));
  EXPECT_EQ(written.at("max_position_embeddings"), 64);
  const ModelConfig again = parse_config_json(a.to_json(), "again");
  EXPECT_EQ(again.canonical_json(), a.canonical_json());
  EXPECT_EQ(again.hash(), a.hash());

  j["rope_scaling"]["factor"] = 4.0;
  EXPECT_NE(parse_config_json(j.dump(), "c").hash(), a.hash());
  j["rope_scaling"]["factor"] = 2.0;
  j["max_position_embeddings"] = 128;
  EXPECT_NE(parse_config_json(j.dump(), "d").hash(), a.hash());
  auto plain = base();  // without dynamic, max_position_embeddings changes no activation
  const std::string plain_hash = parse_config_json(plain.dump(), "e").hash();
  plain["max_position_embeddings"] = 128;
  EXPECT_EQ(parse_config_json(plain.dump(), "f").hash(), plain_hash);
  EXPECT_NE(a.hash(), plain_hash);
}

TEST(Config, DynamicRopeErrors) {
  auto j = base();
  j["max_position_embeddings"] = 64;
  j["rope_scaling"] = {{"rope_type", "dynamic"}};
  EXPECT_EQ(parse_error(j),
            "m/config.json: missing required key 'rope_scaling.factor' (expected a number)");
  j["rope_scaling"]["factor"] = nullptr;
  EXPECT_EQ(parse_error(j),
            "m/config.json: missing required key 'rope_scaling.factor' (expected a number)");
  j["rope_scaling"]["factor"] = -2;
  EXPECT_EQ(parse_error(j),
            "m/config.json: key 'rope_scaling.factor': expected a positive number, found -2");
  j["rope_scaling"]["factor"] = "2";
  EXPECT_EQ(parse_error(j),
            "m/config.json: key 'rope_scaling.factor': expected a number, found a string (\"2\")");
  j["rope_scaling"] = {{"type", "dynamic"}, {"factor", 2.0}};
  j.erase("max_position_embeddings");
  EXPECT_EQ(parse_error(j),
            "m/config.json: rope_scaling type 'dynamic' needs key 'max_position_embeddings' (the "
            "length beyond which dynamic NTK raises the RoPE base)");
}

TEST(Config, MalformedJsonAndMissingFile) {
  EXPECT_CSKV_ERROR(
      parse_config_json("{\"hidden_size\": ", "m/config.json"),
      "m/config.json: malformed JSON: parse error at line 1, column 17: syntax error while "
      "parsing value - unexpected end of input; expected '[', '{', or a literal");
  EXPECT_CSKV_ERROR(parse_config_json("[1, 2]", "m/config.json"),
                    "m/config.json: expected a JSON object at the top level, found an array");
  test::TempDir dir;
  EXPECT_CSKV_ERROR(load_config(dir.path()),
                    dir.path() +
                        "/config.json: cannot open file (expected a Hugging Face "
                        "config.json)");
  test::write_file(dir / "config.json", base().dump());
  EXPECT_EQ(load_config(dir.path()).hidden_size, 64);
}

// A model dir with zero-filled tensors of exactly the expected shapes (optionally tampered).
void write_zero_model(const std::string& dir, const ModelConfig& c,
                      const std::function<void(NamedTensors&)>& tamper = {}) {
  NamedTensors tensors;
  for (const auto& [name, shape] : expected_weight_list(c)) {
    tensors.emplace_back(name, at::zeros(shape, at::kHalf));
  }
  if (tamper) tamper(tensors);
  write_safetensors(dir + "/model.safetensors", tensors);
}

TEST(ConfigWeights, ValidateReportsParamsBytesAndExtras) {
  test::TempDir dir;
  const ModelConfig c = parse_config_json(base().dump(), "x");
  write_zero_model(dir.path(), c, [](NamedTensors& t) {
    t.emplace_back("model.layers.0.self_attn.rotary_emb.inv_freq", at::zeros({8}));
  });
  const auto report = validate_weights(c, SafetensorsModel::open_dir(dir.path()), dir.path());
  EXPECT_EQ(report.tensors, 21);
  EXPECT_EQ(report.params, count_params(c));
  EXPECT_EQ(report.params,
            100 * 64 * 2 + 2 * (64 + 64 * 64 + 2 * 32 * 64 + 64 * 64 + 64 + 3 * 128 * 64) + 64);
  EXPECT_EQ(report.data_bytes, static_cast<uint64_t>(report.params) * 2);
  EXPECT_EQ(report.dtypes, std::vector<std::string>{"F16"});
  EXPECT_EQ(report.files, std::vector<std::string>{"model.safetensors"});
  EXPECT_EQ(report.unexpected,
            std::vector<std::string>{"model.layers.0.self_attn.rotary_emb.inv_freq"});
}

TEST(ConfigWeights, ShapeMismatchAndMissingTensorNameFileTensorAndShapes) {
  test::TempDir dir;
  const ModelConfig c = parse_config_json(base().dump(), "x");
  write_zero_model(dir.path(), c, [](NamedTensors& t) {
    for (auto& [name, tensor] : t) {
      if (name == "model.layers.1.self_attn.k_proj.weight") tensor = at::zeros({16, 64}, at::kHalf);
    }
  });
  EXPECT_CSKV_ERROR(validate_weights(c, SafetensorsModel::open_dir(dir.path()), dir.path()),
                    dir.path() +
                        "/model.safetensors: tensor "
                        "'model.layers.1.self_attn.k_proj.weight' has shape [16, 64], "
                        "expected [32, 64] from config.json");
  test::TempDir dir2;
  write_zero_model(dir2.path(), c, [](NamedTensors& t) {
    t.erase(t.begin() + 5);  // model.layers.0.self_attn.o_proj.weight
  });
  EXPECT_CSKV_ERROR(validate_weights(c, SafetensorsModel::open_dir(dir2.path()), dir2.path()),
                    dir2.path() +
                        ": tensor 'model.layers.0.self_attn.o_proj.weight' is missing "
                        "(expected shape [64, 64] from config.json)");
}

}  // namespace
}  // namespace cskv::model
