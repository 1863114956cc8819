// What the CSKV reference code (wln20/CSKV, the paper's) needs to load an --export-cskv pair and
// reproduce the run: its command-line arguments and file naming, refusals where it cannot.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "checkpoint/compressor_file.h"
#include "model/config.h"

namespace cskv::checkpoint {

// The reference's arguments for a run (its train.py / demo.py flags of the same names).
struct ReferenceRun {
  double k_density = 0, v_density = 0;  // int(density * head_dim) = r / n_kv channels per head
  int k_bits = 16, v_bits = 16;
  bool use_asvd = false;      // --init asvd (the reference then also reads its ASVD statistics)
  int64_t q_window_size = 0;  // --use_window --q_window_size W; 0: no --use_window
  std::vector<std::string> warnings;  // what the reference will do differently from training

  // The reference's get_name(args): "density_k_<kd>_v_<vd>_quant_k_<kb>_v_<vb>_[asvd_]
  // [window_<W, or 0 when both bits are 16>_]", densities as Python's str(float) writes them. Its
  // files are <kv_ckpt_root_path>/<model_id>/<name>_{k,v}.ckpt.
  std::string file_name() const;
  // "--k_density 0.5 --v_density 0.25 --k_bits 4 --v_bits 4 [--use_asvd] [--use_window
  // --q_window_size 32]"
  std::string arguments() const;
};

// The reference run for factors trained with the resolved training config `config` (the keys of
// train's resolved_config_json) on `model`. Input errors (prefixed "--export-cskv: ") where the
// reference cannot load or run them: another model (config hash), an architecture or head_dim
// the reference does not build, factors not covering every model layer, per-layer ranks (--budget;
// the reference has one K and one V rank), a rank not a multiple of n_kv, or per-head channels
// outside (0, head_dim). Warnings where it loads them but quantizes otherwise than training did:
// a --group-size other than r/n_kv, the unclamped zero point (--quant-compat none).
ReferenceRun reference_run(const FactorMap& factors, const nlohmann::json& config,
                           const model::ModelConfig& model);

// What can be refused before training (`cskv run` with export_cskv): an architecture or head_dim
// the reference does not build, a --budget (it chooses ranks per layer; the reference has one
// per kind) and a density giving every channel of a head. Usage errors naming the setting.
void check_reference_plan(const model::ModelConfig& model, double k_density, double v_density,
                          double budget);

// Python's repr/str of a float: the shortest digits that read back as `value`, fixed notation
// for 1e-4 <= |value| < 1e16 (with ".0" when integral), else "1.5e-05" / "1e+16".
std::string python_float_str(double value);

}  // namespace cskv::checkpoint
