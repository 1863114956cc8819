// `cskv analyze`: per layer, the spectra of the K and V caches (eigenvalues of W G Wᵀ in float64)
// and the ranks holding 90/95/99% of their energy, as CSV, a markdown report and gnuplot PNGs.
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "common/error.h"
#include "common/gnuplot.h"
#include "pipeline/capture.h"
#include "data/layer_stats.h"
#include "launch/cli.h"
#include "launch/subcommands.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "trainer/spectrum.h"

namespace cskv::cli {
namespace {

namespace fs = std::filesystem;

constexpr std::array<double, 3> kEnergyFractions = {0.90, 0.95, 0.99};
constexpr std::array<trainer::KvKind, 2> kKinds = {trainer::KvKind::kKey, trainer::KvKind::kValue};
constexpr const char* kPlotFiles[] = {"spectrum_k.png", "spectrum_v.png", "ranks.png"};

// The spectra and energy ranks of one analysed layer.
struct LayerResult {
  int64_t layer = 0;
  std::array<at::Tensor, 2> eigenvalues;          // K, V: [D] float64, descending
  std::array<std::array<int64_t, 3>, 2> ranks{};  // K, V × kEnergyFractions
};

// "%.*g" of a double.
std::string fmt(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*g", digits, v);
  return buf;
}

std::string percent(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f%%", 100.0 * v);
  return buf;
}

// Writes via <path>.partial + rename, so a report file is either complete or absent.
void write_text(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".partial";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    CSKV_CHECK_INPUT(out.good(), tmp << ": cannot open for writing");
    out << text;
    out.flush();
    CSKV_CHECK_INPUT(out.good(), tmp << ": write error");
  }
  fs::rename(tmp, path);
}

std::string spectrum_csv(const std::vector<LayerResult>& results) {
  std::ostringstream csv;
  csv << "layer,kind,index,eigenvalue,normalized,cumulative\n";
  for (const auto& r : results) {
    for (size_t k = 0; k < kKinds.size(); ++k) {
      const at::Tensor& e = r.eigenvalues[k];
      const double* p = e.data_ptr<double>();
      const double total = e.sum().item<double>();
      double cumulative = 0.0;
      for (int64_t i = 0; i < e.numel(); ++i) {
        cumulative += p[i];
        csv << r.layer << ',' << trainer::kv_kind_name(kKinds[k]) << ',' << i << ','
            << fmt(p[i], 17) << ',' << fmt(total > 0 ? p[i] / total : 0.0, 10) << ','
            << fmt(total > 0 ? cumulative / total : 0.0, 10) << '\n';
      }
    }
  }
  return csv.str();
}

std::string ranks_csv(const std::vector<LayerResult>& results, int64_t d) {
  std::ostringstream csv;
  csv << "layer,kind,D,r90,r95,r99\n";
  for (const auto& r : results) {
    for (size_t k = 0; k < kKinds.size(); ++k) {
      csv << r.layer << ',' << trainer::kv_kind_name(kKinds[k]) << ',' << d << ',' << r.ranks[k][0]
          << ',' << r.ranks[k][1] << ',' << r.ranks[k][2] << '\n';
    }
  }
  return csv.str();
}

// Mean over layers of r90 / D, for K (0) and V (1).
std::array<double, 2> mean_r90_share(const std::vector<LayerResult>& results, int64_t d) {
  std::array<double, 2> share{0.0, 0.0};
  for (const auto& r : results) {
    for (size_t k = 0; k < 2; ++k) share[k] += static_cast<double>(r.ranks[k][0]) / d;
  }
  for (auto& s : share) s /= static_cast<double>(results.size());
  return share;
}

std::string finding(const std::vector<LayerResult>& results, int64_t d) {
  const auto share = mean_r90_share(results, d);
  return "K needs on average " + percent(share[0]) + " of D channels for 90% energy, V " +
         percent(share[1]);
}

std::string markdown(const std::vector<LayerResult>& results, const model::ModelConfig& config,
                     const std::string& model_dir, const std::string& stats_path, int64_t tokens,
                     bool plots) {
  const int64_t d = config.kv_dim();
  std::ostringstream md;
  md << "# K/V cache spectra\n\n"
     << "Model `" << model_dir << "` (" << model::arch_name(config.arch) << ", "
     << config.num_hidden_layers << " layers, D = " << config.num_key_value_heads << " kv heads × "
     << config.head_dim << " = " << d << "), statistics of " << tokens
     << " calibration tokens from `" << stats_path << "`.\n\n"
     << "r90/r95/r99: the fewest channels (eigenvectors of C = W G Wᵀ, G = XᵀX) that hold "
        "90/95/99% "
        "of the cache energy Σλ; the best rank-r reconstruction leaves the rest as its error.\n\n"
     << "| layer | D | K r90 | K r95 | K r99 | V r90 | V r95 | V r99 |\n"
     << "|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  for (const auto& r : results) {
    md << "| " << r.layer << " | " << d;
    for (size_t k = 0; k < 2; ++k) {
      for (int64_t rank : r.ranks[k]) md << " | " << rank;
    }
    md << " |\n";
  }
  md << "\n**Finding:** " << finding(results, d) << ".\n";
  if (plots) {
    md << "\n![K spectra](spectrum_k.png)\n![V spectra](spectrum_v.png)\n![ranks](ranks.png)\n";
  }
  return md.str();
}

// A self-contained gnuplot script (data in inline blocks) drawing the three PNGs into out_dir.
std::string gnuplot_script(const std::vector<LayerResult>& results, int64_t d,
                           const std::string& out_dir) {
  const std::string out = fs::absolute(out_dir).string();
  std::ostringstream gp;
  gp << "# Generated by `cskv analyze`; rerun with: gnuplot plots.gp\n"
     << "set terminal pngcairo size 1000,640 font ',10'\n"
     << "set grid\n";
  // Normalised spectra, one block per (kind, layer); only positive values (log scale).
  for (size_t k = 0; k < kKinds.size(); ++k) {
    for (const auto& r : results) {
      gp << "$" << trainer::kv_kind_name(kKinds[k]) << r.layer << " << EOD\n";
      const at::Tensor& e = r.eigenvalues[k];
      const double total = e.sum().item<double>();
      const double* p = e.data_ptr<double>();
      for (int64_t i = 0; i < e.numel() && total > 0; ++i) {
        if (p[i] > 0) gp << i << ' ' << fmt(p[i] / total, 8) << '\n';
      }
      gp << "EOD\n";
    }
  }
  gp << "$RANKS << EOD\n";
  for (const auto& r : results) {
    gp << r.layer << ' ' << r.ranks[0][0] << ' ' << r.ranks[1][0] << '\n';
  }
  gp << "EOD\n";

  const int64_t first = results.front().layer, last = results.back().layer;
  const int64_t layer_step = std::max<int64_t>(1, (last - first) / 16);  // at most ~16 tics
  gp << "set logscale y\nset format y '10^{%L}'\n"
     << "set xlabel 'eigenvalue index i (descending)'\nset ylabel 'λ_i / Σλ'\n"
     << "set key off\nset palette rgbformulae 33,13,10\nset cblabel 'layer'\n"
     << "set cbrange [" << first << ":" << (last > first ? last : first + 1) << "]\n"
     << "set cbtics " << layer_step << "\nset xrange [0:" << d - 1 << "]\n";
  for (size_t k = 0; k < kKinds.size(); ++k) {
    const char* kind = trainer::kv_kind_name(kKinds[k]);
    gp << "set output '" << out << "/" << kPlotFiles[k] << "'\n"
       << "set title '" << kind << " cache: normalised eigenvalues of W G W^T per layer (D = " << d
       << ")'\nplot ";
    for (size_t i = 0; i < results.size(); ++i) {
      gp << (i ? ", " : "") << "$" << kind << results[i].layer
         << " using 1:2 with lines lw 1.5 lc palette cb " << results[i].layer;
    }
    gp << "\n";
  }
  gp << "unset logscale y\nset format y '%g'\nunset colorbox\nset key bottom right opaque\n"
     << "set xrange [" << first << "-0.5:" << last << "+0.5]\nset xtics " << layer_step << "\n"
     << "set output '" << out << "/ranks.png'\n"
     << "set title 'Channels holding 90% of the cache energy (D = " << d << ")'\n"
     << "set xlabel 'layer'\nset ylabel 'r90'\nset yrange [0:" << d << "*1.05]\n"
     << "plot $RANKS using 1:2 with linespoints pt 7 lw 2 title 'K', "
     << "$RANKS using 1:3 with linespoints pt 5 lw 2 title 'V', " << d
     << " with lines dt 2 lc rgb 'gray' title 'D'\n"
     << "set output\n";
  return gp.str();
}

}  // namespace

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
    add_runtime_options(options);
    const auto r = parse(options, argc, argv);
    if (!r) return kExitOk;
    const std::string model_dir = required<std::string>(*r, "model");
    const std::string acts_dir = required<std::string>(*r, "acts");
    const std::string out_dir = required<std::string>(*r, "out");
    const bool plots = r->count("no-plots") == 0;
    const std::string layer_spec = (*r)["layers"].as<std::string>();

    const auto config = model::load_config(model_dir);
    const std::string stats_path = acts_dir + "/stats.h5";
    const auto header = data::read_stats_header(stats_path, config.hash());
    std::vector<int64_t> layers = header.layers;
    if (layer_spec != "all") {
      layers = pipeline::parse_layer_list(layer_spec, config.num_hidden_layers);
      for (int64_t l : layers) {
        CSKV_CHECK_INPUT(
            std::find(header.layers.begin(), header.layers.end(), l) != header.layers.end(),
            stats_path << ": layer " << l << " was not captured (--layers " << layer_spec << ")");
      }
    }
    CSKV_CHECK_INPUT(!layers.empty(), stats_path << ": no layers to analyse");

    auto world = start_runtime(*r);
    const bool root = world->rank() == 0;
    std::string gnuplot;
    if (root && plots) {
      gnuplot = find_in_path("gnuplot");
      CSKV_CHECK(!gnuplot.empty(), "gnuplot not found: install gnuplot-nox or pass --no-plots");
    }

    // Layer i belongs to rank i mod W; zero rows elsewhere make the sum an exact gather.
    const auto weights = model::SafetensorsModel::open_dir(model_dir);
    const int64_t n = static_cast<int64_t>(layers.size()), d = config.kv_dim();
    at::Tensor eigs = at::zeros({n, 2, d}, at::kDouble);
    for (int64_t i = world->rank(); i < n; i += world->size()) {
      const auto stats = data::read_layer_stats(stats_path, layers[i]);
      for (size_t k = 0; k < kKinds.size(); ++k) {
        eigs[i][static_cast<int64_t>(k)].copy_(
            trainer::layer_spectrum(weights, layers[i], kKinds[k], stats.gram));
      }
    }
    world->allreduce_sum(eigs);
    if (!root) return kExitOk;

    std::vector<LayerResult> results(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      auto& res = results[static_cast<size_t>(i)];
      res.layer = layers[i];
      for (size_t k = 0; k < kKinds.size(); ++k) {
        res.eigenvalues[k] = eigs[i][static_cast<int64_t>(k)].contiguous();
        for (size_t f = 0; f < kEnergyFractions.size(); ++f) {
          res.ranks[k][f] = trainer::rank_for_energy(res.eigenvalues[k], kEnergyFractions[f]);
        }
      }
    }

    fs::create_directories(out_dir);
    write_text(out_dir + "/spectrum.csv", spectrum_csv(results));
    write_text(out_dir + "/ranks.csv", ranks_csv(results, d));
    write_text(out_dir + "/analyze.md",
               markdown(results, config, model_dir, stats_path, header.token_count, plots));
    if (plots) {
      const std::string script = out_dir + "/plots.gp";
      write_text(script, gnuplot_script(results, d, out_dir));
      run_gnuplot(gnuplot, script, out_dir + "/plots.log");
      for (const char* png : kPlotFiles) {
        const std::string path = out_dir + "/" + png;
        CSKV_CHECK(fs::exists(path) && fs::file_size(path) > 0,
                   gnuplot << " did not write " << path << " (script " << script << ")");
      }
    }

    std::cout << "analyze: " << n << " layer(s) of " << model_dir << " (D = " << d << "), "
              << header.token_count << " calibration tokens\n"
              << "layer  K r90  K r95  K r99  V r90  V r95  V r99\n";
    for (const auto& res : results) {
      char line[128];
      std::snprintf(
          line, sizeof line, "%5lld  %5lld  %5lld  %5lld  %5lld  %5lld  %5lld\n",
          static_cast<long long>(res.layer), static_cast<long long>(res.ranks[0][0]),
          static_cast<long long>(res.ranks[0][1]), static_cast<long long>(res.ranks[0][2]),
          static_cast<long long>(res.ranks[1][0]), static_cast<long long>(res.ranks[1][1]),
          static_cast<long long>(res.ranks[1][2]));
      std::cout << line;
    }
    std::cout << finding(results, d) << "\n"
              << "wrote " << out_dir << "/{spectrum.csv, ranks.csv, analyze.md"
              << (plots ? ", spectrum_k.png, spectrum_v.png, ranks.png" : "") << "}" << std::endl;
    return kExitOk;
  });
}

}  // namespace cskv::cli
