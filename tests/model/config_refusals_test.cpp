// What config.json may not say: fields the forward does not implement (by name), sizes beyond
// cskv's limits or beyond what the safetensors hold (before any list is built), config.json as a
// FIFO or /dev/zero; and the weights fingerprint (model/weights.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "model/config.h"
#include "model/safetensors.h"
#include "model/toy_model.h"
#include "model/weights.h"
#include "tests/support/test_support.h"

namespace cskv::model {
namespace {

namespace fs = std::filesystem;

nlohmann::json base() {
  return nlohmann::json::parse(R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 64,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "intermediate_size": 128, "vocab_size": 100})");
}

std::string parse_error(const nlohmann::json& j) {
  return test::input_error_of([&] { parse_config_json(j.dump(), "m/config.json"); });
}

TEST(ConfigRefusals, HiddenActOtherThanSilu) {
  auto j = base();
  j["hidden_act"] = "gelu";
  EXPECT_EQ(parse_error(j),
            "m/config.json: hidden_act 'gelu' is not implemented (cskv computes silu)");
  j["hidden_act"] = "x!garbage";
  EXPECT_EQ(parse_error(j),
            "m/config.json: hidden_act 'x!garbage' is not implemented (cskv computes silu)");
  j["hidden_act"] = 3;
  EXPECT_EQ(parse_error(j),
            "m/config.json: key 'hidden_act': expected a string, found an integer (3)");
  for (const char* ok : {"silu", "swish"}) {
    j["hidden_act"] = ok;
    EXPECT_EQ(parse_config_json(j.dump(), "x").hidden_size, 64) << ok;
  }
}

TEST(ConfigRefusals, MaxPositionEmbeddings) {
  auto j = base();
  j["max_position_embeddings"] = -1;
  EXPECT_EQ(parse_error(j),
            "m/config.json: key 'max_position_embeddings': expected a positive integer, found -1");
  j["max_position_embeddings"] = 0;
  EXPECT_EQ(parse_error(j),
            "m/config.json: key 'max_position_embeddings': expected a positive integer, found 0");
  j["max_position_embeddings"] = "4096";
  EXPECT_EQ(parse_error(j),
            "m/config.json: key 'max_position_embeddings': expected an integer, found a string "
            "(\"4096\")");
  j["max_position_embeddings"] = 4096;
  const ModelConfig c = parse_config_json(j.dump(), "x");
  EXPECT_EQ(c.max_position_embeddings, 4096);
  // Not part of the hash (it changes no activation), but it survives to_json.
  EXPECT_EQ(c.hash(), parse_config_json(base().dump(), "x").hash());
  EXPECT_EQ(parse_config_json(c.to_json(), "x").max_position_embeddings, 4096);
  EXPECT_EQ(parse_config_json(base().dump(), "x").max_position_embeddings, 0);
}

TEST(ConfigRefusals, ModelTypeContradictingArchitectures) {
  auto j = base();
  j["architectures"] = {"Qwen2ForCausalLM"};
  j["model_type"] = "llama";
  EXPECT_EQ(parse_error(j),
            "m/config.json: model_type 'llama' contradicts architectures [Qwen2ForCausalLM] "
            "(expected model_type 'qwen2')");
  j["model_type"] = 5;
  EXPECT_EQ(parse_error(j),
            "m/config.json: key 'model_type': expected a string, found an integer "
            "(5)");
  j["model_type"] = "qwen2";
  EXPECT_EQ(parse_config_json(j.dump(), "x").arch, Arch::kQwen2);
  j["model_type"] = nullptr;
  EXPECT_EQ(parse_config_json(j.dump(), "x").arch, Arch::kQwen2);
}

TEST(ConfigRefusals, OtherUnimplementedFields) {
  auto j = base();
  j["mlp_bias"] = true;
  EXPECT_EQ(parse_error(j),
            "m/config.json: mlp_bias true is not implemented (cskv computes MLPs without biases)");
  j = base();
  j["partial_rotary_factor"] = 0.5;
  EXPECT_EQ(parse_error(j),
            "m/config.json: partial_rotary_factor 0.5 is not implemented (cskv "
            "rotates the whole head_dim: 1.0)");
  j["partial_rotary_factor"] = 1.0;
  EXPECT_EQ(parse_config_json(j.dump(), "x").head_dim, 16);
  j = base();
  j["quantization_config"] = {{"quant_method", "gptq"}};
  EXPECT_EQ(parse_error(j),
            "m/config.json: quantization_config is not implemented (cskv reads float32, float16 or "
            "bfloat16 weights; dequantize the model first)");
  j = base();
  j["rms_norm_eps"] = 0;
  EXPECT_EQ(parse_error(j),
            "m/config.json: key 'rms_norm_eps': expected a positive number, found 0");
  j = base();
  j["rope_scaling"] = {{"rope_type", "longrope"}, {"factor", 2.0}};
  EXPECT_EQ(parse_error(j),
            "m/config.json: rope_scaling type 'longrope' is not supported (supported: linear, "
            "dynamic, llama3, yarn)");
  j = base();
  j["head_dim"] = 15;
  EXPECT_EQ(parse_error(j),
            "m/config.json: head_dim 15 is odd (RoPE rotates pairs of channels; "
            "expected an even head_dim)");
  j = base();
  j["bos_token_id"] = 100;
  EXPECT_EQ(parse_error(j), "m/config.json: bos_token_id 100 is not below vocab_size 100");
}

// The real model the tests use passes every new check.
TEST(ConfigRefusals, Stories260KStillLoads) {
  const std::string dir = "/work/shared/models/stories260K";
  if (!fs::exists(dir + "/config.json")) GTEST_SKIP() << dir << " is not here";
  const ModelConfig c = load_config(dir);
  EXPECT_EQ(c.max_position_embeddings, 512);
  const auto report = validate_weights(c, SafetensorsModel::open_dir(dir), dir);
  EXPECT_EQ(report.params, count_params(c));
}

TEST(ConfigSizes, FieldsBeyondTheLimitsAreRefusedBeforeAnyList) {
  auto j = base();
  j["num_hidden_layers"] = int64_t{1} << 40;
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(parse_error(j),
            "m/config.json: key 'num_hidden_layers': 1099511627776 exceeds cskv's limit of 4096");
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 1.0);
  j = base();
  j["hidden_size"] = int64_t{1} << 21;
  j["head_dim"] = 16;
  EXPECT_EQ(parse_error(j),
            "m/config.json: key 'hidden_size': 2097152 exceeds cskv's limit of 1048576");
  j = base();
  j["vocab_size"] = int64_t{1} << 30;
  EXPECT_EQ(parse_error(j),
            "m/config.json: key 'vocab_size': 1073741824 exceeds cskv's limit of 16777216");
  j = base();
  j["intermediate_size"] = int64_t{1} << 23;
  EXPECT_EQ(parse_error(j),
            "m/config.json: key 'intermediate_size': 8388608 exceeds cskv's limit of 4194304");
  j = base();
  j["num_hidden_layers"] = 9223372036854775807;
  EXPECT_EQ(parse_error(j),
            "m/config.json: key 'num_hidden_layers': 9223372036854775807 exceeds "
            "cskv's limit of 4096");
}

// A zero-filled model of config c in dir (config.json and model.safetensors).
void write_zero_model(const std::string& dir, const ModelConfig& c) {
  fs::create_directories(dir);
  NamedTensors tensors;
  for (const auto& [name, shape] : expected_weight_list(c)) {
    tensors.emplace_back(name, at::zeros(shape, at::kHalf));
  }
  write_safetensors(dir + "/model.safetensors", tensors);
  test::write_file(dir + "/config.json", c.to_json());
}

TEST(ConfigSizes, MoreLayersThanTheFilesHoldIsRefusedFirst) {
  test::TempDir dir;
  const ModelConfig c = parse_config_json(base().dump(), "x");
  write_zero_model(dir.path(), c);
  auto j = nlohmann::json::parse(c.to_json());
  j["num_hidden_layers"] = 4096;  // at the limit: the header check speaks, not the list
  test::write_file(dir / "config.json", j.dump());
  const ModelConfig big = load_config(dir.path());
  EXPECT_EQ(test::input_error_of(
                [&] { validate_weights(big, SafetensorsModel::open_dir(dir.path()), dir.path()); }),
            dir.path() +
                ": config.json has num_hidden_layers 4096, but the safetensors hold 2 layer(s) "
                "(tensors model.layers.<n>.*)");
  // A vocabulary larger than the embedding: the shape check names the tensor.
  j = nlohmann::json::parse(c.to_json());
  j["vocab_size"] = 1 << 24;
  test::write_file(dir / "config.json", j.dump());
  EXPECT_EQ(test::input_error_of([&] {
              validate_weights(load_config(dir.path()), SafetensorsModel::open_dir(dir.path()),
                               dir.path());
            }),
            dir / "model.safetensors" +
                ": tensor 'model.embed_tokens.weight' has shape [100, 64], expected [16777216, "
                "64] from config.json");
}

TEST(ConfigFiles, FifoAndDevZeroAsConfigJsonAreRefusedWithoutReading) {
  test::TempDir dir;
  ASSERT_EQ(::mkfifo((dir / "config.json").c_str(), 0644), 0);
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(test::input_error_of([&] { load_config(dir.path()); }),
            dir / "config.json" + ": expected a regular config, found a FIFO");
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 1.0);
  fs::remove(dir / "config.json");
  fs::create_symlink("/dev/zero", dir / "config.json");
  EXPECT_EQ(test::input_error_of([&] { load_config(dir.path()); }),
            dir / "config.json" + ": expected a regular config, found a character device");
  fs::remove(dir / "config.json");
  fs::create_directory(dir / "config.json");
  EXPECT_EQ(test::input_error_of([&] { load_config(dir.path()); }),
            dir / "config.json" + ": expected a regular config, found a directory");
}

TEST(WeightsFingerprint, DependsOnEveryWeightByteAndNotOnThreads) {
  test::TempDir dir;
  ToyModelSpec spec;
  spec.hidden = 32;
  spec.layers = 2;
  spec.heads = 4;
  spec.kv_heads = 2;
  spec.intermediate = 48;
  spec.vocab = 64;
  write_toy_model(spec, dir / "a");
  write_toy_model(spec, dir / "a2");
  spec.seed = 1;
  write_toy_model(spec, dir / "b");
  const auto fp = [&](const std::string& d) {
    return weights_fingerprint(load_config(d), SafetensorsModel::open_dir(d));
  };
  const std::string a = fp(dir / "a");
  EXPECT_EQ(a.size(), 6u + 16u);
  EXPECT_EQ(a.rfind("xxh64:", 0), 0u);
  EXPECT_EQ(fp(dir / "a2"), a);
  EXPECT_NE(fp(dir / "b"), a);
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  ToyModelSpec same_as_a = spec;
  same_as_a.seed = 0;
  write_toy_model(same_as_a, dir / "a3");  // files not seen yet: computed again, on one thread
  EXPECT_EQ(fp(dir / "a3"), a);
  at::set_num_threads(threads);

  // One element of one tensor (the last layer's MLP) changed: another fingerprint.
  const ModelConfig c = load_config(dir / "a");
  const auto w = SafetensorsModel::open_dir(dir / "a");
  NamedTensors tensors;
  for (const auto& [name, shape] : expected_weight_list(c)) {
    tensors.emplace_back(name, w.get(name).clone());
  }
  for (auto& [name, t] : tensors) {
    if (name == "model.layers.1.mlp.down_proj.weight") t.view(-1)[7] += 1;
  }
  fs::create_directories(dir / "c");
  fs::copy_file(dir / "a/config.json", dir / "c/config.json");
  write_safetensors(dir / "c/model.safetensors", tensors);
  EXPECT_NE(fp(dir / "c"), a);

  // Remembered per files: the same files give the same answer; rewritten ones are read again
  // (here a's weights replaced by c's under a's name).
  EXPECT_EQ(fp(dir / "a"), a);
  write_safetensors(dir / "a/model.safetensors", tensors);
  EXPECT_EQ(fp(dir / "a"), fp(dir / "c"));
}

}  // namespace
}  // namespace cskv::model
