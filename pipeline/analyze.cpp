// `cskv analyze`: per layer, the spectra of the K and V caches (eigenvalues of W G Wᵀ in float64)
// and the ranks holding 90/95/99% of their energy, as CSV, a markdown report and gnuplot PNGs.
#include "pipeline/analyze.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "comm/collectives.h"
#include "common/error.h"
#include "common/fs.h"
#include "common/gnuplot.h"
#include "data/layer_stats.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "pipeline/capture.h"
#include "pipeline/stage_outputs.h"
#include "trainer/spectrum.h"

namespace cskv::pipeline {
namespace {

namespace fs = std::filesystem;

constexpr std::array<trainer::KvKind, 2> kKinds = {trainer::KvKind::kKey, trainer::KvKind::kValue};
constexpr const char* kPlotFiles[] = {"spectrum_k.png", "spectrum_v.png", "ranks.png"};

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

std::string spectrum_csv(const std::vector<LayerSpectrum>& results) {
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

std::string ranks_csv(const std::vector<LayerSpectrum>& results, int64_t d) {
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
std::array<double, 2> mean_r90_share(const std::vector<LayerSpectrum>& results, int64_t d) {
  std::array<double, 2> share{0.0, 0.0};
  for (const auto& r : results) {
    for (size_t k = 0; k < 2; ++k) share[k] += static_cast<double>(r.ranks[k][0]) / d;
  }
  for (auto& s : share) s /= static_cast<double>(results.size());
  return share;
}

std::string finding(const std::vector<LayerSpectrum>& results, int64_t d) {
  const auto share = mean_r90_share(results, d);
  return "K needs on average " + percent(share[0]) + " of D channels for 90% energy, V " +
         percent(share[1]);
}

std::string markdown(const std::vector<LayerSpectrum>& results, const model::ModelConfig& config,
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

// The script's inline data blocks: normalised spectra, one block per (kind, layer), only
// positive values (log scale); then every layer's r90 of K and V.
void gnuplot_data(std::ostringstream& gp, const std::vector<LayerSpectrum>& results) {
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
}

// A self-contained gnuplot script (data in inline blocks) drawing the three PNGs into out_dir.
std::string gnuplot_script(const std::vector<LayerSpectrum>& results, int64_t d,
                           const std::string& out_dir) {
  const std::string out = fs::absolute(out_dir).string();
  std::ostringstream gp;
  gp << "# Generated by `cskv analyze`; rerun with: gnuplot plots.gp\n"
     << "set terminal pngcairo size 1000,640 font ',10'\n"
     << "set grid\n";
  gnuplot_data(gp, results);

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

// Everything the work needs, read and checked before any of it starts.
struct AnalyzeInputs {
  model::ModelConfig config;
  std::string stats_path;
  int64_t token_count = 0;
  std::vector<int64_t> layers;  // ascending
  std::string gnuplot;          // rank 0's gnuplot (with plots)
};

// validate: statistics of this model, the requested layers captured, gnuplot (rank 0 decides).
AnalyzeInputs validate(const AnalyzeOptions& o, comm::Communicator& comm) {
  AnalyzeInputs in;
  in.config = model::load_config(o.model_dir);
  in.stats_path = o.acts_dir + "/stats.h5";
  const auto header = data::read_capture_stats_header(o.acts_dir, in.config.hash());
  {
    const auto weights = model::SafetensorsModel::open_dir(o.model_dir);
    model::validate_weights(in.config, weights, o.model_dir);
    check_capture_weights(o.acts_dir, in.config.hash(),
                          model::weights_fingerprint(in.config, weights));
  }
  in.token_count = header.token_count;
  in.layers = header.layers;
  if (o.layers != "all") {
    in.layers = parse_layer_list(o.layers, in.config.num_hidden_layers);
    for (int64_t l : in.layers) {
      CSKV_CHECK_INPUT(
          std::find(header.layers.begin(), header.layers.end(), l) != header.layers.end(),
          in.stats_path << ": layer " << l << " was not captured (--layers " << o.layers << ")");
    }
  }
  CSKV_CHECK_INPUT(!in.layers.empty(), in.stats_path << ": no layers to analyse");
  in.gnuplot = comm::root_decides<std::string>(comm, [&] {
    if (!o.plots) return std::string();
    const std::string gnuplot = find_in_path("gnuplot");
    CSKV_CHECK(!gnuplot.empty(), "gnuplot not found: install gnuplot-nox or pass --no-plots");
    return gnuplot;
  });
  return in;
}

// work: the eigenvalues of this rank's layers (layer i on rank i mod W) in rows [layer, kind] of
// a [layers, 2, D] tensor, zero rows elsewhere.
at::Tensor work(const AnalyzeOptions& o, const AnalyzeInputs& in, comm::Communicator& comm) {
  const auto weights = model::SafetensorsModel::open_dir(o.model_dir);
  const int64_t n = static_cast<int64_t>(in.layers.size()), d = in.config.kv_dim();
  at::Tensor eigs = at::zeros({n, 2, d}, at::kDouble);
  for (int64_t i = comm.rank(); i < n; i += comm.size()) {
    const auto stats = data::read_layer_stats(in.stats_path, in.layers[i]);
    for (size_t k = 0; k < kKinds.size(); ++k) {
      eigs[i][static_cast<int64_t>(k)].copy_(
          trainer::layer_spectrum(weights, in.layers[i], kKinds[k], stats.gram));
    }
  }
  return eigs;
}

// share: the zero rows elsewhere make the sum an exact gather; rank 0 derives the energy ranks.
AnalyzeReport share(const AnalyzeInputs& in, at::Tensor eigs, comm::Communicator& comm) {
  comm.allreduce_sum(eigs);
  AnalyzeReport report;
  report.kv_dim = in.config.kv_dim();
  report.token_count = in.token_count;
  if (comm.rank() != 0) return report;
  for (size_t i = 0; i < in.layers.size(); ++i) {
    LayerSpectrum res;
    res.layer = in.layers[i];
    for (size_t k = 0; k < kKinds.size(); ++k) {
      res.eigenvalues[k] = eigs[static_cast<int64_t>(i)][static_cast<int64_t>(k)].contiguous();
      for (size_t f = 0; f < kEnergyFractions.size(); ++f) {
        res.ranks[k][f] = trainer::rank_for_energy(res.eigenvalues[k], kEnergyFractions[f]);
      }
    }
    report.layers.push_back(std::move(res));
  }
  return report;
}

// write (rank 0): the CSVs, the markdown report and, with plots, the script and its PNGs.
void write(const AnalyzeOptions& o, const AnalyzeInputs& in, const AnalyzeReport& report) {
  const std::string& out_dir = o.out_dir;
  const int64_t d = report.kv_dim;
  fs::create_directories(out_dir);
  files::write_file_atomic(out_dir + "/spectrum.csv", spectrum_csv(report.layers));
  files::write_file_atomic(out_dir + "/ranks.csv", ranks_csv(report.layers, d));
  files::write_file_atomic(
      out_dir + "/analyze.md",
      markdown(report.layers, in.config, o.model_dir, in.stats_path, report.token_count, o.plots));
  if (!o.plots) return;
  const std::string script = out_dir + "/plots.gp";
  files::write_file_atomic(script, gnuplot_script(report.layers, d, out_dir));
  run_gnuplot(in.gnuplot, script, out_dir + "/plots.log");
  for (const char* png : kPlotFiles) {
    const std::string path = out_dir + "/" + png;
    CSKV_CHECK(fs::exists(path) && fs::file_size(path) > 0,
               in.gnuplot << " did not write " << path << " (script " << script << ")");
  }
}

// The files analyze writes, each recognised as cskv's: the CSVs by their header line, analyze.md
// by its title, the plot script, its log and the PNGs beside an analyze.md of ours.
std::vector<OwnedOutput> analyze_outputs(const std::string& out_dir) {
  const bool have_report = starts_with_text(out_dir + "/analyze.md", "# K/V cache spectra\n");
  const auto beside_report = [have_report](const std::string&) { return have_report; };
  std::vector<OwnedOutput> out = {
      {"spectrum.csv",
       [](const std::string& p) {
         return starts_with_text(p, "layer,kind,index,eigenvalue,normalized,cumulative\n");
       },
       "a cskv analyze spectrum table"},
      {"ranks.csv",
       [](const std::string& p) { return starts_with_text(p, "layer,kind,D,r90,r95,r99\n"); },
       "a cskv analyze rank table"},
      {"analyze.md",
       [](const std::string& p) { return starts_with_text(p, "# K/V cache spectra\n"); },
       "a cskv analyze report"},
      {"plots.gp", beside_report, "a plot script beside a cskv analyze.md"},
      {"plots.log", beside_report, "a gnuplot log beside a cskv analyze.md"}};
  for (const char* png : kPlotFiles) {
    out.push_back({png, beside_report, "a plot beside a cskv analyze.md"});
  }
  return out;
}

// Rank 0 checks for every rank (one collective refusal) that out_dir holds only files of ours.
void check_analyze_outputs(const AnalyzeOptions& o, comm::Communicator& comm) {
  refuse_foreign_outputs(
      comm, o.out_dir, [&] { return analyze_outputs(o.out_dir); }, o.overwrite, "--out");
}

}  // namespace

// validate → (lock, check the outputs) → work → share → write
AnalyzeReport run_analyze(const AnalyzeOptions& options, comm::Communicator& comm) {
  const AnalyzeInputs in = validate(options, comm);
  const auto lock = lock_output_dir(comm, options.out_dir, "--out");  // held until written
  check_analyze_outputs(options, comm);
  AnalyzeReport report = share(in, work(options, in, comm), comm);
  if (comm.rank() == 0) write(options, in, report);
  return report;
}

std::string analyze_summary(const AnalyzeOptions& o, const AnalyzeReport& report) {
  std::ostringstream out;
  out << "analyze: " << report.layers.size() << " layer(s) of " << o.model_dir
      << " (D = " << report.kv_dim << "), " << report.token_count << " calibration tokens\n"
      << "layer  K r90  K r95  K r99  V r90  V r95  V r99\n";
  for (const auto& res : report.layers) {
    char line[128];
    std::snprintf(line, sizeof line, "%5lld  %5lld  %5lld  %5lld  %5lld  %5lld  %5lld\n",
                  static_cast<long long>(res.layer), static_cast<long long>(res.ranks[0][0]),
                  static_cast<long long>(res.ranks[0][1]), static_cast<long long>(res.ranks[0][2]),
                  static_cast<long long>(res.ranks[1][0]), static_cast<long long>(res.ranks[1][1]),
                  static_cast<long long>(res.ranks[1][2]));
    out << line;
  }
  out << finding(report.layers, report.kv_dim) << "\n"
      << "wrote " << o.out_dir << "/{spectrum.csv, ranks.csv, analyze.md"
      << (o.plots ? ", spectrum_k.png, spectrum_v.png, ranks.png" : "") << "}";
  return out.str();
}

}  // namespace cskv::pipeline
