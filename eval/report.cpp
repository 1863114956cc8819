// report.json / report.md / plots.gp of `cskv eval`, all from the one EvalReport.
#include "eval/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iterator>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/fs.h"
#include "common/gnuplot.h"

namespace cskv::eval {
namespace {

namespace fs = std::filesystem;

std::string fmt(double v, const char* f = "%.4g") {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

std::string mib(double bytes) { return fmt(bytes / (1024.0 * 1024.0), "%.3f"); }

// Tokens a compressed layer holds in its full-precision window at `context`: those after the
// sinks and the last window boundary (trainer::layer_cache_bytes).
int64_t window_tokens(const EvalReport& r, int64_t context) {
  if (r.window <= 0 || context <= r.sink_tokens) return 0;
  return (context - r.sink_tokens) % r.window;
}

std::string layer_list(const std::vector<int64_t>& layers) {
  std::string s;
  for (const int64_t l : layers) s += (s.empty() ? "" : ", ") + std::to_string(l);
  return s;
}

// The sweep of one kind ("K" | "V") averaged over the layers: per uniform grid point, its
// numbers and those of the waterfill code at its bits.
struct ParetoMean {
  double density = 0, bits = 0;
  double uniform_bits = 0, uniform_error = 0, uniform_bound = 0;
  double waterfill_bits = 0, waterfill_error = 0, waterfill_bound = 0;
};

std::vector<ParetoMean> pareto_means(const EvalReport& r, const std::string& kind) {
  std::vector<ParetoMean> out;
  double jobs = 0;
  for (const JobPareto& j : r.pareto) {
    if (j.kind != kind) continue;
    const size_t n = j.points.size() / 2;
    out.resize(n);
    jobs += 1;
    for (size_t i = 0; i < n; ++i) {
      const ParetoPoint &u = j.points[i], &w = j.points[n + i];
      ParetoMean& m = out[i];
      m.density = u.density;
      m.bits = u.bits;
      m.uniform_bits += u.bits_per_token;
      m.uniform_error += u.error;
      m.uniform_bound += u.bound;
      m.waterfill_bits += w.bits_per_token;
      m.waterfill_error += w.error;
      m.waterfill_bound += w.bound;
    }
  }
  for (ParetoMean& m : out) {
    for (double* v : {&m.uniform_bits, &m.uniform_error, &m.uniform_bound, &m.waterfill_bits,
                      &m.waterfill_error, &m.waterfill_bound}) {
      *v /= jobs;
    }
  }
  return out;
}

nlohmann::json pareto_json(const EvalReport& r) {
  nlohmann::json jobs = nlohmann::json::array();
  for (const JobPareto& j : r.pareto) {
    nlohmann::json points = nlohmann::json::array();
    for (const ParetoPoint& p : j.points) {
      points.push_back({{"code", p.code},
                        {"density", p.density},
                        {"bits", p.bits},
                        {"bits_per_token", p.bits_per_token},
                        {"error", p.error},
                        {"bound", p.bound}});
    }
    jobs.push_back({{"layer", j.layer}, {"kind", j.kind}, {"points", points}});
  }
  return jobs;
}

}  // namespace

const char* const kReportPlots[4] = {"errors.png", "spectrum_k.png", "spectrum_v.png",
                                     "memory.png"};

std::string EvalReport::headline() const {
  const auto& e = end_to_end;
  return "compression " + fmt(compression_ratio, "%.2f") + "x at " +
         std::to_string(compression_ratio_context) + " tokens | mean KL " + fmt(e.kl_mean) +
         " nats/token (fp16 cache " + fmt(e.kl_fp16_cache) + ") | perplexity " +
         fmt(e.ppl_original) + " -> " + fmt(e.ppl_compressed) + " (" +
         (e.ppl_change_percent >= 0 ? "+" : "") + fmt(e.ppl_change_percent, "%.2f") + "%)";
}

std::string report_json(const EvalReport& r) {
  nlohmann::json j;
  j["model"] = r.model_dir;
  j["acts"] = r.acts_dir;
  j["compressor"] = r.compressor_path;
  j["model_config_hash"] = r.model_config_hash;
  j["num_layers"] = r.num_layers;
  j["quantization"] = {{"k_bits", r.k_bits},
                       {"v_bits", r.v_bits},
                       {"group_size", r.group_size},
                       {"window", r.window},
                       {"quant_compat", r.quant_compat},
                       {"quant", r.quant},
                       {"sink_tokens", r.sink_tokens},
                       {"cache_dtype", r.cache_dtype}};
  j["uncompressed_layers"] = r.uncompressed_layers;
  nlohmann::json layers = nlohmann::json::array();
  for (const auto& l : r.layers) {
    layers.push_back({{"layer", l.layer},
                      {"r_k", l.r_k},
                      {"r_v", l.r_v},
                      {"k_floor", l.k_floor},
                      {"v_floor", l.v_floor},
                      {"k_error", l.k_error},
                      {"v_error", l.v_error},
                      {"k_error_16bit", l.k_error_16bit},
                      {"v_error_16bit", l.v_error_16bit},
                      {"k_bits_per_token", l.k_bits_per_token},
                      {"v_bits_per_token", l.v_bits_per_token},
                      {"k_bound", l.k_bound},
                      {"v_bound", l.v_bound},
                      {"k_spectrum", l.k_spectrum},
                      {"v_spectrum", l.v_spectrum}});
  }
  j["layers"] = layers;
  j["mean_k_error"] = r.mean_k_error;
  j["mean_v_error"] = r.mean_v_error;
  j["mean_k_floor"] = r.mean_k_floor;
  j["mean_v_floor"] = r.mean_v_floor;
  const auto& e = r.end_to_end;
  j["end_to_end"] = {{"context", e.context},
                     {"decode", e.decode},
                     {"sequences", e.sequences},
                     {"positions", e.positions},
                     {"kl_mean", e.kl_mean},
                     {"kl_max", e.kl_max},
                     {"kl_fp16_cache", e.kl_fp16_cache},
                     {"ppl_original", e.ppl_original},
                     {"ppl_compressed", e.ppl_compressed},
                     {"ppl_fp16_cache", e.ppl_fp16_cache},
                     {"ppl_change_percent", e.ppl_change_percent},
                     {"top1_agreement", e.top1_agreement},
                     {"kl_per_step", e.kl_per_step}};
  nlohmann::json mem = nlohmann::json::array();
  for (const auto& m : r.memory) {
    nlohmann::json row = {{"context", m.context},
                          {"compressed_bytes_measured", m.compressed_measured},
                          {"compressed_bytes_formula", m.compressed_formula},
                          {"fp16_bytes_measured", m.fp16_measured},
                          {"fp16_bytes_formula", m.fp16_formula},
                          {"ratio", m.ratio},
                          {"window_tokens", window_tokens(r, m.context)}};
    if (m.compressed_device_allocated >= 0) {
      row["compressed_bytes_device_allocated"] = m.compressed_device_allocated;
    }
    mem.push_back(std::move(row));
  }
  j["memory"] = mem;
  j["compression_ratio"] = r.compression_ratio;
  j["compression_ratio_context"] = r.compression_ratio_context;
  if (!r.pareto.empty()) j["pareto"] = pareto_json(r);
  j["headline"] = r.headline();
  j["seconds"] = r.seconds;
  return j.dump(2);
}

namespace {
// The title, the configuration sentence and the headline.
void markdown_header(std::ostringstream& md, const EvalReport& r) {
  md << "# KV-cache compression report\n\n"
     << "Model `" << r.model_dir << "` (config hash " << r.model_config_hash << ", " << r.num_layers
     << " layers), compressor `" << r.compressor_path << "`: ";
  if (r.quant == "waterfill") {
    md << "waterfill codes (every kept PCA channel at its own width with a static range; "
          "widths per layer below), window "
       << r.window;
  } else {
    md << "K " << r.k_bits << " bits, V " << r.v_bits << " bits, group size " << r.group_size
       << " (0 = r/n_kv), window " << r.window << ", zero point " << r.quant_compat;
  }
  if (r.sink_tokens > 0) md << ", the first " << r.sink_tokens << " token(s) kept full precision";
  md << "; cache storage " << r.cache_dtype << " (window K/V, scale/zero, 16-bit latents).";
  if (!r.uncompressed_layers.empty()) {
    md << " Layers without factors keep a plain fp16 cache: " << layer_list(r.uncompressed_layers)
       << ".";
  }
  md << "\n\n**Headline:** " << r.headline() << "\n\n";
}

// (a) the reconstruction errors per layer, with the bits spent and the Gaussian bound.
void markdown_layers(std::ostringstream& md, const EvalReport& r) {
  md << "## Reconstruction error per layer (held-out activations)\n\n"
     << "Relative error ‖K − K̂‖²/‖K‖² over the held-out split of `" << r.acts_dir
     << "`; *floor*: the 16-bit training-set optimum Σ_{i≥r}λ_i/Σλ of the rank; *16-bit*: the "
        "factors without quantization; *cached*: the latents as the cache stores them (packed "
        "codes, scale/zero in "
     << r.cache_dtype
     << "); *bits*: what a compressed token's latent costs (codes and "
        "scale/zero); *bound*: the Gaussian rate–distortion bound at those bits for the held-out "
        "spectrum (reverse water-filling; no code of that rate does better on a Gaussian "
        "source).\n\n"
     << "| layer | r_k | K floor | K 16-bit | K cached | K bits | K bound | r_v | V floor | "
        "V 16-bit | V cached | V bits | V bound |\n"
     << "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  for (const auto& l : r.layers) {
    md << "| " << l.layer << " | " << l.r_k << " | " << fmt(l.k_floor) << " | "
       << fmt(l.k_error_16bit) << " | " << fmt(l.k_error) << " | " << fmt(l.k_bits_per_token)
       << " | " << fmt(l.k_bound) << " | " << l.r_v << " | " << fmt(l.v_floor) << " | "
       << fmt(l.v_error_16bit) << " | " << fmt(l.v_error) << " | " << fmt(l.v_bits_per_token)
       << " | " << fmt(l.v_bound) << " |\n";
  }
  md << "| mean | | " << fmt(r.mean_k_floor) << " | | " << fmt(r.mean_k_error) << " | | | | "
     << fmt(r.mean_v_floor) << " | | " << fmt(r.mean_v_error) << " | | |\n\n";
}
}  // namespace

// The budget sweep, averaged over the layers, K then V.
void markdown_pareto(std::ostringstream& md, const EvalReport& r) {
  if (r.pareto.empty()) return;
  md << "\n## Budget sweep: closed-form codes against the bound (--pareto)\n\n"
     << "Held-out relative error, mean over the layers, of the closed form `cskv train` starts "
        "from: the paper's uniform code (rank by density, window-32 key groups, r/n_kv-channel "
        "value groups) and per-channel widths (`--quant waterfill`) at the uniform point's bits "
        "per token; *bound*: the Gaussian bound of the held-out spectrum at the waterfill bits.\n\n"
     << "| kind | density | bits | uniform bits/token | uniform error | waterfill bits/token | "
        "waterfill error | waterfill / uniform | bound | waterfill / bound |\n"
     << "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  for (const char* kind : {"K", "V"}) {
    for (const ParetoMean& m : pareto_means(r, kind)) {
      md << "| " << kind << " | " << fmt(m.density) << " | " << fmt(m.bits) << " | "
         << fmt(m.uniform_bits, "%.1f") << " | " << fmt(m.uniform_error) << " | "
         << fmt(m.waterfill_bits, "%.1f") << " | " << fmt(m.waterfill_error) << " | "
         << fmt(m.waterfill_error / m.uniform_error, "%.3f") << " | " << fmt(m.waterfill_bound)
         << " | " << fmt(m.waterfill_error / m.waterfill_bound, "%.2f") << " |\n";
    }
  }
}

std::string report_markdown(const EvalReport& r, bool plots) {
  std::ostringstream md;
  const auto& e = r.end_to_end;
  markdown_header(md, r);
  markdown_layers(md, r);
  md << "## End to end: next-token distributions with the compressed cache\n\n"
     << e.sequences << " held-out sequence(s): a prompt of " << e.context
     << " tokens is prefilled at full precision, then " << e.decode
     << " teacher-forced decode steps run with the bi-branch cache (" << e.positions
     << " positions). KL(original ‖ model) in nats per position, perplexity of the decoded "
        "tokens.\n\n"
     << "| cache | mean KL | max KL | perplexity | top-1 agreement |\n"
     << "|---|---:|---:|---:|---:|\n"
     << "| original model (full precision, no cache) | 0 | 0 | " << fmt(e.ppl_original)
     << " | 100% |\n"
     << "| plain fp16 cache | " << fmt(e.kl_fp16_cache) << " | | " << fmt(e.ppl_fp16_cache)
     << " | |\n"
     << "| compressed bi-branch cache | " << fmt(e.kl_mean) << " | " << fmt(e.kl_max) << " | "
     << fmt(e.ppl_compressed) << " (" << (e.ppl_change_percent >= 0 ? "+" : "")
     << fmt(e.ppl_change_percent, "%.2f") << "%) | " << fmt(100.0 * e.top1_agreement, "%.1f")
     << "% |\n\n";

  md << "## Memory: bytes the caches hold (all layers)\n\n"
     << "*Measured*: the storage bytes of every buffer the caches hold after holding that many "
        "tokens; *formula*: trainer::layer_cache_bytes (codes ⌈T·r·b/8⌉, fp16 scale/zero per "
        "group, the window's fp16 K/V and latents) and 2·D·2 bytes per token for fp16.\n\n"
     << "*Window*: the tokens a compressed layer holds in its full-precision window (fp16 K/V "
        "and latents) at that context, of "
     << r.window
     << "; the ratio is at its best when the window is empty and at its worst one token short "
        "of full.\n\n"
     << "| context | compressed measured | compressed formula | fp16 measured | fp16 formula | "
        "ratio | window |\n"
     << "|---:|---:|---:|---:|---:|---:|---:|\n";
  for (const auto& m : r.memory) {
    md << "| " << m.context << " | " << m.compressed_measured << " B ("
       << mib(m.compressed_measured) << " MiB) | " << fmt(m.compressed_formula, "%.0f") << " B | "
       << m.fp16_measured << " B (" << mib(m.fp16_measured) << " MiB) | "
       << fmt(m.fp16_formula, "%.0f") << " B | " << fmt(m.ratio, "%.2f") << "x | "
       << window_tokens(r, m.context) << " |\n";
  }
  md << "\nCompression ratio at " << r.compression_ratio_context
     << " tokens: " << fmt(r.compression_ratio, "%.2f") << "x.\n";
  markdown_pareto(md, r);
  if (plots) {
    md << "\n![errors](errors.png)\n![K spectra](spectrum_k.png)\n![V spectra](spectrum_v.png)\n"
       << "![memory](memory.png)\n";
    if (!r.pareto.empty()) md << "![pareto](" << kParetoPlot << ")\n";
  }
  return md.str();
}

namespace {
// Error against bits per token, mean over the layers: uniform points, the waterfill frontier and
// the bound, K and V.
void gnuplot_pareto(std::ostringstream& gp, const EvalReport& r, const std::string& out) {
  for (const char* kind : {"K", "V"}) {
    auto means = pareto_means(r, kind);
    std::sort(means.begin(), means.end(), [](const ParetoMean& a, const ParetoMean& b) {
      return a.waterfill_bits < b.waterfill_bits;
    });
    gp << "$P" << kind << " << EOD\n";
    for (const ParetoMean& m : means) {
      gp << fmt(m.uniform_bits, "%.8g") << ' ' << fmt(m.uniform_error, "%.8g") << ' '
         << fmt(m.waterfill_bits, "%.8g") << ' ' << fmt(m.waterfill_error, "%.8g") << ' '
         << fmt(m.waterfill_bound, "%.8g") << '\n';
    }
    gp << "EOD\n";
  }
  gp << "set output '" << out << "/" << kParetoPlot << "'\n"
     << "set title 'Held-out error vs cache bits per token and job (closed form, mean over "
        "layers)'\nunset logscale\nset logscale xy\nset format y '10^{%L}'\nset format x '%g'\n"
     << "set key outside right\nset xlabel 'bits per token (codes + scale/zero)'\n"
     << "set ylabel '|K - K^|^2 / |K|^2'\n"
     << "plot $PK using 1:2 with points pt 7 ps 1.3 lc rgb '#1f77b4' title 'K uniform', "
     << "$PK using 3:4 with linespoints pt 5 lw 2 lc rgb '#1f77b4' title 'K waterfill', "
     << "$PK using 3:5 with lines dt 2 lw 2 lc rgb '#1f77b4' title 'K bound', "
     << "$PV using 1:2 with points pt 7 ps 1.3 lc rgb '#d62728' title 'V uniform', "
     << "$PV using 3:4 with linespoints pt 5 lw 2 lc rgb '#d62728' title 'V waterfill', "
     << "$PV using 3:5 with lines dt 2 lw 2 lc rgb '#d62728' title 'V bound'\n";
}

// The inline data blocks: $ERR (per-layer errors), $K<l>/$V<l> and $KR<l>/$VR<l> (spectra and
// the kept rank's point), $MEM (memory per context).
void gnuplot_data(std::ostringstream& gp, const EvalReport& r) {
  gp << "$ERR << EOD\n";
  for (const auto& l : r.layers) {
    gp << l.layer << ' ' << fmt(l.k_error, "%.8g") << ' ' << fmt(l.k_error_16bit, "%.8g") << ' '
       << fmt(l.k_floor, "%.8g") << ' ' << fmt(l.v_error, "%.8g") << ' '
       << fmt(l.v_error_16bit, "%.8g") << ' ' << fmt(l.v_floor, "%.8g") << '\n';
  }
  gp << "EOD\n";
  for (const char* kind : {"K", "V"}) {
    for (const auto& l : r.layers) {
      const auto& s = kind[0] == 'K' ? l.k_spectrum : l.v_spectrum;
      const int64_t rank = kind[0] == 'K' ? l.r_k : l.r_v;
      gp << "$" << kind << l.layer << " << EOD\n";
      for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] > 0) gp << i << ' ' << fmt(s[i], "%.8g") << '\n';
      }
      gp << "EOD\n$" << kind << "R" << l.layer << " << EOD\n";
      if (rank > 0 && rank <= static_cast<int64_t>(s.size()) && s[rank - 1] > 0) {
        gp << rank - 1 << ' ' << fmt(s[rank - 1], "%.8g") << '\n';
      }
      gp << "EOD\n";
    }
  }
  gp << "$MEM << EOD\n";
  for (const auto& m : r.memory) {
    gp << m.context << ' ' << m.compressed_measured / 1048576.0 << ' '
       << m.compressed_formula / 1048576.0 << ' ' << m.fp16_measured / 1048576.0 << ' '
       << m.fp16_formula / 1048576.0 << '\n';
  }
  gp << "EOD\n";
}

// errors.png: errors per layer with the floors.
void gnuplot_errors(std::ostringstream& gp, const EvalReport& r, const std::string& out) {
  gp << "set output '" << out << "/errors.png'\n"
     << "set title 'Held-out relative error per layer (K: " << r.k_bits << " bits, V: " << r.v_bits
     << " bits)'\nset xlabel 'layer'\nset ylabel '|K - K^|^2 / |K|^2'\n"
     << "set key outside right\nset yrange [0:*]\n"
     << "set xtics " << std::max<int64_t>(1, r.num_layers / 16) << "\n"
     << "plot $ERR using 1:2 with linespoints pt 7 lw 2 lc rgb '#1f77b4' title 'K cached', "
     << "$ERR using 1:3 with linespoints pt 6 lw 1 lc rgb '#1f77b4' title 'K 16-bit', "
     << "$ERR using 1:4 with lines dt 2 lw 2 lc rgb '#1f77b4' title 'K floor', "
     << "$ERR using 1:5 with linespoints pt 5 lw 2 lc rgb '#d62728' title 'V cached', "
     << "$ERR using 1:6 with linespoints pt 4 lw 1 lc rgb '#d62728' title 'V 16-bit', "
     << "$ERR using 1:7 with lines dt 2 lw 2 lc rgb '#d62728' title 'V floor'\n"
     << "unset yrange\nset xtics autofreq\n";
}

// spectrum_k.png, spectrum_v.png: the spectra with the kept rank marked.
void gnuplot_spectra(std::ostringstream& gp, const EvalReport& r, const std::string& out) {
  if (r.layers.empty()) return;
  const int64_t first = r.layers.front().layer, last = r.layers.back().layer;
  gp << "set logscale y\nset format y '10^{%L}'\nset key off\n"
     << "set xlabel 'eigenvalue index i (descending)'\nset ylabel 'λ_i / Σλ'\n"
     << "set palette rgbformulae 33,13,10\nset cblabel 'layer'\n"
     << "set cbrange [" << first << ":" << (last > first ? last : first + 1) << "]\n";
  for (const char* kind : {"K", "V"}) {
    gp << "set output '" << out << "/spectrum_" << (kind[0] == 'K' ? "k" : "v") << ".png'\n"
       << "set title '" << kind
       << " cache spectra (training statistics); points: the kept rank r'\nplot ";
    for (size_t i = 0; i < r.layers.size(); ++i) {
      const int64_t l = r.layers[i].layer;
      gp << (i ? ", " : "") << "$" << kind << l << " using 1:2 with lines lw 1.5 lc palette cb "
         << l << ", $" << kind << "R" << l << " using 1:2 with points pt 7 ps 1.5 lc palette cb "
         << l;
    }
    gp << "\n";
  }
  gp << "unset logscale y\nset format y '%g'\nunset colorbox\n";
}

// memory.png: memory against context.
void gnuplot_memory(std::ostringstream& gp, const EvalReport& r, const std::string& out) {
  gp << "set output '" << out << "/memory.png'\n"
     << "set title 'KV cache memory, all layers (measured points, formula lines)'\n"
     << "set logscale xy 2\nset format y '%g'\nset key inside top left\n"
     << "set xlabel 'context (tokens)'\nset ylabel 'MiB'\n"
     << "plot $MEM using 1:4 with points pt 5 ps 1.5 lc rgb '#7f7f7f' title 'fp16 measured', "
     << "$MEM using 1:5 with lines lw 1 lc rgb '#7f7f7f' title 'fp16 formula', "
     << "$MEM using 1:2 with points pt 7 ps 1.5 lc rgb '#2ca02c' title 'compressed measured', "
     << "$MEM using 1:3 with lines lw 1 lc rgb '#2ca02c' title 'compressed formula'\n";
}
}  // namespace

std::string report_gnuplot(const EvalReport& r, const std::string& out_dir) {
  const std::string out = fs::absolute(out_dir).string();
  std::ostringstream gp;
  gp << "# Generated by `cskv eval`; rerun with: gnuplot plots.gp\n"
     << "set terminal pngcairo size 1000,640 font ',10'\nset grid\n";
  gnuplot_data(gp, r);
  gnuplot_errors(gp, r, out);
  gnuplot_spectra(gp, r, out);
  gnuplot_memory(gp, r, out);
  if (!r.pareto.empty()) gnuplot_pareto(gp, r, out);
  gp << "set output\n";
  return gp.str();
}

void check_plotting() {
  CSKV_CHECK(!find_in_path("gnuplot").empty(),
             "gnuplot not found: install gnuplot-nox or pass --no-plots");
}

void write_report(const EvalReport& r, const std::string& out_dir, bool plots) {
  fs::create_directories(out_dir);
  files::write_file_atomic(out_dir + "/report.json", report_json(r) + "\n");
  files::write_file_atomic(out_dir + "/report.md", report_markdown(r, plots));
  if (!plots) return;
  const std::string gnuplot = find_in_path("gnuplot");
  CSKV_CHECK(!gnuplot.empty(), "gnuplot not found: install gnuplot-nox or pass --no-plots");
  const std::string script = out_dir + "/plots.gp";
  files::write_file_atomic(script, report_gnuplot(r, out_dir));
  run_gnuplot(gnuplot, script, out_dir + "/plots.log");
  std::vector<std::string> pngs(std::begin(kReportPlots), std::end(kReportPlots));
  if (!r.pareto.empty()) pngs.emplace_back(kParetoPlot);
  for (const std::string& png : pngs) {
    const std::string path = out_dir + "/" + png;
    CSKV_CHECK(fs::exists(path) && fs::file_size(path) > 0,
               gnuplot << " did not write " << path << " (script " << script << ")");
  }
}

}  // namespace cskv::eval
