// `cskv train`: initialises and trains the low-rank K/V factors of every layer (one process or
// under mpirun/srun), with sharded checkpoints, resume and graceful stop (exit 75), writing
// <ckpt-dir>/compressor.safetensors and the metrics (JSON + markdown).
#include <ATen/Parallel.h>

#include <algorithm>
#include <iostream>

#include "comm/communicator.h"
#include "common/error.h"
#include "common/stop_signal.h"
#include "launch/cli.h"
#include "launch/settings.h"
#include "launch/stage_flags.h"
#include "launch/subcommands.h"
#include "model/config.h"
#include "pipeline/capture.h"
#include "pipeline/train.h"

namespace cskv::cli {

int run_train(int argc, char** argv) {
  return guarded("train", [&] {
    auto options = make_options(
        "train",
        "Train the channel-shrinking factors: per (layer, K|V) job, a closed-form init from the "
        "captured statistics, then quantization-aware AdamW on MSE(K, Q(XA)B) over the captured "
        "activations. Writes <ckpt-dir>/compressor.safetensors, metrics.json and metrics.md.");
    options.add_options("input")("model", "HF model directory", cxxopts::value<std::string>())(
        "acts", "Capture directory (cskv capture --out)", cxxopts::value<std::string>())(
        "layers", "Layers to train: all | 0-7 | 0,2,5",
        cxxopts::value<std::string>()->default_value("all"));
    add_train_flags(options);
    options.add_options("checkpoints")(
        "ckpt-dir",
        "Output and checkpoint directory (required). If it holds a complete checkpoint step of "
        "the same settings, training resumes from it (other settings are refused)",
        cxxopts::value<std::string>())(
        "resume", "Require a checkpoint to resume from (error when --ckpt-dir has none)")(
        "seed", "Global seed (per-job seeds derive from it, the layer and K|V)",
        cxxopts::value<uint64_t>()->default_value("0"));
    add_settings(options, overwrite_settings());
    add_runtime_options(options);
    const auto r = parse(options, argc, argv);
    if (!r) return kExitOk;

    pipeline::TrainRunOptions o = train_options(*r);
    o.acts_dir = required<std::string>(*r, "acts");
    o.ckpt_dir = required<std::string>(*r, "ckpt-dir");
    o.require_resume = r->count("resume") > 0;
    o.overwrite = (*r)["overwrite"].as<bool>();
    install_stop_handlers();  // SIGTERM/SIGUSR1/SIGINT: finish the step, checkpoint, exit 75
    // --threads: ATen + OpenBLAS, part of the resolved config; the start line names the device.
    auto world = start_runtime(*r, o.device);
    const auto result = pipeline::run_training(o, *world);
    if (result.interrupted) return kExitPreempted;
    if (world->rank() != 0) return kExitOk;
    std::cout << trainer::metrics_markdown(result.metrics) << "factors: " << result.factors_path
              << std::endl;
    return kExitOk;
  });
}

}  // namespace cskv::cli
