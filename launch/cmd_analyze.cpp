// `cskv analyze`: the flags and help of the spectra stage; the work is pipeline::run_analyze
// (pipeline/analyze.h), whose summary rank 0 prints.
#include <iostream>
#include <string>

#include "comm/communicator.h"
#include "launch/cli.h"
#include "launch/settings.h"
#include "launch/subcommands.h"
#include "pipeline/analyze.h"

namespace cskv::cli {

int run_analyze(int argc, char** argv) {
  return guarded("analyze", [&] {
    auto options = make_options(
        "analyze",
        "Spectra of every layer's K and V cache: eigenvalues of C = W G W^T (float64, G = X^T X "
        "from <acts>/stats.h5), the ranks holding 90/95/99% of the energy, written to "
        "<out>/spectrum.csv, ranks.csv, analyze.md and (with gnuplot) spectrum_k.png, "
        "spectrum_v.png, ranks.png. Under mpirun the layers are shared among the ranks.");
    options.add_options("input")("model", "HF model directory the activations were captured from",
                                 cxxopts::value<std::string>())(
        "acts", "Capture directory (holds stats.h5)", cxxopts::value<std::string>())(
        "layers", "Layers to analyse: all (every captured layer) | 0-7 | 0,2,5",
        cxxopts::value<std::string>()->default_value("all"));
    options.add_options("output")("out", "Report directory (created)",
                                  cxxopts::value<std::string>())(
        "no-plots", "Write CSV and markdown only (no gnuplot needed)");
    add_settings(options, overwrite_settings());
    add_runtime_options(options);
    const auto r = parse(options, argc, argv);
    if (!r) return kExitOk;
    pipeline::AnalyzeOptions o;
    o.model_dir = required<std::string>(*r, "model");
    o.acts_dir = required<std::string>(*r, "acts");
    o.out_dir = required<std::string>(*r, "out");
    o.plots = r->count("no-plots") == 0;
    o.layers = (*r)["layers"].as<std::string>();
    o.overwrite = (*r)["overwrite"].as<bool>();
    auto world = start_runtime(*r);
    const pipeline::AnalyzeReport report = pipeline::run_analyze(o, *world);
    if (world->rank() == 0) std::cout << pipeline::analyze_summary(o, report) << std::endl;
    return kExitOk;
  });
}

}  // namespace cskv::cli
