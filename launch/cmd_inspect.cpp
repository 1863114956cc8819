// `cskv inspect`: loads a HF model directory's config.json, checks every weight's shape against
// it (headers only; no tensor data is read) and prints the model summary.
#include <iostream>

#include "launch/cli.h"
#include "launch/subcommands.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/weights.h"

namespace cskv::cli {

int run_inspect(int argc, char** argv) {
  return guarded("inspect", [&] {
    auto options = make_options(
        "inspect",
        "Validate a Hugging Face model directory (config.json + model.safetensors or sharded "
        "safetensors with model.safetensors.index.json) and print its summary: architecture, "
        "sizes, parameters, bytes, files, config hash and the fp16 KV-cache size per token.");
    options.add_options("input")("model", "Model directory (required)",
                                 cxxopts::value<std::string>());
    const auto r = parse(options, argc, argv);
    if (!r) return kExitOk;
    const std::string dir = required<std::string>(*r, "model");
    const model::ModelConfig config = model::load_config(dir);
    const auto weights = model::SafetensorsModel::open_dir(dir);
    const model::WeightsReport report = model::validate_weights(config, weights, dir);
    std::cout << "model            " << dir << "\n"
              << model::format_model_summary(config, report) << std::flush;
    return kExitOk;
  });
}

}  // namespace cskv::cli
