// `cskv capture`: runs the model over calibration sequences and stores every layer's k/v_proj
// input in HDF5 shards (one per rank) plus the reduced Gram statistics (acts/stats.h5).
#include <iostream>

#include "comm/communicator.h"
#include "common/error.h"
#include "data/capture.h"
#include "launch/cli.h"
#include "launch/subcommands.h"
#include "model/config.h"

namespace cskv::cli {

int run_capture(int argc, char** argv) {
  return guarded("capture", [&] {
    auto options = make_options(
        "capture",
        "Capture calibration activations: rank r of W runs the model on training sequences "
        "r, r+W, ... and writes <out>/shard-RRRRR-of-WWWWW.h5 (and holdout-*.h5); statistics "
        "(X^T X in float64, mean |x|) are reduced into <out>/stats.h5. Rerunning after a kill "
        "redoes only the shards that <out>/manifest.json does not list.");
    options.add_options("input")("model", "HF model directory (config.json + safetensors)",
                                 cxxopts::value<std::string>())(
        "tokens", "Flat little-endian token file",
        cxxopts::value<std::string>()->default_value(""))(
        "token-dtype", "Width of --tokens ids: u16|u32",
        cxxopts::value<std::string>()->default_value("u16"))(
        "text", "UTF-8 text file to tokenize instead of --tokens",
        cxxopts::value<std::string>()->default_value(""))(
        "tokenizer", "SentencePiece tokenizer.model for --text",
        cxxopts::value<std::string>()->default_value(""));
    options.add_options("sampling")("num-seqs", "Training sequences",
                                    cxxopts::value<int64_t>()->default_value("256"))(
        "seq-len", "Tokens per sequence", cxxopts::value<int64_t>()->default_value("2048"))(
        "holdout-seqs", "Held-out sequences for evaluation (stored apart, not in the statistics)",
        cxxopts::value<int64_t>()->default_value("16"))(
        "sampling", "random (uniform offsets, the paper's way) | contiguous (chunks 0, L, 2L, ...)",
        cxxopts::value<std::string>()->default_value("random"))(
        "seed", "Seed of the sampling", cxxopts::value<uint64_t>()->default_value("0"));
    options.add_options("output")("out", "Output directory (required)",
                                  cxxopts::value<std::string>())(
        "dtype", "Stored activation dtype: fp16|fp32",
        cxxopts::value<std::string>()->default_value("fp16"))(
        "layers", "Layers to capture: all | 0-7 | 0,2,5",
        cxxopts::value<std::string>()->default_value("all"))(
        "batch", "Sequences per forward pass", cxxopts::value<int64_t>()->default_value("1"))(
        "overwrite", "Replace a capture made with other settings in --out")(
        "device",
        "cpu (float32 compute) | cuda (bfloat16 compute on GPU <local rank mod GPUs>; needs a "
        "LibTorch with CUDA)",
        cxxopts::value<std::string>()->default_value("cpu"));
    add_runtime_options(options);
    const auto r = parse(options, argc, argv);
    if (!r) return kExitOk;

    data::CaptureOptions o;
    o.model_dir = required<std::string>(*r, "model");
    o.out_dir = required<std::string>(*r, "out");
    o.tokens_path = (*r)["tokens"].as<std::string>();
    o.text_path = (*r)["text"].as<std::string>();
    o.tokenizer_path = (*r)["tokenizer"].as<std::string>();
    o.token_dtype = data::parse_token_dtype((*r)["token-dtype"].as<std::string>());
    o.num_seqs = (*r)["num-seqs"].as<int64_t>();
    o.seq_len = (*r)["seq-len"].as<int64_t>();
    o.holdout_seqs = (*r)["holdout-seqs"].as<int64_t>();
    o.sampling = data::parse_sampling((*r)["sampling"].as<std::string>());
    o.seed = (*r)["seed"].as<uint64_t>();
    o.dtype = data::parse_activation_dtype((*r)["dtype"].as<std::string>());
    o.batch = (*r)["batch"].as<int64_t>();
    o.overwrite = r->count("overwrite") > 0;
    o.device = (*r)["device"].as<std::string>();
    const auto config = model::load_config(o.model_dir);
    o.layers = data::parse_layer_list((*r)["layers"].as<std::string>(), config.num_hidden_layers);

    auto world = start_runtime(*r, o.device);
    const auto result = data::run_capture(o, *world);
    if (world->rank() == 0) {
      if (result.already_complete) {
        std::cout << "capture: " << o.out_dir << " is complete; nothing to do" << std::endl;
      } else {
        std::cout << "capture: " << o.out_dir << " complete in " << result.seconds << " s ("
                  << result.tokens_captured << " tokens on rank 0, " << result.shards_written.size()
                  << " shard(s) written and " << result.shards_reused.size() << " reused by rank 0)"
                  << std::endl;
      }
    }
    return kExitOk;
  });
}

}  // namespace cskv::cli
