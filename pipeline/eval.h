// `cskv eval` as a library call (what `cskv run` runs as its last stage): per-layer held-out
// errors, end-to-end fidelity of the compressed-cache model and measured cache memory.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "eval/compressor.h"
#include "eval/report.h"
#include "model/llama.h"

namespace cskv::pipeline {

using eval::Compressor;
using eval::EndToEndEval;
using eval::EvalReport;
using eval::MemoryRow;


struct EvalOptions {
  std::string model_dir;
  std::string acts_dir;         // capture directory: held-out split, stats.h5
  std::string compressor_path;  // compressor.safetensors (cskv merge / cskv train)
  std::string out_dir;          // report.json, report.md, plots
  int64_t context = 0;          // prompt tokens; 0: held-out seq_len − decode − 1
  int64_t decode = 64;          // teacher-forced decode steps per sequence
  int64_t max_sequences = 0;    // held-out sequences used end to end; 0: all
  std::vector<int64_t> memory_contexts = {1024, 2048, 4096, 8192, 16384, 32768};
  bool plots = true;
  // Storage of the caches' full-precision parts (window K/V and latents, scale/zero, 16-bit
  // latents). float16 is what the memory accounting states; float32 exists for exactness checks.
  at::ScalarType cache_storage = at::kHalf;
  bool write_files = true;  // rank 0 writes the report into out_dir
};

// Runs the three parts (sequences and layers are shared among the ranks of comm; every rank
// returns the whole report) and, on rank 0, writes <out_dir>/report.json, report.md and, with
// plots, plots.gp + errors.png, spectrum_k.png, spectrum_v.png, memory.png. Input errors (before
// any work) for: a compressor trained for another model (both hashes named), acts captured from
// another model, no held-out split, held-out sequences shorter than context + decode + 1 tokens,
// compressed layers missing from the held-out activations or stats.h5.
EvalReport run_eval(const EvalOptions& options, comm::Communicator& comm);
EvalReport run_eval(const EvalOptions& options);

// The held-out token sequences of a capture, int64 [sequences, seq_len] in manifest order
// (shards checked against the manifest and the model hash).
at::Tensor read_holdout_tokens(const std::string& acts_dir, const std::string& model_config_hash);

// (b) For each sequence (rank r takes r, r + W, ...): the original model's logits over the first
// context + decode tokens (LlamaModel::forward), against a prefill of `context` tokens followed
// by `decode` teacher-forced steps with the compressor's caches (`storage`) and with plain fp16
// caches. sequences: int64 [N, L] with L >= context + decode + 1. KL and NLL in float64.
EndToEndEval evaluate_end_to_end(const model::LlamaModel& model, const Compressor& compressor,
                                 const at::Tensor& sequences, int64_t context, int64_t decode,
                                 at::ScalarType storage, comm::Communicator& comm);

// Logits [steps, vocab] of `steps` teacher-forced decode steps after prefilling
// tokens[0, context) into `caches` (empty on entry): step i feeds token context + i.
at::Tensor decode_logits(const model::LlamaModel& model, const std::vector<model::KvCache*>& caches,
                         const at::Tensor& tokens, int64_t context, int64_t steps);

// (c) Every layer's cache filled to each context (ascending) with the held-out activations of
// the layer repeated (their k/v projections, no RoPE: contents do not change sizes), measured
// (KvCache::bytes) and by the formula, for the compressor's caches and plain fp16 caches.
std::vector<MemoryRow> measure_memory(const model::LlamaModel& model, const Compressor& compressor,
                                      const std::string& acts_dir,
                                      const std::vector<int64_t>& contexts, at::ScalarType storage,
                                      comm::Communicator& comm);

}  // namespace cskv::pipeline
