// `cskv eval`: what the compressed cache costs and saves on the user's own model — held-out
// errors per layer, KL/perplexity of decoding with the bi-branch cache, measured cache memory.
#include <iostream>
#include <sstream>

#include "comm/communicator.h"
#include "common/device.h"
#include "common/error.h"
#include "launch/cli.h"
#include "launch/settings.h"
#include "launch/stage_flags.h"
#include "launch/subcommands.h"
#include "pipeline/eval.h"

namespace cskv::cli {

int run_eval(int argc, char** argv) {
  return guarded("eval", [&] {
    auto options = make_options(
        "eval",
        "Evaluate a compressor on the model: (a) held-out relative errors of every layer's K "
        "and V next to the 16-bit floor, (b) teacher-forced decoding of held-out sequences with "
        "the bi-branch compressed cache (prompt prefilled at full precision, older tokens as "
        "bit-packed quantized latents, the recent window as fp16 K/V) against the original "
        "model: KL divergence and perplexity, (c) bytes the compressed and an fp16 cache hold "
        "at each memory context, measured and by the formula. Writes <out>/report.json, "
        "report.md and errors.png, spectrum_k.png, spectrum_v.png, memory.png. Under mpirun "
        "the sequences and layers are shared among the ranks.");
    options.add_options("input")("model", "HF model directory", cxxopts::value<std::string>())(
        "acts", "Capture directory (held-out split and stats.h5, cskv capture --out)",
        cxxopts::value<std::string>())("compressor",
                                       "compressor.safetensors (cskv merge --out, or cskv train's)",
                                       cxxopts::value<std::string>());
    add_eval_flags(options, "");
    add_settings(options, device_settings());
    options.add_options("output")("out", "Report directory (created)",
                                  cxxopts::value<std::string>())(
        "no-plots", "Write report.json and report.md only (no gnuplot needed)");
    add_settings(options, overwrite_settings());
    add_runtime_options(options);
    const auto r = parse(options, argc, argv);
    if (!r) return kExitOk;

    pipeline::EvalOptions o;
    o.model_dir = required<std::string>(*r, "model");
    o.acts_dir = required<std::string>(*r, "acts");
    o.compressor_path = required<std::string>(*r, "compressor");
    o.out_dir = required<std::string>(*r, "out");
    eval_options(*r, "", o);
    check_settings(*r, device_settings());
    o.device = (*r)["device"].as<std::string>();
    device::check_choice(o.device);  // before the runtime starts: one line
    o.plots = r->count("no-plots") == 0;
    o.overwrite = (*r)["overwrite"].as<bool>();
    auto world = start_runtime(*r, o.device);
    const eval::EvalReport report = pipeline::run_eval(o, *world);
    if (world->rank() != 0) return kExitOk;
    std::cout << "eval: " << report.layers.size() << " compressed layer(s); held-out error mean K "
              << report.mean_k_error << " (floor " << report.mean_k_floor << "), V "
              << report.mean_v_error << " (floor " << report.mean_v_floor << ")\n"
              << "wrote " << o.out_dir << "/{report.json, report.md"
              << (o.plots ? ", errors.png, spectrum_k.png, spectrum_v.png, memory.png" : "")
              << (o.plots && o.pareto ? ", pareto.png" : "") << "}\n"
              << "headline: " << report.headline() << std::endl;
    return kExitOk;
  });
}

}  // namespace cskv::cli
