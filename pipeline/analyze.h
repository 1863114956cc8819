// `cskv analyze` as a library call: per layer, the spectra of the K and V caches (eigenvalues of
// W G Wᵀ in float64) and the ranks holding 90/95/99% of their energy, as CSV, markdown and PNGs.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "comm/communicator.h"

namespace cskv::pipeline {

struct AnalyzeOptions {
  std::string model_dir;       // HF model directory the activations were captured from
  std::string acts_dir;        // capture directory (holds stats.h5)
  std::string out_dir;         // spectrum.csv, ranks.csv, analyze.md, plots
  std::string layers = "all";  // all (every captured layer) | 0-7 | 0,2,5
  bool plots = true;           // plots.gp + spectrum_k.png, spectrum_v.png, ranks.png (gnuplot)
  // Replace files in out_dir that cskv did not write (refused otherwise, before any work).
  bool overwrite = false;
};

// The energy fractions of the ranks in LayerSpectrum::ranks.
inline constexpr std::array<double, 3> kEnergyFractions = {0.90, 0.95, 0.99};

// The spectra and energy ranks of one analysed layer.
struct LayerSpectrum {
  int64_t layer = 0;
  std::array<at::Tensor, 2> eigenvalues;          // K, V: [D] float64, descending
  std::array<std::array<int64_t, 3>, 2> ranks{};  // K, V × kEnergyFractions
};

struct AnalyzeReport {
  std::vector<LayerSpectrum> layers;  // ascending; empty on ranks other than 0
  int64_t kv_dim = 0;                 // D = kv heads × head dim
  int64_t token_count = 0;            // calibration tokens of stats.h5
};

// Checks the inputs (statistics of this model, the requested layers captured, gnuplot found by
// rank 0 unless !plots: errors are the same on every rank), computes the layers' spectra (layer
// i on rank i mod W) and, on rank 0, writes <out_dir>/spectrum.csv, ranks.csv, analyze.md and,
// with plots, plots.gp and the PNGs. Rank 0 returns the report; other ranks return after the
// spectra are shared, with an empty one.
AnalyzeReport run_analyze(const AnalyzeOptions& options, comm::Communicator& comm);

// What `cskv analyze` prints on rank 0: the rank table, the finding and the files written
// (ends without a newline).
std::string analyze_summary(const AnalyzeOptions& options, const AnalyzeReport& report);

}  // namespace cskv::pipeline
