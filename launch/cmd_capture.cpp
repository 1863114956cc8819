// `cskv capture`: runs the model over calibration sequences and stores every layer's k/v_proj
// input in HDF5 shards (one per rank) plus the reduced Gram statistics (acts/stats.h5).
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

namespace cskv::cli {

int run_capture(int argc, char** argv) {
  return guarded("capture", [&] {
    auto options = make_options(
        "capture",
        "Capture calibration activations: rank r of W runs the model on the r-th contiguous "
        "W-th of the training sequences and writes <out>/shard-RRRRR-of-WWWWW.h5 (and "
        "holdout-*.h5); statistics "
        "(X^T X in float64, mean |x|) are reduced into <out>/stats.h5. Rerunning after a kill "
        "redoes only the shards that <out>/manifest.json does not list.");
    options.add_options("input")("model", "HF model directory (config.json + safetensors)",
                                 cxxopts::value<std::string>());
    add_capture_flags(options);
    options.add_options("output")("out", "Output directory (required)",
                                  cxxopts::value<std::string>())(
        "layers", "Layers to capture: all | 0-7 | 0,2,5",
        cxxopts::value<std::string>()->default_value("all"));
    add_settings(options, overwrite_settings());
    options.add_options("sampling")("seed", "Seed of the sampling",
                                    cxxopts::value<uint64_t>()->default_value("0"));
    add_runtime_options(options);
    const auto r = parse(options, argc, argv);
    if (!r) return kExitOk;

    pipeline::CaptureOptions o = capture_options(*r, "seed");
    o.out_dir = required<std::string>(*r, "out");
    o.overwrite = (*r)["overwrite"].as<bool>();
    install_stop_handlers();  // SIGTERM/SIGUSR1/SIGINT: stop before the next batch, exit 75
    auto world = start_runtime(*r, o.device);
    const auto result = pipeline::run_capture(o, *world);
    if (result.interrupted) return kExitPreempted;
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
