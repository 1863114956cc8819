// `cskv eval` as a library call (what `cskv run` runs as its last stage): per-layer held-out
// errors, end-to-end fidelity of the compressed-cache model and measured cache memory.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "eval/report.h"
#include "pipeline/stage_outputs.h"

namespace cskv::pipeline {

struct EvalOptions {
  std::string model_dir;
  std::string acts_dir;         // capture directory: held-out split, stats.h5
  std::string compressor_path;  // compressor.safetensors (cskv merge / cskv train)
  std::string out_dir;          // report.json, report.md, plots
  int64_t context = 0;          // prompt tokens; 0: held-out seq_len − decode − 1
  int64_t decode = 64;          // teacher-forced decode steps per sequence
  int64_t max_sequences = 0;    // held-out sequences used end to end; 0: all
  int64_t sink_tokens = 0;      // the first tokens every compressed layer keeps full precision
  std::vector<int64_t> memory_contexts = {1024, 2048, 4096, 8192, 16384, 32768};
  bool pareto = false;  // also the budget sweep of eval/pareto.h (report 'pareto', pareto.png)
  bool plots = true;
  // "cpu" | "cuda" (GPU local rank mod visible GPUs): the forward, the caches and the layer
  // errors run there in float32; the model's layers are converted once, on the device.
  std::string device = "cpu";
  // Storage of the caches' full-precision parts (window K/V and latents, scale/zero, 16-bit
  // latents). float16 is what the memory accounting states; float32 exists for exactness checks.
  at::ScalarType cache_storage = at::kHalf;
  bool write_files = true;  // rank 0 writes the report into out_dir (locked while the stage runs)
  // Replace report files in out_dir that cskv did not write (refused otherwise, before any work).
  bool overwrite = false;
};

// The files eval writes into out_dir, with how each is recognised as cskv's: report.json (a JSON
// object with the report's keys), report.md (the report's title line); plots.gp, plots.log and
// the PNGs only beside a report.json of cskv's.
std::vector<OwnedOutput> eval_outputs(const std::string& out_dir);

// The measurements themselves are library calls in eval/evaluation.h; this is the stage driver.
// Runs the three parts (sequences and layers are shared among the ranks of comm; every rank
// returns the whole report) and, on rank 0, writes <out_dir>/report.json, report.md and, with
// plots, plots.gp + errors.png, spectrum_k.png, spectrum_v.png, memory.png. Input errors (before
// any work) for: a compressor trained for another model (both hashes named), acts captured from
// another model, no held-out split, held-out sequences shorter than context + decode + 1 tokens,
// compressed layers missing from the held-out activations or stats.h5.
eval::EvalReport run_eval(const EvalOptions& options, comm::Communicator& comm);

// The checks of the settings alone against a capture still to be made, with run_eval's messages
// (`cskv run` calls it before any stage works): held-out sequences at all, --decode, --context,
// --sequences and --memory-contexts against held-out sequences of holdout_seq_len tokens, and
// gnuplot when plots are written.
void validate_eval_settings(const EvalOptions& options, int64_t holdout_seq_len,
                            int64_t holdout_seqs);
eval::EvalReport run_eval(const EvalOptions& options);

}  // namespace cskv::pipeline
