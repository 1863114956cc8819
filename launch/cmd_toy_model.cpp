// `cskv toy-model`: writes the built-in random HF-format model and prints its summary.
// The written directory is re-opened and validated like `cskv inspect` does before the summary.
#include <chrono>
#include <iostream>

#include "common/error.h"
#include "common/log.h"
#include "common/output_dir.h"
#include "launch/cli.h"
#include "launch/settings.h"
#include "launch/subcommands.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/toy_model.h"
#include "model/weights.h"

namespace cskv::cli {
namespace {

model::Arch parse_arch(const std::string& s) {
  if (s == "llama") return model::Arch::kLlama;
  if (s == "mistral") return model::Arch::kMistral;
  if (s == "qwen2") return model::Arch::kQwen2;
  CSKV_FAIL_USAGE("--arch: expected llama|mistral|qwen2, found '" << s << "'");
}

// Every usual spelling (launch/settings.h): f32|fp32|float32|float, f16|..., bf16|bfloat16.
model::StDType parse_dtype(const std::string& s) {
  switch (
      float_dtype_setting("dtype", s, {FloatDtype::kF32, FloatDtype::kF16, FloatDtype::kBF16})) {
    case FloatDtype::kF32:
      return model::StDType::kF32;
    case FloatDtype::kF16:
      return model::StDType::kF16;
    case FloatDtype::kBF16:
      break;
  }
  return model::StDType::kBF16;
}

}  // namespace

int run_toy_model(int argc, char** argv) {
  return guarded("toy-model", [&] {
    auto options = make_options(
        "toy-model",
        "Write a random Hugging Face model directory (config.json + safetensors) whose projections "
        "have power-law singular values and whose RMSNorm weights have outlier channels, so its "
        "KV cache compresses like a real LLM's. Same flags and seed -> byte-identical files.");
    options.add_options("model")("arch",
                                 "Architecture: llama|mistral|qwen2 (qwen2 has q/k/v biases)",
                                 cxxopts::value<std::string>()->default_value("llama"))(
        "hidden", "Hidden size", cxxopts::value<int64_t>()->default_value("256"))(
        "layers", "Number of decoder layers", cxxopts::value<int64_t>()->default_value("4"))(
        "heads", "Attention heads (must divide --hidden)",
        cxxopts::value<int64_t>()->default_value("8"))(
        "kv-heads", "Key/value heads (GQA; must divide --heads)",
        cxxopts::value<int64_t>()->default_value("2"))(
        "intermediate", "MLP intermediate size", cxxopts::value<int64_t>()->default_value("688"))(
        "vocab", "Vocabulary size", cxxopts::value<int64_t>()->default_value("1024"))(
        "tie-embeddings", "Tie lm_head to embed_tokens (no lm_head.weight is written)")(
        "dtype", "Weight dtype: f32|f16|bf16", cxxopts::value<std::string>()->default_value("f16"))(
        "seed", "Random seed", cxxopts::value<uint64_t>()->default_value("0"))(
        "shards", "Number of .safetensors files (>1 adds model.safetensors.index.json)",
        cxxopts::value<int64_t>()->default_value("1"));
    options.add_options("output")("out", "Output directory (required; created if missing)",
                                  cxxopts::value<std::string>());
    add_settings(options, overwrite_settings());
    const auto r = parse(options, argc, argv);
    if (!r) return kExitOk;
    const std::string out = required<std::string>(*r, "out");
    model::ToyModelSpec spec;
    spec.arch = parse_arch((*r)["arch"].as<std::string>());
    spec.hidden = (*r)["hidden"].as<int64_t>();
    spec.layers = (*r)["layers"].as<int64_t>();
    spec.heads = (*r)["heads"].as<int64_t>();
    spec.kv_heads = (*r)["kv-heads"].as<int64_t>();
    spec.intermediate = (*r)["intermediate"].as<int64_t>();
    spec.vocab = (*r)["vocab"].as<int64_t>();
    spec.tie_word_embeddings = (*r)["tie-embeddings"].as<bool>();
    spec.dtype = parse_dtype((*r)["dtype"].as<std::string>());
    spec.seed = (*r)["seed"].as<uint64_t>();
    spec.shards = (*r)["shards"].as<int64_t>();
    model::toy_config(spec);  // usage errors before any file is touched
    if (!(*r)["overwrite"].as<bool>()) {
      if (const auto foreign = model::foreign_model_file(out)) {
        files::refuse_foreign_file(*foreign, "expected a model written by cskv toy-model", "--out");
      }
    }

    const auto start = std::chrono::steady_clock::now();
    model::write_toy_model(spec, out);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    log::get("model")->info("toy model written to {} in {:.2f} s", out, seconds);

    const model::ModelConfig config = model::load_config(out);
    const auto weights = model::SafetensorsModel::open_dir(out);
    const model::WeightsReport report = model::validate_weights(config, weights, out);
    std::cout << "model            " << out << "\n"
              << model::format_model_summary(config, report) << std::flush;
    return kExitOk;
  });
}

}  // namespace cskv::cli
