// `cskv train`: initialises and trains the low-rank K/V factors of every layer (one process or
// under mpirun/srun), with sharded checkpoints, resume and graceful stop (exit 75), writing
// <ckpt-dir>/compressor.safetensors and the metrics (JSON + markdown).
#include <ATen/Parallel.h>

#include <algorithm>
#include <iostream>

#include "checkpoint/train_run.h"
#include "comm/communicator.h"
#include "common/error.h"
#include "common/stop_signal.h"
#include "data/capture.h"
#include "launch/cli.h"
#include "launch/subcommands.h"
#include "model/config.h"

namespace cskv::cli {

namespace {
int parse_bits(const cxxopts::ParseResult& r, const std::string& flag) {
  const int b = r[flag].as<int>();
  CSKV_CHECK_USAGE(b == 2 || b == 3 || b == 4 || b == 8 || b == 16,
                   "--" << flag << ": expected one of 2, 3, 4, 8, 16, found " << b);
  return b;
}
}  // namespace

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
    options.add_options("ranks")("k-density",
                                 "Key latent width as a share of D: r = floor(density*hd)*n_kv",
                                 cxxopts::value<double>()->default_value("0.5"))(
        "v-density", "Value latent width (same rule)",
        cxxopts::value<double>()->default_value("0.5"))(
        "budget",
        "Instead of densities: keep this share of the total K+V width, allocated per layer by "
        "greedy marginal eigenvalue gain (0 = off)",
        cxxopts::value<double>()->default_value("0"))(
        "rank-multiple", "Budget granularity in channels (0 = n_kv*8)",
        cxxopts::value<int64_t>()->default_value("0"));
    options.add_options("init")("init", "Initialisation: pca (exact 16-bit optimum) | asvd | svd",
                                cxxopts::value<std::string>()->default_value("pca"))(
        "asvd-alpha", "ASVD exponent alpha of S = diag(mean|x|^alpha)",
        cxxopts::value<double>()->default_value("0.5"))(
        "rotate", "Latent rotation: none | hadamard (seeded randomized Hadamard)",
        cxxopts::value<std::string>()->default_value("none"));
    options.add_options("quantization")("k-bits", "Key latent bits: 2|3|4|8|16 (16 = off)",
                                        cxxopts::value<int>()->default_value("16"))(
        "v-bits", "Value latent bits: 2|3|4|8|16", cxxopts::value<int>()->default_value("16"))(
        "group-size", "Latent channels per quantization group (0 = r/n_kv)",
        cxxopts::value<int64_t>()->default_value("0"))(
        "window",
        "Full-precision recent window; keys are quantized per channel over groups of this many "
        "tokens (0 = per-token key groups, no window)",
        cxxopts::value<int64_t>()->default_value("32"))(
        "quant-compat", "none | cskv (reference code: zero point clamped to [0, 2^b-1])",
        cxxopts::value<std::string>()->default_value("none"));
    options.add_options("optimizer")("lr", "AdamW learning rate (linear decay)",
                                     cxxopts::value<double>()->default_value("5e-05"))(
        "warmup", "Linear warmup steps", cxxopts::value<int64_t>()->default_value("0"))(
        "steps", "Optimizer steps per job (0 = --epochs passes over the training split)",
        cxxopts::value<int64_t>()->default_value("0"))(
        "epochs", "Passes over the training split when --steps is 0",
        cxxopts::value<int64_t>()->default_value("1"))(
        "batch-tokens", "Tokens per optimizer step",
        cxxopts::value<int64_t>()->default_value("4096"))(
        "seed", "Global seed (per-job seeds derive from it, the layer and K|V)",
        cxxopts::value<uint64_t>()->default_value("0"));
    options.add_options("checkpoints")(
        "ckpt-dir",
        "Output and checkpoint directory (required). If it holds a complete checkpoint step of "
        "the same settings, training resumes from it (other settings are refused)",
        cxxopts::value<std::string>())(
        "save-every",
        "Checkpoint every this many optimizer steps (of any rank; also when a job finishes and "
        "on SIGTERM/SIGUSR1/SIGINT); 0 = only then",
        cxxopts::value<int64_t>()->default_value("500"))(
        "keep", "Complete checkpoint steps to keep", cxxopts::value<int64_t>()->default_value("2"))(
        "resume", "Require a checkpoint to resume from (error when --ckpt-dir has none)")(
        "dp",
        "Ranks per job (data parallelism inside a job: batch slices, gradient allreduce); 0 = "
        "auto: 1, or ranks/jobs when there are more ranks than jobs",
        cxxopts::value<int>()->default_value("0"));
    options.add_options("output")("context", "Context length the memory accounting is stated at",
                                  cxxopts::value<int64_t>()->default_value("4096"));
    add_runtime_options(options);
    const auto r = parse(options, argc, argv);
    if (!r) return kExitOk;

    trainer::TrainRunOptions o;
    o.model_dir = required<std::string>(*r, "model");
    o.acts_dir = required<std::string>(*r, "acts");
    o.ckpt_dir = required<std::string>(*r, "ckpt-dir");
    o.k_density = (*r)["k-density"].as<double>();
    o.v_density = (*r)["v-density"].as<double>();
    o.budget = (*r)["budget"].as<double>();
    CSKV_CHECK_USAGE(o.budget >= 0 && o.budget <= 1,
                     "--budget: expected a value in (0, 1] (or 0 = off), found " << o.budget);
    o.rank_multiple = (*r)["rank-multiple"].as<int64_t>();
    o.context = (*r)["context"].as<int64_t>();
    auto& c = o.cfg;
    c.init = trainer::parse_init_method((*r)["init"].as<std::string>());
    c.asvd_alpha = (*r)["asvd-alpha"].as<double>();
    const auto rotate = (*r)["rotate"].as<std::string>();
    CSKV_CHECK_USAGE(rotate == "none" || rotate == "hadamard",
                     "--rotate: expected none|hadamard, found '" << rotate << "'");
    c.rotate_hadamard = rotate == "hadamard";
    c.k_bits = parse_bits(*r, "k-bits");
    c.v_bits = parse_bits(*r, "v-bits");
    c.group_size = (*r)["group-size"].as<int64_t>();
    c.window = (*r)["window"].as<int64_t>();
    CSKV_CHECK_USAGE(c.window >= 0, "--window: expected >= 0, found " << c.window);
    const auto compat = (*r)["quant-compat"].as<std::string>();
    CSKV_CHECK_USAGE(compat == "none" || compat == "cskv",
                     "--quant-compat: expected none|cskv, found '" << compat << "'");
    c.quant_compat_cskv = compat == "cskv";
    c.lr = (*r)["lr"].as<double>();
    c.warmup = (*r)["warmup"].as<int64_t>();
    c.steps = (*r)["steps"].as<int64_t>();
    c.epochs = (*r)["epochs"].as<int64_t>();
    c.batch_tokens = (*r)["batch-tokens"].as<int64_t>();
    CSKV_CHECK_USAGE(c.batch_tokens >= 1,
                     "--batch-tokens: expected >= 1, found " << c.batch_tokens);
    c.seed = (*r)["seed"].as<uint64_t>();
    const int threads = (*r)["threads"].as<int>();
    if ((*r)["layers"].as<std::string>() != "all") {
      const auto config = model::load_config(o.model_dir);
      o.layers = data::parse_layer_list((*r)["layers"].as<std::string>(), config.num_hidden_layers);
    }
    o.threads = threads;
    o.save_every = (*r)["save-every"].as<int64_t>();
    o.keep = (*r)["keep"].as<int64_t>();
    o.require_resume = r->count("resume") > 0;
    o.dp = (*r)["dp"].as<int>();
    install_stop_handlers();         // SIGTERM/SIGUSR1/SIGINT: finish the step, checkpoint, exit 75
    auto world = start_runtime(*r);  // --threads: ATen + OpenBLAS, part of the resolved config
    const auto result = trainer::run_training(o, *world);
    if (result.interrupted) return kExitPreempted;
    if (world->rank() != 0) return kExitOk;
    std::cout << trainer::metrics_markdown(result.metrics) << "factors: " << result.factors_path
              << std::endl;
    return kExitOk;
  });
}

}  // namespace cskv::cli
