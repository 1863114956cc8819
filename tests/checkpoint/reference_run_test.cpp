// The reference code's view of an export: its arguments and file name for a run, the runs it
// cannot load (refused by name) and the quantization it does otherwise (warned).
#include "checkpoint/reference_run.h"

#include <gtest/gtest.h>

#include <vector>

#include "model/toy_model.h"
#include "tests/support/test_support.h"

namespace cskv::checkpoint {
namespace {

using json = nlohmann::json;
using trainer::KvKind;

// hidden 32, 4 heads of 8 channels, 2 KV heads (D = 16), 2 layers.
model::ModelConfig small_model() {
  model::ToyModelSpec spec;
  spec.hidden = 32;
  spec.layers = 2;
  spec.heads = 4;
  spec.kv_heads = 2;
  spec.intermediate = 64;
  spec.vocab = 64;
  return model::toy_config(spec);
}

FactorMap factors(const std::vector<int64_t>& k_ranks, const std::vector<int64_t>& v_ranks) {
  FactorMap f;
  for (size_t l = 0; l < k_ranks.size(); ++l) {
    const auto layer = static_cast<int64_t>(l);
    f[{layer, KvKind::kKey}] = {at::zeros({k_ranks[l], 32}), at::zeros({16, k_ranks[l]})};
    f[{layer, KvKind::kValue}] = {at::zeros({v_ranks[l], 32}), at::zeros({16, v_ranks[l]})};
  }
  return f;
}

json config(const model::ModelConfig& m) {
  return {{"model_config_hash", m.hash()},
          {"k_density", 0.5},
          {"v_density", 0.25},
          {"budget", 0.0},
          {"init", "pca"},
          {"k_bits", 4},
          {"v_bits", 4},
          {"group_size", 0},
          {"window", 32},
          {"quant_compat", "cskv"}};
}

TEST(ReferenceRun, PythonFloatStrings) {
  EXPECT_EQ(python_float_str(0.5), "0.5");
  EXPECT_EQ(python_float_str(0.375), "0.375");
  EXPECT_EQ(python_float_str(0.1), "0.1");
  EXPECT_EQ(python_float_str(0.3), "0.3");
  EXPECT_EQ(python_float_str(1.0 / 3.0), "0.3333333333333333");
  EXPECT_EQ(python_float_str(1.0), "1.0");
  EXPECT_EQ(python_float_str(123.25), "123.25");
  EXPECT_EQ(python_float_str(0.0001), "0.0001");
  EXPECT_EQ(python_float_str(1e-05), "1e-05");
  EXPECT_EQ(python_float_str(2.5e-07), "2.5e-07");
  EXPECT_EQ(python_float_str(1e16), "1e+16");
  EXPECT_EQ(python_float_str(-0.75), "-0.75");
}

TEST(ReferenceRun, DensityRunGivesTheReferenceArgumentsAndFileName) {
  const model::ModelConfig m = small_model();
  json c = config(m);
  const ReferenceRun r = reference_run(factors({8, 8}, {4, 4}), c, m);
  EXPECT_EQ(r.file_name(), "density_k_0.5_v_0.25_quant_k_4_v_4_window_32_");
  EXPECT_EQ(r.arguments(),
            "--k_density 0.5 --v_density 0.25 --k_bits 4 --v_bits 4 --use_window --q_window_size "
            "32");
  EXPECT_TRUE(r.warnings.empty());
  // 16 bits: the reference names the window 0; ASVD init; no window at all.
  c["k_bits"] = c["v_bits"] = 16;
  c["init"] = "asvd";
  EXPECT_EQ(reference_run(factors({8, 8}, {4, 4}), c, m).file_name(),
            "density_k_0.5_v_0.25_quant_k_16_v_16_asvd_window_0_");
  c["window"] = 0;
  const ReferenceRun no_window = reference_run(factors({8, 8}, {4, 4}), c, m);
  EXPECT_EQ(no_window.file_name(), "density_k_0.5_v_0.25_quant_k_16_v_16_asvd_");
  EXPECT_EQ(no_window.arguments(),
            "--k_density 0.5 --v_density 0.25 --k_bits 16 --v_bits 16 "
            "--use_asvd");
}

TEST(ReferenceRun, UniformBudgetRanksGetTheDensityOfTheirChannels) {
  const model::ModelConfig m = small_model();
  json c = config(m);
  c["budget"] = 0.3;  // the run's densities do not give these ranks: ones that do are derived
  const ReferenceRun r = reference_run(factors({6, 6}, {2, 2}), c, m);
  EXPECT_EQ(r.k_density, 0.375);  // 3 of 8 channels per head
  EXPECT_EQ(r.v_density, 0.125);
  EXPECT_EQ(r.file_name(), "density_k_0.375_v_0.125_quant_k_4_v_4_window_32_");
}

TEST(ReferenceRun, RefusesWhatTheReferenceCannotLoad) {
  const model::ModelConfig m = small_model();
  const json c = config(m);
  EXPECT_CSKV_ERROR(reference_run(factors({8, 4}, {4, 4}), c, m),
                    "--export-cskv: the reference code has one K rank for all layers, this run's "
                    "K ranks per layer are 8, 4 (--budget): train with --k-density/--v-density "
                    "instead");
  EXPECT_CSKV_ERROR(reference_run(factors({8, 8}, {3, 3}), c, m),
                    "--export-cskv: V rank 3 is not a multiple of the model's 2 KV heads");
  EXPECT_CSKV_ERROR(reference_run(factors({16, 16}, {4, 4}), c, m),
                    "--export-cskv: K keeps all 8 channels per head; the reference code accepts "
                    "densities in (0, 1) only");
  EXPECT_CSKV_ERROR(reference_run(factors({8}, {4}), c, m),
                    "--export-cskv: the reference code loads an entry for every one of the "
                    "model's 2 layers, there are no K factors of layer 1");
  json other = c;
  other["model_config_hash"] = "0123456789abcdef";
  EXPECT_CSKV_ERROR(reference_run(factors({8, 8}, {4, 4}), other, m),
                    "--export-cskv: the factors were trained for model 0123456789abcdef, --model "
                    "has hash " +
                        m.hash());
  model::ModelConfig qwen = m;
  qwen.arch = model::Arch::kQwen2;
  other["model_config_hash"] = qwen.hash();
  EXPECT_CSKV_ERROR(reference_run(factors({8, 8}, {4, 4}), other, qwen),
                    "--export-cskv: the reference code builds LlamaForCausalLM and "
                    "MistralForCausalLM attention only, this model is Qwen2ForCausalLM");
  model::ModelConfig wide = m;
  wide.head_dim = 16;  // explicit head_dim != hidden / heads
  other["model_config_hash"] = wide.hash();
  EXPECT_CSKV_ERROR(reference_run(factors({8, 8}, {4, 4}), other, wide),
                    "--export-cskv: the reference code takes head_dim = hidden_size / "
                    "num_attention_heads = 8, this model's head_dim is 16");
  EXPECT_CSKV_ERROR(reference_run(factors({8, 8}, {4, 4}), json{{"k_bits", 4}}, m),
                    "--export-cskv: the training config has no 'model_config_hash'");
}

TEST(ReferenceRun, WhatIsKnownBeforeTrainingIsRefusedFirst) {
  const model::ModelConfig m = small_model();
  check_reference_plan(m, 0.5, 0.875, 0);  // 7 of 8 channels: fine
  EXPECT_CSKV_ERROR(check_reference_plan(m, 0.5, 0.5, 0.25),
                    "--export-cskv with --budget 0.25: the reference code has one K and one V "
                    "rank for all layers, --budget chooses them per layer; give "
                    "--k-density/--v-density, or turn --export-cskv off");
  EXPECT_CSKV_ERROR(check_reference_plan(m, 0.5, 1.0, 0),
                    "--export-cskv with --v-density 1: every channel of a head is kept; the "
                    "reference code accepts densities in (0, 1) only");
  model::ModelConfig qwen = m;
  qwen.arch = model::Arch::kQwen2;
  EXPECT_CSKV_ERROR(check_reference_plan(qwen, 0.5, 0.5, 0),
                    "--export-cskv: the reference code builds LlamaForCausalLM and "
                    "MistralForCausalLM attention only, this model is Qwen2ForCausalLM");
}

TEST(ReferenceRun, WarnsWhereTheReferenceQuantizesOtherwise) {
  const model::ModelConfig m = small_model();
  json c = config(m);
  c["group_size"] = 2;  // V: r/n_kv = 2 channels, the reference's group too
  EXPECT_TRUE(reference_run(factors({8, 8}, {4, 4}), c, m).warnings.empty());
  c["group_size"] = 1;
  c["window"] = 0;  // keys too are quantized per token in groups then
  c["quant_compat"] = "none";
  EXPECT_EQ(reference_run(factors({8, 8}, {4, 4}), c, m).warnings,
            (std::vector<std::string>{
                "--group-size 1: the reference code quantizes V per token in groups of r/n_kv = "
                "2 channels; these factors were trained with groups of 1 (train with "
                "--group-size 0 to match)",
                "--group-size 1: the reference code quantizes K per token in groups of r/n_kv = "
                "4 channels; these factors were trained with groups of 1 (train with "
                "--group-size 0 to match)",
                "--quant-compat none: the reference code clamps the zero point to [0, "
                "2^bits-1], these factors were trained without the clamp (train with "
                "--quant-compat cskv to match)"}));
  c["k_bits"] = c["v_bits"] = 16;  // nothing is quantized: nothing differs
  EXPECT_TRUE(reference_run(factors({8, 8}, {4, 4}), c, m).warnings.empty());
}

}  // namespace
}  // namespace cskv::checkpoint
