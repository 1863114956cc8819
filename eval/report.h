// The evaluation report of `cskv eval`: per-layer reconstruction errors, end-to-end fidelity of
// the compressed-cache model and measured cache memory, as report.json, report.md and PNG plots.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace cskv::eval {

// (a) One layer's held-out reconstruction errors ‖K − K̂‖²/‖K‖² (and V), float64 sums.
struct LayerEval {
  int64_t layer = 0;
  int64_t r_k = 0, r_v = 0;
  double k_floor = 0, v_floor = 0;              // 16-bit training-set floor Σ_{i≥r}λ_i/Σλ_i
  double k_error = 0, v_error = 0;              // held-out, quantized as the cache stores it
  double k_error_16bit = 0, v_error_16bit = 0;  // held-out, latents unquantized
  std::vector<double> k_spectrum, v_spectrum;   // λ_i/Σλ of W G Wᵀ (training statistics)
  // Bits a compressed token's latent costs (codes and scale/zero overhead) and the Gaussian
  // rate–distortion bound at those bits for the held-out spectrum of K (trainer::gaussian_bound):
  // the least relative error any code of that rate reaches on a Gaussian source of that spectrum.
  double k_bits_per_token = 0, v_bits_per_token = 0;
  double k_bound = 0, v_bound = 0;
};

// (b) Teacher-forced decoding after a prompt, compressed-cache model vs the original model.
struct EndToEndEval {
  int64_t context = 0;    // prompt tokens (prefilled at full precision)
  int64_t decode = 0;     // decode steps per sequence
  int64_t sequences = 0;  // held-out sequences used
  int64_t positions = 0;  // sequences · decode next-token distributions compared
  double kl_mean = 0;     // mean KL(original ‖ compressed) in nats per position
  double kl_max = 0;
  double kl_fp16_cache = 0;  // mean KL(original ‖ model with a plain fp16 cache): the storage floor
  double ppl_original = 0, ppl_compressed = 0, ppl_fp16_cache = 0;
  double ppl_change_percent = 0;    // 100 · (ppl_compressed / ppl_original − 1)
  double top1_agreement = 0;        // share of positions whose argmax token is the same
  std::vector<double> kl_per_step;  // mean KL at decode step i (cache grows with i)
};

// (c) Bytes held by every layer's cache at one context, measured (storage bytes of the
// buffers the caches hold) and by the accounting formula.
struct MemoryRow {
  int64_t context = 0;
  int64_t compressed_measured = 0;
  double compressed_formula = 0;
  int64_t fp16_measured = 0;
  double fp16_formula = 0;
  double ratio = 0;  // fp16_measured / compressed_measured
  // On a CUDA device: what the caching allocator handed out for the compressed caches (its
  // blocks round sizes up); -1 on the CPU, which has no allocator statistics.
  int64_t compressed_device_allocated = -1;
};

// (d) `--pareto`: one closed-form code of one job at one budget (eval/pareto.h).
struct ParetoPoint {
  std::string code;           // "uniform" | "waterfill"
  double density = 0;         // uniform: the grid's; waterfill: kept channels / D
  int bits = 0;               // uniform: code bits; waterfill: 0 (its widths differ per channel)
  double bits_per_token = 0;  // codes and scale/zero overhead of one token's latent
  double error = 0;  // held-out ‖K − K̂‖²/‖K‖², quantized as the cache stores it
  double bound = 0;  // Gaussian bound of the held-out spectrum at bits_per_token
};

struct JobPareto {
  int64_t layer = 0;
  std::string kind;                 // "K" | "V"
  std::vector<ParetoPoint> points;  // uniform points in grid order, then one waterfill per each
};

struct EvalReport {
  std::string model_dir, acts_dir, compressor_path, model_config_hash;
  int64_t num_layers = 0;
  int k_bits = 16, v_bits = 16;
  int64_t group_size = 0, window = 0;
  std::string quant_compat = "none";
  std::string quant = "uniform";  // waterfill: per-channel widths (the layer rows give the bits)
  int64_t sink_tokens = 0;        // the first tokens kept full precision (--sink-tokens)
  std::string cache_dtype = "float16";
  std::vector<int64_t> uncompressed_layers;  // layers the compressor has no factors for
  std::vector<LayerEval> layers;
  double mean_k_error = 0, mean_v_error = 0, mean_k_floor = 0, mean_v_floor = 0;
  EndToEndEval end_to_end;
  std::vector<MemoryRow> memory;
  std::vector<JobPareto> pareto;  // --pareto (empty without)
  double compression_ratio = 0;   // at the largest measured context
  int64_t compression_ratio_context = 0;
  double seconds = 0;

  // "compression 7.53x at 32768 tokens | mean KL 0.0123 nats | perplexity 45.1 -> 46.0 (+2.0%)"
  std::string headline() const;
};

std::string report_json(const EvalReport& r);
std::string report_markdown(const EvalReport& r, bool plots);
// A self-contained gnuplot script (inline data) writing errors.png, spectrum_k.png,
// spectrum_v.png and memory.png into out_dir, and pareto.png when the report has a sweep.
std::string report_gnuplot(const EvalReport& r, const std::string& out_dir);
extern const char* const kReportPlots[4];
inline constexpr const char* kParetoPlot = "pareto.png";

// Writes <out_dir>/report.json, report.md and, with plots, plots.gp and the PNGs (gnuplot must be
// in $PATH: runtime error otherwise, checked before any work by check_plotting()).
void write_report(const EvalReport& r, const std::string& out_dir, bool plots);
void check_plotting();

}  // namespace cskv::eval
